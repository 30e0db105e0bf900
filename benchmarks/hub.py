"""The cost of the Hub service mode: a call through ``jupyter vkeys hub-service`` reached
directly and through JupyterHub's proxy, against the standalone gateway and the direct
upstream, in the same run.

Starts on loopback: the fast fake upstream (``fast_upstream.py``), ``jupyter vkeys serve``
(the standalone gateway, as ``run.py`` starts it), and a real JupyterHub with
configurable-http-proxy and the vkeys service configured by
``examples/jupyterhub/jupyterhub_config.py`` (``tests/hub/hubs.py`` starts it). A key with
the same policy shape is created on both gateways; ``wrk`` (Debian package) sends
non-streaming chat calls at 1 connection (latency) and 32 (throughput), interleaved over
``--rounds`` rounds, medians reported.

    python benchmarks/hub.py            # about 3 minutes
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent / "tests" / "hub"), str(HERE.parent / "tests")]

from run import CHAT, Procs, admin, free_port, start_gateway, wrk  # noqa: E402


def hub_key(hub, upstream: str) -> str:
    """An admin's Hub token (carol, in llm-admins), then a key made with it on the
    service, with the same policy shape as the standalone gateway's."""
    from hubs import request

    status, token = hub.hub("POST", "/users/carol/tokens",
                            {"scopes": ["custom:vkeys:admin"], "note": "benchmark"})
    assert status == 201, (status, token)
    status, key = request("POST", hub.service_url + "/api/keys", {
        "owner": "bench", "team": "bench", "project": "perf", "models": ["gpt-*"],
        "rpm": 10_000_000, "tpm": 10_000_000_000, "max_concurrency": 1000,
        "budgets": [{"usd": 1e5, "period": "day", "soft": 0.9}]}, token=token["token"])
    assert status == 201, (status, key)
    return key["key"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()
    from hubs import HubProcess

    procs = Procs()
    root = Path(tempfile.mkdtemp(prefix="vkeys-hub-bench-"))
    hub = None
    try:
        port = free_port()
        procs.start([sys.executable, str(HERE / "fast_upstream.py"), "--port", str(port)],
                    port=port)
        upstream = f"http://127.0.0.1:{port}"
        standalone = start_gateway(procs, upstream, root / "standalone")
        secret = root / "provider.key"
        secret.write_text("sk-bench-real")
        provider = {"kind": "openai", "base_url": upstream + "/v1", "api_key_file": str(secret)}
        hub = HubProcess(root / "hub", users={"carol": ["llm-admins"]}, service_config={
            # no access lines, as the standalone gateway at --log-level WARNING writes none
            "VKeysGateway": {"providers": {"openai": provider}, "fsync_interval": 1.0,
                             "access_log": False},
            "VKeysHubService": {"reap_interval": 0}})
        key = hub_key(hub, upstream)
        auth = {"Authorization": f"Bearer {key}"}
        targets = {
            "direct": (f"{upstream}/v1/chat/completions", {}),
            "standalone": (f"{standalone['url']}/openai/v1/chat/completions",
                           {"Authorization": f"Bearer {standalone['key']}"}),
            "service": (f"{hub.service_url}/openai/v1/chat/completions", auth),
            "via-proxy": (f"{hub.base}/services/vkeys/openai/v1/chat/completions", auth),
        }
        for url, headers in targets.values():  # warm up, and check each answers 200
            request = urllib.request.Request(url, data=json.dumps(CHAT).encode(), headers={
                "Content-Type": "application/json", **headers})
            with urllib.request.urlopen(request, timeout=30) as resp:
                assert resp.status == 200, url
        runs: dict[str, dict[str, list[float]]] = {name: {"p50": [], "p99": [], "rps": []}
                                                   for name in targets}
        for round_ in range(args.rounds):
            for name, (url, headers) in targets.items():
                latency = wrk(url, headers, CHAT, 1, args.seconds)
                load = wrk(url, headers, CHAT, 32, args.seconds)
                assert latency["errors"] == 0 and load["errors"] == 0, (name, latency, load)
                runs[name]["p50"].append(latency["p50"])
                runs[name]["p99"].append(latency["p99"])
                runs[name]["rps"].append(load["rps"])
            print(f"round {round_ + 1}/{args.rounds} done", flush=True)
        results = {name: {k: statistics.median(v) for k, v in figures.items()}
                   for name, figures in runs.items()}
        direct = results["direct"]
        base = results["standalone"]
        print(f"\n{'':12}{'p50 ms':>9}{'added ms':>10}{'p99 ms':>9}{'req/s @32':>11}"
              f"{'x standalone':>14}")
        for name, r in results.items():
            added = r["p50"] - direct["p50"]
            ratio = r["rps"] / base["rps"] if base["rps"] else 0
            print(f"{name:12}{r['p50']:9.3f}{added:10.3f}{r['p99']:9.3f}{r['rps']:11.0f}"
                  f"{ratio:14.2f}")
        print("\nadded = p50 at 1 connection minus the direct upstream's; x standalone = "
              "throughput at 32 connections over `jupyter vkeys serve`'s")
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=2))
    finally:
        if hub is not None:
            hub.stop()
        procs.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
