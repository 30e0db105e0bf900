"""Upstream providers: configuration and credentials, the model catalog, the fake model.

``config`` says which providers exist and where their real credentials live;
``catalog`` maps model names to providers; ``fake`` is the deterministic offline
model, which implements the upstream seam (:class:`jupyter_vkeys.http.upstream.Transport`)
in process; ``scrub`` removes provider secrets from what is relayed and recorded.
The HTTP clients that reach real providers are in :mod:`jupyter_vkeys.http`.
"""

from .catalog import Catalog, ModelEntry
from .config import ProviderConfig, load_providers

__all__ = ["Catalog", "ModelEntry", "ProviderConfig", "load_providers"]
