"""The gateway's access log: one line per request, whichever front answered it.

Lines go to the ``jupyter_vkeys.access`` logger at INFO (WARNING for 4xx, ERROR
for 5xx), as text by default or as JSON lines with
``c.VKeysGateway.access_log_format = "json"``. Who writes them:

- every data-plane call, on either front and inside Jupyter, from its finished
  :class:`Call` (:meth:`..telemetry.Telemetry.finished`);
- requests the standalone server's lean front refuses before any handler runs
  (413, 414, 431, 408, malformed HTTP, the connection cap), from the lean front;
- requests the standalone application hands to tornado (admin API, health,
  models, 404s), from its ``log_function`` (:func:`..gateway.app.log_request`).

A line holds the time, method, path (never the query string), status,
duration, bytes sent, key id, model and request id: no secrets, no prompt
content. The path is cut at ``?`` and any character outside printable ASCII is
escaped, so a client cannot forge a line.
"""

from __future__ import annotations

import logging
import time

import orjson

__all__ = ["AccessLog", "ACCESS_LOGGER"]

ACCESS_LOGGER = "jupyter_vkeys.access"
_MAX_PATH = 512


def _clean(text: str, limit: int = 200) -> str:
    """``text`` without its query string, with control and non-ASCII characters escaped."""
    text = text.partition("?")[0][:limit]
    if text.isascii() and text.isprintable() and " " not in text:
        return text
    return text.encode("ascii", "backslashreplace").decode().replace(" ", "%20").translate(
        {c: f"\\x{c:02x}" for c in range(32)} | {127: "\\x7f"})


_stamps = [0, ""]


def _stamp(now: float) -> str:
    """``now`` as ISO 8601 UTC with milliseconds (the seconds part formatted once per
    second)."""
    second = int(now)
    if _stamps[0] != second:
        _stamps[0] = second
        _stamps[1] = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
    return f"{_stamps[1]}.{int((now - second) * 1000):03d}Z"


class AccessLog:
    """Formats and writes access lines (created by :class:`..telemetry.Telemetry`)."""

    def __init__(self, fmt: str = "text", enabled: bool = True) -> None:
        self.json = fmt == "json"
        self.enabled = enabled
        self.logger = logging.getLogger(ACCESS_LOGGER)

    def write(self, *, method: str, path: str, status: int, duration: float, nbytes: int,
              key_id: str = "", model: str = "", request_id: str = "",
              when: float | None = None) -> None:
        """Write one line. ``duration`` in seconds; ``path`` may carry a query string
        (it is dropped). Never raises."""
        if not self.enabled:
            return
        logger = self.logger
        level = logging.INFO if status < 400 else logging.WARNING if status < 500 \
            else logging.ERROR
        if not logger.isEnabledFor(level):
            return
        try:
            path = _clean(path, _MAX_PATH)
            method = _clean(method, 16)
            model = _clean(model, 200)
            stamp = _stamp(when or time.time())
            if self.json:
                line = orjson.dumps({"time": stamp, "method": method, "path": path,
                                     "status": status, "duration_ms": round(duration * 1000, 3),
                                     "bytes": nbytes, "key_id": key_id, "model": model,
                                     "request_id": request_id}).decode()
                logger.log(level, "%s", line)
            else:
                logger.log(level, "%s %s %s %d %.2fms %dB key=%s model=%s request_id=%s",
                           stamp, method, path, status, duration * 1000, nbytes, key_id or "-",
                           model or "-", request_id or "-")
        except Exception:  # emitting a line cannot fail the request
            pass
