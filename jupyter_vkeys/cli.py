"""``jupyter vkeys ...``: serve the gateway, manage keys and policies.

``serve`` runs the standalone gateway. ``keys`` and ``policy`` talk to the
admin API of the gateway that holds the data directory when one runs (found
through ``<data_dir>/gateway.json``, see :mod:`jupyter_vkeys.runtime`), so
changes take effect at once; with none running they take the directory's lock
and call the same operations locally.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import logging
import os
import signal
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from traitlets.config import Config
from traitlets.config.loader import JSONFileConfigLoader, PyFileConfigLoader


def load_config(path: str | None) -> Config:
    """Read a ``.py`` (``c.VKeysGateway.x = ...``) or ``.json`` config file."""
    if not path:
        return Config()
    file = Path(path).expanduser().resolve()
    if not file.exists():
        raise SystemExit(f"config file {file} does not exist")
    loader_cls = JSONFileConfigLoader if file.suffix == ".json" else PyFileConfigLoader
    return loader_cls(file.name, str(file.parent)).load_config()


def build_gateway(args: argparse.Namespace):
    """A configured (not yet started) gateway from CLI flags and the config file."""
    from .gateway.core import VKeysGateway

    config = load_config(getattr(args, "config", None))
    if getattr(args, "data_dir", None):
        config.VKeysGateway.data_dir = args.data_dir
    if getattr(args, "fake", False):
        config.VKeysGateway.fake_mode = "always"
    if getattr(args, "state_url", None):
        config.VKeysGateway.state_url = args.state_url
    if getattr(args, "registry_url", None):
        config.VKeysGateway.registry_url = args.registry_url
    serving_defaults(config, getattr(args, "log_level", "WARNING"))
    return VKeysGateway(config=config)


def serving_defaults(config: Config, log_level: str) -> None:
    """What ``serve`` and ``hub-service`` default to: at INFO, access lines go straight to
    stdout (about 3 us a call) rather than through logging (about 10 us: 30% of a busy
    gateway's CPU, telemetry_cost.py), unless the config says where they go."""
    level = getattr(logging, log_level, logging.WARNING)
    if "access_log_file" not in config.VKeysGateway and level <= logging.INFO:
        config.VKeysGateway.access_log_file = "-"


def install_uvloop(disabled: bool) -> None:
    """uvloop for the servers' loops (measurably faster), unless turned off or missing."""
    if disabled:
        return
    try:
        import uvloop
        uvloop.install()
    except ImportError:
        pass


# -- serve ---------------------------------------------------------------------------
def cmd_serve(args: argparse.Namespace) -> int:
    """Run the standalone gateway until SIGINT/SIGTERM."""
    logging.basicConfig(level=getattr(logging, args.log_level), format=
                        "[%(levelname)1.1s %(asctime)s %(name)s] %(message)s")
    install_uvloop(args.no_uvloop)
    return asyncio.run(_serve(args))


async def _serve(args: argparse.Namespace) -> int:
    import tornado.httpserver

    from .gateway.app import make_app, proxy_routes
    from .gateway.lean_server import LeanServer, listening_socket

    from .runtime import DataDirBusy

    gateway = build_gateway(args)
    try:
        await gateway.start()
    except DataDirBusy as busy:
        raise SystemExit(f"jupyter-vkeys: {busy}") from None
    except ValueError as exc:  # configuration the gateway refuses to run with
        await gateway.stop()
        raise SystemExit(f"jupyter-vkeys: cannot start: {exc}") from None
    # Everything loaded so far (modules, price data, keys) lives as long as the process:
    # keep it out of the garbage collector's full scans, which otherwise show up in p99.
    gc.collect()
    gc.freeze()
    try:
        sock = listening_socket(args.host, args.port)
    except OSError as exc:
        await gateway.stop()
        raise SystemExit(f"jupyter-vkeys: cannot listen on {args.host}:{args.port}: "
                         f"{exc.strerror or exc} (pick another with --port, 0 for any)") from None
    if args.server == "lean":
        server = LeanServer(gateway, make_app(gateway), proxy_routes(gateway))
        await server.listen(sock)
    else:
        server = tornado.httpserver.HTTPServer(
            make_app(gateway), xheaders=False, idle_connection_timeout=3600,
            max_body_size=gateway.max_body_bytes * 2 + (1 << 20))
        server.add_sockets([sock])
    port = sock.getsockname()[1]
    host = f"[{args.host}]" if ":" in args.host else args.host
    url = f"http://{host}:{port}{gateway.prefix}"
    gateway.publish(url, "standalone")
    logging.getLogger("jupyter_vkeys").info(
        "jupyter-vkeys gateway at %s  (OPENAI_BASE_URL=%s/openai/v1  ANTHROPIC_BASE_URL="
        "%s/anthropic)", url, url, url)
    print(f"jupyter-vkeys listening on {url}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    server.stop()
    await gateway.stop()
    return 0


# -- hub-service ---------------------------------------------------------------------
def cmd_hub_service(args: argparse.Namespace) -> int:
    """Run the gateway as a JupyterHub service until SIGINT/SIGTERM."""
    logging.basicConfig(level=getattr(logging, args.log_level), format=
                        "[%(levelname)1.1s %(asctime)s %(name)s] %(message)s")
    try:
        from .hub.service import run_service
    except ImportError as exc:
        raise SystemExit(f"jupyter-vkeys hub-service needs JupyterHub's service library: "
                         f"pip install 'jupyter-vkeys[hub]' ({exc})") from None
    config = load_config(args.config)
    if args.data_dir:
        config.VKeysGateway.data_dir = args.data_dir
    if args.fake:
        config.VKeysGateway.fake_mode = "always"
    if args.state_url:
        config.VKeysGateway.state_url = args.state_url
    if args.registry_url:
        config.VKeysGateway.registry_url = args.registry_url
    serving_defaults(config, args.log_level)
    install_uvloop(args.no_uvloop)
    return asyncio.run(run_service(config, host=args.host, port=args.port, user=args.user))


# -- admin backends ------------------------------------------------------------------
class RemoteAdmin:
    """Admin calls over HTTP to the gateway that holds the data directory.

    ``auth`` is the whole ``Authorization`` header: ``Bearer <admin token>`` for a
    standalone gateway, ``token <server token>`` for one inside a Jupyter server.
    """

    def __init__(self, url: str, auth: str) -> None:
        self.url = url.rstrip("/") + "/api"
        self.auth = auth

    def close(self) -> None:
        """Nothing to release."""

    def call(self, method: str, path: str, body: Any = None) -> Any:
        """One admin API call; its error message becomes the CLI's ``error: ...``."""
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.url + path, data=data, method=method, headers={
            "Authorization": self.auth, "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=30) as resp:
                return json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            try:
                message = json.loads(exc.read())["error"]["message"]
            except Exception:
                message = str(exc)
            raise SystemExit(f"error: {message}") from None
        except OSError as exc:
            raise SystemExit(f"error: the gateway at {self.url} does not answer: "
                             f"{getattr(exc, 'reason', exc)}") from None


def local_call(control, method: str, path: str, body: Any, actor: str) -> Any:
    """Route one admin API call (``method``, ``path`` below ``/api``) to the
    :class:`~jupyter_vkeys.runtime.ControlPlane`, as the admin API's handlers do."""
    parts = path.strip("/").split("/")
    body = body if body is not None else {}
    if parts == ["keys"]:
        return control.list_keys() if method == "GET" else control.create_key(body, actor=actor)
    if parts[0] == "keys" and len(parts) == 2:
        if method == "PATCH":
            return control.update_key(parts[1], body, actor=actor)
        return control.get_key(parts[1])
    if parts[0] == "keys" and len(parts) == 3 and parts[2] == "revoke":
        return control.revoke_key(parts[1], actor=actor)
    if parts[0] == "keys" and len(parts) == 3 and parts[2] == "rotate":
        return control.rotate_key(parts[1], body, actor=actor)
    if parts == ["policies"]:
        return control.list_policies()
    if parts[0] == "policies" and len(parts) == 2:
        if method in ("PUT", "PATCH"):
            return control.set_policy(parts[1], body, actor=actor, replace=method == "PUT")
        if method == "DELETE":
            return control.delete_policy(parts[1], actor=actor)
        return control.get_policy(parts[1])
    if parts == ["audit"]:
        return control.audit()
    raise SystemExit(f"error: unsupported admin call {method} {path}")


class LocalAdmin:
    """Admin calls straight into a gateway started here, holding the data directory's
    lock (only when no gateway runs for it). Same operations, same output as the API."""

    def __init__(self, gateway) -> None:
        logging.getLogger("jupyter_vkeys").setLevel(logging.ERROR)
        self.loop = asyncio.new_event_loop()
        try:
            self.loop.run_until_complete(gateway.start())
        except BaseException:
            self.loop.close()
            raise
        self.gw = gateway

    def close(self) -> None:
        """Flush the audit rows to the warehouse, close the store, release the lock."""
        self.loop.run_until_complete(self.gw.stop())
        self.loop.close()

    def call(self, method: str, path: str, body: Any = None) -> Any:
        """One admin operation; refusals become the CLI's ``error: ...``."""
        from .policy import PolicyError
        from .registry import InvalidKeyRequest
        from .runtime import OperationError

        actor = f"cli:{os.environ.get('USER', 'local')}"
        try:
            return local_call(self.gw.control, method, path, body, actor)
        except OperationError as exc:
            raise SystemExit(f"error: {exc.message}") from None
        except (InvalidKeyRequest, PolicyError, ValueError) as exc:
            raise SystemExit(f"error: {exc}") from None


def jupyter_server_auth(pid: int) -> str | None:
    """``token <t>`` of the running Jupyter server with process id ``pid`` (from its
    runtime file, through ``list_running_servers``), or None if it is not found."""
    try:
        from jupyter_server.serverapp import list_running_servers
    except ImportError:
        return None
    for server in list_running_servers():
        if server.get("pid") == pid:
            return f"token {server.get('token', '')}"
    return None


def remote_admin(info: dict[str, Any], gateway) -> RemoteAdmin:
    """The API client for the gateway published in ``gateway.json`` (``info``)."""
    if info.get("kind") == "jupyter":
        auth = jupyter_server_auth(info["pid"])
        if auth is None:
            raise SystemExit(f"error: a Jupyter server (pid {info['pid']}) holds "
                             f"{gateway.data_dir} at {info['url']}, but its runtime file "
                             "(jupyter server list) is not readable; use its admin API or "
                             "stop it")
        return RemoteAdmin(info["url"], auth)
    return RemoteAdmin(info["url"], f"Bearer {gateway.admin_secret()}")


def admin_backend(args: argparse.Namespace):
    """The API of the gateway that holds this data directory, if one runs (found through
    ``<data_dir>/gateway.json``), else a local gateway holding the directory's lock."""
    from .runtime import DataDirBusy, running_gateway

    gateway = build_gateway(args)
    info = running_gateway(gateway.data_dir)
    if info is not None:
        return remote_admin(info, gateway)
    try:
        return LocalAdmin(gateway)
    except DataDirBusy as busy:
        # Someone took the lock meanwhile: a gateway starting publishes its URL shortly.
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            info = running_gateway(gateway.data_dir)
            if info is not None:
                return remote_admin(info, build_gateway(args))
            time.sleep(0.2)
        raise SystemExit(f"error: {busy}") from None


# -- keys and policy -----------------------------------------------------------------
def _pair_arg(text: str) -> tuple[str, str]:
    """``NAME=VALUE`` (``--metadata``, ``--alias-model``) -> a pair."""
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"{text!r}: use NAME=VALUE")
    return name, value


def _budget_arg(text: str) -> dict[str, Any]:
    """``20/month`` or ``20/month@0.8`` -> a budget object."""
    amount, _, rest = text.partition("/")
    period, _, soft = (rest or "month").partition("@")
    try:
        budget: dict[str, Any] = {"usd": float(amount), "period": period}
        if soft:
            budget["soft"] = float(soft)
    except ValueError:
        raise argparse.ArgumentTypeError(f"budget {text!r}: use USD/period[@soft], "
                                         "e.g. 20/month@0.8") from None
    return budget


def _fields(args: argparse.Namespace) -> dict[str, Any]:
    fields: dict[str, Any] = {}
    for name in ("alias", "owner", "team", "project", "rpm", "tpm", "max_concurrency",
                 "expires_at"):
        value = getattr(args, name, None)
        if value is not None:
            fields[name] = value
    if getattr(args, "parent", None):
        fields["parent_id"] = args.parent
    if getattr(args, "models", None) is not None:
        fields["models"] = [m for m in args.models.split(",") if m] or None
    if getattr(args, "alias_model", None):
        fields["aliases"] = dict(args.alias_model)
    if getattr(args, "budget", None):
        fields["budgets"] = args.budget
    if getattr(args, "metadata", None):
        fields["metadata"] = dict(args.metadata)
    return fields


def _print(result: Any, as_json: bool) -> None:
    if as_json:
        print(json.dumps(result, indent=2, default=str))
        return
    if "keys" in result:
        print(f"{'ID':14} {'STATE':8} {'ALIAS':18} {'OWNER':12} {'TEAM':10} PROJECT")
        for k in result["keys"]:
            print(f"{k['id']:14} {k.get('state', ''):8} {k['alias'][:18]:18} "
                  f"{k['owner'][:12]:12} {k['team'][:10]:10} {k['project']}")
        return
    if "key" in result:
        print(f"key id:  {result['id']}\nsecret:  {result['key']}\n(shown once: store it now)")
    else:
        print(json.dumps(result, indent=2, default=str))


def cmd_keys(args: argparse.Namespace) -> int:
    """``keys create|list|show|update|revoke|rotate``."""
    admin = admin_backend(args)
    try:
        if args.action == "create":
            result = admin.call("POST", "/keys", _fields(args))
        elif args.action == "list":
            result = admin.call("GET", "/keys")
        elif args.action == "show":
            result = admin.call("GET", f"/keys/{args.id}")
        elif args.action == "update":
            result = admin.call("PATCH", f"/keys/{args.id}", _fields(args))
        elif args.action == "revoke":
            result = admin.call("POST", f"/keys/{args.id}/revoke", {})
        else:
            result = admin.call("POST", f"/keys/{args.id}/rotate", {"grace_seconds": args.grace})
    finally:
        admin.close()
    _print(result, args.json)
    return 0


def cmd_policy(args: argparse.Namespace) -> int:
    """``policy list|show|set|update|delete``."""
    admin = admin_backend(args)
    try:
        if args.action == "list":
            result = admin.call("GET", "/policies")
        elif args.action == "show":
            result = admin.call("GET", f"/policies/{args.scope}")
        elif args.action == "delete":
            result = admin.call("DELETE", f"/policies/{args.scope}")
        else:
            result = admin.call("PUT" if args.action == "set" else "PATCH",
                                f"/policies/{args.scope}", _fields(args))
    finally:
        admin.close()
    _print(result, True)
    return 0


# -- warehouse -------------------------------------------------------------------------
USAGE_DIMENSIONS = {"key": "key_id", "user": '"user"', "team": "team", "project": "project",
                    "model": "request_model", "day": "date", "notebook": "notebook_path",
                    "provider": "provider", "status": "status"}


def _table(columns: list[str], rows: list[tuple]) -> str:
    cells = [[str(c) for c in columns]] + [["" if v is None else (f"{v:.6f}" if isinstance(v, float)
                                                                 else str(v)) for v in r]
                                          for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _warehouse(args: argparse.Namespace):
    from .warehouse import connect

    gateway = build_gateway(args)
    root = gateway.warehouse_dir or os.path.join(gateway.data_dir, "warehouse")
    return connect(root)


def cmd_usage(args: argparse.Namespace) -> int:
    """``usage --by user,day``: calls, tokens and spend grouped by the given dimensions."""
    dims = [d.strip() for d in args.by.split(",") if d.strip()]
    unknown = [d for d in dims if d not in USAGE_DIMENSIONS]
    if unknown:
        raise SystemExit(f"error: unknown dimension(s) {unknown}; choose from "
                         f"{', '.join(USAGE_DIMENSIONS)}")
    con = _warehouse(args)
    cols = [USAGE_DIMENSIONS[d] for d in dims]
    where = []
    params: list[Any] = []
    if args.since:
        where.append("start_time >= CAST(? AS TIMESTAMPTZ)")
        params.append(args.since)
    sql = (f"SELECT {', '.join(cols)}, count(*) AS calls, "
           "count(*) FILTER (WHERE status = 'ok') AS ok, "
           "sum(input_tokens) AS input_tokens, sum(output_tokens) AS output_tokens, "
           "round(sum(cost_pico) / 1e12, 6) AS spend_usd FROM events "
           f"{'WHERE ' + ' AND '.join(where) if where else ''} "
           f"GROUP BY ALL ORDER BY spend_usd DESC NULLS LAST, calls DESC")
    return _query(con, sql, params, args.json, names=dims)


def cmd_sql(args: argparse.Namespace) -> int:
    """``sql "SELECT ..."``: any DuckDB query over the ``events`` and ``audit`` views."""
    return _query(_warehouse(args), args.query, [], args.json)


def _query(con, sql: str, params: list, as_json: bool, names: list[str] | None = None) -> int:
    """Run ``sql`` and print its rows as a table or JSON; DuckDB errors become messages."""
    import duckdb

    try:
        result = con.execute(sql, params)
    except duckdb.Error as exc:
        raise SystemExit(f"error: {exc}") from None
    if result.description is None:
        return 0
    columns = [d[0] for d in result.description]
    if names:
        columns[:len(names)] = names
    rows = result.fetchall()
    if as_json:
        print(json.dumps([dict(zip(columns, r)) for r in rows], default=str, indent=2))
    else:
        print(_table(columns, rows))
    return 0


def _limit_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--models", help="comma-separated allowlist (globs), '' to clear")
    parser.add_argument("--alias-model", action="append", metavar="NAME=MODEL", type=_pair_arg,
                        help="model alias, e.g. cheap=gpt-4o-mini (repeatable)")
    parser.add_argument("--rpm", type=int, help="requests per minute")
    parser.add_argument("--tpm", type=int, help="tokens per minute (input + output)")
    parser.add_argument("--max-concurrency", type=int, help="calls in flight")
    parser.add_argument("--budget", action="append", type=_budget_arg, metavar="USD/PERIOD[@SOFT]",
                        help="budget, e.g. 20/month@0.8 or 5/total (repeatable)")


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-dir", help="gateway data directory (default: "
                                           "<jupyter data dir>/vkeys or $VKEYS_DATA_DIR)")
    parser.add_argument("--config", help="config file (.py with c.VKeysGateway.* or .json)")
    parser.add_argument("--registry-url", help="key registry shared by replicas on PostgreSQL "
                        "(c.VKeysGateway.registry_url), e.g. postgresql://vkeys@db/vkeys")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``jupyter-vkeys``."""
    parser = argparse.ArgumentParser(prog="jupyter vkeys", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the standalone gateway")
    _common(serve)
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8765, help="0 picks a free port")
    serve.add_argument("--fake", action="store_true", help="answer every model from the "
                                                           "offline fake provider")
    serve.add_argument("--state-url", help="share budgets and limits with other replicas "
                       "through this Redis/Valkey (c.VKeysGateway.state_url), e.g. "
                       "redis://redis:6379/0")
    serve.add_argument("--no-uvloop", action="store_true", help="use asyncio's default loop")
    serve.add_argument("--server", choices=("lean", "tornado"), default="lean", help=(
        "HTTP front: lean answers data-plane calls on httptools and passes the other routes "
        "to tornado; tornado serves everything (as inside a Jupyter server)"))
    serve.add_argument("--log-level", default="INFO",
                       choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    serve.set_defaults(func=cmd_serve)

    hub = sub.add_parser("hub-service", help=(
        "run the gateway as a JupyterHub service (started by the Hub, or external)"))
    hub.add_argument("--config", help="config file (.py with c.VKeysGateway.* and "
                                      "c.VKeysHubService.*, or .json)")
    hub.add_argument("--data-dir", help="where keys, audit and the warehouse live")
    hub.add_argument("--host", help="listen address (default: from JUPYTERHUB_SERVICE_URL)")
    hub.add_argument("--port", type=int, help="listen port (default: from "
                                              "JUPYTERHUB_SERVICE_URL)")
    hub.add_argument("--user", help="OS user to run as (start as root): the data directory "
                                    "becomes theirs, mode 0700")
    hub.add_argument("--fake", action="store_true", help="answer every model from the "
                                                         "offline fake provider")
    hub.add_argument("--state-url", help="replicas of the service: budgets and limits "
                     "shared through this Redis/Valkey (c.VKeysGateway.state_url)")
    hub.add_argument("--registry-url", help="replicas of the service: keys, policies and "
                     "audit on this PostgreSQL (c.VKeysGateway.registry_url)")
    hub.add_argument("--no-uvloop", action="store_true", help="use asyncio's default loop")
    hub.add_argument("--log-level", default="INFO",
                     choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    hub.set_defaults(func=cmd_hub_service)

    keys = sub.add_parser("keys", help="create, list, show, update, revoke, rotate keys")
    keys_sub = keys.add_subparsers(dest="action", required=True)
    for action in ("create", "list", "show", "update", "revoke", "rotate"):
        p = keys_sub.add_parser(action)
        _common(p)
        p.add_argument("--json", action="store_true", help="print JSON")
        if action in ("show", "update", "revoke", "rotate"):
            p.add_argument("id", help="key id (the part after 'vk-' and before '_')")
        if action in ("create", "update"):
            for name in ("alias", "owner", "team", "project"):
                p.add_argument(f"--{name}")
            p.add_argument("--expires-at", help="RFC 3339 time, e.g. 2026-12-31T00:00:00Z")
            p.add_argument("--metadata", action="append", metavar="K=V", type=_pair_arg)
            _limit_flags(p)
        if action == "create":
            p.add_argument("--parent", help="parent key id (a child spends against its budgets)")
        if action == "rotate":
            p.add_argument("--grace", type=float, default=0.0,
                           help="seconds the old secret stays valid")
    keys.set_defaults(func=cmd_keys)

    policy = sub.add_parser("policy", help="scope policies (global, user:x, team:x, project:x)")
    policy_sub = policy.add_subparsers(dest="action", required=True)
    for action in ("list", "show", "set", "update", "delete"):
        p = policy_sub.add_parser(action)
        _common(p)
        if action != "list":
            p.add_argument("scope")
        if action in ("set", "update"):
            _limit_flags(p)
    policy.set_defaults(func=cmd_policy)

    usage = sub.add_parser("usage", help="spend by key/user/team/project/model/day")
    _common(usage)
    usage.add_argument("--by", default="user", help="comma-separated dimensions: "
                                                   + ", ".join(USAGE_DIMENSIONS))
    usage.add_argument("--since", help="only calls since this time (ISO 8601)")
    usage.add_argument("--json", action="store_true")
    usage.set_defaults(func=cmd_usage)

    sql = sub.add_parser("sql", help="run a DuckDB query over the events and audit views")
    _common(sql)
    sql.add_argument("query")
    sql.add_argument("--json", action="store_true")
    sql.set_defaults(func=cmd_sql)

    from .analytics.cli import register as register_analytics
    register_analytics(sub)  # anomalies, export-focus, simulate
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``jupyter-vkeys`` console script."""
    args = build_parser().parse_args(argv)
    return args.func(args) or 0


if __name__ == "__main__":
    sys.exit(main())
