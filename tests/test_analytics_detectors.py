"""Detectors on simulated data with labelled anomalies, the Finding record's shape, and
``jupyter vkeys anomalies`` as a user runs it (table, --json, bad input)."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import datetime, timedelta, timezone

import numpy as np
import pytest

from jupyter_vkeys.analytics import detectors, source
from jupyter_vkeys.analytics.simulate import (hourly_counts, make_fleet, materialize,
                                              simulate, write_warehouse)

END = datetime(2026, 3, 2, tzinfo=timezone.utc)
DAYS = 16


@pytest.fixture(scope="module")
def wh(tmp_path_factory):
    out = tmp_path_factory.mktemp("wh")
    sim = simulate(days=DAYS, users=20, teams=3, seed=21, anomalies=True, out=out, end=END)
    return out, sim


def _t(text):
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


@pytest.fixture(scope="module")
def found(wh):
    out, sim = wh
    con = source.connect(out)
    return detectors.scan(con, END - timedelta(days=DAYS - 5), END)


def test_every_labelled_kind_is_found_with_its_cause(wh, found):
    _, sim = wh
    for lab in sim.labels:
        if lab["kind"] == "spend_drop":
            continue  # a key's silence: its own test below (needs a steady key)
        hits = [f for f in found if f.detector == lab["kind"]
                and f.entity["key_id"] == lab["entity_key"]
                and _t(f.start) < _t(lab["end"]) + timedelta(hours=2)
                and _t(f.end) > _t(lab["start"]) - timedelta(hours=2)]
        assert hits, lab
        f = hits[0]
        causes = {(c.dimension, c.value) for c in f.root_cause}
        if lab["kind"] == "spend_spike":
            assert ("model", lab["model"]) in causes or ("notebook", lab["notebook"]) in causes
        if lab["kind"] == "new_model":
            assert ("model", lab["model"]) in causes
        if lab["kind"] == "runaway_loop":
            assert any(d == "prompt" for d, _ in causes)
            assert ("notebook", lab["notebook"]) in causes
        assert f.entity["user"] == lab["user"] and f.entity["team"] == lab["team"]


def test_few_false_alerts(wh, found):
    _, sim = wh
    false = [f for f in found if not any(
        lab["entity_key"] == f.entity["key_id"]
        and _t(f.start) < _t(lab["end"]) + timedelta(hours=2)
        and _t(f.end) > _t(lab["start"]) - timedelta(hours=2) for lab in sim.labels)]
    assert len(false) <= max(2, sim.fleet.size // 5), [f.explanation for f in false]


def test_finding_record_shape(found):
    assert found
    for f in found:
        d = f.as_dict()
        assert set(d) >= {"detector", "entity", "start", "end", "actual", "expected", "lower",
                          "upper", "score", "impact_usd", "root_cause", "explanation"}
        assert set(d["entity"]) >= {"key_id", "user", "team"}
        assert _t(d["start"]).tzinfo and d["start"].endswith("Z") and d["start"] <= d["end"]
        assert d["lower"] <= d["upper"]
        for c in d["root_cause"]:
            assert set(c) == {"dimension", "value", "contribution"}
            assert 0 <= c["contribution"] <= 1
        assert d["explanation"].endswith(".") and d["entity"]["key_id"] in d["explanation"]
        json.dumps(d)
    impacts = [abs(f.impact_usd) for f in found]
    assert impacts == sorted(impacts, reverse=True)


def test_drop_of_a_steady_key(tmp_path):
    sim = simulate(days=14, users=10, teams=2, seed=4, anomalies=True, out=tmp_path, end=END,
                   service_share=1.0, calls_per_day=200)
    drops = [lab for lab in sim.labels if lab["kind"] == "spend_drop"]
    con = source.connect(tmp_path)
    found = detectors.scan(con, END - timedelta(days=9), END, detectors=["spend_drop"])
    for lab in drops:
        assert any(f.entity["key_id"] == lab["entity_key"] and _t(f.start) < _t(lab["end"])
                   and _t(f.end) > _t(lab["start"]) for f in found), lab


def test_level_shift_is_one_finding_and_steady_keys_none(tmp_path):
    """One person's traffic triples on a Friday and stays there: one ``level_shift``
    finding within three days of the step (then the new level is normal), naming the
    expected level and what a month at the new one costs; nobody else is flagged."""
    rng = np.random.default_rng(5)
    fleet = make_fleet(12, 2, rng, service_share=0.0, calls_per_day=120)
    days = 28
    start_hour = int(END.timestamp() // 3600) - days * 24
    counts = hourly_counts(fleet, start_hour, days * 24, rng)
    shifted = int(np.argmax(counts.sum(axis=1)))
    step = (days - 10) * 24  # 00:00 UTC ten days before the end (a Friday)
    counts[shifted, step:] *= 3
    write_warehouse(materialize(fleet, counts, start_hour, rng), tmp_path)
    con = source.connect(tmp_path)
    found = detectors.scan(con, END - timedelta(days=14), END, detectors=["level_shift"])
    assert [f.entity["key_id"] for f in found] == [fleet.key_of[shifted]], \
        [f.explanation for f in found]
    f = found[0]
    shift_at = datetime.fromtimestamp((start_hour + step) * 3600, timezone.utc)
    assert shift_at - timedelta(days=1) <= _t(f.start) <= shift_at + timedelta(days=3)
    assert 2.0 <= f.actual / f.expected <= 4.5 and f.lower < f.expected < f.upper < f.actual
    assert f.impact_usd == pytest.approx(f.actual - f.expected)
    assert "more a month" in f.explanation and fleet.key_of[shifted] in f.explanation


def test_thresholds_override():
    th = detectors.Thresholds().with_overrides(["spike_z=4", "loop-calls=10"])
    assert th.spike_z == 4.0 and th.loop_calls == 10
    with pytest.raises(ValueError, match="unknown threshold 'nope'"):
        detectors.Thresholds().with_overrides(["nope=1"])
    with pytest.raises(ValueError, match="spike_z needs a number, got 'x'"):
        detectors.Thresholds().with_overrides(["spike_z=x"])


def run(*args):
    return subprocess.run([sys.executable, "-m", "jupyter_vkeys.cli", "anomalies", *args],
                          capture_output=True, text=True, timeout=120)


def test_cli(wh):
    out, sim = wh
    since, until = (END - timedelta(days=DAYS - 5)).isoformat(), END.isoformat()
    r = run("--warehouse", str(out), "--since", since, "--until", until, "--json")
    assert r.returncode == 0, r.stderr
    records = json.loads(r.stdout)
    assert {x["detector"] for x in records} >= {"spend_spike", "runaway_loop", "new_model",
                                                "error_spike"}
    table = run("--warehouse", str(out), "--since", since, "--until", until)
    assert table.returncode == 0 and "finding(s)" in table.stdout and "runaway_loop" in table.stdout
    for args, message in [
        (["--since", "yesterday"], "--since 'yesterday' is not an ISO 8601 time"),
        (["--since", until, "--until", since], "must be before --until"),
        (["--detector", "spend_spike,nope"], "unknown detector(s) nope"),
        (["--set", "spike_z=-1"], "must not be negative"),
    ]:
        bad = run("--warehouse", str(out), *args)
        assert bad.returncode != 0 and message in bad.stderr and "Traceback" not in bad.stderr
    empty = run("--warehouse", str(out / "nothing"))
    assert empty.returncode != 0 and "no events under" in empty.stderr


def test_cli_on_a_corrupt_file(tmp_path):
    (tmp_path / "events" / "date=2026-03-01").mkdir(parents=True)
    (tmp_path / "events" / "date=2026-03-01" / "broken.parquet").write_bytes(b"PAR1 not really")
    bad = run("--warehouse", str(tmp_path), "--since", "2026-03-01", "--until", "2026-03-02")
    assert bad.returncode != 0 and "could not read" in bad.stderr
    assert "Traceback" not in bad.stderr
