"""The kernel's one question to the gateway: ``GET {VKEYS_URL}/api/me`` with its own key.

Called by :func:`jupyter_vkeys.kernel.me`. Every failure becomes a
:class:`VKeysError` whose message says what is wrong and what to do, so user code
(and ``%vkeys``) never shows a bare stack trace for a key problem or a gateway
that is down.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from typing import Any


class VKeysError(RuntimeError):
    """This kernel cannot ask the gateway: the message says why and what to do."""


NO_KEY = ("this kernel has no jupyter-vkeys key (the server's vkeys kernel provisioner sets "
          "VKEYS_URL and a vk- key in OPENAI_API_KEY). Is the jupyter_vkeys extension enabled "
          "(jupyter server extension list), and was this kernel started by that server?")


def advice(message: str) -> str:
    """What to do about a 401 from the gateway, given its message ('' when the gateway's
    message says it already)."""
    if "jupyter-vkeys admin" in message:
        return ""
    if "belongs to key" in message:
        return ("the key above this kernel's (your personal or project key) is not active: "
                "ask your jupyter-vkeys admin")
    if "revoked" in message:
        return ("restart the kernel to get a new key; if the new one is refused too, ask your "
                "jupyter-vkeys admin")
    if "expired" in message:
        return "restart the kernel to get a new key"
    return "restart the kernel; if that does not help, ask your jupyter-vkeys admin"


def call_gateway(url: str, key: str, path: str, body: dict[str, Any] | None = None,
                 timeout: float = 10) -> dict[str, Any]:
    """GET (or, with ``body``, POST as JSON) ``url + path`` with the kernel's key; the JSON
    answer. Raises urllib's errors as they are: callers say what they mean (this module's
    :func:`request_me`, the cell-cost extension)."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url + path, data=data,
                                     method="POST" if body is not None else "GET",
                                     headers={"Authorization": f"Bearer {key}",
                                              "content-type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as resp:
        return json.loads(resp.read())


def request_me(timeout: float = 10) -> dict[str, Any]:
    """The gateway's ``/api/me`` report of this kernel's key; :class:`VKeysError` if
    there is no key, the gateway does not answer, or it refuses the key."""
    url = os.environ.get("VKEYS_URL", "").rstrip("/")
    key = os.environ.get("OPENAI_API_KEY", "")
    if not url or not key.startswith("vk-"):
        raise VKeysError(NO_KEY)
    try:
        return call_gateway(url, key, "/api/me", timeout=timeout)
    except urllib.error.HTTPError as exc:
        message = _error_message(exc)
        if exc.code == 401:
            tip = advice(message)
            raise VKeysError(f"the gateway refused this kernel's key: {message}"
                             + (f"; {tip}" if tip else "")) from None
        raise VKeysError(f"the gateway answered {exc.code}: {message}") from None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise VKeysError(f"the gateway at {url} does not answer ({reason}); it runs inside "
                         "the Jupyter server that started this kernel: is that server "
                         "still running?") from None


def _error_message(exc: urllib.error.HTTPError) -> str:
    try:
        body = json.loads(exc.read())
    except (ValueError, OSError):
        return str(exc.reason)
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict) and error.get("message"):
        return str(error["message"])
    return str(exc.reason)
