"""jupyter-vkeys as a JupyterHub service: the gateway in its own process (ideally its own
OS user), Hub identities and custom scopes, Hub groups as teams.

- :mod:`.scopes`: what a caller may do, from the scopes on their Hub token (pure);
- :mod:`.auth`: the Hub authentication base class of the service's handlers;
- :mod:`.issuer`: personal and per-kernel keys of Hub users;
- :mod:`.handlers`: ``{prefix}/api/hub/*`` for single-user servers and kernels;
- :mod:`.reaper`: revokes the kernel keys of servers the Hub no longer runs;
- :mod:`.service`: ``jupyter vkeys hub-service``.

The single-user side (a client of this service) is
:mod:`jupyter_vkeys.server_extension.hub_broker`.
"""
