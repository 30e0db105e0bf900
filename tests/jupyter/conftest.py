"""pytest-jupyter fixtures for the extension tests (a real Jupyter server, real kernels).

The server runs with the package's shipped configuration only: the
``jupyter_server_config.d`` file the wheel installs (read from the repository, because
pytest-jupyter hides installed config), plus what any user passes on a command line
(root dir, token: pytest-jupyter's own) and the gateway's data dir and fake mode. No
provisioner and no identity provider are configured here: the extension must apply
its own, as it does for an installed package. ``tests/jupyter/test_as_installed.py``
starts real ``jupyter`` subprocesses instead.

The fixtures are imported here rather than enabled as a plugin for the whole suite,
because pytest-jupyter's autouse cleanup expects a ServerApp in every test.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from traitlets.config import Config

from pytest_jupyter.jupyter_server import *  # noqa: F401,F403

SHIPPED = (Path(__file__).resolve().parents[2] / "jupyter-config" / "jupyter_server_config.d"
           / "jupyter_vkeys.json")


def shipped_config() -> Config:
    """The configuration the wheel installs, exactly."""
    return Config(json.loads(SHIPPED.read_text()))


@pytest.fixture
def jp_server_config(tmp_path):
    config = shipped_config()
    config.VKeysGateway.data_dir = str(tmp_path / "vkeys-data")
    config.VKeysGateway.fake_mode = "always"
    return config


@pytest.fixture
def vkeys_server(jp_serverapp, jp_fetch, jp_asyncio_loop):
    """A started Jupyter server with the extension's async start hook run (pytest-jupyter's
    cleanup runs its stop hook, which puts back what the extension changed in-process)."""
    jp_asyncio_loop.run_until_complete(jp_serverapp._post_start())
    return next(iter(jp_serverapp.extension_manager.extension_apps["jupyter_vkeys"]))
