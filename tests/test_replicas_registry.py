"""Three replicas on one PostgreSQL registry (and one Redis): an admin change made on
one replica applies on the others by their next request (LISTEN/NOTIFY); PostgreSQL
down fails closed and comes back without a restart (issue 15)."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request

import openai
import pytest

from scale_support import PostgresServer, RedisServer, Replica, need_redis

pytestmark = pytest.mark.replicas

MODEL = "gpt-4o-mini"
ENV = {"VKEYS_PEPPER": "replicas-share-one-pepper-0123456789", "VKEYS_ADMIN_TOKEN": "adm-tok"}


def admin(replica: Replica, method: str, path: str, body=None) -> tuple[int, dict]:
    request = urllib.request.Request(
        replica.url + "/api" + path, method=method,
        data=json.dumps(body).encode() if body is not None else None,
        headers={"Authorization": f"Bearer {ENV['VKEYS_ADMIN_TOKEN']}",
                 "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=20) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def call(replica: Replica, key: str) -> int:
    client = openai.OpenAI(base_url=replica.openai_base, api_key=key, max_retries=0, timeout=20)
    try:
        client.chat.completions.create(model=MODEL, max_tokens=5,
                                       messages=[{"role": "user", "content": "hi"}])
        return 200
    except openai.APIStatusError as exc:
        return exc.status_code


@pytest.fixture
def cluster(tmp_path):
    need_redis()
    redis = RedisServer(tmp_path / "redis")
    pg = PostgresServer()
    replicas: list[Replica] = []
    try:
        for i in range(3):
            replicas.append(Replica(tmp_path / f"r{i}", redis.url, registry_url=pg.url,
                                    env=ENV))
        yield replicas, pg
    finally:
        for replica in replicas:
            replica.stop()
        redis.stop()
        pg.remove()


def test_revoke_and_policy_change_on_one_replica_reach_the_others(cluster):
    replicas, _ = cluster
    delays = []
    for trial in range(10):
        status, body = admin(replicas[trial % 3], "POST", "/keys", {"owner": f"u{trial}"})
        assert status == 201, body
        key, key_id = body["key"], body["id"]
        for replica in replicas:  # a key made on one replica works on every one
            assert call(replica, key) == 200
        started = time.perf_counter()
        status, _ = admin(replicas[trial % 3], "POST", f"/keys/{key_id}/revoke", {})
        assert status == 200
        delays.append(time.perf_counter() - started)
        for offset in (1, 2):  # the next request on each other replica is refused
            assert call(replicas[(trial + offset) % 3], key) == 401

    # the admin API answers once every other replica acknowledged the change
    assert max(delays) < 2.0, delays
    print(f"revoke answered after every replica acknowledged it: median "
          f"{sorted(delays)[len(delays) // 2] * 1000:.1f} ms, max {max(delays) * 1000:.1f} ms")

    # a scope policy set on replica 0 limits the next call on replicas 1 and 2
    status, body = admin(replicas[0], "POST", "/keys", {"owner": "carol"})
    key = body["key"]
    assert call(replicas[2], key) == 200
    status, _ = admin(replicas[0], "PUT", "/policies/user:carol", {"models": ["claude-*"]})
    assert status == 200
    assert call(replicas[1], key) == 403
    assert call(replicas[2], key) == 403

    # a killed replica is not waited for: its listening session ended with it
    replicas[2].kill()
    status, body = admin(replicas[0], "POST", "/keys", {"owner": "erin"})
    started = time.perf_counter()
    status, _ = admin(replicas[0], "POST", f"/keys/{body['id']}/revoke", {})
    assert status == 200 and time.perf_counter() - started < 0.5
    assert call(replicas[1], body["key"]) == 401

    # every replica's admin actions are in the one audit trail
    status, body = admin(replicas[1], "GET", "/audit?limit=1000")
    assert status == 200
    actions = [row["action"] for row in body["audit"]]
    assert actions.count("key.revoke") == 11 and "policy.set" in actions


def test_postgres_down_fails_closed_and_recovers(cluster):
    replicas, pg = cluster
    status, body = admin(replicas[0], "POST", "/keys", {"owner": "dora"})
    key, key_id = body["key"], body["id"]
    assert call(replicas[1], key) == 200
    pg.stop()
    deadline = time.monotonic() + 10
    while call(replicas[1], key) != 503:  # noticed when the listening connection drops
        assert time.monotonic() < deadline, "a replica kept serving without its registry"
        time.sleep(0.1)
    client = openai.OpenAI(base_url=replicas[1].openai_base, api_key=key, max_retries=0)
    with pytest.raises(openai.APIStatusError) as err:
        client.chat.completions.create(model=MODEL, max_tokens=5,
                                       messages=[{"role": "user", "content": "hi"}])
    assert "PostgreSQL" in err.value.response.json()["error"]["message"]
    pg.start()
    deadline = time.monotonic() + 15
    while call(replicas[1], key) != 200:
        assert time.monotonic() < deadline, "no recovery without a restart"
        time.sleep(0.2)
    status, _ = admin(replicas[2], "POST", f"/keys/{key_id}/revoke", {})
    assert status == 200
    assert call(replicas[1], key) == 401


def test_a_replica_with_another_pepper_refuses_to_start(cluster, tmp_path):
    """Keys hashed with one pepper never authenticate under another: such a replica
    says so and exits instead of answering 401 to every key."""
    replicas, pg = cluster
    with pytest.raises(RuntimeError) as err:
        Replica(tmp_path / "odd", "", registry_url=pg.url,
                env={**ENV, "VKEYS_PEPPER": "another-pepper-entirely-0123456789"})
    assert "VKEYS_PEPPER" in str(err.value)
