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
        yield replicas, pg, redis
    finally:
        for replica in replicas:
            replica.stop()
        redis.stop()
        pg.remove()


def test_revoke_and_policy_change_on_one_replica_reach_the_others(cluster):
    replicas, _, _ = cluster
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
    replicas, pg, _ = cluster
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
    replicas, pg, _ = cluster
    with pytest.raises(RuntimeError) as err:
        Replica(tmp_path / "odd", "", registry_url=pg.url,
                env={**ENV, "VKEYS_PEPPER": "another-pepper-entirely-0123456789"})
    assert "VKEYS_PEPPER" in str(err.value)


def me(replica: Replica, key: str) -> tuple[int, dict]:
    """``GET /api/me`` with a virtual key (what the widgets and ``%vkeys`` ask)."""
    request = urllib.request.Request(replica.url + "/api/me",
                                     headers={"Authorization": f"Bearer {key}"})
    with urllib.request.urlopen(request, timeout=20) as resp:
        return resp.status, json.loads(resp.read())


def budgets_of(report: dict) -> list[tuple]:
    """``(period, spent, held, remaining)`` of each budget in a scope report."""
    return [(b["period"], b["spent_usd"], b["held_usd"], b["remaining_usd"])
            for b in report["budgets"]]


def test_admin_reports_show_the_shared_spend_on_every_replica(cluster):
    """Calls on two of three replicas: every replica's admin API (key and policy
    reports, the policy list, /api/me) reports the same spend and holds, read from the
    shared ledger, equal to Redis's own figure; with Redis down the reports say they are
    this replica's own share."""
    from datetime import timezone

    from jupyter_vkeys.policy.windows import window

    replicas, _, redis = cluster
    status, body = admin(replicas[0], "POST", "/keys", {
        "owner": "fay", "budgets": [{"usd": 1, "period": "day"}]})
    assert status == 201, body
    key, key_id = body["key"], body["id"]
    status, _ = admin(replicas[1], "PUT", "/policies/user:fay",
                      {"budgets": [{"usd": 2, "period": "month"}, {"usd": 3, "period": "total"}]})
    assert status == 200
    for n in (0, 0, 0, 1, 1):  # replica 2 serves none of fay's calls
        assert call(replicas[n], key) == 200

    def reports(n: int) -> dict[str, list]:
        _, key_report = admin(replicas[n], "GET", f"/keys/{key_id}")
        _, policy = admin(replicas[n], "GET", "/policies/user:fay")
        _, listed = admin(replicas[n], "GET", "/policies")
        _, mine = me(replicas[n], key)
        listed_fay = next(p for p in listed["policies"] if p["scope"] == "user:fay")
        for report in (policy, listed_fay, *key_report["limits"], *mine["limits"]):
            assert report.get("figures") == "shared" or not report["budgets"], report
        by_scope = lambda limits: {r["scope"]: budgets_of(r) for r in limits}
        return {"key": by_scope(key_report["limits"]), "policy": budgets_of(policy),
                "listed": budgets_of(listed_fay), "me": by_scope(mine["limits"])}

    deadline = time.monotonic() + 5
    while True:  # settlements are batched off the call path
        seen = [reports(n) for n in range(3)]
        if all(held == 0 for _, _, held, _ in seen[0]["policy"]) or \
                time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert seen[0] == seen[1] == seen[2], seen  # every replica answers the same numbers
    day = seen[2]["key"][f"key:{key_id}"][0]
    month, total = seen[2]["policy"]
    assert day[1] > 0 and day[1] == month[1] == total[1]  # the five calls, on each window
    assert day[2] == 0 and day[3] == round(1 - day[1], 12)
    assert seen[2]["me"][f"key:{key_id}"] == seen[2]["key"][f"key:{key_id}"]
    # the same figure as Redis's own counter for that window
    start, _ = window("day", time.time(), timezone.utc)
    su, sp = (int(v or 0) for v in redis.client().hmget(
        f"{{vkeys}}:b:key:{key_id}:day:{int(start)}", "su", "sp"))
    assert day[1] == (su * 10**12 + sp) / 10**12

    redis.stop()  # the reports still answer, and say what their figures are
    status, policy = admin(replicas[2], "GET", "/policies/user:fay")
    assert status == 200 and policy["figures"] == "replica", policy
    assert "Redis" in policy["figures_note"] and "own share" in policy["figures_note"]
    assert budgets_of(policy)[0][1] == 0  # replica 2's own share: it served none
