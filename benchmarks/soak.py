"""Soak: mixed traffic with injected faults against ``jupyter vkeys serve`` for minutes.

Starts the project's fake provider in its own process (real sockets, the lean pooled
client in between) and the gateway as a user starts it, then drives a mix of calls for
``--seconds`` (default 600) at ``--concurrency`` in flight:

- normal chat calls, streamed and not, OpenAI and Anthropic dialects;
- injected upstream faults: 500s, streams cut after 3 chunks, an upstream that hangs
  (past the gateway's read timeout);
- clients that leave mid-stream;
- a key at its RPM limit and a key whose budget is exhausted (refusals);
- bad requests (negative max_tokens, malformed JSON).

It samples the gateway's RSS and open file descriptors every few seconds and, at the end,
checks: every answer is one the mix explains (no unexpected 5xx); no budget hold, token
reservation or concurrency slot is left (admin API); RSS growth after warm-up (first 20%)
under 5%; file descriptors back to their warm-up level. Prints the figures and exits
non-zero if a check fails.

    python benchmarks/soak.py                  # 10 minutes
    python benchmarks/soak.py --seconds 60     # a quick look
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from pathlib import Path

import aiohttp

ADMIN_TOKEN = "soak-admin-token-0123456789"
FAKE_HEADERS = ["anthropic-version", "anthropic-beta", "openai-beta"]


def fake(body: dict, **controls: str) -> dict:
    """``body`` carrying the HTTP fake provider's controls in its metadata (relayed by the
    gateway unchanged; no x-vkeys-* header ever leaves the gateway)."""
    return {**body, "metadata": {f"vkeys_fake_{name}": value for name, value in
                                 controls.items()}}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, proc: subprocess.Popen, timeout: float = 30) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            urllib.request.urlopen(url, timeout=1).read()
            return
        except OSError:
            if proc.poll() is not None:
                raise RuntimeError(f"process exited with {proc.returncode}")
            time.sleep(0.1)
    raise RuntimeError(f"no answer from {url}")


def proc_figures(pid: int) -> tuple[float, int]:
    """(RSS in MB, open file descriptors) of ``pid``."""
    rss = 0.0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1]) / 1024
    return rss, len(os.listdir(f"/proc/{pid}/fd"))


def admin(base: str, method: str, path: str, body=None):
    request = urllib.request.Request(base + "/api" + path, method=method,
                                     data=json.dumps(body).encode() if body is not None else None,
                                     headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
    with urllib.request.urlopen(request, timeout=30) as resp:
        return json.loads(resp.read())


class Mix:
    """Chooses each call of the soak and says which answers it may get."""

    def __init__(self, keys: dict[str, str]) -> None:
        self.keys = keys
        self.random = random.Random(7)

    def next(self) -> tuple[str, str, dict, dict, set[int], bool]:
        """``(kind, path, headers, body, allowed statuses, leave mid-stream)``."""
        r = self.random.random()
        chat = {"model": "gpt-4o-mini", "max_tokens": 40,
                "messages": [{"role": "user", "content": f"soak {self.random.random()}"}]}
        auth = {"Authorization": f"Bearer {self.keys['main']}"}
        if r < 0.40:
            return "chat", "/openai/v1/chat/completions", auth, chat, {200}, False
        if r < 0.60:
            return ("stream", "/openai/v1/chat/completions", auth, {**chat, "stream": True},
                    {200}, False)
        if r < 0.70:
            body = {"model": "claude-haiku-4-5", "max_tokens": 40, "stream": r < 0.65,
                    "messages": [{"role": "user", "content": "soak"}]}
            return ("anthropic", "/anthropic/v1/messages",
                    {"x-api-key": self.keys["main"], "anthropic-version": "2023-06-01"}, body,
                    {200}, False)
        if r < 0.75:
            return ("fault_500", "/openai/v1/chat/completions",
                    auth, fake(chat, error="500"), {500}, False)
        if r < 0.80:
            return ("fault_cut", "/openai/v1/chat/completions",
                    auth, fake({**chat, "stream": True}, error="cut:3"), {200}, False)
        if r < 0.81:
            return ("fault_hang", "/openai/v1/chat/completions",
                    auth, fake(chat, error="hang"), {504}, False)
        if r < 0.86:
            return ("leave", "/openai/v1/chat/completions",
                    auth, fake({**chat, "stream": True}, chunk_delay_ms="20"), {200}, True)
        if r < 0.92:
            return ("rate", "/openai/v1/chat/completions",
                    {"Authorization": f"Bearer {self.keys['rpm']}"}, chat, {200, 429}, False)
        if r < 0.96:
            return ("budget", "/openai/v1/chat/completions",
                    {"Authorization": f"Bearer {self.keys['broke']}"}, chat, {429}, False)
        if r < 0.98:
            return ("bad_cap", "/openai/v1/chat/completions", auth,
                    {**chat, "max_tokens": -1000}, {400}, False)
        return "bad_json", "/openai/v1/chat/completions", auth, b"{not json", {400}, False


async def one_call(session: aiohttp.ClientSession, base: str, mix: Mix, tally: Counter,
                   unexplained: list) -> None:
    kind, path, headers, body, allowed, leave = mix.next()
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    try:
        async with session.post(base + path, data=data,
                                headers={"content-type": "application/json", **headers}) as resp:
            if leave:
                await resp.content.readany()
                tally[f"{kind}:left"] += 1
                return  # leaving the block closes the connection mid-stream
            await resp.read()
            tally[f"{kind}:{resp.status}"] += 1
            if resp.status not in allowed:
                unexplained.append((kind, resp.status))
    except (aiohttp.ClientPayloadError, aiohttp.ServerDisconnectedError):
        tally[f"{kind}:cut"] += 1
        if kind != "fault_cut":
            unexplained.append((kind, "cut"))
    except asyncio.TimeoutError:
        tally[f"{kind}:client_timeout"] += 1
        unexplained.append((kind, "client_timeout"))


async def drive(base: str, keys: dict[str, str], seconds: float, concurrency: int,
                gateway_pid: int) -> dict:
    mix, tally, unexplained = Mix(keys), Counter(), []
    samples: list[tuple[float, float, int]] = []
    started = time.monotonic()
    deadline = started + seconds
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(timeout=timeout,
                                     connector=aiohttp.TCPConnector(limit=concurrency)) as session:
        async def worker() -> None:
            while time.monotonic() < deadline:
                await one_call(session, base, mix, tally, unexplained)

        async def sampler() -> None:
            while time.monotonic() < deadline:
                rss, fds = proc_figures(gateway_pid)
                samples.append((time.monotonic() - started, rss, fds))
                await asyncio.sleep(max(1.0, seconds / 60))

        await asyncio.gather(sampler(), *[worker() for _ in range(concurrency)])
    await asyncio.sleep(3)  # hung upstream calls time out, left streams settle
    rss, fds = proc_figures(gateway_pid)
    samples.append((time.monotonic() - started, rss, fds))
    return {"tally": tally, "unexplained": unexplained, "samples": samples}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=600)
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="vkeys-soak-"))
    fake_port, port = free_port(), free_port()
    fake = subprocess.Popen([sys.executable, "-m", "jupyter_vkeys.providers.fake_server",
                             "--port", str(fake_port)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    config = tmp / "config.json"
    config.write_text(json.dumps({"VKeysGateway": {
        "providers": {"openai": {"kind": "openai", "base_url": f"http://127.0.0.1:{fake_port}/v1",
                                 "api_key_env": "SOAK_KEY"},
                      "anthropic": {"kind": "anthropic",
                                    "base_url": f"http://127.0.0.1:{fake_port}",
                                    "api_key_env": "SOAK_KEY"}},
        "forward_headers": FAKE_HEADERS, "read_timeout": 2.0, "roll_seconds": 5.0,
        "rate_refusal_delay": 0.0}}))
    env = {**os.environ, "VKEYS_ADMIN_TOKEN": ADMIN_TOKEN, "SOAK_KEY": "sk-soak-provider-key"}
    log = open(tmp / "serve.log", "w")
    gateway = subprocess.Popen([sys.executable, "-m", "jupyter_vkeys.cli", "serve",
                                "--data-dir", str(tmp / "data"), "--port", str(port),
                                "--config", str(config), "--log-level", "WARNING"],
                               stdout=log, stderr=subprocess.STDOUT, env=env)
    base = f"http://127.0.0.1:{port}/vkeys"
    try:
        wait_http(base + "/api/health", gateway)
        keys = {"main": admin(base, "POST", "/keys", {"owner": "soak", "team": "t"})["key"],
                "rpm": admin(base, "POST", "/keys", {"owner": "rpm", "rpm": 30})["key"],
                "broke": admin(base, "POST", "/keys", {"owner": "broke", "budgets": [
                    {"usd": 0.0000001, "period": "total"}]})["key"]}
        print(f"soak: {args.seconds:.0f} s, {args.concurrency} in flight, gateway pid "
              f"{gateway.pid}", flush=True)
        result = asyncio.run(drive(base, keys, args.seconds, args.concurrency, gateway.pid))
        reports = [admin(base, "GET", f"/keys/{row['id']}")
                   for row in admin(base, "GET", "/keys")["keys"]]
    finally:
        gateway.terminate()
        fake.terminate()
        gateway.wait(30)
        fake.wait(30)
        log.close()
    tally, samples = result["tally"], result["samples"]
    total = sum(tally.values())
    warm = [s for s in samples if s[0] >= args.seconds * 0.2] or samples
    rss_warm, rss_end = warm[0][1], samples[-1][1]
    fds_warm, fds_end = warm[0][2], samples[-1][2]
    held = [(r["id"], b["held_usd"]) for r in reports for limit in r["limits"]
            for b in limit["budgets"] if b["held_usd"]]
    inflight = [(r["id"], limit["scope"], limit.get("in_flight"))
                for r in reports for limit in r["limits"] if limit.get("in_flight")]
    growth = (rss_end - rss_warm) / rss_warm * 100
    print(f"calls: {total:,} ({total / args.seconds:,.0f}/s)")
    for name, count in sorted(tally.items()):
        print(f"  {name:<24} {count:>8,}")
    print(f"RSS after warm-up {rss_warm:.1f} MB, at the end {rss_end:.1f} MB ({growth:+.1f}%)")
    print(f"file descriptors after warm-up {fds_warm}, at the end {fds_end}")
    print(f"holds left: {held or 'none'}; calls in flight left: {inflight or 'none'}")
    print(f"unexplained answers: {len(result['unexplained'])} "
          f"{Counter(result['unexplained']).most_common(5)}")
    failed = [name for name, bad in [
        ("unexplained answers", result["unexplained"]), ("holds left", held),
        ("slots left", inflight), ("RSS growth >= 5%", growth >= 5),
        ("fd leak", fds_end > fds_warm + 5)] if bad]
    print("soak: " + ("FAILED: " + ", ".join(failed) if failed else "all checks passed"))
    print(f"gateway log: {tmp / 'serve.log'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
