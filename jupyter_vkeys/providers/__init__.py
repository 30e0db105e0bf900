"""Upstream providers: configuration and credentials, the model catalog, transports.

``config`` says which providers exist and where their real credentials live;
``catalog`` maps model names to providers; ``transport`` is the one-method
seam through which the gateway reaches an upstream (pooled HTTP, or the
in-process fake); ``fake`` is the deterministic offline model.
"""

from .catalog import Catalog, ModelEntry
from .config import ProviderConfig, load_providers
from .transport import HttpTransport, Transport, UpstreamRequest, UpstreamResponse

__all__ = ["Catalog", "HttpTransport", "ModelEntry", "ProviderConfig", "Transport",
           "UpstreamRequest", "UpstreamResponse", "load_providers"]
