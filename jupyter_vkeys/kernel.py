"""Inside a kernel: who am I to the gateway, and how much may I still spend?

Reads ``VKEYS_URL`` and the injected key (``OPENAI_API_KEY``) from the kernel's
environment and asks the gateway's ``/api/me``. Used by
:func:`jupyter_vkeys.me` and the ``%vkeys`` magic.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from typing import Any


def _request_me() -> dict[str, Any]:
    url = os.environ.get("VKEYS_URL")
    key = os.environ.get("OPENAI_API_KEY", "")
    if not url or not key.startswith("vk-"):
        raise RuntimeError("this kernel has no jupyter-vkeys key (VKEYS_URL and a vk- key in "
                           "OPENAI_API_KEY are set by the vkeys kernel provisioner)")
    request = urllib.request.Request(url.rstrip("/") + "/api/me",
                                     headers={"Authorization": f"Bearer {key}"})
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            return json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        message = json.loads(exc.read()).get("error", {}).get("message", str(exc))
        raise RuntimeError(f"the gateway refused: {message}") from None


def summary(report: dict[str, Any]) -> str:
    """Human text of a ``/api/me`` report: key, limits, spend and what remains."""
    meta = report.get("metadata", {})
    lines = [f"key {report['id']} ({report.get('alias') or 'no alias'}), {report['state']}"]
    if meta.get("notebook_path"):
        lines.append(f"notebook {meta['notebook_path']}, kernel {meta.get('kernel_id', '')[:8]}")
    for scope in report.get("limits", []):
        parts = []
        policy = scope.get("policy", {})
        if policy.get("models"):
            parts.append("models " + ", ".join(policy["models"]))
        for name in ("rpm", "tpm", "max_concurrency"):
            if name in policy:
                parts.append(f"{name} {policy[name]}")
        for b in scope.get("budgets", []):
            resets = f", resets {b['resets_at']}" if b.get("resets_at") else ""
            parts.append(f"{b['period']} budget ${b['usd']:.2f}: spent ${b['spent_usd']:.4f}, "
                         f"remaining ${b['remaining_usd']:.4f}{resets}")
        lines.append(f"  {scope['scope']}: " + ("; ".join(parts) or "no limits"))
    return "\n".join(lines)


def me(show: bool = True) -> dict[str, Any]:
    """The ``/api/me`` report of this kernel's key (printed unless ``show=False``)."""
    report = _request_me()
    if show:
        print(summary(report))
    return report


def register_magic(ipython: Any) -> None:
    """Register the ``%vkeys`` line magic on an IPython shell."""
    def vkeys(line: str = "") -> None:
        """%vkeys: this kernel's virtual key, limits, spend and remaining budget."""
        try:
            me(show=True)
        except RuntimeError as exc:
            print(f"jupyter-vkeys: {exc}")
    ipython.register_magic_function(vkeys, "line", "vkeys")
