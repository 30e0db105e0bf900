"""The Hub service's decisions without a Hub: scopes read off a Hub user model, an admin's
reach, and the issuer's keys (against a real started gateway). The end-to-end proof with
a real JupyterHub is ``test_hub_service.py``."""

from __future__ import annotations

import os
import pwd
import subprocess
import sys
from pathlib import Path

import pytest

from jupyter_vkeys.gateway.admin_reach import AdminReach
from jupyter_vkeys.hub.issuer import KernelKeyIssuer
from jupyter_vkeys.hub.scopes import HubCaller
from jupyter_vkeys.registry import InvalidKeyRequest


def caller(name: str, *scopes: str, groups: tuple[str, ...] = ()) -> HubCaller:
    return HubCaller.from_model({"name": name, "kind": "user", "groups": list(groups),
                                 "scopes": list(scopes)})


def test_scopes_decide_use_and_admin():
    assert caller("a", "custom:vkeys:use!user=a").can_use()
    assert not caller("a", "custom:vkeys:use!user=b").can_use()  # someone else's filter
    assert not caller("a", "access:servers!server=a/").can_use()
    assert not caller("a", "custom:vkeys:use!user=a").is_admin
    admin = caller("c", "custom:vkeys:admin")
    assert admin.admin_of_all and admin.can_use() and admin.administers(team="x")
    group = caller("d", "custom:vkeys:admin!group=students")
    assert group.is_admin and not group.admin_of_all
    assert group.administers(team="students") and not group.administers(team="staff")
    assert group.administers(scope="team:students") and not group.administers(scope="global")
    # a look-alike scope grants nothing
    assert not caller("e", "custom:vkeys:administer", "custom:vkeys:used").can_use()


class Record:
    def __init__(self, id: str, owner: str, team: str, project: str = "") -> None:
        self.id, self.owner, self.team, self.project = id, owner, team, project


def test_a_reach_covers_its_teams_keys_and_scopes_only():
    reach = AdminReach(frozenset({"students"}))
    records = [Record("k1", "bob", "students"), Record("k2", "bob", "students"),
               Record("k3", "eve", "students"), Record("k4", "eve", "staff"),
               Record("k5", "zed", "")]
    assert reach.key(records[0]) and reach.key({"team": "students"})
    assert not reach.key(records[3]) and not reach.key(records[4])
    assert reach.scope("team:students", records) and not reach.scope("team:staff", records)
    assert reach.scope("user:bob", records)
    assert not reach.scope("user:eve", records)  # one of eve's keys is outside
    assert not reach.scope("user:nobody", records)  # no key: nothing to reach
    assert reach.scope("key:k1", records) and not reach.scope("key:k4", records)
    assert not reach.scope("global", records)


def test_issuer_gives_each_users_kernels_their_own_keys(gateway):
    issuer = KernelKeyIssuer(gateway.gateway, data_plane_url="http://svc/services/vkeys",
                             group_policies={"students": {"budgets": [
                                 {"usd": 5, "period": "month"}]}})
    bob = caller("bob", "custom:vkeys:use!user=bob", groups=("zoo", "students"))
    alice = caller("alice", "custom:vkeys:use!user=alice", groups=("data",))
    first = issuer.kernel_key(bob, {"kernel_id": "k-1", "notebook_path": "a.ipynb"})
    again = issuer.kernel_key(bob, {"kernel_id": "k-1"})  # a restart keeps the key
    assert again["key"] == first["key"] and first["openai_base_url"].endswith("/openai/v1")
    same_id = issuer.kernel_key(alice, {"kernel_id": "k-1"})  # alice sends bob's kernel id
    assert same_id["key"] != first["key"]
    record = gateway.gateway.registry.get(first["key_id"])
    assert record.owner == "bob" and record.team == "students"  # the group with a policy
    parent = gateway.gateway.registry.get(record.parent_id)
    assert parent.policy["budgets"][0]["usd"] == 5
    with pytest.raises(KeyError):
        issuer.revoke_kernel(alice, first["key_id"])  # not hers: unknown to her
    assert gateway.gateway.registry.get(first["key_id"]).revoked_at is None
    issuer.kernel_key(bob, {"kernel_id": "k-2", "server_name": "gpu"})
    assert issuer.active_servers() == {("bob", ""), ("bob", "gpu"), ("alice", "")}
    assert issuer.revoke_server("bob", "", actor="t") == [first["key_id"]]
    assert issuer.active_servers() == {("bob", "gpu"), ("alice", "")}
    for bad in ({}, {"kernel_id": 7}, {"kernel_id": "x" * 200}, {"kernel_id": "a\x00b"}):
        with pytest.raises(InvalidKeyRequest):
            issuer.kernel_key(bob, bad)


def test_a_revoked_personal_key_stays_revoked(gateway):
    issuer = KernelKeyIssuer(gateway.gateway, data_plane_url="http://svc")
    carl = caller("carl", "custom:vkeys:use!user=carl")
    kernel = issuer.kernel_key(carl, {"kernel_id": "k"})
    parent_id = gateway.gateway.registry.get(kernel["key_id"]).parent_id
    gateway.gateway.registry.revoke(parent_id, actor="admin")
    issuer.revoke_server("carl", None, actor="t")
    again = issuer.kernel_key(carl, {"kernel_id": "k2"})
    assert gateway.gateway.registry.get(again["key_id"]).parent_id == parent_id  # no new budget


def test_hub_service_refuses_to_start_without_a_hub():
    env = {k: v for k, v in os.environ.items() if not k.startswith("JUPYTERHUB")}
    out = subprocess.run([sys.executable, "-m", "jupyter_vkeys.cli", "hub-service", "--fake"],
                         env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode != 0 and "JUPYTERHUB_API_TOKEN" in out.stderr, out.stderr


@pytest.mark.skipif(os.geteuid() != 0, reason="dropping to another OS user needs root")
def test_the_service_gives_up_root_for_its_own_user():
    """``hub-service --user``: :func:`drop_privileges` (called before the gateway opens
    anything) makes the data directory that user's, mode 0700, and the process theirs,
    so what it writes next belongs to them and no user server (another user) can read it."""
    import shutil
    import tempfile

    entry = pwd.getpwnam("nobody")
    root = Path(tempfile.mkdtemp(prefix="vkeys-user-"))  # /tmp: searchable by everyone
    root.chmod(0o755)
    data = root / "data"
    data.mkdir()
    (data / "keys.sqlite").write_text("from an earlier run as root")
    code = ("import os, sys, pathlib\n"
            "from jupyter_vkeys.hub.service import drop_privileges\n"
            "data = pathlib.Path(sys.argv[1])\n"
            "drop_privileges('nobody', data)\n"
            "(data / 'journal').write_text('written after')\n"
            "print(os.getuid(), os.geteuid(), os.getgid(), os.getgroups(), os.environ['HOME'])")
    try:
        out = subprocess.run([sys.executable, "-c", code, str(data)], capture_output=True,
                             text=True, timeout=60)
        hidden = subprocess.run([sys.executable, "-c", code, str(root / "private" / "d")],
                                capture_output=True, text=True, timeout=60,
                                preexec_fn=lambda: (root / "private").mkdir(mode=0o700))
        check_dropped(out, hidden, entry, data)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def check_dropped(out, hidden, entry, data: Path) -> None:
    assert out.returncode == 0, out.stderr
    # a data directory the user could not reach is refused up front, saying why
    assert hidden.returncode != 0 and "cannot reach" in hidden.stderr, hidden.stderr
    uid, euid, gid, groups, home = out.stdout.split(maxsplit=4)
    assert (int(uid), int(euid), int(gid)) == (entry.pw_uid, entry.pw_uid, entry.pw_gid)
    assert groups == "[]" and home.strip() == entry.pw_dir
    assert data.stat().st_uid == entry.pw_uid and (data.stat().st_mode & 0o777) == 0o700
    for name in ("keys.sqlite", "journal"):
        assert (data / name).stat().st_uid == entry.pw_uid, name


def test_the_readme_quotes_the_tested_hub_config():
    """The README's jupyterhub_config.py is the file the Hub tests load, exactly."""
    repo = Path(__file__).resolve().parents[2]
    snippet = (repo / "examples" / "jupyterhub" / "jupyterhub_config.py").read_text()
    assert f"```python\n{snippet}```" in (repo / "README.md").read_text()


def test_a_kernel_starts_without_a_key_when_the_service_refuses_or_is_down(caplog):
    """The single-user side (hub_broker): a service that refuses (a token without
    custom:vkeys:use) or does not answer leaves the kernel without a key, never without
    its environment, and the log says why and what to do."""
    import asyncio
    import json as jsonlib
    import logging
    import socket
    import threading

    from jupyter_vkeys.server_extension.hub_broker import HubKernelKeyBroker

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    port = listener.getsockname()[1]
    body = jsonlib.dumps({"error": {"message": "user 'eve' may not use jupyter-vkeys: the "
                                               "token lacks the Hub scope custom:vkeys:use",
                                    "type": "permission_error"}}).encode()

    def refuse() -> None:
        for _ in range(1):
            conn, _ = listener.accept()
            conn.recv(65536)
            conn.sendall(b"HTTP/1.1 403 Forbidden\r\nContent-Type: application/json\r\n"
                         b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
            conn.close()

    threading.Thread(target=refuse, daemon=True).start()
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    dead_port = closed.getsockname()[1]
    closed.close()
    env = {"PATH": "/usr/bin", "OPENAI_API_KEY": "sk-should-be-stripped", "HOME": "/x"}

    async def start(url: str) -> dict:
        broker = HubKernelKeyBroker(url, api_token="t", timeout=5)
        return await broker.launch_env("k1", dict(env))

    with caplog.at_level(logging.ERROR, logger="jupyter_vkeys.kernels"):
        refused = asyncio.run(start(f"http://127.0.0.1:{port}/services/vkeys"))
        down = asyncio.run(start(f"http://127.0.0.1:{dead_port}/services/vkeys"))
    listener.close()
    for result in (refused, down):
        assert result["PATH"] == "/usr/bin" and "OPENAI_API_KEY" not in result
        assert "OPENAI_BASE_URL" not in result
    messages = " ".join(r.getMessage() for r in caplog.records)
    assert "403" in messages and "custom:vkeys:use" in messages, messages
    assert "not reachable" in messages and "ask the hub admin" in messages, messages
