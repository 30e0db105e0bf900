"""What every wire dialect answers: its operations, its credentials, its errors, its
``/models`` shape and its meter.

A :class:`Dialect` is one provider API as clients and upstreams speak it (OpenAI's,
Anthropic's). The gateway never branches on a dialect's name: the call path
(:mod:`jupyter_vkeys.gateway.proxy`), the tornado handlers, the routes and the fake
model ask the dialect object. Each concrete dialect lives in a module of its own
(:mod:`.openai`, :mod:`.anthropic`); the SSE plumbing their meters share is in
:mod:`.sse`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from .sse import Meter


@dataclass(frozen=True)
class Operation:
    """One LLM operation a dialect serves.

    ``route`` is its path under ``<prefix>/<dialect>/v1/``; ``upstream_path`` is
    appended to the provider's base URL; ``max_fields`` are the request fields that cap
    output tokens (the first present counts, none: no output); ``clamp_field`` is the
    field the gateway writes when it clamps a request without a cap; ``choices`` says
    whether ``n`` asks for several answers; ``stream_usage_option`` whether a stream
    reports usage only when ``stream_options.include_usage`` asks for it.
    """

    name: str
    dialect: str
    route: str
    upstream_path: str
    max_fields: tuple[str, ...] = ()
    clamp_field: str | None = None
    choices: bool = False
    stream_usage_option: bool = False


class Dialect:
    """One wire dialect. Subclasses fill in the tables and the few methods that differ.

    Instances are module-level singletons (:data:`..openai.OPENAI`,
    :data:`..anthropic.ANTHROPIC`), looked up by name through
    :data:`jupyter_vkeys.dialects.DIALECTS`.
    """

    name: str = ""
    operations: tuple[Operation, ...] = ()
    # Markers of a stream's last event (the relay holds it back until the call is journaled).
    stream_ends: tuple[bytes, ...] = ()
    # Response headers of the provider account's own state, never relayed to clients.
    private_header_prefixes: tuple[str, ...] = ()
    # Headers the upstream requires, added when the client sent none.
    required_headers: Mapping[str, str] = {}
    # The header carrying the provider credential (the upstream side).
    credential_header: str = "authorization"
    # error kind (see jupyter_vkeys.gateway.errors) -> the dialect's error type
    error_types: Mapping[str, str] = {}

    def credential(self, authorization: str | None, api_key: str | None) -> str | None:
        """The key a client sent: ``Authorization: Bearer`` in every dialect. Called with
        the two request headers by every data-plane route."""
        if authorization and authorization[:7].lower() == "bearer ":
            return authorization[7:].strip()
        return None

    def error_body(self, kind: str, message: str, *, code: str | None = None,
                   param: str | None = None, type_: str | None = None,
                   request_id: str = "") -> bytes:
        """A refusal's JSON body, as the dialect's SDK reads it (it raises its usual
        exception class with ``message``). Called by ``ApiError.body`` and the fake."""
        raise NotImplementedError

    def model_object(self, name: str, provider: str) -> dict[str, Any]:
        """One model as the dialect's ``/models`` answers describe it."""
        raise NotImplementedError

    def models_page(self, objects: list[dict[str, Any]]) -> dict[str, Any]:
        """The ``GET /v1/models`` answer around ``objects``."""
        raise NotImplementedError

    def meter(self, operation: str, strip_usage: bool = False) -> Meter:
        """A fresh meter for one call's answer, streamed or whole (see :mod:`.sse`);
        ``strip_usage``: drop the usage event the gateway asked for on the client's behalf."""
        raise NotImplementedError

    def ask_stream_usage(self, operation: Operation, body: dict[str, Any]) -> bool:
        """Make a streamed request report its usage, if the dialect needs to be asked:
        True when ``body`` was changed (the meter then strips the extra usage event the
        client did not ask for). Called by the call path on streamed requests only."""
        return False

    @property
    def served(self) -> str:
        """The routes this dialect serves, for a 404's text."""
        names = [op.route for op in self.operations]
        return ", ".join(names) + " and models"
