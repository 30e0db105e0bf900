"""Errors in the client's own dialect.

Every refusal the gateway makes is an :class:`ApiError`; the data plane renders
it in the route's dialect (``Dialect.error_body``: OpenAI's ``{"error": {...}}``,
Anthropic's ``{"type": "error", "error": {...}}``), so each SDK raises its usual
exception class with our message.
"""

from __future__ import annotations

import orjson

from ..dialects import ANTHROPIC, DIALECTS, OPENAI


class ApiError(Exception):
    """A refusal or failure to report to the client.

    ``status`` is the HTTP status, ``kind`` one of the kinds every dialect maps to its
    own error type (``auth``, ``permission``, ``invalid_request``, ``not_found``,
    ``too_large``, ``rate_limit``, ``budget``, ``upstream``, ``timeout``,
    ``unavailable``, ``internal``; see ``Dialect.error_types``),
    ``code`` overrides the OpenAI code, ``event_status`` is what the warehouse
    records (``refused_key``, ``refused_model``...), ``retry_after`` the wait
    a rate refusal tells the client (also in its headers).
    """

    def __init__(self, status: int, kind: str, message: str, *, code: str | None = None,
                 param: str | None = None, headers: dict[str, str] | None = None,
                 event_status: str = "error", openai_type: str | None = None,
                 retry_after: float | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.kind = kind
        self.message = message
        self.code = code
        self.param = param
        self.headers = headers or {}
        self.event_status = event_status
        self.openai_type = openai_type
        self.retry_after = retry_after  # seconds the client is told to wait, if any

    def body(self, dialect: str, request_id: str = "") -> bytes:
        """The JSON body in ``dialect`` (``openai`` or ``anthropic``)."""
        return DIALECTS[dialect].error_body(self.kind, self.message, code=self.code,
                                            param=self.param, type_=self.openai_type,
                                            request_id=request_id)


def neutral_body(error: ApiError) -> bytes:
    """``error`` as a body both SDKs read, for refusals made before the request's route
    (and so its dialect) is known: the lean front's connection cap. Anthropic's
    ``{"type": "error", "error": {"type", "message"}}`` with OpenAI's ``code`` and
    ``param`` beside them in ``error``."""
    kind = error.kind if error.kind in OPENAI.error_codes else "internal"
    return orjson.dumps({"type": "error", "error": {
        "type": ANTHROPIC.error_types[kind], "message": error.message,
        "code": error.code or OPENAI.error_codes[kind], "param": error.param}})
