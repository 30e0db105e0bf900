"""HTTP to the gateway's API, and what a refusal means for the person at the widget.

:class:`ApiClient` is used by the controllers (never by views): one JSON request per
call, over urllib (no dependency; the admin API is small and local). Every failure
becomes an :class:`ApiProblem` carrying the status, the gateway's own message and
one sentence of advice (:func:`advice`), which the views show as they are.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any
from urllib.parse import quote, urlencode

__all__ = ["ApiClient", "ApiProblem", "advice"]


class ApiProblem(RuntimeError):
    """The API refused or did not answer: ``status`` (0 if no answer), ``message`` (the
    gateway's), ``kind`` (its error type) and ``advice`` (what to do)."""

    def __init__(self, status: int, message: str, kind: str = "", hint: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.kind = kind
        self.advice = hint or advice(status, message, kind)

    @property
    def not_admin(self) -> bool:
        """The caller is authenticated but the gateway refuses it the admin API (asked of
        the answer to ``GET /keys``, the route every admin may read)."""
        return self.status == 403

    def __str__(self) -> str:
        where = f"{self.status}: " if self.status else ""
        return f"{where}{self.message} ({self.advice})"


def advice(status: int, message: str, kind: str = "") -> str:
    """One sentence on what to do about a refusal of ``status``. Called when an
    :class:`ApiProblem` is made."""
    if status == 0:
        return ("the gateway does not answer: is the Jupyter server that started this kernel "
                "still running? Restart the kernel from it, or pass url=")
    if status == 400:
        return "correct the field named in the message and apply again; nothing was changed"
    if status == 401:
        return ("the credential was refused: restart the kernel from its Jupyter server, or "
                "pass token= explicitly")
    if status == 403:
        return ("ask a jupyter-vkeys admin to add you to c.VKeysApp.admin_users (or, on a "
                "hub, for the admin role of the vkeys service)")
    if status == 404:
        return "it no longer exists (deleted meanwhile?): refresh the panel"
    if status in (502, 503, 504):
        return "the gateway is busy or starting: retry in a moment"
    return "retry; if it persists, look at the Jupyter server's log"


class ApiClient:
    """JSON requests to one API base (``.../vkeys/api``) with one credential.

    ``scheme`` is ``"token"`` (a Jupyter or Hub token: the admin API) or ``"Bearer"``
    (a virtual key: ``/me``, ``/me/calls``)."""

    def __init__(self, api_url: str, token: str, scheme: str = "token",
                 timeout: float = 10) -> None:
        self.api_url = api_url.rstrip("/")
        self._token = token
        self.scheme = scheme
        self.timeout = timeout

    def __repr__(self) -> str:
        return f"ApiClient({self.api_url!r}, token=...)"

    def request(self, method: str, path: str, body: dict[str, Any] | None = None,
                query: dict[str, Any] | None = None) -> Any:
        """``method path`` with a JSON ``body``; the decoded JSON answer, or
        :class:`ApiProblem`."""
        url = self.api_url + path
        if query:
            url += "?" + urlencode({k: v for k, v in query.items() if v is not None})
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(url, data=data, method=method, headers={
            "Authorization": f"{self.scheme} {self._token}", "Accept": "application/json",
            "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as exc:
            status, message, kind = exc.code, str(exc.reason), ""
            try:
                error = json.loads(exc.read()).get("error") or {}
                message = str(error.get("message") or message)
                kind = str(error.get("type") or "")
            except (ValueError, AttributeError, OSError):
                pass
            raise ApiProblem(status, message, kind) from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise ApiProblem(0, f"no answer from {self.api_url} ({reason})") from None
        try:
            return json.loads(raw) if raw else None
        except ValueError:
            raise ApiProblem(502, f"{url} did not answer JSON (is VKEYS_API_URL the "
                                  "gateway's API?)") from None

    def get(self, path: str, **query: Any) -> Any:
        return self.request("GET", path, query=query or None)

    def post(self, path: str, body: dict[str, Any] | None = None) -> Any:
        return self.request("POST", path, body if body is not None else {})

    def patch(self, path: str, body: dict[str, Any]) -> Any:
        return self.request("PATCH", path, body)

    def put(self, path: str, body: dict[str, Any]) -> Any:
        return self.request("PUT", path, body)


def segment(value: str) -> str:
    """A scope or key id as one URL path segment (``user:alice`` stays readable)."""
    return quote(value, safe=":@")
