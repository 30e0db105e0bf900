"""Where a notebook's widgets find the admin API, and the credential they send to it.

:func:`notebook_credentials` is the one place that decides; the controllers call it
when no ``url``/``token`` was given (and take another function in its stead:
``AdminController(credentials=my_lookup)``). The contract with the server side:

- the kernel's environment holds ``VKEYS_API_URL``, the admin API base of the server
  that started the kernel (``http://127.0.0.1:PORT/BASE/vkeys/api``; put there by
  :meth:`~jupyter_vkeys.server_extension.kernel_keys.KernelKeyBroker.launch_env`, or
  under JupyterHub pointing at the Hub service);
- under JupyterHub the credential is the user's own ``JUPYTERHUB_API_TOKEN``;
- in a personal server it is that server's own token, read from its runtime file as
  ``jupyter server list`` reads it (``list_running_servers()``), matched by port and
  base URL. The runtime file is readable by the server's user only, who is the
  kernel's user.

Both are sent as ``Authorization: token <value>``, so every authorization decision
stays with the server.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

__all__ = ["Credentials", "CredentialsError", "notebook_credentials", "server_token"]


class CredentialsError(RuntimeError):
    """No admin API or credential could be found; the message says what to do."""


@dataclass(frozen=True)
class Credentials:
    """An admin API base URL (``.../vkeys/api``) and the token to send to it."""

    api_url: str
    token: str
    source: str = ""  # where the token came from, for messages ("jupyterhub", "server")

    def __repr__(self) -> str:  # never print a token
        return f"Credentials(api_url={self.api_url!r}, token=..., source={self.source!r})"


def notebook_credentials(env: Mapping[str, str] | None = None) -> Credentials:
    """The credentials of the notebook this runs in. Called by the controllers when they
    were given no ``url``/``token``; raises :class:`CredentialsError` saying what is
    missing and how to pass it explicitly."""
    env = os.environ if env is None else env
    url = (env.get("VKEYS_API_URL") or "").rstrip("/")
    if not url:
        raise CredentialsError(
            "this kernel has no VKEYS_API_URL (the jupyter_vkeys server extension sets it in "
            "the kernels it starts): start the notebook from a Jupyter server with the "
            "extension enabled, or pass url= and token= explicitly")
    hub_token = env.get("JUPYTERHUB_API_TOKEN") or ""
    if hub_token:
        return Credentials(url, hub_token, "jupyterhub")
    return Credentials(url, server_token(url), "server")


def server_token(api_url: str, servers: Iterable[Mapping] | None = None) -> str:
    """The token of the running Jupyter server whose port and base URL serve ``api_url``.
    ``servers`` defaults to ``jupyter_server.serverapp.list_running_servers()``."""
    if servers is None:
        from jupyter_server.serverapp import list_running_servers
        servers = list_running_servers()
    wanted = urlsplit(api_url)
    for info in servers:
        base_url = str(info.get("base_url") or "/")
        if int(info.get("port") or 0) == wanted.port and wanted.path.startswith(base_url):
            token = str(info.get("token") or "")
            if not token:
                raise CredentialsError(
                    f"the Jupyter server on port {wanted.port} has no token (password login "
                    "only?): pass token= explicitly")
            return token
    raise CredentialsError(
        f"no running Jupyter server answers {api_url} (looked at `jupyter server list` of "
        "this user): pass url= and token= explicitly")
