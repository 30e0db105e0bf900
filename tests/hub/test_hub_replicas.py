"""The Hub service as replicas (issue 15): a real JupyterHub whose vkeys service entry
points at ONE URL, a real ``haproxy`` (round robin, its own config on free ports) in
front of two ``jupyter vkeys hub-service`` replicas run as an external service (the
entry's ``api_token``, JUPYTERHUB_* on each replica, as the README's systemd unit).
Both replicas share one ``redis-server`` (``--state-url``), one PostgreSQL
(``--registry-url``), one ``VKEYS_PEPPER`` and one cookie secret file.

Users run real kernels in their single-user servers, with the official SDKs; the
upstream is the project's fake provider on a real port, which answers 401 to any key but
the real one. The hub and its servers come from ``hubs.py``; redis-server, PostgreSQL,
haproxy and the replicas from ``scale_support.py``.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import signal
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent), str(HERE.parent / "jupyter")]

from hubs import CHP, DRIVER_TOKEN, HubProcess, free_port, request, start_hub  # noqa: E402
from scale_support import (HAPROXY, HAProxy, PostgresServer, RedisServer,  # noqa: E402
                           Replica, need_redis)
from servers import result_of  # noqa: E402
from support import FakeUpstream  # noqa: E402
from test_hub_service import CALLS, HTTP, REAL_KEY  # noqa: E402

SERVICE_TOKEN = "vkeys-service-token-" + "5e" * 16
PREFIX = "/services/vkeys"
# alice and bob run kernels; erin's first two kernels start at once; carol administers;
# r1..r6 have no server: their Hub tokens race for their first key on both replicas.
RACERS = [f"r{n}" for n in range(1, 7)]
USERS = {"alice": ["data-science"], "bob": ["students"], "carol": ["llm-admins"],
         "erin": ["data-science"], **{name: ["data-science"] for name in RACERS}}
CAP_USD = 0.0004  # bob's day cap in the race for the last dollar

pytestmark = [pytest.mark.hub, pytest.mark.replicas, pytest.mark.timeout(600),
              pytest.mark.skipif(CHP is None, reason="needs configurable-http-proxy "
                                 "(npm install -g configurable-http-proxy; .ci/run does)"),
              pytest.mark.skipif(HAPROXY is None, reason="needs haproxy (apt-get install "
                                 "haproxy; .ci/run does)")]

# Run in bob's kernel: 120 calls, 10 at a time, through the balancer, racing his last
# dollar (each call's hold is its worst case, so the race ends once what is left is less
# than what the calls in flight hold).
RACE = """
import json, openai
from concurrent.futures import ThreadPoolExecutor
client = openai.OpenAI(max_retries=0, timeout=60)
def one(i):
    try:
        client.chat.completions.create(model="gpt-4o-mini", max_tokens=16,
            messages=[{"role": "user", "content": "race for the last dollar %d" % i}])
        return "ok"
    except openai.APIStatusError as exc:
        return "%d %s" % (exc.status_code, exc.message)
with ThreadPoolExecutor(10) as pool:
    out = list(pool.map(one, range(120)))
print("RESULT" + json.dumps(out))
"""


class Farm:
    """The hub, the balancer, the two replicas and what they share."""

    def __init__(self, root: Path) -> None:
        need_redis()
        self.root = root
        self.parts: list[Any] = []  # stopped in reverse order
        try:
            self._start()
        except BaseException:
            self.stop()
            raise

    def _start(self) -> None:
        root = self.root
        self.redis = RedisServer(root / "redis")
        self.parts.append(self.redis)
        self.pg = PostgresServer()
        self.parts.append(_Removing(self.pg))
        self.upstream = FakeUpstream(expect_key=REAL_KEY)
        self.parts.append(self.upstream)
        secrets_dir = root / "vkeys-secrets"
        secrets_dir.mkdir(mode=0o700)
        self.key_file = key_file = secrets_dir / "provider.key"
        key_file.write_text(REAL_KEY)
        key_file.chmod(0o600)
        self.pepper = secrets.token_hex(32)  # the same VKEYS_PEPPER on every replica
        # one cookie secret for every replica (an operator puts it on each machine)
        self.cookie_secret = secrets_dir / "cookie_secret"
        self.cookie_secret.write_text(secrets.token_hex(32))
        self.cookie_secret.chmod(0o600)
        self.replica_ports = [free_port(), free_port()]
        self.balancer = HAProxy(root / "haproxy", [("127.0.0.1", p) for p in self.replica_ports],
                                health=f"{PREFIX}/api/health")
        self.parts.append(self.balancer)
        self.replicas: list[Replica] = []
        self.hub: HubProcess = start_hub(root / "hubroot", users=USERS, service_config={},
                                         service_token=SERVICE_TOKEN,
                                         service_port=self.balancer.port,
                                         extra_config="c.Spawner.poll_interval = 2",
                                         on_spawned=self._start_replicas)
        self.parts.append(self.hub)
        self._wait_balanced()
        self.tokens = {user: self._token(user) for user in ("alice", "carol", *RACERS)}
        self.hub.start_servers("alice", "bob", "erin")
        self.kernels = {user: self.hub.start_kernel(user) for user in ("alice", "bob")}

    def _start_replicas(self, hub: HubProcess) -> None:
        """The two replicas of the external service, started together while the Hub
        starts (called by :class:`HubProcess`, again on fresh ports if it retries)."""
        for replica in self.replicas:  # a previous try's
            replica.stop()
            self.parts.remove(replica)
        self.replicas = []
        root = self.root
        provider = {"api_key_file": str(self.key_file)}
        configs = []
        for n in (1, 2):
            config = root / f"replica{n}.json"
            config.write_text(json.dumps({
                "VKeysGateway": {
                    "fake_mode": "never", "roll_seconds": 0.5,
                    "access_log_file": str(root / f"replica{n}-access.log"),
                    "providers": {
                        "openai": {"kind": "openai", "base_url": self.upstream.url + "/v1",
                                   **provider},
                        "anthropic": {"kind": "anthropic", "base_url": self.upstream.url,
                                      **provider}}},
                "VKeysHubService": {
                    "reap_interval": 1.0, "cookie_secret_file": str(self.cookie_secret),
                    # kernels call the one URL too, so either replica serves each call
                    "data_plane_url": f"{self.balancer.url}{PREFIX}",
                    "group_policies": {"students": {"budgets": [
                        {"usd": 5, "period": "month"}]}}}}))
            configs.append(config)
        started: dict[int, Any] = {}

        def start(n: int) -> None:
            port = self.replica_ports[n]
            try:
                started[n] = Replica(
                    root / f"replica{n + 1}", self.redis.url, config=configs[n],
                    registry_url=self.pg.url, command="hub-service", port=port,
                    env={"VKEYS_PEPPER": self.pepper, **hub.external_service_env(port)})
            except BaseException as exc:
                started[n] = exc

        threads = [threading.Thread(target=start, args=(n,)) for n in (0, 1)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
        for n in (0, 1):
            if isinstance(started.get(n), Replica):
                self.replicas.append(started[n])
                self.parts.append(started[n])
        for n in (0, 1):
            if not isinstance(started.get(n), Replica):
                raise RuntimeError(f"replica {n + 1} did not start: {started.get(n)!r}")

    def _wait_balanced(self, timeout: float = 30) -> None:
        """Until haproxy's checks see both replicas up (four health calls in a row)."""
        deadline, good = time.time() + timeout, 0
        while time.time() < deadline and good < 4:
            try:
                status, _ = request("GET", f"{self.url}/api/health", timeout=5)
            except OSError:
                status = 0
            good = good + 1 if status == 200 else 0
            time.sleep(0.25 if good else 0.5)
        assert good >= 4, self.balancer.log_text()

    def _token(self, user: str) -> str:
        """A Hub API token of ``user`` (made by the hub admin's driver service)."""
        status, body = self.hub.hub("POST", f"/users/{user}/tokens",
                                    {"note": "hub replicas test"})
        assert status in (200, 201), (status, body)
        return body["token"]

    @property
    def url(self) -> str:
        """The service as the Hub and the kernels reach it: through the balancer."""
        return f"{self.balancer.url}{PREFIX}"

    def direct(self, n: int) -> str:
        """Replica ``n`` (0 or 1) reached directly, not through the balancer."""
        return f"http://127.0.0.1:{self.replica_ports[n]}{PREFIX}"

    def served(self, pattern: str) -> list[int]:
        """How many access lines of each replica match ``pattern`` (a regex)."""
        return [len(re.findall(pattern, (self.root / f"replica{n}-access.log").read_text()))
                for n in (1, 2)]

    def run(self, user: str, code: str, kernel: str | None = None) -> Any:
        return result_of(self.hub.execute(user, kernel or self.kernels[user], code))

    def http(self, user: str, body: str) -> Any:
        """Run ``body`` (which sets ``out``) after the HTTP helper in ``user``'s kernel."""
        return self.run(user, HTTP + body + "\nprint('RESULT' + json.dumps(out))")

    def sql(self, query: str, *params: Any) -> list[tuple]:
        """A query on the shared registry (PostgreSQL), as its operator would run it."""
        import psycopg

        with psycopg.connect(self.pg.url, autocommit=True) as db:
            return db.execute(query, params).fetchall()

    def stop(self) -> None:
        for part in reversed(self.parts):
            try:
                part.stop()
            except Exception as exc:  # stop everything else regardless
                print(f"stopping {type(part).__name__}: {exc}")


class _Removing:
    """Stops a :class:`PostgresServer` and removes its cluster directory."""

    def __init__(self, pg: PostgresServer) -> None:
        self.pg = pg

    def stop(self) -> None:
        self.pg.remove()


@pytest.fixture(scope="module")
def farm(tmp_path_factory):
    farm = Farm(tmp_path_factory.mktemp("hubrep"))
    try:
        yield farm
    except BaseException:
        print(farm.hub.log()[-6000:])
        raise
    finally:
        for replica in farm.replicas:
            print(f"--- {replica.log_path}:\n{replica.log_path.read_text()[-3000:]}")
        farm.stop()


def on_both_replicas_at_once(action, items) -> None:
    """Run ``action(item, n)`` for every item on replica 0 and replica 1 at the same moment
    (one thread each, released together by a barrier per item), and wait for all."""
    def run(item: Any, n: int, gate: threading.Barrier) -> None:
        gate.wait()
        action(item, n)

    threads = []
    for item in items:
        gate = threading.Barrier(2)
        threads += [threading.Thread(target=run, args=(item, n, gate)) for n in (0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)


def test_kernels_get_keys_through_the_balancer_and_either_replica_serves_calls(farm):
    """alice's kernel got its key through the balancer; its SDK calls go through the
    balancer, both replicas serve some (their access logs), and the key works on each
    replica reached directly."""
    calls = r"POST \S*/(openai/v1/chat/completions|anthropic/v1/messages) 200"
    before = farm.served(calls)
    for _ in range(3):
        result = farm.run("alice", CALLS)
        assert result["openai"] and result["anthropic"], result
    env = result["env"]
    assert env["OPENAI_API_KEY"].startswith("vk-")
    assert env["OPENAI_BASE_URL"] == farm.url + "/openai/v1"  # the one URL
    assert env["ANTHROPIC_BASE_URL"] == farm.url + "/anthropic"
    assert farm.served(r"POST \S*/api/hub/kernels 201") != [0, 0]  # minted by a replica
    served = [a - b for a, b in zip(farm.served(calls), before)]
    assert sum(served) == 6 and min(served) >= 1, served  # both replicas served calls
    # the same key works on each replica reached directly
    import openai
    for n in (0, 1):
        reply = openai.OpenAI(base_url=farm.direct(n) + "/openai/v1", max_retries=0,
                              api_key=env["OPENAI_API_KEY"]).chat.completions.create(
            model="gpt-4o-mini", max_tokens=4, messages=[{"role": "user", "content": "hi"}])
        assert reply.choices[0].message.content
    assert len(farm.upstream.seen()) >= 8  # each reached the provider with the real key


def test_one_personal_key_per_user_when_first_kernels_race_on_both_replicas(farm):
    """Two first mints at once, one on each replica, for six users with Hub tokens; and
    erin's first two kernels started at once through the balancer."""
    results: dict[str, list] = {user: [] for user in RACERS}

    def mint(user: str, n: int) -> None:
        results[user].append(request("POST", f"{farm.direct(n)}/api/hub/kernels",
                                     {"kernel_id": f"k-{user}-{n}"}, token=farm.tokens[user]))

    on_both_replicas_at_once(mint, RACERS)
    for user, answers in results.items():
        assert [status for status, _ in answers] == [201, 201], (user, answers)
    personal = dict(farm.sql(
        "SELECT owner, count(*) FROM vkeys_keys WHERE metadata::jsonb->>'kind' = 'user' "
        "AND owner = ANY(%s) GROUP BY owner", RACERS))
    assert personal == {user: 1 for user in RACERS}, personal
    # both kernel keys of each user hang off that one key
    parents = farm.sql("SELECT owner, count(DISTINCT parent_id), count(*) FROM vkeys_keys "
                       "WHERE metadata::jsonb->>'kind' = 'kernel' AND owner = ANY(%s) "
                       "GROUP BY owner", RACERS)
    assert sorted(parents) == [(user, 1, 2) for user in RACERS], parents

    # real kernels: erin's server runs (started with the others); two kernels at once
    kernels: list[str] = []
    threads = [threading.Thread(target=lambda: kernels.append(farm.hub.start_kernel("erin")))
               for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert len(kernels) == 2
    keys = [farm.run("erin", CALLS, kernel)["env"]["OPENAI_API_KEY"] for kernel in kernels]
    assert keys[0] != keys[1]
    rows = farm.sql("SELECT metadata::jsonb->>'kind', count(*), count(DISTINCT parent_id) "
                    "FROM vkeys_keys WHERE owner = 'erin' AND revoked_at IS NULL GROUP BY 1")
    assert sorted(rows) == [("kernel", 2, 1), ("user", 1, 1)], rows


def test_a_users_budget_holds_exactly_across_both_replicas(farm):
    """carol caps bob's day; his kernel races 120 calls at the last dollar through the
    balancer: no overspend; every replica's admin API reports the same shared spend."""
    status, body = request("PUT", f"{farm.url}/api/policies/user:bob",
                           {"budgets": [{"usd": CAP_USD, "period": "day"}]},
                           token=farm.tokens["carol"])
    assert status == 200, (status, body)
    before = farm.served(r"POST \S*/openai/v1/chat/completions")
    outcomes = farm.run("bob", RACE)
    counts = Counter(o[:3] for o in outcomes)
    assert set(counts) <= {"ok", "429"} and counts["ok"] >= 3 and counts["429"] >= 3, counts
    refusal = next(o for o in outcomes if o.startswith("429"))
    assert "budget exhausted for user:bob (day window)" in refusal, refusal
    assert "across all gateway replicas" in refusal
    served = [a - b for a, b in zip(farm.served(r"POST \S*/openai/v1/chat/completions"),
                                    before)]
    assert min(served) >= 5, served  # both replicas took part in the race

    time.sleep(1.0)  # settlements are batched off the call path
    reports = []
    for n in (0, 1):
        status, report = request("GET", f"{farm.direct(n)}/api/policies/user:bob",
                                 token=farm.tokens["carol"])
        assert status == 200, report
        reports.append(report)
    day = [r["budgets"][0] for r in reports]
    assert reports[0]["figures"] == reports[1]["figures"] == "shared", reports
    assert day[0] == day[1], day  # the same numbers on every replica
    spent, cap = day[0]["spent_usd"], day[0]["usd"]
    assert day[0]["held_usd"] == 0
    overspend = max(spent - cap, 0)
    assert overspend == 0, f"overspend ${overspend:.12f}"
    # raced: the calls kept coming until what was left was nearly spent
    per_call = spent / counts["ok"]
    assert cap - spent < 0.2 * cap, (cap, spent, per_call)
    # bob's own view (/api/me with his kernel's key) shows the same shared figure
    me = farm.http("bob", "out = call('GET', '/me', auth='vkey')")
    assert me[0] == 200, me
    user_scope = next(s for s in me[1]["limits"] if s["scope"] == "user:bob")
    assert user_scope["budgets"][0]["spent_usd"] == spent, user_scope


def test_the_oauth_cookie_of_one_replica_is_good_on_the_other(farm):
    """bob logs in through the Hub's page and OAuth (an HTTP client following the
    redirects through the Hub's proxy and the balancer); the service's cookie then opens
    his home page on each replica reached directly."""
    import requests

    browser = requests.Session()
    login = browser.get(f"{farm.hub.base}/hub/login", timeout=30)
    assert login.status_code == 200
    xsrf = browser.cookies.get("_xsrf", "")
    page = browser.post(f"{farm.hub.base}/hub/login?next={PREFIX}/",
                        data={"username": "bob", "password": "test-password", "_xsrf": xsrf},
                        timeout=60)
    assert page.status_code == 200 and "Signed in as" in page.text, (page.url, page.text[:500])
    assert "bob" in page.text
    cookie = "; ".join(f"{c.name}={c.value}" for c in browser.cookies
                       if c.name.startswith("service-vkeys"))
    assert cookie, list(browser.cookies.keys())
    for n in (0, 1):
        home = requests.get(f"{farm.direct(n)}/", headers={"Cookie": cookie},
                            allow_redirects=False, timeout=30)
        assert home.status_code == 200, (n, home.status_code, home.headers.get("location"))
        assert "Signed in as <b>bob</b>" in home.text


def test_a_revoke_through_one_replica_is_refused_on_the_other(farm):
    """An admin revoke on replica 1 and a kernel stop (through the balancer) are refused
    on the other replica at its next request; revokes racing on both count once."""
    import openai

    def works(key: str, n: int) -> int:
        client = openai.OpenAI(base_url=farm.direct(n) + "/openai/v1", api_key=key,
                               max_retries=0)
        try:
            client.chat.completions.create(model="gpt-4o-mini", max_tokens=4,
                                           messages=[{"role": "user", "content": "still?"}])
            return 200
        except openai.APIStatusError as exc:
            return exc.status_code

    # the admin API on replica 1 revokes alice's kernel key; replica 2 refuses it next
    key = farm.run("alice", CALLS)["env"]["OPENAI_API_KEY"]
    key_id = key[3:].split("_", 1)[0]
    assert works(key, 1) == 200
    status, body = request("POST", f"{farm.direct(0)}/api/keys/{key_id}/revoke",
                           token=farm.tokens["carol"])
    assert status == 200 and body["state"] == "revoked", body
    assert works(key, 1) == 401 and works(key, 0) == 401

    # the same keys revoked at once through both replicas: each revoked and audited once
    # (alice's: her server runs, so the reapers leave her kernel keys alone)
    minted = [request("POST", f"{farm.url}/api/hub/kernels", {"kernel_id": f"twice-{i}"},
                      token=farm.tokens["alice"]) for i in range(6)]
    ids = [body["key_id"] for status, body in minted if status == 201]
    assert len(ids) == 6, minted
    seq = farm.sql("SELECT coalesce(max(seq), 0) FROM vkeys_audit")[0][0]
    answers: list[int] = []

    def revoke(key_id: str, n: int) -> None:
        answers.append(request("POST", f"{farm.direct(n)}/api/keys/{key_id}/revoke",
                               token=farm.tokens["carol"])[0])

    on_both_replicas_at_once(revoke, ids)
    assert answers == [200] * 12, answers
    audited = Counter(target for (target,) in farm.sql(
        "SELECT target FROM vkeys_audit WHERE seq > %s AND action = 'key.revoke'", seq))
    assert audited == Counter({f"key:{key_id}": 1 for key_id in ids}), (audited, seq, farm.sql(
        "SELECT seq, actor, action, target FROM vkeys_audit ORDER BY seq DESC LIMIT 20"))

    # a kernel stop: its server asks the balancer (either replica) to revoke its key
    kernel = farm.hub.start_kernel("alice")
    key = farm.run("alice", CALLS, kernel)["env"]["OPENAI_API_KEY"]
    assert works(key, 0) == 200 and works(key, 1) == 200
    status, _ = request("DELETE", f"{farm.hub.user_url('alice')}/api/kernels/{kernel}",
                        token=DRIVER_TOKEN)
    assert status == 204
    deadline = time.time() + 20
    while time.time() < deadline and works(key, 0) != 401:
        time.sleep(0.2)
    assert works(key, 0) == 401 and works(key, 1) == 401


def test_both_reapers_revoke_a_killed_servers_keys_once(farm):
    """SIGKILL of bob's server: the reapers of both replicas see it gone; each of his
    kernel keys is revoked once and audited once, and neither replica logs an error."""
    owned = {row[0] for row in farm.sql(
        "SELECT id FROM vkeys_keys WHERE owner = 'bob' AND metadata::jsonb->>'kind' = "
        "'kernel' AND revoked_at IS NULL")}
    assert owned
    seq = farm.sql("SELECT coalesce(max(seq), 0) FROM vkeys_audit")[0][0]
    os.kill(farm.hub.server_pid("bob"), signal.SIGKILL)
    deadline = time.time() + 40
    while time.time() < deadline:
        left = farm.sql("SELECT count(*) FROM vkeys_keys WHERE id = ANY(%s) AND revoked_at "
                        "IS NULL", list(owned))[0][0]
        if not left:
            break
        time.sleep(0.5)
    assert not left, "the reapers did not revoke bob's kernel keys"
    time.sleep(3)  # both reapers have swept again since (every second)
    audit = farm.sql("SELECT actor, action, target FROM vkeys_audit WHERE seq > %s", seq)
    revokes = Counter(target for actor, action, target in audit if action == "key.revoke")
    assert revokes == Counter({f"key:{key}": 1 for key in owned}), audit
    assert {actor for actor, action, _ in audit if action == "key.revoke"} == {
        "jupyter-vkeys:hub-reaper"}
    for replica in farm.replicas:
        log = replica.log_path.read_text()
        assert "Traceback" not in log and "[E " not in log, log[-3000:]
