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
import os
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
    """Formats and writes access lines (created by :class:`..telemetry.Telemetry`).

    ``path`` empty: each line is one record of the ``jupyter_vkeys.access`` logger
    (convenient; the logging module costs some microseconds per record). ``"-"`` or a
    file path: lines bypass logging and go to stdout or that file (appended), written
    with one ``write`` per batch of calls (:meth:`flush`, called by the telemetry once
    per loop iteration): the cheap choice for a busy gateway."""

    def __init__(self, fmt: str = "text", enabled: bool = True, path: str = "") -> None:
        self.json = fmt == "json"
        self.enabled = enabled
        self.logger = logging.getLogger(ACCESS_LOGGER)
        self.fd: int | None = None
        self._lines: list[str] = []
        if enabled and path:
            self.fd = 1 if path == "-" else os.open(
                path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)

    def write(self, *, method: str, path: str, status: int, duration: float, nbytes: int,
              key_id: str = "", model: str = "", request_id: str = "",
              when: float | None = None) -> None:
        """Write one line (to a file: at the next :meth:`flush`). ``duration`` in seconds;
        ``path`` may carry a query string (it is dropped). Never raises."""
        if not self.enabled:
            return
        level = logging.INFO if status < 400 else logging.WARNING if status < 500 \
            else logging.ERROR
        direct = self.fd is not None
        if not direct and not self.logger.isEnabledFor(level):
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
            else:
                line = (f"{stamp} {method} {path} {status} {duration * 1000:.2f}ms {nbytes}B "
                        f"key={key_id or '-'} model={model or '-'} "
                        f"request_id={request_id or '-'}")
            if direct:
                self._lines.append(line)
            else:
                self.logger.log(level, "%s", line)
        except Exception:  # emitting a line cannot fail the request
            pass

    def flush(self) -> None:
        """Write the lines gathered for a file (one ``write``); never raises."""
        if not self._lines:
            return
        data = ("\n".join(self._lines) + "\n").encode()
        self._lines = []
        try:
            os.write(self.fd, data)
        except OSError:
            pass

    def close(self) -> None:
        """Flush and close the file (gateway shutdown)."""
        self.flush()
        if self.fd is not None and self.fd > 2:
            os.close(self.fd)
        self.fd = None
