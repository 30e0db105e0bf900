"""What telemetry costs the data plane: the same gateway with metrics and the access log
on, and with both off, side by side in one run.

Starts on loopback the fast fake upstream and two ``jupyter-vkeys serve`` processes
(lean front, policy-carrying key, warehouse on, ``--log-level INFO`` so that access
lines are really formatted and written, to /dev/null): ``on`` (``metrics``,
``access_log``; a scraper reads ``/metrics`` every second while wrk runs) and ``off``
(``metrics = False``, ``access_log = False``). ``--access-log stdout`` sends the
``on`` gateway's lines straight to stdout (``access_log_file = "-"``) instead. wrk drives each in turn, interleaved,
sequentially (one connection: latency) and at 16 and 64 connections (throughput).
Prints medians, the throughput ratio and the added p50, and writes them as JSON.
The targets (issue 17): under 5% of throughput and under 0.03 ms of added p50.

    python benchmarks/telemetry_cost.py            # about 3 minutes
    python benchmarks/telemetry_cost.py --quick    # about 1.5 minutes, noisier
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import threading
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from run import CHAT, Procs, admin, free_port, settle, wrk  # noqa: E402


def start(procs: Procs, upstream: str, data_dir: Path, telemetry: bool,
          access_log_file: str = "") -> dict:
    """One gateway with telemetry on or off; returns its url, key and process."""
    port = free_port()
    data_dir.mkdir(parents=True, exist_ok=True)
    config = data_dir / "config.json"
    config.write_text(json.dumps({"VKeysGateway": {
        "providers": {"openai": {"kind": "openai", "base_url": upstream + "/v1",
                                 "api_key_env": "BENCH_REAL_KEY"}},
        "fsync_interval": 1.0, "metrics": telemetry, "access_log": telemetry,
        "access_log_file": access_log_file}}))
    token = "bench-admin-token"
    proc = procs.start([sys.executable, "-m", "jupyter_vkeys.cli", "serve", "--port", str(port),
                        "--data-dir", str(data_dir), "--config", str(config),
                        "--log-level", "INFO"],
                       env={"BENCH_REAL_KEY": "sk-bench-real", "VKEYS_ADMIN_TOKEN": token},
                       port=port)
    url = f"http://127.0.0.1:{port}/vkeys"
    admin(url, token, "PUT", "/policies/team:bench", {"budgets": [{"usd": 1e6, "period": "month"}]})
    key = admin(url, token, "POST", "/keys", {
        "owner": "bench", "team": "bench", "project": "perf", "models": ["gpt-*"],
        "rpm": 10_000_000, "tpm": 10_000_000_000,
        "budgets": [{"usd": 1e5, "period": "day"}]})["key"]
    return {"proc": proc, "url": url, "key": key}


class Scraper(threading.Thread):
    """Reads ``/metrics`` once a second, as Prometheus would, while the load runs."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.stop = threading.Event()
        self.scrapes = 0

    def run(self) -> None:
        while not self.stop.wait(1.0):
            try:
                with urllib.request.urlopen(self.url, timeout=5) as resp:
                    resp.read()
                self.scrapes += 1
            except OSError:
                pass


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="shorter runs")
    parser.add_argument("--repeat", type=int, default=3, help="interleaved repetitions")
    parser.add_argument("--access-log", choices=["logging", "stdout"], default="logging",
                        help="where the 'on' gateway's access lines go: the logging module "
                             "(the default) or straight to stdout (access_log_file='-')")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "telemetry_cost.json")
    args = parser.parse_args()
    if not shutil.which("wrk"):
        print("wrk is required: apt-get install wrk", file=sys.stderr)
        return 2
    secs = 3 if args.quick else 6
    repeat = 2 if args.quick else args.repeat
    work = Path(tempfile.mkdtemp(prefix="vkeys-telemetry-"))
    procs = Procs()
    results: dict = {"machine": {"cores": os.cpu_count(), "loadavg_before": os.getloadavg()}}
    try:
        up_port = free_port()
        procs.start([sys.executable, str(HERE / "fast_upstream.py"), "--port", str(up_port)],
                    port=up_port)
        upstream = f"http://127.0.0.1:{up_port}"
        gateways = {"on": start(procs, upstream, work / "on", True,
                                "-" if args.access_log == "stdout" else ""),
                    "off": start(procs, upstream, work / "off", False)}
        targets = {name: (f"{g['url']}/openai/v1/chat/completions",
                          {"Authorization": f"Bearer {g['key']}"})
                   for name, g in gateways.items()}
        for url, headers in targets.values():  # warm-up
            wrk(url, headers, CHAT, 4, 1)
        scraper = Scraper(gateways["on"]["url"] + "/metrics")
        scraper.start()
        runs: dict[str, dict[str, list]] = {n: {"seq": [], "c16": [], "c64": []}
                                            for n in targets}
        pids = [g["proc"].pid for g in gateways.values()]
        for i in range(repeat):
            settle(pids)
            order = list(targets) if i % 2 == 0 else list(reversed(targets))
            for load, conns in (("seq", 1), ("c16", 16), ("c64", 64)):
                for name in order:
                    url, headers = targets[name]
                    runs[name][load].append(wrk(url, headers, CHAT, conns, secs))
        scraper.stop.set()
        summary = {}
        for name, loads in runs.items():
            summary[name] = {
                "seq_p50_ms": statistics.median(r["p50"] for r in loads["seq"]),
                "seq_rps": statistics.median(r["rps"] for r in loads["seq"]),
                "c16_rps": statistics.median(r["rps"] for r in loads["c16"]),
                "c64_rps": statistics.median(r["rps"] for r in loads["c64"]),
                "c64_p50_ms": statistics.median(r["p50"] for r in loads["c64"]),
                "errors": sum(r["errors"] for load in loads.values() for r in load)}
        on, off = summary["on"], summary["off"]
        results.update(access_log=args.access_log, summary=summary, runs=runs, scrapes=scraper.scrapes,
                       added_p50_ms=round(on["seq_p50_ms"] - off["seq_p50_ms"], 4),
                       throughput_cost={load: round(1 - on[f"{load}_rps"] / off[f"{load}_rps"], 4)
                                        for load in ("seq", "c16", "c64")},
                       loadavg_after=os.getloadavg())
        print(f"{'':6}{'seq p50 ms':>12}{'seq rps':>10}{'c16 rps':>10}{'c64 rps':>10}"
              f"{'c64 p50 ms':>12}{'errors':>8}")
        for name, row in summary.items():
            print(f"{name:6}{row['seq_p50_ms']:12.3f}{row['seq_rps']:10.0f}{row['c16_rps']:10.0f}"
                  f"{row['c64_rps']:10.0f}{row['c64_p50_ms']:12.3f}{row['errors']:8d}")
        print(f"added p50 (sequential): {results['added_p50_ms']:+.4f} ms (target < 0.03)")
        for load, cost in results["throughput_cost"].items():
            print(f"throughput cost {load}: {cost:+.2%} (target < 5%)")
        print(f"access log via {args.access_log}; scrapes of /metrics during the run: {scraper.scrapes}; "
              f"load average {results['machine']['loadavg_before']} -> {results['loadavg_after']}")
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2))
    finally:
        procs.stop()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
