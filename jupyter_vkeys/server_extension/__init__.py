"""jupyter-vkeys as a Jupyter server extension (see :mod:`.app`)."""

from .app import VKeysApp

__all__ = ["VKeysApp"]
