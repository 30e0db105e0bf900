"""``jupyter vkeys hub-service``: the gateway as a JupyterHub service.

The same gateway (:class:`~jupyter_vkeys.gateway.core.VKeysGateway`) and the same lean
data plane as ``jupyter vkeys serve``, under the service prefix the Hub gives
(``JUPYTERHUB_SERVICE_PREFIX``, e.g. ``/services/vkeys/``), listening where the Hub
expects it (``JUPYTERHUB_SERVICE_URL``). What changes is who may do what:

- the data plane takes virtual keys alone (no Hub token on the hot path);
- the admin API authenticates through the Hub (:mod:`.auth`: Hub API tokens, OAuth for
  browsers) and authorizes with the custom scopes of :mod:`.scopes`;
- single-user servers get their kernels' keys from ``{prefix}/api/hub/kernels``
  (:mod:`.handlers`, :mod:`.issuer`), and the :class:`~.reaper.Reaper` revokes the kernel
  keys of servers the Hub no longer runs.

The real provider keys live in this process only (its environment or key files); run it
as its own OS user (``--user``) so that no single-user server can read its files.
Configuration: ``c.VKeysGateway.*`` and ``c.VKeysHubService.*`` in ``--config``.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import pwd
import secrets
import signal
import time
from pathlib import Path
from urllib.parse import urlsplit

from traitlets import Dict, Float, Unicode
from traitlets.config import Config, LoggingConfigurable

log = logging.getLogger("jupyter_vkeys.hub")


class VKeysHubService(LoggingConfigurable):
    """What the Hub service adds to the gateway's configuration (``c.VKeysHubService``)."""

    data_plane_url = Unicode("", help=(
        "URL kernels use for the data plane (OPENAI_BASE_URL is this + /openai/v1). Default: "
        "the service's own address (JUPYTERHUB_SERVICE_URL + prefix), reached directly. Set "
        "it to the Hub's public URL + /services/<name> to route calls through the Hub's "
        "proxy instead (one more hop; see the README for the latency of each).")).tag(
        config=True)
    default_policy = Dict({"budgets": [{"usd": 20, "period": "month", "soft": 0.8}]}, help=(
        "Policy of a Hub user's personal key, created at their first kernel start, unless "
        "user_policies or group_policies say otherwise (same shape as the admin API: models, "
        "rpm, tpm, max_concurrency, budgets). Admins change it at run time.")).tag(config=True)
    user_policies = Dict({}, help=(
        "Policies of named users' personal keys: {'alice': {'budgets': [...]}}. Applied when "
        "the key is created; the admin API changes it later.")).tag(config=True)
    group_policies = Dict({}, help=(
        "Policies of personal keys by Hub group: {'students': {'budgets': [...]}}. A user's "
        "team is the first of their groups (sorted) named here, else their first group.")).tag(
        config=True)
    reap_interval = Float(30.0, help=(
        "Seconds between checks with the Hub for stopped servers whose kernel keys are "
        "still active (a server killed without stopping its kernels); 0 turns it off. "
        "Needs the service's role to hold list:users, read:users:name and read:servers.")).tag(config=True)
    cookie_secret_file = Unicode("", help=(
        "File of the secret that signs the service's OAuth cookies. Default: "
        "<data_dir>/hub_cookie_secret, created with mode 0600.")).tag(config=True)


def hub_environment() -> dict[str, str]:
    """The variables JupyterHub gives a managed service (an external one sets them itself)."""
    names = ("JUPYTERHUB_API_TOKEN", "JUPYTERHUB_API_URL", "JUPYTERHUB_SERVICE_PREFIX",
             "JUPYTERHUB_SERVICE_URL", "JUPYTERHUB_SERVICE_NAME", "JUPYTERHUB_BASE_URL")
    return {name: os.environ.get(name, "") for name in names}


def drop_privileges(user: str, data_dir: Path) -> None:
    """Become ``user`` (called by ``hub-service --user`` before the gateway opens anything),
    giving them the data directory; the service's files are then readable by them only."""
    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        raise SystemExit(f"jupyter-vkeys: no OS user {user!r} (create it, e.g. "
                         f"`useradd --system {user}`)") from None
    if os.geteuid() != 0:
        if os.geteuid() == entry.pw_uid:
            return
        raise SystemExit(f"jupyter-vkeys: --user {user} needs to start as root")
    data_dir.mkdir(parents=True, exist_ok=True)
    for parent in data_dir.resolve().parents:
        if not parent.stat().st_mode & 0o001 and parent.stat().st_uid != entry.pw_uid:
            raise SystemExit(f"jupyter-vkeys: {user} cannot reach the data directory "
                             f"{data_dir}: {parent} is not searchable by other users (use "
                             f"a data directory such as /var/lib/jupyter-vkeys)")
    for path in [data_dir, *data_dir.rglob("*")]:
        os.chown(path, entry.pw_uid, entry.pw_gid, follow_symlinks=False)
    data_dir.chmod(0o700)
    os.setgroups([])
    os.setgid(entry.pw_gid)
    os.setuid(entry.pw_uid)
    os.environ["HOME"] = entry.pw_dir
    os.environ["USER"] = os.environ["LOGNAME"] = user
    log.info("running as %s (uid %d)", user, entry.pw_uid)


def _cookie_secret(path: Path) -> bytes:
    """The cookie secret in ``path``, created (0600) on first use; called once by
    :func:`run_service`. Replicas sharing one file (``cookie_secret_file`` on shared
    storage) may start together: the file is created exclusively, and a replica that
    loses that race reads the winner's secret, so all of them sign cookies alike."""
    for _ in range(50):
        try:
            text = path.read_text().strip()
            if text:
                return bytes.fromhex(text)
        except FileNotFoundError:
            path.parent.mkdir(parents=True, exist_ok=True)
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            except FileExistsError:
                continue  # another replica is writing it: read it
            secret = secrets.token_bytes(32)
            with os.fdopen(fd, "w") as file:
                file.write(secret.hex())
            return secret
        except ValueError:
            raise SystemExit(f"jupyter-vkeys: the cookie secret file {path} does not hold "
                             "hex digits; remove it (a new secret is made) or write 64 hex "
                             "digits into it, the same for every replica") from None
        time.sleep(0.1)  # created but not written yet
    raise SystemExit(f"jupyter-vkeys: the cookie secret file {path} stayed empty; remove it")


async def run_service(config: Config, *, host: str | None, port: int | None,
                      user: str | None) -> int:
    """Start the gateway as a Hub service and serve until SIGINT/SIGTERM."""
    from jupyterhub.services.auth import HubOAuth

    from ..gateway.app import gateway_handlers, make_app, proxy_routes
    from ..gateway.core import VKeysGateway
    from ..gateway.lean_server import LeanServer, listening_socket
    from ..runtime import DataDirBusy
    from .auth import HubAuthBase, SharedStateHubOAuth
    from .handlers import hub_handlers
    from .issuer import KernelKeyIssuer
    from .reaper import Reaper

    os.umask(0o077)
    env = hub_environment()
    if not env["JUPYTERHUB_API_TOKEN"] or not env["JUPYTERHUB_API_URL"]:
        raise SystemExit("jupyter-vkeys hub-service: JUPYTERHUB_API_TOKEN and "
                         "JUPYTERHUB_API_URL are not set. The Hub sets them for a managed "
                         "service (c.JupyterHub.services); an external service sets them "
                         "itself (its token from the services entry's api_token).")
    prefix = "/" + (env["JUPYTERHUB_SERVICE_PREFIX"] or "/services/vkeys/").strip("/")
    service_url = urlsplit(env["JUPYTERHUB_SERVICE_URL"] or "http://127.0.0.1:10101")
    host = host or service_url.hostname or "127.0.0.1"
    port = port if port is not None else (service_url.port or 10101)
    config.VKeysGateway.prefix = prefix
    gateway = VKeysGateway(config=config)
    if user:
        drop_privileges(user, Path(gateway.data_dir))
    options = VKeysHubService(config=config)
    try:
        await gateway.start()
    except DataDirBusy as busy:
        raise SystemExit(f"jupyter-vkeys: {busy}") from None
    except ValueError as exc:
        await gateway.stop()
        raise SystemExit(f"jupyter-vkeys: cannot start: {exc}") from None

    own_url = f"http://{host if ':' not in host else f'[{host}]'}:{port}{prefix}"
    data_plane_url = (options.data_plane_url or own_url).rstrip("/")
    issuer = KernelKeyIssuer(gateway, data_plane_url=data_plane_url,
                             default_policy=options.default_policy,
                             user_policies=options.user_policies,
                             group_policies=options.group_policies)
    hub_auth_options = {"api_token": env["JUPYTERHUB_API_TOKEN"],
                        "api_url": env["JUPYTERHUB_API_URL"], "cache_max_age": 60}
    if gateway.state_url:  # replicas: a login may complete on another replica
        hub_auth = SharedStateHubOAuth(redis_url=gateway.state_url,
                                       state_prefix=gateway.state_prefix, **hub_auth_options)
    else:
        hub_auth = HubOAuth(**hub_auth_options)
    secret_file = Path(options.cookie_secret_file or Path(gateway.data_dir) /
                       "hub_cookie_secret")
    routes = hub_handlers(prefix, gateway, issuer) + gateway_handlers(
        gateway, admin_auth=HubAuthBase)
    app = make_app(gateway, routes=routes, vkeys_hub_auth=hub_auth,
                   cookie_secret=_cookie_secret(secret_file), login_url=hub_auth.login_url)
    gc.collect()
    gc.freeze()
    try:
        sock = listening_socket(host, port)
    except OSError as exc:
        await gateway.stop()
        raise SystemExit(f"jupyter-vkeys: cannot listen on {host}:{port}: "
                         f"{exc.strerror or exc}") from None
    server = LeanServer(gateway, app, proxy_routes(gateway))
    await server.listen(sock)
    gateway.publish(own_url, "hub-service")
    reaper = Reaper(issuer, hub_auth, interval=options.reap_interval)
    reaper.start()
    print(f"jupyter-vkeys hub service listening on {own_url} (kernels call "
          f"{data_plane_url})", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    reaper.stop()
    server.stop()
    await gateway.stop()
    return 0

