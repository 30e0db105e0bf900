"""The gateway: tornado handlers for the data plane and the admin API, and the app factory."""

from .app import gateway_handlers, make_app
from .core import VKeysGateway

__all__ = ["VKeysGateway", "gateway_handlers", "make_app"]
