"""Analytics speed: simulator events/s, attribution over 10M events, a 30-day anomaly scan
over ~200 keys; each printed against its target.

    python benchmarks/analytics_speed.py [--events 10000000] [--repeat 3]

The 10M-event warehouse is one simulated million events written once and copied under
other file names (as if several replicas had written them): the query reads every row.
On a shared machine, repeat before trusting a difference of less than 15%.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

from jupyter_vkeys.analytics import detectors, queries, source
from jupyter_vkeys.analytics.simulate import simulate

END = datetime(2026, 6, 1, tzinfo=timezone.utc)


def best(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=10_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="vkeys-speed-"))
    try:
        # 1. simulator
        t = time.perf_counter()
        sim = simulate(days=30, users=400, seed=1, out=tmp / "base", end=END)
        took = time.perf_counter() - t
        rate = sim.table.num_rows / took
        print(f"simulator: {sim.table.num_rows:,} events written in {took:.2f} s = "
              f"{rate:,.0f} events/s (target >= 100,000: {rate / 1e5:.2f}x)")
        # 2. attribution over --events rows
        copies = max(1, round(args.events / sim.table.num_rows))
        for f in sim.files:
            for i in range(copies):
                target = tmp / "big" / f.relative_to(tmp / "base")
                target = target.with_name(f"replica{i:02d}-{target.name}")
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(f, target)
        con = source.connect(tmp / "big")
        n = con.execute("SELECT count(*) FROM ev").fetchall()[0][0]
        spend = best(lambda: queries.attribution(con, "user,day",
                                                 measures=("spend_usd", "calls")), args.repeat)
        fast = best(lambda: queries.attribution(con, "user,day",
                                                measures=queries.FAST_MEASURES), args.repeat)
        full = best(lambda: queries.attribution(con, "user,day"), args.repeat)
        print(f"attribution by user and day over {n:,} events (target <= 1 s): spend and "
              f"calls {spend:.3f} s ({1 / spend:.2f}x); + tokens by class, error and refusal "
              f"rates {fast:.3f} s ({1 / fast:.2f}x); + latency p50/p95 {full:.3f} s")
        con.close()
        # 3. anomaly scan: 30 days scanned (28 more of history) over ~200 keys
        simulate(days=58, users=170, seed=3, anomalies=True, out=tmp / "scan", end=END,
                 calls_per_day=30)
        con = source.connect(tmp / "scan")
        keys = con.execute("SELECT count(DISTINCT entity_key) FROM ev WHERE start_time >= ?",
                           [END - timedelta(days=30)]).fetchall()[0][0]
        found = []
        scan = best(lambda: found.append(detectors.scan(con, END - timedelta(days=30), END)),
                    args.repeat)
        print(f"anomaly scan, 30 days x {keys} keys (28 days of history read before): "
              f"{scan:.2f} s, {len(found[-1])} findings (target <= 10 s: {10 / scan:.2f}x)")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
