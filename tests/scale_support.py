"""Real servers for the scale-out tests: a ``redis-server`` and ``jupyter vkeys serve``
replicas, each started as a user starts them, on free ports in a temporary directory."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

REDIS_SERVER = shutil.which("redis-server")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def need_redis() -> str:
    """The redis-server binary, or skip saying how to get it."""
    if REDIS_SERVER is None:
        pytest.skip("redis-server is not installed (Debian: apt-get install redis-server; "
                    ".ci/run installs it)")
    return REDIS_SERVER


class RedisServer:
    """One ``redis-server`` with an append-only file (as the README asks), on a free port;
    :meth:`stop` and :meth:`start` again keep its data (same port, same directory)."""

    def __init__(self, directory: Path) -> None:
        self.binary = need_redis()
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen | None = None
        self.start()

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir",
             str(self.dir), "--appendonly", "yes", "--appendfsync", "always", "--save", "",
             "--protected-mode", "no", "--daemonize", "no", "--loglevel", "warning"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()  # SIGTERM: redis flushes its AOF and exits
            self.proc.wait(10)
        self.proc = None

    def client(self):
        import redis

        return redis.Redis.from_url(self.url)


class Replica:
    """``jupyter vkeys serve --fake --state-url ...`` on its own data directory; with
    ``command="hub-service"`` (and ``port``) the Hub service, whose JUPYTERHUB_* variables
    come in ``env`` (an external service of a real Hub: ``tests/hub/hubs.py``)."""

    def __init__(self, data_dir: Path, state_url: str, config: Path | None = None,
                 extra: list[str] | None = None, env: dict[str, str] | None = None,
                 registry_url: str = "", command: str = "serve", port: int = 0) -> None:
        self.data_dir = data_dir
        data_dir.mkdir(parents=True, exist_ok=True)
        args = [sys.executable, "-m", "jupyter_vkeys.cli", command, "--port", str(port),
                "--data-dir", str(data_dir), "--log-level", "WARNING"]
        if command == "serve":
            args.append("--fake")
        if state_url:
            args += ["--state-url", state_url]
        if registry_url:
            args += ["--registry-url", registry_url]
        if config is not None:
            args += ["--config", str(config)]
        args += extra or []
        self.log_path = data_dir.parent / f"{data_dir.name}.log"
        self.log = open(self.log_path, "w+")
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=self.log,
                                     env={**os.environ, **(env or {})}, text=True)
        line = self.proc.stdout.readline()
        if "listening on" not in line:
            self.proc.wait(5)
            self.log.seek(0)
            raise RuntimeError(f"replica did not start: {line!r} {self.log.read()[-2000:]}")
        # "... listening on <url>" (serve) or "... listening on <url> (kernels call ...)"
        self.url = line.split("listening on", 1)[1].split()[0]

    @property
    def openai_base(self) -> str:
        return self.url + "/openai/v1"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.log.close()

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(5)


HAPROXY = shutil.which("haproxy") or next(
    (p for p in ("/usr/sbin/haproxy",) if Path(p).exists()), None)


class HAProxy:
    """Debian's ``haproxy`` in front of ``backends`` (``(host, port)``): HTTP, round robin,
    no stickiness, on a free port, with its own config file in ``directory`` (the
    README's example). ``health`` is a path each backend must answer 200 on to get
    traffic (checked every 500 ms); :attr:`url` is the one URL clients use."""

    def __init__(self, directory: Path, backends: list[tuple[str, int]], *,
                 port: int | None = None, health: str = "") -> None:
        if HAPROXY is None:
            pytest.skip("haproxy is not installed (Debian: apt-get install haproxy; "
                        ".ci/run installs it)")
        directory.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        check = " check inter 500ms fall 2 rise 1" if health else ""
        servers = "\n".join(f"    server replica{n} {host}:{bport}{check}"
                             for n, (host, bport) in enumerate(backends, 1))
        self.config = directory / "haproxy.cfg"
        self.config.write_text(
            "global\n    maxconn 1024\n\n"
            "defaults\n    mode http\n    timeout connect 5s\n    timeout client 300s\n"
            "    timeout server 300s\n    option forwardfor\n\n"
            f"frontend vkeys\n    bind 127.0.0.1:{self.port}\n    default_backend replicas\n\n"
            "backend replicas\n    balance roundrobin\n"
            + (f"    option httpchk GET {health}\n" if health else "") + servers + "\n")
        self.log = open(directory / "haproxy.log", "w+")
        self.proc = subprocess.Popen([HAPROXY, "-db", "-f", str(self.config)],
                                     stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.log.seek(0)
                raise RuntimeError(f"haproxy exited: {self.log.read()[-2000:]}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("haproxy did not start listening")

    def log_text(self) -> str:
        """What haproxy printed (its warnings, a backend going down), for a failure."""
        self.log.flush()
        return Path(self.log.name).read_text(errors="replace")[-3000:]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.log.close()


PG_CTL = shutil.which("pg_ctl") or next(iter(sorted(Path("/usr/lib/postgresql").glob(
    "*/bin/pg_ctl"))), None)


class PostgresServer:
    """A throwaway PostgreSQL cluster (``initdb`` + ``pg_ctl``) on a free port. As root it
    runs as the ``postgres`` user (PostgreSQL refuses to run as root) in a directory of
    its own under /tmp; :meth:`stop` and :meth:`start` keep its data."""

    def __init__(self) -> None:
        import pwd
        import tempfile

        if PG_CTL is None:
            pytest.skip("PostgreSQL is not installed (Debian: apt-get install postgresql; "
                        ".ci/run installs it)")
        self.bin = Path(PG_CTL).resolve().parent
        self.dir = Path(tempfile.mkdtemp(prefix="vkeys-pg-"))
        self.as_user: list[str] = []
        if os.geteuid() == 0:
            try:
                user = pwd.getpwnam("postgres")
            except KeyError:
                pytest.skip("running as root and there is no 'postgres' user to run "
                            "PostgreSQL as")
            os.chown(self.dir, user.pw_uid, user.pw_gid)
            self.as_user = ["runuser", "-u", "postgres", "--"]
        self.port = free_port()
        self.url = f"postgresql://vkeys@127.0.0.1:{self.port}/postgres"
        subprocess.run([*self.as_user, str(self.bin / "initdb"), "-D", str(self.dir / "data"),
                        "-A", "trust", "-U", "vkeys", "--no-sync"], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.start()

    def start(self) -> None:
        subprocess.run([*self.as_user, str(self.bin / "pg_ctl"), "-D", str(self.dir / "data"),
                        "-o", f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 "
                        "-c fsync=off", "-l", str(self.dir / "log"), "-w", "start"],
                       check=True, stdout=subprocess.DEVNULL)

    def stop(self) -> None:
        subprocess.run([*self.as_user, str(self.bin / "pg_ctl"), "-D", str(self.dir / "data"),
                        "-m", "fast", "-w", "stop"], stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)
