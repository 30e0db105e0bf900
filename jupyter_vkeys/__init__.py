"""jupyter-vkeys: a Jupyter-native LLM gateway with virtual keys, budgets and a warehouse.

Public surface: :class:`VKeysGateway` (configure and start a gateway) and
:func:`make_app` (a standalone tornado application around it).
"""

from ._version import __version__

__all__ = ["__version__"]
