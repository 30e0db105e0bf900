"""Replicas on one Redis vs the single-process in-memory gateway, side by side.

Starts, on loopback: the fast fake upstream (benchmarks/fast_upstream.py), one
``redis-server`` (AOF on, ``appendfsync everysec``, as the README recommends), the
single-process gateway (``jupyter vkeys serve``, no ``--state-url``: the default) and
1, 2 and 4 replicas of the same command with ``--state-url``. Every gateway serves one
key with a day budget, RPM, TPM and a concurrency cap, on team and global budgets,
so each call touches every kind of shared counter.

Load comes from ``wrk``, one process per replica (a load balancer spreading
connections evenly): throughput at 64 connections in all, and latency at one
connection (sequential calls, on one replica). Redis's own ``INFO commandstats``
gives the round trips and the server-side microseconds per call. Contenders are
measured in interleaved rounds; figures are medians.

    python benchmarks/replicas.py            # about 3 minutes
    python benchmarks/replicas.py --quick    # about 1 minute, noisier

On a 2-core machine the replicas share the cores with Redis, the upstream and wrk:
the throughput column shows the cost of sharing state, not how N machines scale.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from run import CHAT, Procs, free_port, wrk  # noqa: E402


def redis_stats(port: int) -> dict[str, tuple[int, int]]:
    """``command -> (calls, usec)`` from ``INFO commandstats``."""
    out = subprocess.run(["redis-cli", "-p", str(port), "INFO", "commandstats"],
                         capture_output=True, text=True, check=True).stdout
    stats = {}
    for line in out.splitlines():
        if line.startswith("cmdstat_"):
            name, fields = line[8:].split(":", 1)
            parts = dict(p.split("=") for p in fields.split(","))
            stats[name] = (int(parts["calls"]), int(parts["usec"]))
    return stats


def prepare(root: Path, upstream: str, count: int) -> tuple[list[Path], str, Path]:
    """``count`` data directories holding the same key and policies (made offline with
    ``jupyter vkeys`` in the first, then copied); returns them, the key and the config."""
    config = root / "config.json"
    config.write_text(json.dumps({"VKeysGateway": {
        "providers": {"openai": {"kind": "openai", "base_url": upstream + "/v1",
                                 "api_key_env": "BENCH_REAL_KEY"}},
        "fsync_interval": 1.0, "rate_refusal_delay": 0.0}}))
    first = root / "d0"
    cli = [sys.executable, "-m", "jupyter_vkeys.cli"]
    common = ["--data-dir", str(first), "--config", str(config)]
    subprocess.run([*cli, "policy", "set", "team:bench", *common, "--budget", "1000000/month"],
                   check=True, capture_output=True)
    subprocess.run([*cli, "policy", "set", "global", *common, "--budget", "10000000/month"],
                   check=True, capture_output=True)
    out = subprocess.run([*cli, "keys", "create", *common, "--json", "--owner", "bench",
                          "--team", "bench", "--project", "perf", "--rpm", "10000000",
                          "--tpm", "10000000000", "--max-concurrency", "1000",
                          "--budget", "100000/day"], check=True, capture_output=True,
                         text=True).stdout
    key = json.loads(out)["key"]
    dirs = [first]
    for i in range(1, count):
        target = root / f"d{i}"
        target.mkdir()
        for name in ("registry.sqlite", "pepper"):
            shutil.copy(first / name, target / name)
        dirs.append(target)
    return dirs, key, config


def start_gateway(procs: Procs, data_dir: Path, config: Path, state_url: str) -> str:
    port = free_port()
    args = [sys.executable, "-m", "jupyter_vkeys.cli", "serve", "--port", str(port),
            "--data-dir", str(data_dir), "--config", str(config), "--log-level", "WARNING"]
    if state_url:
        args += ["--state-url", state_url]
    procs.start(args, env={"BENCH_REAL_KEY": "sk-bench-real"}, port=port)
    return f"http://127.0.0.1:{port}/vkeys/openai/v1/chat/completions"


def spread(urls: list[str], headers: dict, connections: int, seconds: float) -> dict:
    """wrk on every URL at once (``connections`` split evenly); summed req/s, worst p50."""
    import concurrent.futures

    share = max(connections // len(urls), 1)
    with concurrent.futures.ThreadPoolExecutor(len(urls)) as pool:
        runs = list(pool.map(lambda u: wrk(u, headers, CHAT, share, seconds), urls))
    return {"rps": sum(r["rps"] for r in runs), "p50": max(r["p50"] for r in runs),
            "p99": max(r["p99"] for r in runs), "errors": sum(r["errors"] for r in runs)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="shorter runs")
    parser.add_argument("--repeat", type=int, default=3, help="interleaved rounds")
    parser.add_argument("--out", help="write the figures as JSON here")
    args = parser.parse_args()
    for tool in ("wrk", "redis-server", "redis-cli"):
        if not shutil.which(tool):
            print(f"{tool} is required (apt-get install wrk redis-server)", file=sys.stderr)
            return 2
    secs = 3 if args.quick else 6
    repeat = 2 if args.quick else args.repeat
    procs = Procs()
    tmp = Path(tempfile.mkdtemp(prefix="vkeys-replicas-"))
    try:
        up_port = free_port()
        procs.start([sys.executable, str(HERE / "fast_upstream.py"), "--port", str(up_port)],
                    port=up_port)
        upstream = f"http://127.0.0.1:{up_port}"
        redis_port = free_port()
        (tmp / "redis").mkdir()
        procs.start(["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1",
                     "--dir", str(tmp / "redis"), "--appendonly", "yes", "--appendfsync",
                     "everysec", "--save", ""], port=redis_port)
        state_url = f"redis://127.0.0.1:{redis_port}/0"
        dirs, key, config = prepare(tmp, upstream, 1 + 1 + 2 + 4)
        headers = {"Authorization": f"Bearer {key}"}
        contenders = {"single (memory)": [start_gateway(procs, dirs[0], config, "")]}
        pool = iter(dirs[1:])
        for n in (1, 2, 4):
            contenders[f"{n} replica{'s' if n > 1 else ''} + redis"] = [
                start_gateway(procs, next(pool), config, state_url) for _ in range(n)]
        for urls in contenders.values():
            spread(urls, headers, 8, 1)  # warm-up
        runs: dict[str, dict[str, list]] = {n: {"seq": [], "c64": [], "redis": []}
                                            for n in contenders}
        for _ in range(repeat):
            for name, urls in contenders.items():
                runs[name]["seq"].append(wrk(urls[0], headers, CHAT, 1, secs))
                before = redis_stats(redis_port)
                result = spread(urls, headers, 64, secs)
                after = redis_stats(redis_port)
                runs[name]["c64"].append(result)
                calls = usec = 0
                for cmd in ("evalsha", "eval"):
                    c0, u0 = before.get(cmd, (0, 0))
                    c1, u1 = after.get(cmd, (0, 0))
                    calls, usec = calls + c1 - c0, usec + u1 - u0
                requests = result["rps"] * secs
                runs[name]["redis"].append((calls / requests if requests else 0,
                                            usec / requests if requests else 0))
        figures = {}
        for name, r in runs.items():
            figures[name] = {
                "rps_c64": statistics.median(x["rps"] for x in r["c64"]),
                "p50_c64_ms": statistics.median(x["p50"] for x in r["c64"]),
                "p50_seq_ms": statistics.median(x["p50"] for x in r["seq"]),
                "p99_seq_ms": statistics.median(x["p99"] for x in r["seq"]),
                "errors": sum(x["errors"] for x in r["c64"] + r["seq"]),
                "redis_calls_per_request": statistics.median(x[0] for x in r["redis"]),
                "redis_usec_per_request": statistics.median(x[1] for x in r["redis"]),
            }
        base = figures["single (memory)"]
        print(f"{'contender':22} {'req/s c64':>10} {'ratio':>6} {'p50 seq ms':>11} "
              f"{'added ms':>9} {'p99 seq':>8} {'redis rt/call':>13} {'redis us/call':>13} "
              f"{'errors':>6}")
        for name, f in figures.items():
            print(f"{name:22} {f['rps_c64']:10.0f} {f['rps_c64'] / base['rps_c64']:6.2f} "
                  f"{f['p50_seq_ms']:11.3f} {f['p50_seq_ms'] - base['p50_seq_ms']:9.3f} "
                  f"{f['p99_seq_ms']:8.3f} {f['redis_calls_per_request']:13.2f} "
                  f"{f['redis_usec_per_request']:13.1f} {f['errors']:6d}")
        if args.out:
            Path(args.out).write_text(json.dumps(figures, indent=2))
    finally:
        procs.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
