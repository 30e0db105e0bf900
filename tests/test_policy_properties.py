"""Property-based tests of the policy arithmetic (hypothesis): no sequence of admissions and
settlements, with any request figures a client can send, leaves a negative hold or spend,
overspends a cap, or leaks a concurrency slot or a token reservation."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jupyter_vkeys.keys import KeyRecord
from jupyter_vkeys.policy import PolicyEngine, Refusal, parse_policy
from jupyter_vkeys.pricing import PriceTable

RATES = PriceTable({"m": {"input_mtok": 1.5, "output_mtok": 6}}).rates("m")
CAP_USD = 0.05

figures = st.integers(min_value=-10**12, max_value=10**12)
step = st.tuples(
    st.sampled_from(["admit", "settle_first", "settle_last", "tick"]),
    figures,                                      # input bound
    st.one_of(st.none(), figures),                # max_output
    st.integers(min_value=-3, max_value=200),     # choices
    st.floats(min_value=0.0, max_value=1.0),      # fraction of the hold actually spent
)


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


def engine_with_key(clamp: bool) -> tuple[PolicyEngine, KeyRecord, Clock]:
    clock = Clock()
    engine = PolicyEngine(clock=clock, clamp_max_tokens=clamp)
    record = KeyRecord(id="k1", secret_hash=b"", owner="u", team="t",
                       policy={"tpm": 10**9, "max_concurrency": 50,
                               "budgets": [{"usd": CAP_USD, "period": "total"}]})
    engine.set_scope_policy("team:t", parse_policy({"budgets": [{"usd": CAP_USD * 2,
                                                                 "period": "day"}]}))
    return engine, record, clock


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps=st.lists(step, max_size=40), clamp=st.booleans())
def test_no_sequence_breaks_the_ledger(steps, clamp):
    engine, record, clock = engine_with_key(clamp)
    open_tickets = []
    for action, input_bound, max_output, choices, spent_share in steps:
        if action == "admit":
            try:
                admission = engine.resolve(record, "m")
                ticket = engine.admit(admission, RATES, input_bound=input_bound,
                                      input_estimate=max(input_bound, 0) // 4,
                                      max_output=max_output, choices=choices)
            except Refusal as refusal:
                assert refusal.status in (400, 429), refusal.message
                continue
            assert ticket.hold >= 0
            assert input_bound >= 0 and choices >= 1
            assert max_output is None or max_output >= 0
            open_tickets.append(ticket)
        elif action.startswith("settle") and open_tickets:
            ticket = open_tickets.pop(0 if action == "settle_first" else -1)
            # An honest upstream spends at most the worst case it was held for.
            engine.settle(ticket, int(ticket.hold * spent_share), 10)
        elif action == "tick":
            clock.now += 3600
        for scope in ("key:k1", "team:t", "global"):
            state = engine.states.get(scope)
            if state is None:
                continue
            assert state.inflight == len(open_tickets)
            assert state.tokens.used(clock.now) >= 0
            for counter in state.windows:
                assert counter.held >= 0 and counter.spent >= 0
        key_total = engine.states["key:k1"].budgets.get("total") if "key:k1" in engine.states \
            else None
        if key_total is not None:
            assert key_total.spent + key_total.held <= int(CAP_USD * 10**12)
    for ticket in open_tickets:
        engine.settle(ticket, ticket.hold, 0)
    for state in engine.states.values():
        assert state.inflight == 0
        assert all(counter.held == 0 for counter in state.windows)


@settings(max_examples=200, deadline=None)
@given(cost=st.integers(min_value=-10**20, max_value=10**20),
       tokens=st.integers(min_value=-10**12, max_value=10**12))
def test_settle_never_makes_spend_negative(cost, tokens):
    engine, record, _ = engine_with_key(True)
    ticket = engine.admit(engine.resolve(record, "m"), RATES, input_bound=100,
                          input_estimate=25, max_output=10)
    engine.settle(ticket, cost, tokens)
    for state in engine.states.values():
        assert all(counter.spent >= 0 and counter.held == 0 for counter in state.windows)
        assert state.tokens.used(engine.clock()) >= 0
