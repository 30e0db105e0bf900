"""The gateway: configuration (``c.VKeysGateway.*``) and the running state it builds.

:class:`VKeysGateway` is a traitlets ``LoggingConfigurable``: the standalone
server (``jupyter vkeys serve``) and the Jupyter server extension both create
one from their config, call :meth:`VKeysGateway.start` before serving and
:meth:`VKeysGateway.stop` at shutdown, and mount :func:`.app.handlers`.
It owns the store, the key registry, the policy engine, the price table, the
model catalog, the upstream transports and the event sink.
"""

from __future__ import annotations

import logging
import os
import secrets
import stat
import time
from pathlib import Path
from typing import Any, Callable
from zoneinfo import ZoneInfo

from traitlets import Bool, Dict, Enum, Float, Int, List, Unicode, default
from traitlets.config import LoggingConfigurable

from ..keys import KeyRecord
from ..paths import default_data_dir
from ..policy import PolicyEngine, PolicyError, parse_policy
from ..pricing import PriceTable
from ..providers.catalog import DEFAULT_CATALOG, Catalog, ModelEntry
from ..providers.config import DEFAULT_PROVIDERS, ProviderConfig, load_providers
from ..providers.fake import FakeTransport
from ..http.client import LeanTransport
from ..providers.scrub import Scrubber
from ..http.aiohttp_client import HttpTransport
from ..http.upstream import ProxySettings, Transport
from ..registry import KeyRegistry
from ..runtime import ControlPlane, DataDirLock, publish
from ..state import SharedLedger, open_ledger
from ..state.base import default_replica_id
from ..store import Store
from ..warehouse.sink import EventSink
from .cells import CellTracker
from .dry_run import OutputHistory
from .pacing import RefusalPacer

log = logging.getLogger("jupyter_vkeys")


def _secret_file(path: Path, nbytes: int = 32) -> str:
    """Read a secret kept in ``path`` or create it with mode 0600."""
    if path.exists():
        return path.read_text().strip()
    path.parent.mkdir(parents=True, exist_ok=True)
    value = secrets.token_urlsafe(nbytes)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, stat.S_IRUSR | stat.S_IWUSR)
    with os.fdopen(fd, "w") as f:
        f.write(value + "\n")
    return value


class VKeysGateway(LoggingConfigurable):
    """Configuration and runtime state of one gateway."""

    data_dir = Unicode(help="Directory holding the key registry (SQLite), the pepper, the admin "
                            "token and the warehouse. Default: <jupyter data dir>/vkeys.").tag(
        config=True)

    @default("data_dir")
    def _default_data_dir(self) -> str:
        return default_data_dir()

    prefix = Unicode("/vkeys", help="URL prefix of every gateway route (after Jupyter's "
                                    "base_url when running as an extension).").tag(config=True)
    providers = Dict(help=(
        "Upstream providers by name: {'openai': {'kind': 'openai', 'base_url': "
        "'https://api.openai.com/v1', 'api_key_env': 'OPENAI_API_KEY'}, ...}. kind is openai "
        "(any OpenAI-compatible server), anthropic or fake. The real key is read from "
        "api_key_env or api_key_file, never from configuration.")).tag(config=True)

    @default("providers")
    def _default_providers(self) -> dict:
        return {name: dict(spec) for name, spec in DEFAULT_PROVIDERS.items()}

    models = List(help=("Model catalog: ordered entries {'match': name-or-glob, 'provider': "
                        "name, 'upstream': optional upstream name, 'max_output_tokens': int, "
                        "'dimensions': int}. The first match routes the call.")).tag(config=True)

    @default("models")
    def _default_models(self) -> list:
        return [dict(e) for e in DEFAULT_CATALOG]

    fake_mode = Enum(["auto", "always", "never"], "auto", help=(
        "When to answer from the offline fake provider: auto = when no provider has credentials "
        "(with a warning at start-up); always; never.")).tag(config=True)
    fake_latency_ms = Float(0.0, help="Fake provider: delay before the first byte (ms); a "
                                      "request may override it with x-vkeys-fake-latency-ms.").tag(
        config=True)
    fake_chunk_delay_ms = Float(0.0, help="Fake provider: delay between stream chunks (ms).").tag(
        config=True)
    max_body_bytes = Int(16 * 1024 * 1024, help="Largest request body accepted on the data plane; "
                                                "larger ones get 413.").tag(config=True)
    connect_timeout = Float(10.0, help="Seconds to connect to an upstream (then 502).").tag(
        config=True)
    read_timeout = Float(600.0, help="Seconds an upstream may stay silent, before its answer or "
                                     "between stream chunks (then 504). Not a limit on the whole "
                                     "call: streams may run for minutes.").tag(config=True)
    upstream_client = Enum(["lean", "aiohttp"], "lean", help=(
        "HTTP client for upstream calls: lean (pooled keep-alive HTTP/1.1 on httptools, the "
        "fastest measured) or aiohttp (its pooled ClientSession).")).tag(config=True)
    max_response_bytes = Int(64 * 1024 * 1024, help=(
        "Largest non-streamed upstream answer the gateway buffers (after decoding gzip); a "
        "larger one is answered 502. Streams are relayed as they arrive and not capped.")).tag(
        config=True)
    upstream_keepalive = Float(30.0, help=(
        "Seconds a pooled upstream connection may stay idle before it is closed rather than "
        "reused (below most servers' own idle timeouts, so a reused connection is rarely "
        "closed under a request).")).tag(config=True)
    upstream_proxy = Unicode(None, allow_none=True, help=(
        "HTTP proxy for upstream calls, e.g. 'http://user:pass@proxy.corp:3128' (https "
        "upstreams are tunnelled with CONNECT; TLS stays end to end). None (the default) reads "
        "HTTPS_PROXY / HTTP_PROXY from the environment; '' connects directly.")).tag(config=True)
    upstream_no_proxy = Unicode(None, allow_none=True, help=(
        "Comma-separated hosts (or .domain suffixes) reached without the proxy. None (the "
        "default) reads NO_PROXY from the environment.")).tag(config=True)
    admin_token = Unicode("", help="Bearer token of the standalone admin API. Default: "
                                   "$VKEYS_ADMIN_TOKEN, else one generated into "
                                   "<data_dir>/admin_token (mode 0600).").tag(config=True)
    price_overrides = Dict(help=("Prices by model name that win over the genai-prices dataset, "
                                 "USD per million tokens: {'my-model': {'input_mtok': 0.5, "
                                 "'output_mtok': 1.5, 'cache_read_mtok': 0.05}}.")).tag(config=True)
    fallback_price = Dict(None, allow_none=True, help=(
        "Price applied to models with no known price (same keys as price_overrides). Without it, "
        "budget-capped keys refuse unpriced models.")).tag(config=True)
    timezone = Unicode("UTC", help="Time zone in which day/week/month budget windows start "
                                   "(IANA name).").tag(config=True)
    clamp_max_tokens = Bool(True, help=(
        "When a request sets no max_tokens and its worst case exceeds the remaining budget: "
        "True lowers max_tokens to what the budget affords; False refuses with 400.")).tag(
        config=True)
    rate_refusal_delay = Float(1.0, help=(
        "Longest time (s) a key's repeated rate refusal is held before it is answered: a "
        "client retrying a 429 within a second, ignoring retry-after, waits for it (at least "
        "0.25 s) instead of costing the gateway thousands of refusals a second. The first "
        "refusal is never delayed. 0 answers every refusal at once.")).tag(config=True)
    cut_revoked_streams = Bool(False, help="Stop relaying a stream as soon as its key is "
                                           "revoked (otherwise in-flight calls finish).").tag(
        config=True)
    forward_headers = List(["anthropic-version", "anthropic-beta", "openai-beta",
                            "idempotency-key"],
                           help="Client request headers relayed upstream (all others are "
                                "dropped; credentials are always replaced). No x-vkeys-* "
                                "header is ever relayed, even if listed here: the offline "
                                "fake's x-vkeys-fake-* controls reach the in-process fake "
                                "only (a fake served over HTTP reads the same controls from "
                                "the body's metadata.vkeys_fake_* entries).").tag(config=True)

    warehouse = Bool(True, help="Record every call and admin action in the Parquet warehouse "
                                "(off: events are kept in memory only).").tag(config=True)
    warehouse_dir = Unicode(help="Root of the warehouse (journal/, events/, audit/). Default: "
                                 "<data_dir>/warehouse.").tag(config=True)
    warehouse_url = Unicode("", help=(
        "Also keep the warehouse in S3-compatible object storage: s3://bucket/prefix. Each "
        "replica's writer copies its Parquet files there under the same hive layout "
        "(<dataset>/date=<day>/<replica>-<file>); readers take the URL where they take a "
        "directory. Endpoint and credentials: AWS_ENDPOINT_URL (or VKEYS_S3_ENDPOINT), "
        "AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION.")).tag(config=True)
    roll_seconds = Float(10.0, help="Seconds after which the open journal segment is rolled "
                                    "into Parquet (freshness of the Parquet files).").tag(
        config=True)
    fsync_interval = Float(1.0, help="Seconds between fsyncs of the journal (on a background "
                                     "thread; every write reaches the OS at once).").tag(
        config=True)
    hash_notebook_paths = Bool(False, help="Store a hash of notebook paths instead of the "
                                           "path in the warehouse.").tag(config=True)
    retention_days = Int(0, help="Delete warehouse partitions older than this many days "
                                 "(0 keeps everything).").tag(config=True)
    log_content = Bool(False, help="Store prompts (prompt_text) in the warehouse. Off by "
                                   "default: only a hash of the prompt is kept.").tag(config=True)

    # -- scale-out: state shared by several replicas (jupyter_vkeys.state) -------------
    state_url = Unicode("", help=(
        "Where budgets, holds, RPM/TPM windows and concurrency are shared by several "
        "gateway replicas: a Redis/Valkey URL (redis://host:6379/0, rediss://..., "
        "unix:///run/redis.sock; needs pip install 'jupyter-vkeys[scale]'). '' (the "
        "default) keeps them in this process only. Redis must persist (AOF).")).tag(
        config=True)
    registry_url = Unicode("", help=(
        "PostgreSQL holding the key registry, scope policies and admin audit shared by "
        "every replica (postgresql://user:pass@host/db; needs pip install "
        "'jupyter-vkeys[scale]'). Changes reach every replica through LISTEN/NOTIFY; "
        "while it is unreachable calls fail closed (503). '' (the default): SQLite in "
        "data_dir.")).tag(config=True)
    state_prefix = Unicode("{vkeys}:", help=(
        "Prefix of every key the gateway writes in Redis: one prefix per gateway "
        "deployment sharing a Redis; every replica of one deployment uses the same.")).tag(
        config=True)
    state_timeout = Float(1.0, help=(
        "Seconds a call waits for the shared state before it is refused with 503 "
        "(fail closed).")).tag(config=True)
    state_lease_seconds = Float(10.0, help=(
        "How long a replica's open holds outlive it: a replica renews its lease every "
        "third of this; once it lapses another replica charges its open holds at the hold "
        "(status lost) and frees its concurrency slots.")).tag(config=True)
    state_fail_open_rate = Bool(False, help=(
        "While the shared state is unreachable, admit calls whose scopes carry only RPM "
        "limits on this replica's own count (budgets, TPM and concurrency always fail "
        "closed).")).tag(config=True)
    replica_id = Unicode("", help=(
        "This replica's name in the shared state (default: host-pid-random; set it to the "
        "pod name to read redis-cli easily). Must be unique among live replicas.")).tag(
        config=True)

    # -- the lean HTTP front's limits and deadlines (read by lean_server.LeanServer) -----
    max_head_bytes = Int(65536, help=(
        "Largest request line plus headers (bytes) the lean HTTP front reads; a longer head "
        "is answered 431 as soon as its bytes pass the limit, however it is split into "
        "packets (tornado's default limit too).")).tag(config=True)
    max_url_bytes = Int(16384, help=(
        "Longest request target (path and query, bytes) the lean HTTP front accepts; "
        "longer ones are answered 414.")).tag(config=True)
    head_timeout = Float(30.0, help=(
        "Seconds a client may take to send a request's line and headers, from their first "
        "byte (lean HTTP front); then 408 and the connection closes, so a slow trickle "
        "cannot hold a connection.")).tag(config=True)
    body_timeout = Float(300.0, help=(
        "Seconds a client may take to send a request body, from the end of its headers "
        "(lean HTTP front); then 408 and the connection closes.")).tag(config=True)
    idle_timeout = Float(75.0, help=(
        "Seconds a keep-alive connection may wait for its next request before the lean "
        "HTTP front closes it (never while a response is being sent).")).tag(config=True)
    max_connections = Int(10000, help=(
        "Most client connections the lean HTTP front keeps open; one more is answered 503 "
        "(retry-after: 1) and closed.")).tag(config=True)

    # -- telemetry (jupyter_vkeys.telemetry; read once, when the gateway is created) -----
    metrics = Bool(True, help=(
        "Serve Prometheus metrics at {prefix}/metrics (calls, tokens, cost, refusals, "
        "latency histograms, budgets, pools, journal backlog).")).tag(config=True)
    metrics_public = Bool(False, help=(
        "Inside a Jupyter server, serve {prefix}/metrics without authentication (default: "
        "only to gateway admins). The standalone server's /metrics is always public; the "
        "kernels' loopback front never serves it.")).tag(config=True)
    metrics_per_key = Bool(False, help=(
        "Add per-virtual-key series (vkeys_key_calls_total, vkeys_key_cost_usd_total, key: "
        "budgets). Off by default: per-kernel keys would multiply the series count.")).tag(
        config=True)
    access_log = Bool(True, help=(
        "Write one access line per request to the 'jupyter_vkeys.access' logger (both "
        "fronts; never a query string, a secret or prompt content).")).tag(config=True)
    access_log_format = Enum(["text", "json"], "text", help=(
        "Format of the access log: text, or JSON lines (time, method, path, status, "
        "duration_ms, bytes, key_id, model, request_id).")).tag(config=True)
    access_log_file = Unicode("", help=(
        "Where access lines go: '' (the default) as records of the 'jupyter_vkeys.access' "
        "logger; '-' straight to stdout, or a file path (appended, mode 0600), bypassing "
        "the logging module: cheaper on a busy gateway.")).tag(config=True)
    tracing = Bool(False, help=(
        "Emit one OpenTelemetry span per call (needs the extra: pip install "
        "'jupyter-vkeys[otel]'; the SDK and exporter are configured through OTEL_* "
        "environment variables). The caller's traceparent is continued.")).tag(config=True)
    ready_writer_grace = Float(2.0, help=(
        "Seconds a restarted warehouse writer must stay up before {prefix}/api/ready "
        "counts it alive again (a crash-looping writer keeps the gateway unready).")).tag(
        config=True)

    def __init__(self, clock: Callable[[], float] = time.time, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.clock = clock
        self.store: Store | None = None
        self.registry: KeyRegistry | None = None
        self.policy: PolicyEngine | None = None
        self.prices: PriceTable | None = None
        self.catalog: Catalog | None = None
        self.provider_configs: dict[str, ProviderConfig] = {}
        self.transports: dict[str, Transport] = {}
        self.fake: FakeTransport | None = None
        self.sink: EventSink = EventSink()
        self.refusal_pacer = RefusalPacer(0.0)
        self.started_at = 0.0
        self.cells = CellTracker()
        self.output_history = OutputHistory()
        self.lock: DataDirLock | None = None
        self.shared: SharedLedger | None = None  # set when state_url names one
        self.registry_sync = None  # a state.registry_sync.RegistrySync with registry_url
        self.control = ControlPlane(self)
        from ..telemetry import Telemetry  # telemetry hook: metrics, access log, readiness

        self.telemetry = Telemetry(self)

    # -- lifecycle -------------------------------------------------------------------
    async def start(self) -> None:
        """Open the store, load keys and policies, recover the warehouse and rebuild spend,
        resolve providers. Called once, on the serving loop, before requests arrive."""
        data = Path(self.data_dir)
        data.mkdir(parents=True, exist_ok=True)
        # One owner per data directory: raises DataDirBusy (pid and URL of the holder)
        # before anything in it is opened.
        self.lock = DataDirLock(data)
        self.lock.acquire()
        try:
            self._open(data)
            if self.state_url:
                self.shared = open_ledger(
                    self.state_url, tz=ZoneInfo(self.timezone), lease=self.state_lease_seconds,
                    timeout=self.state_timeout, fail_open_rate=self.state_fail_open_rate,
                    clamp_max_tokens=self.clamp_max_tokens,
                    replica=self.replica_id or self._replica_name(),
                    prefix=self.state_prefix)
                await self.shared.start()
            if self.registry_url:
                from ..state.registry_sync import RegistrySync

                replica = self.replica_id or self._replica_name()
                self.registry_sync = RegistrySync(self.registry_url, self.store, self.registry,
                                                  self.policy, parse_policy, replica)
                await self.registry_sync.start()
        except BaseException:
            self._close_state()
            raise

    def _open(self, data: Path) -> None:
        """Everything :meth:`start` opens once it holds the data directory's lock."""
        pepper = os.environ.get("VKEYS_PEPPER") or _secret_file(data / "pepper")
        if self.registry_url:
            from ..state.pg_store import PgStore

            self.store = PgStore(self.registry_url)
            self.store.check_pepper(pepper.encode())
        else:
            self.store = Store(data / "registry.sqlite")
        self.registry = KeyRegistry(self.store, pepper.encode(), clock=self.clock)
        self.policy = PolicyEngine(tz=ZoneInfo(self.timezone), clock=self.clock,
                                   clamp_max_tokens=self.clamp_max_tokens)
        self.policy.parents = self.registry.get
        self.registry.on_change = self.policy.invalidate
        for scope, saved in self.store.load_policies().items():
            try:
                self.policy.set_scope_policy(scope, parse_policy(saved))
            except PolicyError as exc:  # saved by an older version with laxer checks
                log.error("jupyter-vkeys: ignoring the saved policy of %s: %s", scope, exc)
        self.prices = PriceTable(self.price_overrides, self.fallback_price)
        self.forwarded_header_names = frozenset(h.lower() for h in self.forward_headers
                                                if not h.lower().startswith("x-vkeys-"))
        if len(self.forwarded_header_names) < len({h.lower() for h in self.forward_headers}):
            log.warning("jupyter-vkeys: x-vkeys-* headers in c.VKeysGateway.forward_headers "
                        "are ignored: gateway-internal headers never leave the gateway (drive "
                        "a fake provider served over HTTP with the body's metadata."
                        "vkeys_fake_* entries)")
        self.refusal_pacer = RefusalPacer(self.rate_refusal_delay)
        self.catalog = Catalog(self.models)
        self.provider_configs = load_providers(self.providers)
        for entry in self.catalog.named_models():  # warm the price cache off the hot path
            provider = self.provider_configs.get(entry.provider)
            self.prices.rates(entry.match, provider.price_provider if provider else "")
        self._open_transports()
        self._admin_token = self.admin_secret()
        if self.warehouse:
            self._open_warehouse()
        self.started_at = time.time()
        self.telemetry.start()  # telemetry hook

    def _open_warehouse(self) -> None:
        from ..warehouse.sink import WarehouseSink

        root = Path(self.warehouse_dir or Path(self.data_dir) / "warehouse")
        sink = WarehouseSink(root, roll_seconds=self.roll_seconds,
                             fsync_interval=self.fsync_interval,
                             hash_notebook_paths=self.hash_notebook_paths,
                             retention_days=self.retention_days, bucket=self.warehouse_url,
                             replica=self.replica_id or self._replica_name())
        restored = 0
        starts = self.policy.window_starts()
        for path in sink.open(starts):
            scopes = [f"key:{path['key_id']}"]
            if path["parent_key_id"]:
                scopes.append(f"key:{path['parent_key_id']}")
            scopes += [f"{kind}:{path[kind]}" for kind in ("user", "team", "project")
                       if path[kind]]
            scopes.append("global")
            spent = {period: path[period] for period in starts}
            self.policy.restore_spend(scopes, spent)
            restored += spent.get("total", 0)
        if restored:
            log.info("jupyter-vkeys: rebuilt budget counters from the warehouse "
                     "(%s spent in total)", f"${restored / 1e12:,.6f}")
        self.sink = sink
        self.output_history = OutputHistory(sink.typical_output)
        self.store.on_audit = sink.audit

    def _replica_name(self) -> str:
        """This process's replica name (chosen once; also the shared ledger's)."""
        if not getattr(self, "_replica", ""):
            self._replica = default_replica_id()
        return self._replica

    def _open_transports(self) -> None:
        real = [p for p in self.provider_configs.values() if p.kind != "fake" and p.has_credentials]
        self.scrubber = Scrubber(p.api_key for p in self.provider_configs.values())
        proxies = ProxySettings.from_environment()
        if self.upstream_proxy is not None:
            proxies = ProxySettings({"http": self.upstream_proxy, "https": self.upstream_proxy},
                                    proxies.no_proxy)
        if self.upstream_no_proxy is not None:
            proxies.no_proxy = self.upstream_no_proxy
        self.fake = FakeTransport(latency_ms=self.fake_latency_ms,
                                  chunk_delay_ms=self.fake_chunk_delay_ms)
        use_fake_for_all = self.fake_mode == "always" or (self.fake_mode == "auto" and not real)
        for name, provider in self.provider_configs.items():
            if provider.kind == "fake" or use_fake_for_all:
                self.transports[name] = self.fake
            elif provider.has_credentials:
                context = None
                if provider.ca_file:
                    import ssl
                    context = ssl.create_default_context(cafile=provider.ca_file)
                client = LeanTransport if self.upstream_client == "lean" else HttpTransport
                self.transports[name] = client(connect_timeout=self.connect_timeout,
                                               read_timeout=self.read_timeout,
                                               ssl_context=context,
                                               keepalive_timeout=self.upstream_keepalive,
                                               proxies=proxies)
        if use_fake_for_all:
            log.warning("jupyter-vkeys: no provider credentials configured; every model is "
                        "answered by the OFFLINE FAKE provider (set OPENAI_API_KEY / "
                        "ANTHROPIC_API_KEY or configure c.VKeysGateway.providers)")
        else:
            for name, provider in self.provider_configs.items():
                if name not in self.transports:
                    log.warning("jupyter-vkeys: provider %s has no credentials (%s); its models "
                                "answer 503", name, provider.credential_source)

    async def stop(self) -> None:
        """Close upstream connections, the event sink and the store, remove the published
        address and release the data directory. Called at shutdown."""
        try:
            for transport in set(self.transports.values()):
                await transport.close()
            if self.shared is not None:
                await self.shared.close()
            if self.registry_sync is not None:
                await self.registry_sync.close()
        finally:
            self._close_state()

    def _close_state(self) -> None:
        """Close the sink and the store, then let go of the data directory (idempotent)."""
        try:
            self.telemetry.close()  # telemetry hook
            self.sink.close()
            if self.store is not None:
                self.store.close()
        finally:
            if self.lock is not None:
                self.lock.release()

    def publish(self, url: str, kind: str = "standalone", **extra: Any) -> None:
        """Say where this gateway's admin API answers (``<data_dir>/gateway.json``), so the
        CLI goes through it. Called once serving: by ``jupyter vkeys serve`` with its URL,
        by the Jupyter extension with ``kind="jupyter"`` and the server's URL + prefix.
        Removed again by :meth:`stop`."""
        if self.lock is None or not self.lock.held:
            raise RuntimeError("publish() needs a started gateway (it holds the data dir)")
        publish(self.data_dir, url, kind, **extra)

    # -- lookups used by the handlers --------------------------------------------------
    def route(self, model: str) -> tuple[ModelEntry, ProviderConfig, Transport | None] | None:
        """Catalog entry, provider and transport for ``model`` (None if not in the catalog)."""
        entry = self.catalog.lookup(model)
        if entry is None:
            return None
        provider = self.provider_configs.get(entry.provider)
        if provider is None:
            return None
        return entry, provider, self.transports.get(entry.provider)

    def is_fake(self, transport: Transport | None) -> bool:
        """Whether ``transport`` is the in-process fake provider."""
        return transport is self.fake

    def admin_secret(self) -> str:
        """The standalone admin API token (config, environment, or the generated file)."""
        if getattr(self, "_admin_token", None):
            return self._admin_token
        if self.admin_token:
            return self.admin_token
        env = os.environ.get("VKEYS_ADMIN_TOKEN")
        if env:
            return env
        return _secret_file(Path(self.data_dir) / "admin_token")

    # -- control plane (kept for callers of the gateway; see runtime.ControlPlane) -----
    def scope_report(self, scope: str) -> dict[str, Any]:
        """Policy, spend, holds and reset times of a scope (:meth:`ControlPlane.scope_report`)."""
        return self.control.scope_report(scope)

    def key_report(self, record: KeyRecord) -> dict[str, Any]:
        """A key's record, limits and spend (:meth:`ControlPlane.key_report`)."""
        return self.control.key_report(record)
