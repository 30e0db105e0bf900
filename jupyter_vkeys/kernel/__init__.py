"""Inside a kernel: who am I to the gateway, and how much may I still spend?

The kernel provisioner put ``VKEYS_URL`` and the kernel's own virtual key
(``OPENAI_API_KEY``) in the environment; :func:`me` asks the gateway's
``/api/me`` with them and returns a :class:`~.report.UsageReport`, which renders
itself as rich HTML in JupyterLab (spend against each cap as a bar, when each
window resets) and as plain text elsewhere. ``%load_ext jupyter_vkeys`` registers
the ``%vkeys`` magic, which shows the same report (or one line saying why it
cannot: no key, gateway down, key revoked or expired, and what to do).
"""

from __future__ import annotations

from typing import Any

from .client import VKeysError, request_me
from .report import UsageReport

__all__ = ["UsageReport", "VKeysError", "me", "register_magic"]


def me(show: bool | None = None) -> UsageReport:
    """This kernel's key, limits and spend. Called by :func:`jupyter_vkeys.me` and
    ``%vkeys``. The report renders itself when it is a cell's value; ``show=True``
    displays it at once (in IPython, else prints it), ``False`` or ``None`` do not."""
    report = UsageReport(request_me())
    if show:
        _display(report)
    return report


def _display(report: UsageReport) -> None:
    try:
        from IPython import get_ipython
        from IPython.display import display
    except ImportError:
        print(repr(report))
        return
    if get_ipython() is None:
        print(repr(report))
    else:
        display(report)


def register_magic(ipython: Any) -> None:
    """Register the ``%vkeys`` line magic on an IPython shell (``%load_ext``)."""
    def vkeys(line: str = "") -> None:
        """%vkeys: this kernel's virtual key, limits, spend and when each window resets."""
        try:
            _display(me())
        except VKeysError as exc:
            print(f"jupyter-vkeys: {exc}")
    ipython.register_magic_function(vkeys, "line", "vkeys")
