"""The tornado routes of one gateway, and a standalone application around them.

:func:`gateway_handlers` is what both hosts mount: the standalone server via
:func:`make_app`, the Jupyter server extension under its ``base_url``.
"""

from __future__ import annotations

from typing import Callable

import tornado.web

from .admin import TokenAdminAuth, admin_handlers
from .core import VKeysGateway
from .dataplane import ModelsHandler, ProxyHandler

OPENAI_OPERATIONS = {"chat/completions": "chat.completions", "completions": "completions",
                     "embeddings": "embeddings", "responses": "responses"}
ANTHROPIC_OPERATIONS = {"messages": "messages", "messages/count_tokens": "messages.count_tokens"}


def gateway_handlers(gateway: VKeysGateway, *, base_url: str = "",
                     admin_auth: type = TokenAdminAuth,
                     admin_decorate: Callable[[Callable], Callable] | None = None) -> list[tuple]:
    """All data-plane and admin routes under ``base_url + gateway.prefix``."""
    prefix = base_url.rstrip("/") + "/" + gateway.prefix.strip("/")
    routes: list[tuple] = []
    for path, operation in OPENAI_OPERATIONS.items():
        routes.append((f"{prefix}/openai/v1/{path}", ProxyHandler,
                       {"gateway": gateway, "operation": operation, "dialect": "openai"}))
    for path, operation in ANTHROPIC_OPERATIONS.items():
        routes.append((f"{prefix}/anthropic/v1/{path}", ProxyHandler,
                       {"gateway": gateway, "operation": operation, "dialect": "anthropic"}))
    routes.append((f"{prefix}/openai/v1/models", ModelsHandler,
                   {"gateway": gateway, "dialect": "openai"}))
    routes.append((f"{prefix}/anthropic/v1/models", ModelsHandler,
                   {"gateway": gateway, "dialect": "anthropic"}))
    routes += admin_handlers(prefix, gateway, admin_auth, admin_decorate)
    return routes


def make_app(gateway: VKeysGateway) -> tornado.web.Application:
    """A standalone tornado application serving one started gateway."""
    return tornado.web.Application(gateway_handlers(gateway), compress_response=False)
