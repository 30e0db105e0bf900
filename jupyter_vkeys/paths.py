"""Where a gateway keeps its files when nobody says otherwise.

Called by :class:`jupyter_vkeys.gateway.core.VKeysGateway` (the ``data_dir`` trait's
default) and by the warehouse readers (``readers.connect()`` with no path), so the
notebooks find the same directory the gateway writes.
"""

from __future__ import annotations

import os


def default_data_dir() -> str:
    """``$VKEYS_DATA_DIR`` if set, else ``<jupyter data dir>/vkeys``: where keys, the
    pepper and the warehouse live."""
    from jupyter_core.paths import jupyter_data_dir

    return os.environ.get("VKEYS_DATA_DIR") or os.path.join(jupyter_data_dir(), "vkeys")
