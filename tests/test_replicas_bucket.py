"""The warehouse on S3-compatible storage: two ``jupyter vkeys serve`` replicas copy
their Parquet files into one bucket (moto's S3 server, started here), each under its
own names in the same hive layout, and the project's readers read the bucket as they
read a directory (issue 15)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time

import pytest

from scale_support import Replica, free_port
from test_replicas import chat, clients_for, create_keys

pytestmark = pytest.mark.replicas


@pytest.fixture
def s3_server(monkeypatch):
    pytest.importorskip("moto", reason="moto[server] is in the test extra")
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p",
                             str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    env = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "test",
           "AWS_SECRET_ACCESS_KEY": "test", "AWS_REGION": "us-east-1"}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    import boto3

    deadline = time.monotonic() + 20
    while True:
        try:
            boto3.client("s3").create_bucket(Bucket="vkeys-wh")
            break
        except Exception:
            assert time.monotonic() < deadline, "moto server did not start"
            time.sleep(0.2)
    yield env
    proc.terminate()
    proc.wait(10)


def test_two_replicas_write_one_bucket_and_readers_read_it(tmp_path, s3_server):
    keys, dirs = create_keys(tmp_path, 2, [["--owner", "s3user"]])
    config = tmp_path / "bucket.py"
    config.write_text("c.VKeysGateway.warehouse_url = 's3://vkeys-wh/warehouse'\n"
                      "c.VKeysGateway.roll_seconds = 1.0\n")
    replicas = [Replica(d, "", config=config, env=s3_server) for d in dirs]
    try:
        async def load() -> list[str]:
            clients = clients_for(replicas, keys[0])
            return await asyncio.gather(*(chat(clients[i % 2]) for i in range(20)))
        assert asyncio.run(load()) == ["ok"] * 20
    finally:
        for replica in replicas:
            replica.stop()  # the writer converts what is left and copies it out

    import boto3

    names = [o["Key"] for o in boto3.client("s3").list_objects_v2(
        Bucket="vkeys-wh", Prefix="warehouse/events/")["Contents"]]
    assert all(n.split("/")[2].startswith("date=") for n in names)
    writers = {n.rsplit("/", 1)[1].rsplit("-seg-", 1)[0] for n in names}
    assert len(writers) == 2, names  # each replica under its own names

    from jupyter_vkeys.warehouse import readers

    con = readers.connect("s3://vkeys-wh/warehouse")
    rows = con.execute("SELECT count(*), count(DISTINCT request_id), sum(cost_pico), "
                       "min(date) FROM events WHERE status = 'ok'").fetchone()
    local = sum(readers.connect(d).execute(
        "SELECT sum(cost_pico) FROM events WHERE status = 'ok'").fetchone()[0] for d in dirs)
    assert rows[0] == rows[1] == 20
    assert rows[2] == local > 0
    assert rows[3] is not None
    assert readers.read_table("events", "s3://vkeys-wh/warehouse").num_rows == 20

    from jupyter_vkeys.analytics import source

    assert source.has_events("s3://vkeys-wh/warehouse")
    analytics = source.connect("s3://vkeys-wh/warehouse")
    assert analytics.execute("SELECT count(*) FROM ev WHERE status = 'ok'").fetchone()[0] == 20
