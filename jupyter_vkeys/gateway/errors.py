"""Errors in the client's own dialect.

Every refusal the gateway makes is an :class:`ApiError`; the data plane renders
it as OpenAI's ``{"error": {...}}`` on OpenAI routes and as Anthropic's
``{"type": "error", "error": {...}}`` on Anthropic routes, so each SDK raises
its usual exception class with our message.
"""

from __future__ import annotations

from typing import Any

import orjson

# kind -> (OpenAI type, OpenAI code, Anthropic type)
_DIALECT = {
    "auth": ("invalid_request_error", "invalid_api_key", "authentication_error"),
    "permission": ("permission_error", "model_not_allowed", "permission_error"),
    "invalid_request": ("invalid_request_error", None, "invalid_request_error"),
    "not_found": ("invalid_request_error", "model_not_found", "not_found_error"),
    "too_large": ("invalid_request_error", "request_too_large", "request_too_large"),
    "rate_limit": ("requests", "rate_limit_exceeded", "rate_limit_error"),
    "budget": ("insufficient_quota", "budget_exceeded", "billing_error"),
    "upstream": ("upstream_error", "bad_gateway", "api_error"),
    "timeout": ("timeout_error", "gateway_timeout", "timeout_error"),
    "unavailable": ("service_unavailable", "provider_unavailable", "overloaded_error"),
    "internal": ("server_error", "internal_error", "api_error"),
}


class ApiError(Exception):
    """A refusal or failure to report to the client.

    ``status`` is the HTTP status, ``kind`` a key of the dialect table,
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
        oa_type, oa_code, an_type = _DIALECT.get(self.kind, _DIALECT["internal"])
        if dialect == "anthropic":
            payload: dict[str, Any] = {"type": "error",
                                       "error": {"type": an_type, "message": self.message}}
            if request_id:
                payload["request_id"] = request_id
        else:
            payload = {"error": {"message": self.message, "type": self.openai_type or oa_type,
                                 "code": self.code or oa_code, "param": self.param}}
        return orjson.dumps(payload)


def neutral_body(error: ApiError) -> bytes:
    """``error`` as a body both SDKs read, for refusals made before the request's route
    (and so its dialect) is known: the lean front's connection cap. Anthropic's
    ``{"type": "error", "error": {"type", "message"}}`` with OpenAI's ``code`` and
    ``param`` beside them in ``error``."""
    oa_type, oa_code, an_type = _DIALECT.get(error.kind, _DIALECT["internal"])
    return orjson.dumps({"type": "error", "error": {
        "type": an_type, "message": error.message, "code": error.code or oa_code,
        "param": error.param}})
