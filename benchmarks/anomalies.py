"""Anomaly detectors: precision, recall and false alerts per entity-week, over seeds.

Two kinds of data, both with injected, labelled anomalies (spend spikes, runaway
loops, first use of a pricier model, error spikes, drops of a steady key):

- ``simulator``: ``jupyter vkeys simulate`` traffic (Poisson around a smooth profile).
- ``real-shaped``: series this script draws itself, shaped like real notebook traffic
  rather than like the simulator: work in bursty sessions (a few per weekday, heavy-tailed
  intensity and length), Pareto-sized calls (a few huge prompts), two fleet-wide
  holidays, permanent level shifts on 15% of keys (labelled ``level_shift``: an alert
  within three days of the shift is right, later ones are false), and 25% of keys only
  a few days old at the end (short history).

The first 7 days are history; the remaining 23 are scanned in one call. A finding is
right when it names the labelled key and overlaps the label's window (2 h slack); a
finding overlapping another label of the same key counts as explained (not false).

    python benchmarks/anomalies.py [--seeds 1 2 3] [--users 40] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections import defaultdict
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np

from jupyter_vkeys.analytics import detectors, source
from jupyter_vkeys.analytics.simulate import (inject, make_fleet, materialize,
                                              simulate, write_warehouse)

DAYS = 30
WARMUP = 7
SLACK = timedelta(hours=2)
END = datetime(2026, 6, 1, tzinfo=timezone.utc)
KINDS = ("spend_spike", "spend_drop", "runaway_loop", "new_model", "error_spike")


def _iso(h: int) -> str:
    return datetime.fromtimestamp(h * 3600, timezone.utc).isoformat().replace("+00:00", "Z")


def real_shaped(users: int, seed: int, out: Path) -> list[dict]:
    """Write a real-shaped warehouse to ``out``; return its labels."""
    rng = np.random.default_rng(1000 + seed)
    fleet = make_fleet(users, max(2, users // 8), rng)
    hours = DAYS * 24
    end_h = int(END.timestamp() // 3600)
    start_h = end_h - hours
    counts = np.zeros((fleet.size, hours), np.int64)
    for e in range(fleet.size):
        per_hour = fleet.rate[e] / 24.0
        if fleet.is_service[e]:
            lam = np.full(hours, per_hour) * (1 + 0.3 * np.sin(np.arange(hours) / 24 * 2 * np.pi))
            for _ in range(int(rng.poisson(DAYS / 7))):  # weekly-ish batch bursts
                h = int(rng.integers(0, hours - 2))
                lam[h:h + 2] *= rng.uniform(3, 6)
            counts[e] = rng.poisson(lam)
            continue
        for d in range(DAYS):
            local_day = (start_h // 24 + d + 3) % 7
            sessions = rng.poisson(1.8 if local_day < 5 else 0.25)
            for _ in range(sessions):
                s = d * 24 + int(8 - fleet.offset_h[e] + rng.uniform(0, 11))
                length = float(np.clip(rng.exponential(1.5), 0.3, 6))
                intensity = per_hour * 3.0 * rng.lognormal(0.0, 1.0)
                a, b = max(s, 0), min(int(s + np.ceil(length)), hours)
                if a < b:
                    counts[e, a:b] += rng.poisson(intensity, b - a)
    labels: list[dict] = []
    people = np.flatnonzero(~fleet.is_service)
    for _ in range(2):  # fleet-wide holidays (a weekday after the warm-up)
        d = int(rng.integers(WARMUP + 1, DAYS - 1))
        counts[people, d * 24:(d + 1) * 24] = (counts[people, d * 24:(d + 1) * 24] * 0.05
                                               ).astype(np.int64)
    young = rng.permutation(people)[: max(1, len(people) // 4)]
    for e in young:
        counts[e, : hours - int(rng.integers(2, 7)) * 24] = 0
    shifted = [e for e in rng.permutation(people)[: max(1, len(people) * 15 // 100)]
               if e not in set(young)]
    for e in shifted:
        h = int(rng.integers((WARMUP + 2) * 24, hours - 72))
        counts[e, h:] = (counts[e, h:] * rng.uniform(2.0, 4.0)).astype(np.int64)
        labels.append({"kind": "level_shift", "entity_key": fleet.key_of[e],
                       "start": _iso(start_h + h), "end": _iso(start_h + h + 72)})
    inj = inject(fleet, counts, start_h, rng, max(1, users // 10), warmup_days=WARMUP)
    labels += inj.labels

    def pareto(entity: np.ndarray) -> np.ndarray:
        return np.clip((rng.pareto(1.4, len(entity)) + 1.0) * 0.45, 0.05, 150.0)

    table = materialize(fleet, counts, start_h, rng, inj, call_scale=pareto)
    write_warehouse(table, out)
    return labels


def simulated(users: int, seed: int, out: Path) -> list[dict]:
    """Write a simulator warehouse to ``out``; return its labels."""
    sim = simulate(DAYS, users, max(2, users // 8), seed=seed, anomalies=True, out=out, end=END)
    return sim.labels


def _t(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def evaluate(findings, labels, entities: int, weeks: float) -> dict:
    """Per-detector recall, precision and false alerts per entity-week."""
    by_key = defaultdict(list)
    for lab in labels:
        by_key[lab["entity_key"]].append(lab)
    stats = {k: {"labels": 0, "found": 0, "findings": 0, "right": 0, "false": 0}
             for k in (*KINDS, "refusal_spike", "level_shift")}
    hit = set()
    for f in findings:
        s = stats.setdefault(f.detector, {"labels": 0, "found": 0, "findings": 0, "right": 0,
                                          "false": 0})
        s["findings"] += 1
        f0, f1 = _t(f.start), _t(f.end)
        near = [i for i, lab in enumerate(labels) if lab["entity_key"] == f.entity["key_id"]
                and f0 < _t(lab["end"]) + SLACK and f1 > _t(lab["start"]) - SLACK]
        same = [i for i in near if labels[i]["kind"] == f.detector or (
            labels[i]["kind"] == "level_shift" and f.detector == "spend_spike")
            or (labels[i]["kind"] == "spend_spike" and f.detector == "level_shift")]
        if same:
            s["right"] += 1
            hit.update(same)
        elif not near:
            s["false"] += 1
    for i, lab in enumerate(labels):
        stats[lab["kind"]]["labels"] += 1
        stats[lab["kind"]]["found"] += i in hit
    total_false = sum(s.get("false", 0) for s in stats.values())
    return {"detectors": stats, "false_alerts": total_false, "entities": entities,
            "weeks": weeks, "false_per_entity_week": total_false / max(entities * weeks, 1)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3, 4, 5])
    parser.add_argument("--users", type=int, default=40)
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                        help="override a detector threshold")
    parser.add_argument("--json", help="write the figures here too")
    parser.add_argument("--scenarios", nargs="+", default=["simulator", "real-shaped"],
                        choices=["simulator", "real-shaped"], help="which data to score on")
    args = parser.parse_args(argv)
    th = detectors.Thresholds().with_overrides(args.set)
    results = {}
    for scenario, make in (("simulator", simulated), ("real-shaped", real_shaped)):
        if scenario not in args.scenarios:
            continue
        agg = defaultdict(lambda: defaultdict(int))
        false = ent_weeks = 0.0
        scan_s = []
        for seed in args.seeds:
            with tempfile.TemporaryDirectory() as tmp:
                labels = make(args.users, seed, Path(tmp))
                con = source.connect(tmp)
                since = END - timedelta(days=DAYS - WARMUP)
                t0 = time.perf_counter()
                found = detectors.scan(con, since, END, th)
                scan_s.append(time.perf_counter() - t0)
                entities = con.execute("SELECT count(DISTINCT entity_key) FROM ev WHERE "
                                       "start_time >= ?", [since]).fetchall()[0][0]
                r = evaluate(found, labels, entities, (DAYS - WARMUP) / 7)
                for det, s in r["detectors"].items():
                    for k, v in s.items():
                        agg[det][k] += v
                false += r["false_alerts"]
                ent_weeks += entities * r["weeks"]
                con.close()
        rows = {}
        for det, s in agg.items():
            rows[det] = {
                "labels": s["labels"], "found": s["found"],
                "recall": s["found"] / s["labels"] if s["labels"] else None,
                "findings": s.get("findings", 0), "right": s.get("right", 0),
                "false": s.get("false", 0),
                "precision": (s["right"] / s["findings"]) if s.get("findings") else None,
                "false_per_entity_week": s.get("false", 0) / ent_weeks}
        results[scenario] = {"detectors": rows, "false_per_entity_week": false / ent_weeks,
                             "false_per_entity_month": false / ent_weeks * 30 / 7,
                             "scan_seconds_mean": float(np.mean(scan_s))}
        print(f"\n== {scenario}: seeds {args.seeds}, {args.users} users, {DAYS} days "
              f"({WARMUP} history + {DAYS - WARMUP} scanned), scan {np.mean(scan_s):.2f} s")
        print(f"{'detector':15} {'labels':>6} {'recall':>7} {'findings':>8} {'precision':>9} "
              f"{'false':>5} {'false/entity-week':>17}")
        for det, r in rows.items():
            rec = "-" if r["recall"] is None else f"{r['recall']:.2f}"
            prec = "-" if r["precision"] is None else f"{r['precision']:.2f}"
            print(f"{det:15} {r['labels']:>6} {rec:>7} {r['findings']:>8} {prec:>9} "
                  f"{r['false']:>5} {r['false_per_entity_week']:>17.4f}")
        print(f"all detectors: {false / ent_weeks:.4f} false alerts per entity-week "
              f"({false / ent_weeks * 30 / 7:.3f} per entity-month; target <= 1)")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
