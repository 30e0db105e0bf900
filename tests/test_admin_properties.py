"""Property-based tests (hypothesis) of the policy and key-field validation: arbitrary
JSON never raises anything but :class:`PolicyError` / :class:`InvalidKeyRequest` (a 400),
and whatever is accepted can be saved, reported and parsed back to the same policy.
No I/O: the registry runs over a store in a temporary directory.
"""

from __future__ import annotations

import orjson
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from jupyter_vkeys.policy.spec import POLICY_FIELDS, PolicyError, parse_policy
from jupyter_vkeys.registry import KEY_FIELDS, InvalidKeyRequest, KeyRegistry, iso_time
from jupyter_vkeys.store import Store

SETTINGS = settings(max_examples=300, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])

scalars = (st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70)
           | st.floats(allow_nan=False) | st.text(max_size=40)
           | st.sampled_from(["1e999999", "-1", "NaN", "day", "month", "total", "a b", ""]))
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=5)
                           | st.dictionaries(st.text(max_size=10), inner, max_size=5),
                           max_leaves=30)


def _nested(depth: int) -> object:
    value: object = "leaf"
    for i in range(depth):
        value = {"d": value} if i % 2 else [value]
    return value


deep = st.integers(min_value=0, max_value=300).map(_nested)
amounts = (st.floats(min_value=0, max_value=2e9) | st.floats() | st.integers(min_value=-1)
           | st.sampled_from(["1e999999", "1e400", "1e9", "-0", "5", "0.000001", "1e-999999"]))


def _field_value(name: str):
    """Values near the shape of each field, mixed with arbitrary JSON."""
    budgets = st.lists(st.fixed_dictionaries(
        {}, optional={"usd": amounts,
                      "period": st.sampled_from(["day", "week", "month", "total", "year"]),
                      "soft": json_values | st.floats(min_value=-1, max_value=2)}), max_size=6)
    shaped = {"budgets": budgets, "models": st.lists(st.text(max_size=300), max_size=5),
              "aliases": st.dictionaries(st.text(max_size=5), json_values, max_size=4),
              "rpm": st.integers(min_value=-5, max_value=2 * 10**9),
              "tpm": st.integers(min_value=-5, max_value=2 * 10**12),
              "max_concurrency": st.integers(min_value=-5, max_value=2 * 10**6),
              "expires_at": st.floats(min_value=-1e300, max_value=1e300) | st.text(max_size=30),
              "owner": st.text(max_size=200) | st.sampled_from(["a b", "x/y", "t\x00", "ok"]),
              "team": st.text(max_size=5),
              "metadata": st.dictionaries(st.text(max_size=3), deep, max_size=2)}
    return shaped.get(name, json_values) | json_values


def _objects(fields):
    """One field alone (so each field's own check is reached), several, or anything."""
    single = st.one_of(*[st.fixed_dictionaries({f: _field_value(f)}) for f in fields])
    return single | st.fixed_dictionaries({}, optional={f: _field_value(f) for f in fields}) \
        | st.dictionaries(st.text(max_size=8), json_values, max_size=4)


@SETTINGS
@given(data=_objects(POLICY_FIELDS) | json_values)
@example(data={"budgets": [{"usd": "1e999999"}]})  # decimal Overflow (issue 11, item 10)
@example(data={"budgets": [{"usd": "1e99999"}]})  # a 100,000-digit pico amount
@example(data={"budgets": [{"usd": 1e308}]})
def test_parse_policy_raises_only_policy_error(data):
    try:
        policy = parse_policy(data)
    except PolicyError as exc:
        assert str(exc)  # says what was wrong
        return
    # Accepted: it is within bounds, serializes, and reading it back gives the same policy.
    assert all(0 <= b.pico <= 10**9 * 10**12 for b in policy.budgets)
    saved = orjson.loads(orjson.dumps(policy.as_dict()))
    assert parse_policy(saved) == policy


@SETTINGS
@given(base=_objects(POLICY_FIELDS), patch=_objects(POLICY_FIELDS))
def test_patching_a_valid_policy_raises_only_policy_error(base, patch):
    try:
        start = parse_policy(base)
    except PolicyError:
        return
    try:
        parse_policy(patch, base=start)
    except PolicyError:
        pass


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    store = Store(tmp_path_factory.mktemp("props") / "registry.sqlite")
    yield KeyRegistry(store, b"pepper")
    store.close()


@SETTINGS
@given(fields=_objects(KEY_FIELDS + POLICY_FIELDS))
def test_key_fields_raise_only_invalid_request_and_refusals_write_nothing(registry, fields):
    rows = len(registry.store.audit_rows(0, 10**6))
    count = len(registry.records)
    try:
        record, token = registry.create(fields, actor="prop")
    except (InvalidKeyRequest, PolicyError) as exc:
        assert str(exc)
        assert len(registry.records) == count
        assert len(registry.store.audit_rows(0, 10**6)) == rows
        return
    # Accepted: every scope it names is a valid scope (reports of it work), it serializes
    # for the API and the audit trail, and it loads back unchanged.
    from jupyter_vkeys.policy.spec import check_scope
    from jupyter_vkeys.store import public_view
    for kind, name in (("user", record.owner), ("team", record.team),
                       ("project", record.project)):
        if name:
            check_scope(f"{kind}:{name}")
    orjson.dumps(public_view(record))
    assert record.expires_at is None or -62135596800 <= record.expires_at <= 253402300799
    iso_time(record.expires_at)  # what a refusal of this key says
    loaded = {r.id: r for r in registry.store.load_keys()}[record.id]
    assert loaded == record
