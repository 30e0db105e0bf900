"""Budget caps from a running gateway's admin API, over HTTP (never its database).

Called by ``jupyter vkeys anomalies --gateway`` and the ``budgets_and_forecast``
notebook when a gateway is reachable; :mod:`.budgets` runs without it too. Reads
``GET {url}/api/policies`` (scope policies with their spend) and ``GET {url}/api/keys``
(key policies), with ``Authorization: Bearer <admin token>``. Only what the admin API
already shows to an admin is read; the token is never printed.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from typing import Any


class PolicyUnavailable(RuntimeError):
    """The admin API could not be read; the message says why (never the token)."""


def _get(url: str, token: str | None, timeout: float) -> Any:
    request = urllib.request.Request(url, headers={"Accept": "application/json"})
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as exc:
        detail = ""
        try:
            detail = json.loads(exc.read()).get("error", {}).get("message", "")
        except Exception:  # noqa: BLE001 - a body that is not JSON says nothing more
            pass
        raise PolicyUnavailable(f"GET {url} answered {exc.code}"
                                + (f": {detail}" if detail else "")) from None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise PolicyUnavailable(f"GET {url} failed: {reason}") from None


def fetch_caps(url: str, token: str | None = None, timeout: float = 5.0
               ) -> list[dict[str, Any]]:
    """Every budget cap the gateway knows, one mapping per (scope, budget):
    ``scope`` (global, user:x, team:x, project:x, key:<id>), ``usd``, ``period``,
    ``soft``, and, for scope policies, the gateway's own ``spent_usd``/``resets_at``."""
    token = token or os.environ.get("VKEYS_ADMIN_TOKEN")
    base = url.rstrip("/")
    if not base.endswith("/api"):
        base += "/api"
    caps: list[dict[str, Any]] = []
    for report in _get(f"{base}/policies", token, timeout).get("policies", []):
        for b in report.get("budgets", []):
            caps.append({"scope": report["scope"], "usd": float(b["usd"]),
                         "period": b["period"], "soft": b.get("soft"),
                         "spent_usd": b.get("spent_usd"), "resets_at": b.get("resets_at")})
    keys = _get(f"{base}/keys", token, timeout)
    for key in keys.get("keys", keys if isinstance(keys, list) else []):
        for b in (key.get("policy") or {}).get("budgets", []):
            caps.append({"scope": f"key:{key['id']}", "usd": float(b["usd"]),
                         "period": b["period"], "soft": b.get("soft")})
    return caps
