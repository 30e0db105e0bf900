# jupyter-vkeys as a JupyterHub service: the part of jupyterhub_config.py it needs.
# (tests/hub/ runs a real JupyterHub with exactly this file; the README quotes it.)
import os
import sys

# The service: the gateway in its own process, on loopback. It alone holds the real
# provider keys (key files readable by its OS user only, named in VKEYS_CONFIG).
VKEYS_PORT = int(os.environ.get("VKEYS_SERVICE_PORT", "10101"))
VKEYS_URL = f"http://127.0.0.1:{VKEYS_PORT}"
VKEYS_CONFIG = os.environ.get("VKEYS_SERVICE_CONFIG", "/etc/jupyter-vkeys/config.py")
VKEYS_DATA_DIR = os.environ.get("VKEYS_SERVICE_DATA_DIR", "/var/lib/jupyter-vkeys")

c.JupyterHub.services = [
    {
        "name": "vkeys",
        "url": VKEYS_URL,
        "command": [os.path.join(os.path.dirname(sys.executable), "jupyter-vkeys"),
                    "hub-service", "--config", VKEYS_CONFIG, "--data-dir", VKEYS_DATA_DIR],
        # "user": "vkeys",  # run it as its own OS user (the Hub must run as root)
        "oauth_client_allowed_scopes": ["custom:vkeys:use", "custom:vkeys:admin"],
        "oauth_no_confirm": True,
    },
]

# Who may do what: every user may use it for themselves; the llm-admins group
# administers everyone ("custom:vkeys:admin!group=<g>" administers one group).
c.JupyterHub.custom_scopes = {
    "custom:vkeys:use": {"description": "Use jupyter-vkeys: keys for your own kernels, "
                                        "your own caps and spend."},
    "custom:vkeys:admin": {"description": "Administer jupyter-vkeys: keys, caps, model "
                                          "allowlists and the audit trail."},
}
c.JupyterHub.load_roles = [
    # "self" is JupyterHub's default; access:services lets browsers log in to the service
    {"name": "user",
     "scopes": ["self", "custom:vkeys:use!user", "access:services!service=vkeys"]},
    {"name": "llm-admins", "groups": ["llm-admins"], "scopes": ["custom:vkeys:admin"]},
    # the service asks the Hub whether a server still runs before revoking its keys
    {"name": "vkeys-service", "services": ["vkeys"],
     "scopes": ["read:users:name", "read:users:groups", "read:servers"]},
]

# Single-user servers: their Hub token may use the service for their own user (and
# administer it, for users whose roles hold the admin scope; others do not get it).
# Every kernel inherits this token: grant nothing here a user may not do themselves.
c.Spawner.server_token_scopes = [
    "users:activity!user", "access:servers!server",  # JupyterHub's default server role
    "custom:vkeys:use!user", "custom:vkeys:admin",
]
c.Spawner.environment = {"VKEYS_HUB_SERVICE_URL": f"{VKEYS_URL}/services/vkeys"}
