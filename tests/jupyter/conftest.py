"""pytest-jupyter fixtures for the extension tests only (a real Jupyter server, real kernels).

The fixtures are imported here rather than enabled as a plugin for the whole suite,
because pytest-jupyter's autouse cleanup expects a ServerApp in every test.
"""

from __future__ import annotations

import pytest
from jupyter_server.auth.identity import IdentityProvider, User
from traitlets.config import Config

from pytest_jupyter.jupyter_server import *  # noqa: F401,F403

REAL_KEY = "sk-real-server-env-SECRET-42"


class FixedUserIdentity(IdentityProvider):
    """Token auth as usual, but every token-holder is the user "alice" (this server
    version otherwise invents a new name per token-authenticated request)."""

    async def get_user(self, handler):
        user = await super().get_user(handler)
        return User("alice", name="Alice") if user is not None else None


@pytest.fixture
def jp_server_config(tmp_path):
    return Config({
        "ServerApp": {"jpserver_extensions": {"jupyter_vkeys": True},
                      "identity_provider_class": FixedUserIdentity},
        "KernelProvisionerFactory": {"default_provisioner_name": "vkeys-provisioner"},
        "VKeysGateway": {"data_dir": str(tmp_path / "vkeys-data"), "fake_mode": "always"},
        "VKeysApp": {"projects": {"projects/churn": "churn"},
                     "default_policy": {"budgets": [{"usd": 5, "period": "month"}]}},
    })


@pytest.fixture
def vkeys_server(jp_serverapp, jp_fetch, jp_asyncio_loop, monkeypatch):
    """A started Jupyter server with the extension's async start hook run."""
    jp_asyncio_loop.run_until_complete(jp_serverapp._post_start())
    ext = jp_serverapp.extension_manager.extension_apps["jupyter_vkeys"]
    return next(iter(ext))
