"""Readiness (``/api/ready``) against a real gateway: 200 while ready; 503 naming the
failing part when the warehouse writer process is killed (200 again once the sink has
restarted it), when the journal cannot be written, when the data directory is not
held or the registry is not loaded. ``/api/health`` stays a liveness probe."""

from __future__ import annotations

import json
import os
import signal
import time
import urllib.error
import urllib.request

import pytest


def probe(gw, path: str = "/api/ready") -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(gw.url + path, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def wait_for(gw, status: int, timeout: float = 15.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        code, body = probe(gw)
        if code == status:
            return body
        assert time.monotonic() < deadline, (code, body)
        time.sleep(0.05)


@pytest.mark.parametrize("front", ["lean", "tornado"])
def test_ready_turns_503_when_the_writer_is_killed_and_back(make_gateway, front):
    gw = make_gateway(front=front, fake_mode="always", ready_writer_grace=1.0)
    assert probe(gw) == (200, {"status": "ready"})
    writer = gw.gateway.sink.writer
    os.kill(writer.pid, signal.SIGKILL)
    body = wait_for(gw, 503)
    assert set(body["failing"]) == {"writer"}
    assert str(writer.pid) in body["failing"]["writer"] or "restarted" in body["failing"]["writer"]
    assert "writer" in body["error"]["message"]
    assert probe(gw, "/api/health")[0] == 200  # liveness is unaffected
    wait_for(gw, 200)
    assert gw.gateway.sink.writer.pid != writer.pid
    assert gw.gateway.sink.writer.poll() is None


def test_ready_names_journal_data_dir_and_registry(make_gateway):
    gw = make_gateway(fake_mode="always")
    journal = gw.gateway.sink.journal.directory
    if os.geteuid() != 0:  # root ignores permission bits
        os.chmod(journal, 0o500)
        try:
            assert "journal" in probe(gw)[1]["failing"]
        finally:
            os.chmod(journal, 0o700)
    # the fsync thread gone: nothing reaches the disk
    syncer = gw.gateway.sink.journal._syncer
    gw.call_in_loop(lambda: setattr(gw.gateway.sink.journal, "_syncer", _Dead()))
    code, body = probe(gw)
    assert code == 503 and "fsync" in body["failing"]["journal"]
    gw.call_in_loop(lambda: setattr(gw.gateway.sink.journal, "_syncer", syncer))
    assert probe(gw)[0] == 200
    # the data directory's lock not held, the registry not loaded
    lock, registry = gw.gateway.lock, gw.gateway.registry
    gw.call_in_loop(lambda: (setattr(gw.gateway, "lock", None),
                             setattr(gw.gateway, "registry", None)))
    try:
        code, body = probe(gw)
        assert code == 503 and {"data_dir", "registry"} <= set(body["failing"])
        assert "lock" in body["failing"]["data_dir"]
    finally:
        gw.call_in_loop(lambda: (setattr(gw.gateway, "lock", lock),
                                 setattr(gw.gateway, "registry", registry)))
    assert probe(gw)[0] == 200


class _Dead:
    def is_alive(self) -> bool:
        return False

    def join(self, timeout: float | None = None) -> None:
        pass


def test_ready_without_a_warehouse_needs_no_writer(make_gateway):
    gw = make_gateway(fake_mode="always", warehouse=False)
    assert probe(gw) == (200, {"status": "ready"})


def test_a_writer_that_keeps_dying_is_restarted_with_backoff(make_gateway, caplog):
    """A writer that cannot run is not respawned four times a second: the first restart is
    immediate, then 0.5 s, 1 s, 2 s ... (capped at 30 s), each said in the log."""
    import logging
    import subprocess
    import sys

    gw = make_gateway(fake_mode="always")
    sink = gw.gateway.sink
    healthy = sink.writer
    pids = set()
    with caplog.at_level(logging.ERROR, logger="jupyter_vkeys"):
        sink.writer = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])
        healthy.kill()
        deadline = time.monotonic() + 4.0
        while time.monotonic() < deadline:
            pids.add(sink.writer.pid)
            time.sleep(0.02)
        sink.writer = subprocess.Popen(healthy.args, stdin=subprocess.DEVNULL)
    restarts = len(pids) - 1
    # without the backoff: about 16 restarts in 4 s (one per 0.25 s tick)
    assert 2 <= restarts <= 5, restarts
    delays = [r.getMessage() for r in caplog.records if "restarting it in" in r.getMessage()]
    assert any("in 0.5 s" in m for m in delays) and any("in 1 s" in m for m in delays), delays
