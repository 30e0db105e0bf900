"""The Redis ledger's own guarantees, on a real redis-server, without HTTP in between:
money exact past 2^53 pico-USD, admit and settle idempotent by request id, clamping to
the shared room, and a dead replica's holds charged when its lease lapses."""

from __future__ import annotations

import asyncio
import time
from datetime import timezone

import pytest

from jupyter_vkeys.keys import KeyRecord
from jupyter_vkeys.policy import PolicyEngine, Refusal
from jupyter_vkeys.pricing import PriceTable
from jupyter_vkeys.state.redis_ledger import RedisLedger

from scale_support import RedisServer, need_redis

pytestmark = pytest.mark.replicas

E12 = 10**12


@pytest.fixture
def redis_server(tmp_path):
    need_redis()
    server = RedisServer(tmp_path / "redis")
    yield server
    server.stop()


def record(policy: dict, key_id: str = "k1") -> KeyRecord:
    return KeyRecord(id=key_id, secret_hash=b"x", owner="ann", created_at=0.0, policy=policy)


def rates(model: str = "gpt-4o-mini"):
    return PriceTable({}, None).rates(model, "openai")


async def admit(engine, ledger, rec, rid, *, max_output=20, input_bound=400):
    ticket = engine.admit(engine.resolve(rec, "gpt-4o-mini"), rates(), input_bound=input_bound,
                          input_estimate=input_bound // 4, max_output=max_output)
    try:
        await ledger.admit(rid, ticket, rates(), input_bound=input_bound, max_output=max_output,
                           choices=1, ceiling=16384)
    except Refusal:
        engine.settle(ticket, 0, 0)
        raise
    return ticket


async def drain(ledger) -> None:
    while ledger._pending:
        await asyncio.sleep(0.005)


def test_money_exact_past_two_to_the_53_and_settle_idempotent(redis_server):
    """A $50,000 budget (5e16 pico-USD, past what a double holds exactly): spend added
    one pico-dollar-exact amount at a time, read back exactly; a settle delivered twice
    and an admit retried count once."""
    async def main():
        engine = PolicyEngine()
        ledger = RedisLedger(redis_server.url, tz=timezone.utc)
        await ledger.start()
        rec = record({"budgets": [{"usd": 50000, "period": "total"}]})
        expected = 0
        for i in range(40):
            ticket = await admit(engine, ledger, rec, f"r{i}")
            cost = 1234_567_890_123_457 + i  # $1,234.57... : crosses the dollar limb
            await ledger.admit(f"r{i}", ticket, rates(), input_bound=400, max_output=20,
                               choices=1, ceiling=16384)  # a retried admit: no second hold
            ledger.settle(f"r{i}", cost, 10)
            ledger.settle(f"r{i}", cost, 10)  # delivered twice
            engine.settle(ticket, cost, 10)
            expected += cost
            if expected + 2 * E12 > 50000 * E12:
                break
        await drain(ledger)
        spent, held = await ledger.budget_figures("key:k1", "total")
        await ledger.close()
        return spent, held, expected

    spent, held, expected = asyncio.run(main())
    assert expected > 2**53
    assert held == 0
    assert spent == expected


def test_shared_room_refuses_and_clamps(redis_server):
    """Two engines (two replicas) on one ledger: each engine alone would admit, the
    shared ledger refuses what the sum cannot pay, and a request without max_tokens is
    clamped to the shared room rather than refused."""
    async def main():
        engines = [PolicyEngine(), PolicyEngine()]
        ledgers = [RedisLedger(redis_server.url, tz=timezone.utc) for _ in engines]
        for ledger in ledgers:
            await ledger.start()
        rec = record({"budgets": [{"usd": 0.01, "period": "total"}]})
        hold = rates().worst_case(400, 1000)
        admitted = []
        for i in range(20):  # 10 per replica: each alone could pay for them
            try:
                admitted.append(await admit(engines[i % 2], ledgers[i % 2], rec, f"a{i}",
                                            max_output=1000))
            except Refusal as refusal:
                assert refusal.kind == "budget" and "across all gateway replicas" in \
                    refusal.message
        assert len(admitted) == 0.01 * E12 // hold < 20
        # release them all unspent: the room comes back
        for i, ticket in enumerate(admitted):
            engines[0].settle(ticket, 0, 0)
            ledgers[0].settle(f"a{i}", 0, 0)
        await drain(ledgers[0])
        big = await admit(engines[1], ledgers[1], rec, "fill", max_output=14000)
        # no max_tokens: clamped to what is left across replicas, not the engine's own room
        ticket = await admit(engines[0], ledgers[0], rec, "clamped", max_output=None)
        spent, held = await ledgers[0].budget_figures("key:k1", "total")
        for ledger in ledgers:
            await ledger.close()
        return big, ticket, held

    big, ticket, held = asyncio.run(main())
    assert ticket.clamped_to is not None and ticket.clamped_to < 16384
    assert held == big.hold + ticket.hold <= 0.01 * E12


def test_dead_replica_holds_are_charged_when_its_lease_lapses(redis_server):
    async def main():
        engine = PolicyEngine()
        dead = RedisLedger(redis_server.url, tz=timezone.utc, lease=2.0)
        alive = RedisLedger(redis_server.url, tz=timezone.utc, lease=2.0)
        await dead.start()
        await alive.start()
        rec = record({"budgets": [{"usd": 1, "period": "total"}], "max_concurrency": 5})
        tickets = [await admit(engine, dead, rec, f"d{i}") for i in range(3)]
        for task in dead._tasks:  # the replica dies: no more lease renewals, no settles
            task.cancel()
        spent0, held0 = await alive.budget_figures("key:k1", "total")
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            spent, held = await alive.budget_figures("key:k1", "total")
            if held == 0:
                break
            await asyncio.sleep(0.05)
        lost = await alive.lost_figures()
        inflight = int(await alive.redis.get("{vkeys}:c:key:k1") or 0)
        # a late settle from the dead replica changes nothing
        dead.settle("d0", 1, 1)
        await dead._call(dead._settle, [dead.prefix, "d0", "0", "1", "1"])
        after = await alive.budget_figures("key:k1", "total")
        await alive.close()
        await dead.redis.aclose()
        return tickets, held0, spent, held, lost, inflight, after

    tickets, held0, spent, held, lost, inflight, after = asyncio.run(main())
    total_hold = sum(t.hold for t in tickets)
    assert held0 == total_hold
    assert held == 0 and spent == total_hold
    assert lost == (3, total_hold)
    assert inflight == 0
    assert after == (spent, 0)
