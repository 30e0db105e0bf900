"""One owner of a data directory (issue 11, item 11): the exclusive lock, the published
address (``gateway.json``), and the CLI going through the running gateway's API, or
working locally (holding the lock) only when none runs, with the same output both ways.

Real processes: ``jupyter vkeys serve`` and the ``jupyter-vkeys`` CLI as subprocesses.
"""

from __future__ import annotations

import asyncio
import json
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import openai
import pytest
from traitlets.config import Config

from jupyter_vkeys.gateway.core import VKeysGateway
from jupyter_vkeys.runtime import DataDirBusy, running_gateway
from support import ServeProcess, free_port


def cli(data_dir: Path, *args: str, env: dict[str, str] | None = None,
        check: bool = True) -> subprocess.CompletedProcess:
    """Run ``jupyter-vkeys <args> --data-dir <data_dir>`` in its own process."""
    full_env = {**os.environ, **(env or {})}
    result = subprocess.run([sys.executable, "-m", "jupyter_vkeys.cli", *args,
                             "--data-dir", str(data_dir)], capture_output=True, text=True,
                            env=full_env, timeout=60)
    if check:
        assert result.returncode == 0, result.stderr + result.stdout
    return result


def cli_json(data_dir: Path, *args: str, env: dict[str, str] | None = None) -> dict:
    return json.loads(cli(data_dir, *args, "--json", env=env).stdout)


TOKEN_ENV = {"VKEYS_ADMIN_TOKEN": "test-admin-token-0123456789"}


def started(data_dir: Path) -> VKeysGateway:
    config = Config()
    config.VKeysGateway.data_dir = str(data_dir)
    config.VKeysGateway.fake_mode = "always"
    gateway = VKeysGateway(config=config)
    asyncio.run(gateway.start())
    return gateway


def test_second_gateway_on_a_data_dir_is_refused_until_the_first_stops(tmp_path):
    first = started(tmp_path / "data")
    try:
        with pytest.raises(DataDirBusy) as busy:
            started(tmp_path / "data")
        assert str(os.getpid()) in str(busy.value) and "data" in str(busy.value)
        first.publish("http://127.0.0.1:1/vkeys")
        with pytest.raises(DataDirBusy) as busy:
            started(tmp_path / "data")
        assert "http://127.0.0.1:1/vkeys" in str(busy.value)
        info = running_gateway(tmp_path / "data")
        assert info["pid"] == os.getpid() and info["url"] == "http://127.0.0.1:1/vkeys"
    finally:
        asyncio.run(first.stop())
    assert not (tmp_path / "data" / "gateway.json").exists()
    asyncio.run(started(tmp_path / "data").stop())  # free again


def test_serve_publishes_its_address_and_a_second_serve_is_refused(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    server = ServeProcess(data, config={"fake_mode": "always"})
    try:
        published = data / "gateway.json"
        info = json.loads(published.read_text())
        assert info["pid"] == server.proc.pid and info["url"] == server.url
        assert info["kind"] == "standalone" and info["started_at"] <= time.time()
        assert stat.S_IMODE(published.stat().st_mode) == 0o600
        assert "token" not in json.dumps(info).lower()
        second = subprocess.run(
            [sys.executable, "-m", "jupyter_vkeys.cli", "serve", "--data-dir", str(data),
             "--port", str(free_port()), "--fake"], capture_output=True, text=True,
            timeout=60, env={**os.environ, **TOKEN_ENV})
        assert second.returncode != 0
        message = second.stderr + second.stdout
        assert str(server.proc.pid) in message and server.url in message, message
        assert "Traceback" not in message
        assert json.loads(published.read_text()) == info  # the holder's file is untouched
    finally:
        server.stop()
    assert not published.exists()  # removed at stop


def test_cli_goes_through_the_running_gateway(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    server = ServeProcess(data, config={"fake_mode": "always"})
    try:
        created = cli_json(data, "keys", "create", "--owner", "carol", "--rpm", "5",
                           env=TOKEN_ENV)
        client = openai.OpenAI(api_key=created["key"], base_url=server.url + "/openai/v1",
                               max_retries=0)
        client.chat.completions.create(model="gpt-4o-mini", max_tokens=5,
                                       messages=[{"role": "user", "content": "hi"}])
        cli(data, "keys", "revoke", created["id"], env=TOKEN_ENV)
        with pytest.raises(openai.AuthenticationError):  # at once: the live registry changed
            client.chat.completions.create(model="gpt-4o-mini", max_tokens=5,
                                           messages=[{"role": "user", "content": "hi"}])
        audit = server.admin("GET", "/audit")[1]["audit"]
        assert [row["action"] for row in audit] == ["key.create", "key.revoke"]
        refused = cli(data, "keys", "create", "--owner", "bad owner", env=TOKEN_ENV,
                      check=False)
        assert refused.returncode != 0 and "owner must be a name" in refused.stderr
        assert len(server.admin("GET", "/keys")[1]["keys"]) == 1
    finally:
        server.stop()


def test_cli_finds_the_admin_token_in_the_data_dir(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    server = ServeProcess(data, config={"fake_mode": "always"}, env={"VKEYS_ADMIN_TOKEN": ""})
    try:
        server.admin_token = (data / "admin_token").read_text().strip()
        created = cli_json(data, "keys", "create", "--owner", "dan",
                           env={"VKEYS_ADMIN_TOKEN": ""})
        assert server.admin("GET", f"/keys/{created['id']}")[0] == 200
    finally:
        server.stop()


def test_local_and_remote_output_are_the_same(tmp_path):
    data = tmp_path / "data"
    created = cli_json(data, "keys", "create", "--owner", "erin", "--team", "ml",
                       "--budget", "5/month@0.8", env=TOKEN_ENV)
    assert not (data / "gateway.json").exists()
    local = {"policy": json.loads(cli(data, "policy", "set", "team:ml", "--rpm", "9",
                                      env=TOKEN_ENV).stdout),
             "show": cli_json(data, "keys", "show", created["id"], env=TOKEN_ENV),
             "list": cli_json(data, "keys", "list", env=TOKEN_ENV)}
    server = ServeProcess(data, config={"fake_mode": "always"})
    try:
        remote = {"policy": json.loads(cli(data, "policy", "set", "team:ml", "--rpm", "9",
                                           env=TOKEN_ENV).stdout),
                  "show": cli_json(data, "keys", "show", created["id"], env=TOKEN_ENV),
                  "list": cli_json(data, "keys", "list", env=TOKEN_ENV)}
        assert remote == local
        assert server.admin("GET", f"/keys/{created['id']}")[1] == local["show"]
    finally:
        server.stop()


def test_stale_published_addresses_are_ignored(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    server = ServeProcess(data, config={"fake_mode": "always"})
    url = server.url
    server.kill()  # SIGKILL: gateway.json stays behind, the kernel drops the lock
    server.stop()
    assert json.loads((data / "gateway.json").read_text())["url"] == url
    assert running_gateway(data) is None
    created = cli_json(data, "keys", "create", "--owner", "fay", env=TOKEN_ENV)  # local
    assert created["owner"] == "fay"
    # A file naming a live process that does not hold the lock is stale too.
    (data / "gateway.json").write_text(json.dumps({"pid": os.getpid(), "url": url,
                                                   "kind": "standalone"}))
    assert running_gateway(data) is None
    assert len(cli_json(data, "keys", "list", env=TOKEN_ENV)["keys"]) == 1


def test_cli_finds_a_jupyter_servers_token(tmp_path, monkeypatch):
    """Inside Jupyter, the CLI authenticates with the server's own token, read from its
    runtime file (``list_running_servers``), never from gateway.json."""
    from jupyter_vkeys.cli import jupyter_server_auth

    runtime = tmp_path / "runtime"
    runtime.mkdir()
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(runtime))
    (runtime / f"jpserver-{os.getpid()}.json").write_text(json.dumps({
        "pid": os.getpid(), "token": "server-token-42", "url": "http://127.0.0.1:1/",
        "base_url": "/", "port": 1, "hostname": "127.0.0.1", "secure": False,
        "root_dir": str(tmp_path), "password": False, "sock": "", "version": "2"}))
    assert jupyter_server_auth(os.getpid()) == "token server-token-42"
    assert jupyter_server_auth(os.getpid() + 100000) is None
