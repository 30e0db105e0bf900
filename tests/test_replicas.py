"""Three ``jupyter vkeys serve`` replicas on one real ``redis-server``: budgets, rate
limits and crash accounting hold across them (issue 15).

Each replica is a separate process with its own data directory (its own journal and
warehouse); they share the key registry by starting from copies of one (the same keys
and pepper), and share every counter through ``--state-url``. Clients are the official
``openai`` and ``anthropic`` SDKs; the upstream is the offline fake (``--fake``).
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import anthropic
import openai
import pytest

from jupyter_vkeys.warehouse import readers

from scale_support import RedisServer, Replica, need_redis

pytestmark = pytest.mark.replicas

E12 = 10**12
MODEL = "gpt-4o-mini"


def create_keys(root: Path, count: int, specs: list[list[str]]) -> tuple[list[str], list[Path]]:
    """Keys made with ``jupyter vkeys keys create`` in the first data directory, which is
    then copied to ``count`` replicas' directories. Returns (secrets, data dirs)."""
    first = root / "r0"
    keys = []
    for spec in specs:
        out = subprocess.run([sys.executable, "-m", "jupyter_vkeys.cli", "keys", "create",
                              "--data-dir", str(first), "--json", *spec],
                             capture_output=True, text=True, check=True)
        keys.append(json.loads(out.stdout)["key"])
    dirs = [first]
    for i in range(1, count):
        target = root / f"r{i}"
        target.mkdir()
        for name in ("registry.sqlite", "pepper"):
            shutil.copy(first / name, target / name)
        dirs.append(target)
    return keys, dirs


def key_id(secret: str) -> str:
    return secret[3:].split("_", 1)[0]


def warehouse_events(dirs: list[Path], key: str) -> list[tuple]:
    """``(status, cost_pico, request_id)`` of every event of ``key`` in every replica's
    warehouse (Parquet plus the journal tail, through the project's reader)."""
    rows = []
    for d in dirs:
        con = readers.connect(d)
        rows += con.execute("SELECT status, cost_pico, request_id FROM events WHERE key_id = ?",
                            [key_id(key)]).fetchall()
        con.close()
    return rows


def shared_budget(redis_client, scope: str, period: str = "total") -> tuple[int, int]:
    """``(spent, held)`` of a scope's budget window straight from Redis."""
    from jupyter_vkeys.policy.windows import window
    from datetime import timezone

    start, _ = window(period, time.time(), timezone.utc)
    got = redis_client.hmget(f"{{vkeys}}:b:{scope}:{period}:{int(start)}", "su", "sp", "hu",
                             "hp")
    su, sp, hu, hp = (int(v or 0) for v in got)
    return su * E12 + sp, hu * E12 + hp


@pytest.fixture
def redis_server(tmp_path):
    need_redis()
    server = RedisServer(tmp_path / "redis")
    yield server
    server.stop()


@pytest.fixture
def fleet(tmp_path):
    """Starts replicas and stops (or has killed) every one at the end."""
    started: list[Replica] = []

    def start(dirs: list[Path], state_url: str, **kw) -> list[Replica]:
        replicas = [Replica(d, state_url, **kw) for d in dirs]
        started.extend(replicas)
        return replicas

    yield start
    for replica in started:
        replica.stop()


async def chat(client: openai.AsyncOpenAI, max_tokens: int = 40, **extra) -> str:
    """One call; ``ok`` or the HTTP status and error text."""
    try:
        await client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "race for the last dollar"}],
            max_tokens=max_tokens, **extra)
        return "ok"
    except openai.APIStatusError as exc:
        return f"{exc.status_code} {exc.message}"


def clients_for(replicas: list[Replica], key: str) -> list[openai.AsyncOpenAI]:
    return [openai.AsyncOpenAI(base_url=r.openai_base, api_key=key, max_retries=0,
                               timeout=60) for r in replicas]


def test_300_calls_on_three_replicas_race_the_last_dollar(tmp_path, redis_server, fleet):
    """300 concurrent calls spread over three replicas drain one key's budget: the
    spend in the warehouse equals the shared counter and overshoots the cap by $0.00,
    no hold is left, and the budget really was raced (it is nearly spent)."""
    cap_usd = 0.0025
    keys, dirs = create_keys(tmp_path, 3, [["--owner", "racer", "--budget",
                                            f"{cap_usd}/total"]])
    key = keys[0]
    replicas = fleet(dirs, redis_server.url)

    async def race() -> list[str]:
        clients = clients_for(replicas, key)
        gate = asyncio.Semaphore(60)  # 60 in flight at any time, 300 in all

        async def one(i: int) -> str:
            async with gate:
                return await chat(clients[i % 3])
        return await asyncio.gather(*(one(i) for i in range(300)))

    results = asyncio.run(race())
    outcomes = Counter(r[:3] for r in results)
    assert set(outcomes) <= {"ok", "429"}, outcomes
    assert outcomes["ok"] > 20 and outcomes["429"] > 20, outcomes
    refusal = next(r for r in results if r.startswith("429"))
    assert "budget exhausted for key:" in refusal and "across all gateway replicas" in refusal

    time.sleep(0.3)  # settlements are delivered off the call path
    client = redis_server.client()
    spent, held = shared_budget(client, f"key:{key_id(key)}")
    cap = int(cap_usd * E12)
    assert held == 0
    assert spent <= cap, f"overshoot by {(spent - cap) / E12:.12f} USD"

    for replica in replicas:
        replica.stop()
    events = warehouse_events(dirs, key)
    ok = [e for e in events if e[0] == "ok"]
    assert len(ok) == outcomes["ok"]  # every completed call is in a warehouse
    assert len({e[2] for e in events}) == 300
    warehouse_spent = sum(e[1] for e in ok)
    assert warehouse_spent == spent  # the counters and the warehouse agree to the pico-dollar
    per_call = max(e[1] for e in ok)
    # raced: what is left would not pay for many more calls (worst case ~3x a real call)
    assert cap - spent < 8 * per_call, (cap - spent, per_call)
    by_replica = Counter(e[2] for d in dirs for e in warehouse_events([d], key) if e[0] == "ok")
    assert len(by_replica) == outcomes["ok"]


def test_without_shared_state_three_replicas_overspend(tmp_path, fleet):
    """The control experiment: the same race on three replicas that do not share
    state spends past the cap (each enforces the whole budget alone). This is what the
    test above would see if the shared ledger did nothing."""
    cap_usd = 0.0005
    keys, dirs = create_keys(tmp_path, 3, [["--owner", "racer", "--budget",
                                            f"{cap_usd}/total"]])
    key = keys[0]
    replicas = [Replica(d, "") for d in dirs]
    try:
        async def race() -> list[str]:
            clients = clients_for(replicas, key)
            return await asyncio.gather(*(chat(clients[i % 3]) for i in range(90)))
        asyncio.run(race())
    finally:
        for replica in replicas:
            replica.stop()
    spent = sum(e[1] for e in warehouse_events(dirs, key) if e[0] == "ok")
    assert spent > cap_usd * E12


def test_rpm_holds_across_replicas(tmp_path, redis_server, fleet):
    """An RPM limit of 30 across three replicas: exactly 30 of 60 calls pass, and the
    refusal says the limit, the use and when it resets."""
    keys, dirs = create_keys(tmp_path, 3, [["--owner", "rater", "--rpm", "30"]])
    key = keys[0]
    replicas = fleet(dirs, redis_server.url)

    async def burst() -> list[str]:
        clients = clients_for(replicas, key)
        return await asyncio.gather(*(chat(clients[i % 3]) for i in range(60)))

    results = asyncio.run(burst())
    outcomes = Counter(r[:3] for r in results)
    assert outcomes == {"ok": 30, "429": 30}, outcomes
    refusal = next(r for r in results if r.startswith("429"))
    assert "30 requests per minute" in refusal and "resets in" in refusal


def test_killed_replica_loses_no_completed_call_and_leaks_no_hold(tmp_path, redis_server,
                                                                    fleet):
    """Streams in flight on three replicas; one is SIGKILLed mid-load. Every call a
    client saw complete is in a warehouse (the killed replica's journal, read after its
    restart); within its lease the dead replica's open holds are charged (lost) and
    no hold is left; the shared spend is the completed calls plus the lost holds."""
    keys, dirs = create_keys(tmp_path, 3, [["--owner", "crash", "--budget", "5/total"]])
    key = keys[0]
    config = tmp_path / "lease.py"
    config.write_text("c.VKeysGateway.state_lease_seconds = 1.5\n")
    replicas = fleet(dirs, redis_server.url, config=config)
    completed: list[tuple[int, str]] = []

    async def load() -> None:
        clients = clients_for(replicas, key)

        async def one(i: int) -> None:
            await asyncio.sleep(i * 0.03)  # a steady stream of calls, 33 a second
            try:
                stream = await clients[i % 3].chat.completions.create(
                    model=MODEL, messages=[{"role": "user", "content": f"call {i}"}],
                    max_tokens=30, stream=True,
                    extra_headers={"x-vkeys-fake-chunk-delay-ms": "15"})
                rid = stream.response.headers["x-request-id"]
                async for _ in stream:
                    pass
                completed.append((i % 3, rid))
            except (openai.APIError, Exception):
                pass  # a call on the killed replica: cut, never completed

        async def killer() -> None:
            # once replica 1 has finished a few calls, with more in flight on it
            while sum(1 for r, _ in completed if r == 1) < 3:
                await asyncio.sleep(0.01)
            replicas[1].kill()
        await asyncio.gather(killer(), *(one(i) for i in range(90)))

    asyncio.run(load())
    on_killed = [rid for r, rid in completed if r == 1]
    assert completed and on_killed, "the kill came too late or too early to test anything"
    assert len(completed) < 90  # some calls were cut by the kill

    client = redis_server.client()
    deadline = time.monotonic() + 1.5 + 3.0  # the lease, and the reaper's period
    while time.monotonic() < deadline:
        spent, held = shared_budget(client, f"key:{key_id(key)}")
        if held == 0:
            break
        time.sleep(0.1)
    assert held == 0, "a dead replica's hold leaked beyond its lease"
    lost_count = int(client.hget("{vkeys}:lost", "count") or 0)
    assert lost_count >= 1

    for i in (0, 2):
        replicas[i].stop()
    replicas[1] = Replica(dirs[1], redis_server.url, config=config)  # replays its journal
    replicas[1].stop()
    events = warehouse_events(dirs, key)
    recorded_ok = {e[2] for e in events if e[0] == "ok"}
    assert {rid for _, rid in completed} <= recorded_ok
    lost_pico = int(client.hget("{vkeys}:lost", "u") or 0) * E12 + int(
        client.hget("{vkeys}:lost", "p") or 0)
    ok_pico = sum(e[1] for e in events if e[0] == "ok")
    # the killed replica may have finished calls whose settle it never sent: those are
    # charged at their hold (>= their cost), so the counter covers the warehouse
    assert ok_pico <= spent <= ok_pico + lost_pico
    # holds journaled before the kill (those in flight past the journal's hold delay)
    # became lost events at the restart; each is one of the holds Redis charged
    restarted_lost = [e for e in events if e[0] == "lost"]
    assert len(restarted_lost) <= lost_count


def test_redis_down_fails_closed_in_both_dialects_and_recovers(tmp_path, redis_server, fleet):
    """Redis stopped: budgeted calls get a 503 in the client's dialect that says what is
    wrong; nothing is charged. Redis back (same data): calls pass again without a
    replica restart, and the spend from before the outage is still counted."""
    keys, dirs = create_keys(tmp_path, 1, [["--owner", "ops", "--budget", "1/total"]])
    key = keys[0]
    config = tmp_path / "fast.py"
    config.write_text("c.VKeysGateway.state_timeout = 0.5\n")
    (replica,) = fleet(dirs, redis_server.url, config=config)
    oa = openai.OpenAI(base_url=replica.openai_base, api_key=key, max_retries=0, timeout=20)
    an = anthropic.Anthropic(base_url=replica.url + "/anthropic", api_key=key, max_retries=0,
                             timeout=20)

    def openai_call():
        return oa.chat.completions.create(model=MODEL, max_tokens=20,
                                          messages=[{"role": "user", "content": "hi"}])

    def anthropic_call():
        return an.messages.create(model="claude-3-5-haiku-latest", max_tokens=20,
                                  messages=[{"role": "user", "content": "hi"}])

    openai_call()
    anthropic_call()
    before, _ = shared_budget(redis_server.client(), f"key:{key_id(key)}")
    assert before > 0

    redis_server.stop()
    with pytest.raises(openai.APIStatusError) as oa_err:
        openai_call()
    assert oa_err.value.status_code == 503
    body = oa_err.value.response.json()
    assert body["error"]["type"]  # the OpenAI error shape
    assert "unreachable" in body["error"]["message"] and "Redis" in body["error"]["message"]
    with pytest.raises(anthropic.APIStatusError) as an_err:
        anthropic_call()
    assert an_err.value.status_code == 503
    body = an_err.value.response.json()
    assert body["type"] == "error" and "unreachable" in body["error"]["message"]

    import urllib.error
    import urllib.request
    with pytest.raises(urllib.error.HTTPError) as ready:
        urllib.request.urlopen(replica.url + "/api/ready", timeout=10)
    assert ready.value.code == 503 and "shared_state" in ready.value.read().decode()

    redis_server.start()
    deadline = time.monotonic() + 10
    while True:
        try:
            openai_call()
            break
        except openai.APIStatusError as exc:
            assert exc.status_code == 503
            assert time.monotonic() < deadline, "no recovery without a restart"
            time.sleep(0.2)
    anthropic_call()
    time.sleep(0.3)
    after, held = shared_budget(redis_server.client(), f"key:{key_id(key)}")
    assert held == 0 and after > before
    replica.stop()
    events = warehouse_events(dirs, key)
    assert sum(e[1] for e in events if e[0] == "ok") == after
    assert sum(1 for e in events if e[0] == "error") == 2  # the two 503s, charged nothing


def test_fail_open_rate_admits_rpm_only_keys_but_never_budgets(tmp_path, redis_server, fleet):
    """With state_fail_open_rate, an outage lets RPM-only keys through on the local count;
    a key with a budget still gets 503."""
    keys, dirs = create_keys(tmp_path, 1, [["--owner", "a", "--rpm", "100"],
                                           ["--owner", "b", "--budget", "1/total"]])
    config = tmp_path / "open.py"
    config.write_text("c.VKeysGateway.state_timeout = 0.5\n"
                      "c.VKeysGateway.state_fail_open_rate = True\n")
    (replica,) = fleet(dirs, redis_server.url, config=config)
    rpm_only, budgeted = (openai.OpenAI(base_url=replica.openai_base, api_key=k, max_retries=0,
                                        timeout=20) for k in keys)
    redis_server.stop()
    rpm_only.chat.completions.create(model=MODEL, max_tokens=5,
                                     messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(openai.APIStatusError) as err:
        budgeted.chat.completions.create(model=MODEL, max_tokens=5,
                                         messages=[{"role": "user", "content": "hi"}])
    assert err.value.status_code == 503
