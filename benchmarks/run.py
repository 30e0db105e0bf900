"""Side-by-side benchmark: direct upstream vs the trivial proxy baseline vs jupyter-vkeys.

Starts, on loopback: the fast fake upstream (plain and TLS), the baseline
(tornado + aiohttp pooled client), the gateway (``jupyter-vkeys serve`` with a
policy-carrying key, budgets, RPM and warehouse logging on), the same gateway
behind tornado's HTTP server (``--server tornado``, the data plane as it runs
inside a Jupyter server; column ``vkeys-tornado``), and optionally LiteLLM's
proxy from a separate virtual environment. Load comes from ``wrk``
(Debian package) for non-streaming calls and from an aiohttp client for
streaming: time to first byte and total (the upstream's 23 events in one
write), and the one-way delay of each event when the upstream writes them 1 ms
apart (each stamped with its write time, so each is relayed, and measured, on
its own). Prints a table of absolute figures and ratios and writes it as JSON.

    python benchmarks/run.py                 # about 7 minutes (9 with LiteLLM)
    python benchmarks/run.py --quick         # about 3 minutes, noisier
    python benchmarks/run.py --litellm benchmarks/.litellm-venv

Every figure is a median over interleaved repetitions, so slow drift of the
machine hits all contenders alike. Added latency = proxy latency - direct latency.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "benchmark prompt"}],
        "max_tokens": 20}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float = 30) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def tree_pids(pid: int) -> list[int]:
    """``pid`` and all its descendants (the gateway's writer process, for one)."""
    pids, todo = [], [pid]
    while todo:
        current = todo.pop()
        pids.append(current)
        for task in Path(f"/proc/{current}/task").glob("*"):
            try:
                todo += [int(c) for c in (task / "children").read_text().split()]
            except OSError:
                pass
    return pids


def settle(pids: list[int], timeout: float = 60.0) -> float:
    """Wait until the process trees of ``pids`` use under 5% of a core (the gateways'
    writers converting what the load phases journaled); returns the seconds waited.
    Called before each latency-sensitive phase, so a backlog left by the previous
    phase does not land on whichever contender is measured next."""
    start = time.time()
    while time.time() - start < timeout:
        every = [p for pid in pids for p in tree_pids(pid)]
        before = sum(_cpu_or_zero(p) for p in every)
        time.sleep(0.5)
        if sum(_cpu_or_zero(p) for p in every) - before < 0.025:
            break
    return time.time() - start


def _cpu_or_zero(pid: int) -> float:
    try:
        return cpu_seconds(pid)
    except OSError:
        return 0.0


class Procs:
    def __init__(self) -> None:
        self.procs: list[subprocess.Popen] = []

    def start(self, args: list[str], env: dict | None = None, port: int | None = None):
        proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                env={**os.environ, **(env or {})})
        self.procs.append(proc)
        if port:
            wait_port(port)
        return proc

    def stop(self) -> None:
        for proc in self.procs:
            proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()


def wrk(url: str, headers: dict[str, str], body: dict, connections: int, seconds: float
        ) -> dict[str, float]:
    """Run wrk; returns req/s and latency percentiles (ms)."""
    script = tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False)
    script.write('wrk.method = "POST"\n')
    script.write(f"wrk.body = {json.dumps(json.dumps(body))}\n")
    script.write('wrk.headers["Content-Type"] = "application/json"\n')
    for name, value in headers.items():
        script.write(f'wrk.headers["{name}"] = "{value}"\n')
    script.close()
    out = subprocess.run(["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency",
                          "-s", script.name, url], capture_output=True, text=True,
                         check=True).stdout
    os.unlink(script.name)
    result = {"rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))}
    for pct in ("50", "99"):
        m = re.search(rf"\s{pct}%\s+([\d.]+)(us|ms|s)", out)
        value = float(m.group(1)) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[m.group(2)]
        result[f"p{pct}"] = value
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    result["errors"] = int(non2xx.group(1)) if non2xx else 0
    return result


async def stream_times(url: str, headers: dict[str, str], n: int) -> dict[str, float]:
    """Sequential streaming calls: median time to first body byte and to the end (ms)."""
    import aiohttp

    body = json.dumps({**CHAT, "stream": True}).encode()
    ttfb, total = [], []
    async with aiohttp.ClientSession(auto_decompress=False) as session:
        for i in range(n + 20):
            start = time.perf_counter()
            async with session.post(url, data=body, headers={
                    "content-type": "application/json", **headers}) as resp:
                first = None
                async for chunk in resp.content.iter_any():
                    if first is None:
                        first = time.perf_counter()
                end = time.perf_counter()
                assert resp.status == 200, resp.status
            if i >= 20:  # warm-up skipped
                ttfb.append((first - start) * 1000)
                total.append((end - start) * 1000)
    return {"ttfb": statistics.median(ttfb), "total": statistics.median(total)}


_STAMP = re.compile(rb'"bench_ts":([0-9.]+)')


async def event_delays(url: str, headers: dict[str, str], n: int) -> dict[str, float]:
    """Sequential streams of 21 events written 1 ms apart, each stamped by the upstream
    with its write time: the one-way delay of every event from the upstream's write to
    the client's read (ms), median and p99 over all events."""
    import aiohttp

    body = json.dumps({**CHAT, "stream": True, "user": "bench-spaced"}).encode()
    delays: list[float] = []
    async with aiohttp.ClientSession(auto_decompress=False) as session:
        for i in range(n + 5):
            async with session.post(url, data=body, headers={
                    "content-type": "application/json", **headers}) as resp:
                assert resp.status == 200, resp.status
                pending = b""
                async for chunk in resp.content.iter_any():
                    now = time.monotonic()
                    complete, _, pending = (pending + chunk).rpartition(b"\n\n")
                    if i >= 5:  # warm-up skipped; only whole events are read
                        delays += [(now - float(ts)) * 1000 for ts in _STAMP.findall(complete)]
    delays.sort()
    return {"median": statistics.median(delays), "p99": delays[int(len(delays) * 0.99)],
            "events": len(delays)}


def admin(url: str, token: str, method: str, path: str, body=None):
    request = urllib.request.Request(url + "/api" + path, method=method,
                                     data=json.dumps(body).encode() if body else None,
                                     headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request) as resp:
        return json.loads(resp.read())


def start_gateway(procs: Procs, upstream: str, data_dir: Path, ca_file: str = "",
                  front: str = "lean") -> dict:
    port = free_port()
    provider = {"kind": "openai", "base_url": upstream + "/v1", "api_key_env": "BENCH_REAL_KEY"}
    if ca_file:
        provider["ca_file"] = ca_file
    config = data_dir / "config.json"
    data_dir.mkdir(parents=True, exist_ok=True)
    config.write_text(json.dumps({"VKeysGateway": {"providers": {"openai": provider},
                                                   "fsync_interval": 1.0}}))
    token = "bench-admin-token"
    proc = procs.start([sys.executable, "-m", "jupyter_vkeys.cli", "serve", "--port", str(port),
                        "--data-dir", str(data_dir), "--config", str(config),
                        "--log-level", "WARNING", "--server", front],
                       env={"BENCH_REAL_KEY": "sk-bench-real", "VKEYS_ADMIN_TOKEN": token},
                       port=port)
    url = f"http://127.0.0.1:{port}/vkeys"
    admin(url, token, "PUT", "/policies/team:bench", {"budgets": [{"usd": 1e6, "period": "month"}]})
    admin(url, token, "PUT", "/policies/global", {"budgets": [{"usd": 1e7, "period": "month"}]})
    key = admin(url, token, "POST", "/keys", {
        "owner": "bench", "team": "bench", "project": "perf", "models": ["gpt-*"],
        "rpm": 10_000_000, "tpm": 10_000_000_000, "max_concurrency": 1000,
        "budgets": [{"usd": 1e5, "period": "day", "soft": 0.9}]})["key"]
    return {"proc": proc, "url": url, "token": token, "key": key}


def run_litellm(procs: Procs, venv: Path, upstream: str) -> dict | None:
    exe = venv / "bin" / "litellm"
    if not exe.exists():
        return None
    port = free_port()
    config = Path(tempfile.mkdtemp()) / "litellm.yaml"
    config.write_text(
        "model_list:\n  - model_name: gpt-4o-mini\n    litellm_params:\n"
        f"      model: openai/gpt-4o-mini\n      api_base: {upstream}/v1\n"
        "      api_key: sk-bench-real\n"
        "general_settings:\n  master_key: sk-litellm-master\n")
    proc = procs.start([str(exe), "--config", str(config), "--port", str(port),
                        "--num_workers", "1"], port=None)
    wait_port(port, 180)
    time.sleep(3)
    return {"proc": proc, "url": f"http://127.0.0.1:{port}", "key": "sk-litellm-master"}


def median_of(runs: list[dict], field: str) -> float:
    return statistics.median(r[field] for r in runs)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="shorter runs")
    parser.add_argument("--repeat", type=int, default=3, help="interleaved repetitions")
    parser.add_argument("--soak", type=float, default=60, help="seconds of load for RSS")
    parser.add_argument("--litellm", type=Path, help="virtualenv holding litellm[proxy]")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "run.json")
    args = parser.parse_args()
    if not shutil.which("wrk"):
        print("wrk is required: apt-get install wrk", file=sys.stderr)
        return 2
    secs = 3 if args.quick else 6
    repeat = 2 if args.quick else args.repeat
    work = Path(tempfile.mkdtemp(prefix="vkeys-bench-"))
    procs = Procs()
    results: dict = {"machine": {"cores": os.cpu_count(),
                                 "loadavg_before": os.getloadavg()}}
    try:
        cert, key = subprocess.run(  # self-signed certificate for the TLS upstream
            [sys.executable, "-c", "import sys; sys.path.insert(0, sys.argv[1]); "
             "import fast_upstream as f; print(*f.self_signed(sys.argv[2]))", str(HERE),
             str(work)], capture_output=True, text=True, check=True).stdout.split()
        up_port, tls_port = free_port(), free_port()
        procs.start([sys.executable, str(HERE / "fast_upstream.py"), "--port", str(up_port)],
                    port=up_port)
        procs.start([sys.executable, str(HERE / "fast_upstream.py"), "--port", str(tls_port),
                     "--cert", cert, "--key", key], port=tls_port)
        upstream = f"http://127.0.0.1:{up_port}"
        tls_upstream = f"https://127.0.0.1:{tls_port}"
        base_port, base_tls_port = free_port(), free_port()
        procs.start([sys.executable, str(HERE / "trivial_proxy.py"), "--port", str(base_port),
                     "--upstream", upstream], port=base_port)
        procs.start([sys.executable, str(HERE / "trivial_proxy.py"), "--port",
                     str(base_tls_port), "--upstream", tls_upstream, "--insecure"],
                    port=base_tls_port)
        gw = start_gateway(procs, upstream, work / "gw")
        gw_tls = start_gateway(procs, tls_upstream, work / "gw-tls", ca_file=cert)
        # The same gateway behind tornado's HTTP server, as it runs inside a Jupyter server.
        gw_tornado = start_gateway(procs, upstream, work / "gw-tornado", front="tornado")
        contenders = {
            "direct": (f"{upstream}/v1/chat/completions", {}),
            "baseline": (f"http://127.0.0.1:{base_port}/v1/chat/completions", {}),
            "vkeys": (f"{gw['url']}/openai/v1/chat/completions",
                      {"Authorization": f"Bearer {gw['key']}"}),
            "vkeys-tornado": (f"{gw_tornado['url']}/openai/v1/chat/completions",
                              {"Authorization": f"Bearer {gw_tornado['key']}"}),
        }
        litellm = run_litellm(procs, args.litellm, upstream) if args.litellm else None
        if litellm:
            contenders["litellm"] = (f"{litellm['url']}/v1/chat/completions",
                                     {"Authorization": f"Bearer {litellm['key']}"})
        # warm-up
        for url, headers in contenders.values():
            wrk(url, headers, CHAT, 4, 1)

        runs: dict[str, dict[str, list]] = {name: {"seq": [], "c16": [], "c64": []}
                                            for name in contenders}
        cpu: dict[str, float] = {}
        gateways = [gw["proc"].pid, gw_tls["proc"].pid, gw_tornado["proc"].pid]
        settled = []
        for _ in range(repeat):
            settled.append(round(settle(gateways), 1))
            for name, (url, headers) in contenders.items():
                runs[name]["seq"].append(wrk(url, headers, CHAT, 1, secs))
            for conc in (16, 64):
                for name, (url, headers) in contenders.items():
                    runs[name][f"c{conc}"].append(wrk(url, headers, CHAT, conc, secs))
        # CPU per request at concurrency 64: each contender's whole process tree (the
        # gateway's warehouse writer included), counted until it is idle again
        for name, pid in (("vkeys", gw["proc"].pid), ("baseline", procs.procs[2].pid),
                          ("vkeys-tornado", gw_tornado["proc"].pid)):
            settle(gateways)
            tree = tree_pids(pid)
            before = sum(_cpu_or_zero(p) for p in tree)
            r = wrk(*contenders[name], CHAT, 64, secs)
            settle([pid])
            cpu[name] = (sum(_cpu_or_zero(p) for p in tree) - before) / (r["rps"] * secs) * 1e6
        table = {}
        direct_seq = runs["direct"]["seq"]
        for name in contenders:
            seq = runs[name]["seq"]
            table[name] = {
                "p50_ms": median_of(seq, "p50"), "p99_ms": median_of(seq, "p99"),
                "added_p50_ms": median_of(seq, "p50") - median_of(direct_seq, "p50"),
                "added_p99_ms": median_of(seq, "p99") - median_of(direct_seq, "p99"),
                "rps_c16": median_of(runs[name]["c16"], "rps"),
                "rps_c64": median_of(runs[name]["c64"], "rps"),
                "errors": sum(r["errors"] for k in runs[name] for r in runs[name][k]),
            }
        for name in cpu:
            table[name]["cpu_us_per_req_c64"] = cpu[name]

        # Streaming: 20 chunks plus usage
        settled.append(round(settle(gateways), 1))
        results["machine"]["waits_for_idle_writers_s"] = settled
        n_stream = 150 if args.quick else 400
        stream = {}
        for name in ("direct", "baseline", "vkeys", "vkeys-tornado"):
            url, headers = contenders[name]
            stream[name] = asyncio.run(stream_times(url, headers, n_stream))
        # Events relayed one by one: 21 events 1 ms apart, one-way delay of each
        spaced = {}
        for name in ("direct", "baseline", "vkeys", "vkeys-tornado"):
            url, headers = contenders[name]
            spaced[name] = asyncio.run(event_delays(url, headers, 60 if args.quick else 150))
        for name in ("baseline", "vkeys", "vkeys-tornado"):
            table[name]["stream_added_ttfb_ms"] = stream[name]["ttfb"] - stream["direct"]["ttfb"]
            table[name]["stream_added_total_ms"] = (stream[name]["total"]
                                                    - stream["direct"]["total"])
            table[name]["event_added_p50_ms"] = spaced[name]["median"] - spaced["direct"]["median"]
            table[name]["event_added_p99_ms"] = spaced[name]["p99"] - spaced["direct"]["p99"]

        # TLS upstream: latency and connection reuse
        trust_self_signed = ssl.create_default_context(cafile=cert)
        tls_stats_before = json.loads(urllib.request.urlopen(f"{tls_upstream}/stats",
                                                             context=trust_self_signed).read())
        tls_gw = wrk(f"{gw_tls['url']}/openai/v1/chat/completions",
                     {"Authorization": f"Bearer {gw_tls['key']}"}, CHAT, 16, secs)
        tls_base = wrk(f"http://127.0.0.1:{base_tls_port}/v1/chat/completions", {}, CHAT, 16,
                       secs)
        tls_stats_after = json.loads(urllib.request.urlopen(f"{tls_upstream}/stats",
                                                            context=trust_self_signed).read())
        table["tls"] = {
            "vkeys_rps_c16": tls_gw["rps"], "baseline_rps_c16": tls_base["rps"],
            "requests": tls_stats_after["requests"] - tls_stats_before["requests"],
            "tls_handshakes": tls_stats_after["connections"] - tls_stats_before["connections"],
        }

        # RSS under sustained load
        pid = gw["proc"].pid
        rss = [rss_mb(pid)]
        soak = subprocess.Popen(["wrk", "-t1", "-c32", f"-d{int(args.soak)}s", "-s",
                                 _lua(CHAT, contenders["vkeys"][1]), contenders["vkeys"][0]],
                                stdout=subprocess.DEVNULL)
        while soak.poll() is None:
            time.sleep(1)
            rss.append(rss_mb(pid))
        table["rss_mb"] = {"start": rss[0], "max": max(rss), "end": rss[-1],
                           "first_10s_max": max(rss[:11]), "soak_seconds": args.soak}
        if litellm:
            table["litellm"]["rss_mb"] = rss_mb(litellm["proc"].pid)
        results["table"] = table
        results["machine"]["loadavg_after"] = os.getloadavg()
        results["upstream_requests"] = json.loads(urllib.request.urlopen(
            f"{upstream}/stats").read())
    finally:
        procs.stop()
        shutil.rmtree(work, ignore_errors=True)
    report(results)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    print(f"\nwritten to {args.out}")
    return 0


def _lua(body: dict, headers: dict[str, str]) -> str:
    script = tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False)
    script.write(f'wrk.method = "POST"\nwrk.body = {json.dumps(json.dumps(body))}\n'
                 'wrk.headers["Content-Type"] = "application/json"\n')
    for name, value in headers.items():
        script.write(f'wrk.headers["{name}"] = "{value}"\n')
    script.close()
    return script.name


def report(results: dict) -> None:
    t = results["table"]
    names = [n for n in ("direct", "baseline", "vkeys", "vkeys-tornado", "litellm") if n in t]
    print(f"\nmachine: {results['machine']}")
    print(f"\n{'':28}" + "".join(f"{n:>14}" for n in names))
    for field, label in (("p50_ms", "latency p50 (ms)"), ("p99_ms", "latency p99 (ms)"),
                         ("added_p50_ms", "added p50 (ms)"), ("added_p99_ms", "added p99 (ms)"),
                         ("rps_c16", "req/s at c16"), ("rps_c64", "req/s at c64"),
                         ("cpu_us_per_req_c64", "CPU us/req c64 (tree)"),
                         ("stream_added_ttfb_ms", "stream added TTFB (ms)"),
                         ("stream_added_total_ms", "stream added total (ms)"),
                         ("event_added_p50_ms", "per-event added p50 (ms)"),
                         ("event_added_p99_ms", "per-event added p99 (ms)"),
                         ("errors", "non-2xx responses")):
        cells = []
        for n in names:
            v = t[n].get(field)
            cells.append(f"{v:14.3f}" if isinstance(v, float) else f"{v if v is not None else '-':>14}")
        print(f"{label:28}" + "".join(cells))
    v, b = t["vkeys"], t["baseline"]
    print("\nratios (vkeys / baseline):")
    print(f"  added p50 latency   {v['added_p50_ms'] / b['added_p50_ms']:.2f}x  (target <= 1.0)")
    print(f"  p99 latency         {v['p99_ms']:.3f} ms  (target added p99 <= 2 ms: "
          f"{v['added_p99_ms']:.3f})")
    print(f"  throughput c16      {v['rps_c16'] / b['rps_c16']:.2f}x  (target >= 1.0)")
    print(f"  throughput c64      {v['rps_c64'] / b['rps_c64']:.2f}x  (target >= 1.0)")
    print(f"  stream added TTFB   {v['stream_added_ttfb_ms']:.3f} ms, total "
          f"{v['stream_added_total_ms']:.3f} ms  (target each <= 0.6 ms)")
    print(f"  events 1 ms apart   each delayed {v['event_added_p50_ms']:.3f} ms more than direct "
          f"(p99 {v['event_added_p99_ms']:.3f}); baseline {b['event_added_p50_ms']:.3f} "
          f"(p99 {b['event_added_p99_ms']:.3f})")
    if "vkeys-tornado" in t:
        vt = t["vkeys-tornado"]
        print(f"  tornado front       (as inside Jupyter) added p50 "
              f"{vt['added_p50_ms'] / b['added_p50_ms']:.2f}x, throughput c16 "
              f"{vt['rps_c16'] / b['rps_c16']:.2f}x, c64 {vt['rps_c64'] / b['rps_c64']:.2f}x, "
              f"stream added TTFB {vt['stream_added_ttfb_ms']:.3f} ms")
    tls = t["tls"]
    print(f"  TLS upstream        {tls['requests']} requests over {tls['tls_handshakes']} "
          f"handshakes; vkeys {tls['vkeys_rps_c16']:.0f} req/s vs baseline "
          f"{tls['baseline_rps_c16']:.0f} req/s at c16")
    rss = t["rss_mb"]
    print(f"  RSS under load      start {rss['start']:.0f} MB, max {rss['max']:.0f} MB, end "
          f"{rss['end']:.0f} MB over {rss['soak_seconds']:.0f} s (target <= 100 MB, flat)")
    if "litellm" in t:
        lt = t["litellm"]
        print(f"  vs LiteLLM          throughput {v['rps_c64'] / lt['rps_c64']:.1f}x (target >= "
              f"25x), added latency {v['added_p50_ms'] / lt['added_p50_ms']:.3f}x "
              "(target <= 0.07x)")


if __name__ == "__main__":
    sys.exit(main())
