"""Shared fixtures: a gateway on a real port, a fake upstream on a real port.

The gateway runs in a background thread with its own asyncio loop, so tests
can drive it with the official synchronous and asynchronous SDKs over real
sockets, while still reaching into it (an injectable clock, the registry).
The fake upstream is the project's own fake provider served over HTTP in a
separate process, reached through the real provider adapters.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from traitlets.config import Config

from support import (REAL_ANTHROPIC_KEY, REAL_OPENAI_KEY, Clock, FakeUpstream, RunningGateway,
                     build_relay_gateway)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def make_gateway(tmp_path: Path, clock: Clock):
    """Factory: ``make_gateway(**traits)`` starts a gateway with ``c.VKeysGateway`` traits
    (``front=`` picks the HTTP front, see :class:`RunningGateway`)."""
    started: list[RunningGateway] = []

    def factory(front: str = "lean", **traits: Any) -> RunningGateway:
        config = Config()
        config.VKeysGateway.data_dir = str(tmp_path / f"data{len(started)}")
        for name, value in traits.items():
            setattr(config.VKeysGateway, name, value)
        running = RunningGateway(config, clock, front)
        started.append(running)
        return running

    yield factory
    for running in started:
        running.stop()


@pytest.fixture
def gateway(make_gateway) -> RunningGateway:
    """A gateway answering from the in-process fake provider."""
    return make_gateway(fake_mode="always")


@pytest.fixture(scope="session")
def fake_upstream():
    """One fake provider process that demands the real (test) keys, like a provider."""
    upstreams = {"openai": FakeUpstream(REAL_OPENAI_KEY),
                 "anthropic": FakeUpstream(REAL_ANTHROPIC_KEY)}
    yield upstreams
    for upstream in upstreams.values():
        upstream.stop()


@pytest.fixture(params=["lean", "aiohttp"])
def relay_gateway(request, make_gateway, fake_upstream, monkeypatch, tmp_path):
    """The relay gateway, once per upstream HTTP client: the lean client behind the lean
    front (the standalone server), aiohttp's behind tornado's front (as in Jupyter)."""
    front = "lean" if request.param == "lean" else "tornado"
    return build_relay_gateway(make_gateway, fake_upstream, monkeypatch, tmp_path,
                               request.param, front)


@pytest.fixture(autouse=True)
def _no_real_provider_env(monkeypatch):
    """Tests never use real provider keys from the developer's environment."""
    for name in ("OPENAI_API_KEY", "ANTHROPIC_API_KEY", "OPENAI_BASE_URL", "ANTHROPIC_BASE_URL",
                 "VKEYS_ADMIN_TOKEN", "VKEYS_PEPPER", "VKEYS_DATA_DIR"):
        monkeypatch.delenv(name, raising=False)
    os.environ.setdefault("NO_PROXY", "127.0.0.1,localhost")
