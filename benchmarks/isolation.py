"""Isolation: does one key at its RPM limit slow down another key?

Key A has ``rpm=600`` and is driven past it; key B has no rate limit and is
measured with ``wrk -c1`` (sequential calls). Three phases, interleaved and
repeated: B alone; B while A sends twice its RPM (20 req/s, paced) after a
one-second burst has used up A's minute, so A's calls are really refused (at 2x
from a standing start, a one-minute window would only fill after 30 s); B while
A floods (4 connections retrying at once: all 429s, which cost CPU in the same
process; the gateway paces such repeat refusals, see
``jupyter_vkeys/gateway/pacing.py``, and ``rate_refusal_delay=0`` turns that
off). Prints B's added latency (over the direct upstream) in each phase.

    python benchmarks/isolation.py [--seconds 8] [--repeat 3]

Target: B's added p50 with A at 2x its RPM within 10% of B alone.
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

sys.path.insert(0, str(Path(__file__).resolve().parent))

from run import CHAT, HERE, Procs, _lua, admin, free_port, start_gateway, wrk  # noqa: E402


def paced_lua(headers: dict[str, str], delay_ms: int) -> str:
    path = _lua(CHAT, headers)
    with open(path, "a") as f:
        f.write(f"function delay()\n  return {delay_ms}\nend\n")
    return path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="vkeys-iso-"))
    procs = Procs()
    try:
        port = free_port()
        procs.start([sys.executable, str(HERE / "fast_upstream.py"), "--port", str(port)],
                    port=port)
        upstream = f"http://127.0.0.1:{port}"
        gw = start_gateway(procs, upstream, work / "gw")
        url = f"{gw['url']}/openai/v1/chat/completions"
        key_a = admin(gw["url"], gw["token"], "POST", "/keys", {"owner": "a", "rpm": 600})["key"]
        headers_a = {"Authorization": f"Bearer {key_a}"}
        headers_b = {"Authorization": f"Bearer {gw['key']}"}
        phases: dict[str, list[float]] = {"alone": [], "A at 2x RPM": [], "A flooding": []}
        direct: list[float] = []
        refused = {}
        for _ in range(args.repeat):
            direct.append(wrk(f"{upstream}/v1/chat/completions", {}, CHAT, 1, 3)["p50"])
            phases["alone"].append(wrk(url, headers_b, CHAT, 1, args.seconds)["p50"])
            for name, cmd in (
                    ("A at 2x RPM", ["-c2", "-s", paced_lua(headers_a, 100)]),
                    ("A flooding", ["-c4", "-s", _lua(CHAT, headers_a)])):
                wrk(url, headers_a, CHAT, 4, 1)  # use up A's minute
                load = subprocess.Popen(["wrk", "-t1", *cmd, f"-d{args.seconds + 2}s", url],
                                        stdout=subprocess.PIPE, text=True)
                phases[name].append(wrk(url, headers_b, CHAT, 1, args.seconds)["p50"])
                out, _ = load.communicate()
                refused[name] = out.split("Non-2xx or 3xx responses:")[-1].split()[0] \
                    if "Non-2xx" in out else "0"
        base = statistics.median(direct)
        results = {name: statistics.median(v) - base for name, v in phases.items()}
        print(f"direct upstream p50 {base:.3f} ms; key B's added p50 latency:")
        for name, added in results.items():
            change = (added / results["alone"] - 1) * 100
            extra = f" (A refused {refused[name]} calls in the last run)" if name in refused else ""
            print(f"  {name:14} {added:7.3f} ms  {change:+6.1f}% vs alone{extra}")
        print("target: 'A at 2x RPM' within +10% of 'alone'")
        out = HERE / "results" / "isolation.json"
        out.parent.mkdir(exist_ok=True)
        out.write_text(json.dumps({"direct_p50_ms": base, "added_p50_ms": results}, indent=2))
    finally:
        procs.stop()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
