"""Per-kernel virtual keys: which key a kernel gets, and the environment it starts with.

:class:`KernelKeyBroker` is created by the server extension and used by the
kernel provisioner: :meth:`~KernelKeyBroker.launch_env` when a kernel starts
(and restarts), :meth:`~KernelKeyBroker.kernel_stopped` when it shuts down,
:meth:`~KernelKeyBroker.renamed` when its notebook moves. It decides:

- the parent key: the project's key if the notebook lies in a configured
  project folder (or under a folder holding a ``.vkeys.toml`` marker), else
  the user's personal key, created on first use with the default policy;
- a child key per kernel, spending against the parent's budgets and carrying
  the kernel id and notebook path into every event; reused across restarts,
  revoked when the kernel shuts down;
- the kernel environment: provider secrets removed, virtual key and base URLs in, and
  ``VKEYS_API_URL`` (the admin API the widgets call with the notebook's credentials).
"""

from __future__ import annotations

import fnmatch
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable
from urllib.parse import urlsplit

from ..gateway.core import VKeysGateway
from ..keys import KeyRecord

log = logging.getLogger("jupyter_vkeys.kernels")

ALWAYS_STRIPPED = ("OPENAI_API_KEY", "ANTHROPIC_API_KEY", "AZURE_OPENAI_API_KEY",
                   "OPENAI_ORG_ID", "OPENAI_PROJECT_ID", "VKEYS_ADMIN_TOKEN", "VKEYS_PEPPER")
_PROJECT_RE = re.compile(r"""^\s*project\s*=\s*["']([^"']+)["']""", re.MULTILINE)
ACTOR = "jupyter-vkeys:kernel-provisioner"


@dataclass
class KernelKey:
    """The child key of one running kernel (the token is the only copy of the secret)."""

    key_id: str
    token: str
    notebook_path: str


def read_marker(path: Path) -> str | None:
    """The ``project = "name"`` of a ``.vkeys.toml`` marker file (None if absent)."""
    try:
        text = path.read_text()
    except OSError:
        return None
    try:
        import tomllib
        value = tomllib.loads(text).get("project")
        return str(value) if value else None
    except ImportError:  # Python 3.10: the one line we need
        match = _PROJECT_RE.search(text)
        return match.group(1) if match else None
    except ValueError:
        log.warning("ignoring malformed project marker %s", path)
        return None


class KernelKeyBroker:
    """Mints, reuses and revokes kernel keys against one in-process gateway."""

    def __init__(self, gateway: VKeysGateway, *, url: str, root_dir: str,
                 projects: dict[str, str] | None = None, marker: str = ".vkeys.toml",
                 default_policy: dict[str, Any] | None = None,
                 project_policy: dict[str, Any] | None = None,
                 denylist: Iterable[str] = (), default_user: str = "",
                 api_url: str = "") -> None:
        self.gateway = gateway
        self.url = url.rstrip("/")
        # The admin API of the server that starts the kernels (VKEYS_API_URL): where the
        # widgets send the notebook's own credentials (jupyter_vkeys.widgets.credentials).
        self.api_url = api_url.rstrip("/")
        self.root_dir = Path(root_dir).resolve()
        self.projects = {p.strip("/"): name for p, name in (projects or {}).items()}
        self.marker = marker
        self.default_policy = dict(default_policy or {})
        self.project_policy = dict(project_policy or {})
        self.denylist = tuple(denylist)
        self.default_user = default_user
        self.kernels: dict[str, KernelKey] = {}

    # -- where a notebook belongs ------------------------------------------------------
    def relative_path(self, path: str) -> str:
        """``JPY_SESSION_NAME`` (absolute or relative) as a path relative to the root dir."""
        if not path:
            return ""
        candidate = Path(path)
        if candidate.is_absolute():
            try:
                return candidate.resolve().relative_to(self.root_dir).as_posix()
            except ValueError:
                return candidate.as_posix()
        return candidate.as_posix()

    def project_of(self, notebook_path: str) -> str:
        """The project of a notebook: the longest configured prefix, else a marker file."""
        best = ""
        for prefix, name in self.projects.items():
            if (notebook_path == prefix or notebook_path.startswith(prefix + "/")) and \
                    len(prefix) >= len(best):
                best, project = prefix, name
        if best:
            return project
        folder = (self.root_dir / notebook_path).parent
        while True:
            found = read_marker(folder / self.marker)
            if found:
                return found
            if folder == self.root_dir or self.root_dir not in folder.parents:
                return ""
            folder = folder.parent

    # -- parent keys ---------------------------------------------------------------------
    def _find(self, kind: str, **attrs: str) -> KeyRecord | None:
        """The active key of this kind and attributes; else the newest revoked or expired
        one, so a revocation holds (the kernel's key is refused, saying why) instead of a
        fresh key with a fresh default budget taking its place."""
        now = self.gateway.clock()
        found = [record for record in self.gateway.registry.records.values()
                 if record.metadata.get("kind") == kind
                 and all(getattr(record, k) == v for k, v in attrs.items())]
        for record in found:
            if record.state(now) == "active":
                return record
        return max(found, key=lambda r: r.created_at, default=None)

    def user_key(self, user: str) -> KeyRecord:
        """The user's personal key, created with the default policy on first use."""
        record = self._find("user", owner=user)
        if record is None:
            record, _ = self.gateway.registry.create(
                {"owner": user, "alias": f"{user} (personal)", "metadata": {"kind": "user"},
                 **self.default_policy}, actor=ACTOR)
            log.info("created personal key %s for %s", record.id, user)
        return record

    def project_key(self, project: str) -> KeyRecord:
        """The project's key (shared by its members), created on first use."""
        record = self._find("project", project=project)
        if record is None:
            record, _ = self.gateway.registry.create(
                {"project": project, "alias": f"project {project}",
                 "metadata": {"kind": "project"}, **self.project_policy}, actor=ACTOR)
            log.info("created project key %s for %s", record.id, project)
        return record

    # -- kernel lifecycle ----------------------------------------------------------------
    def launch_env(self, kernel_id: str, env: dict[str, str], user: str = "") -> dict[str, str]:
        """The environment a kernel starts with. Called by the provisioner's ``pre_launch``
        at every start and restart; a restart reuses the kernel's key."""
        env = strip_secrets(env, self.denylist)
        notebook = self.relative_path(env.get("JPY_SESSION_NAME", ""))
        current = self.kernels.get(kernel_id)
        record = self.gateway.registry.get(current.key_id) if current is not None else None
        if record is not None and record.state(self.gateway.clock()) == "active":
            if notebook and notebook != current.notebook_path:
                self._set_notebook(current, notebook)
        else:
            current = self.kernels[kernel_id] = self._mint(kernel_id, notebook,
                                                           user or self.default_user)
        env = key_environment(env, url=self.url, token=current.token, key_id=current.key_id)
        if self.api_url:
            env["VKEYS_API_URL"] = self.api_url
        return env

    def _mint(self, kernel_id: str, notebook: str, user: str) -> KernelKey:
        project = self.project_of(notebook) if notebook else ""
        parent = self.project_key(project) if project else self.user_key(user)
        record, token = self.gateway.registry.create(
            {"parent_id": parent.id, "owner": user, "project": project,
             "alias": f"kernel {kernel_id[:8]}" + (f" {notebook}" if notebook else ""),
             "metadata": {"kind": "kernel", "kernel_id": kernel_id,
                          "notebook_path": notebook}}, actor=ACTOR)
        log.info("kernel %s gets key %s (parent %s, project %r)", kernel_id, record.id,
                 parent.id, project)
        return KernelKey(record.id, token, notebook)

    def _set_notebook(self, kernel: KernelKey, notebook: str) -> None:
        record = self.gateway.registry.get(kernel.key_id)
        metadata = {**record.metadata, "notebook_path": notebook}
        self.gateway.registry.update(kernel.key_id, {"metadata": metadata}, actor=ACTOR)
        kernel.notebook_path = notebook

    def renamed(self, old_path: str, new_path: str) -> None:
        """A notebook moved: its kernels' keys carry the new path from now on."""
        old, new = self.relative_path(old_path), self.relative_path(new_path)
        for kernel in self.kernels.values():
            if kernel.notebook_path == old:
                self._set_notebook(kernel, new)

    def kernel_stopped(self, kernel_id: str) -> None:
        """Revoke a kernel's key when the kernel shuts down (not on restart)."""
        kernel = self.kernels.pop(kernel_id, None)
        if kernel is not None and self.gateway.registry.get(kernel.key_id) is not None:
            self.gateway.registry.revoke(kernel.key_id, actor=ACTOR)


def key_environment(env: dict[str, str], *, url: str, token: str, key_id: str
                    ) -> dict[str, str]:
    """``env`` with a kernel's key and the gateway's URLs in, for both SDKs and the
    ``jupyter_vkeys.kernel`` helpers. Called for every kernel start, by the in-process
    broker here and by the Hub client (:mod:`.hub_broker`)."""
    url = url.rstrip("/")
    openai_base = f"{url}/openai/v1"
    env.update({
        "OPENAI_API_KEY": token, "OPENAI_BASE_URL": openai_base,
        "OPENAI_API_BASE": openai_base,  # llama-index and pre-1.0 clients read this one
        "ANTHROPIC_API_KEY": token, "ANTHROPIC_BASE_URL": f"{url}/anthropic",
        "VKEYS_URL": url, "VKEYS_KEY_ID": key_id,
    })
    return bypass_proxy(env, url)


def bypass_proxy(env: dict[str, str], url: str) -> dict[str, str]:
    """``env`` with the gateway's host in ``NO_PROXY`` and ``no_proxy`` (both spellings:
    clients read one or the other), so an ``HTTPS_PROXY`` set for the machine never
    carries a virtual key to a proxy. Called for every kernel environment."""
    host = urlsplit(url).hostname or ""
    if not host:
        return env
    for name in ("NO_PROXY", "no_proxy"):
        entries = [e.strip() for e in env.get(name, "").split(",") if e.strip()]
        if host not in entries:
            entries.append(host)
        env[name] = ",".join(entries)
    return env


def strip_secrets(env: dict[str, str], denylist: Iterable[str] = ()) -> dict[str, str]:
    """A copy of ``env`` without provider keys and gateway secrets (names or globs)."""
    patterns = tuple(ALWAYS_STRIPPED) + tuple(denylist)
    return {name: value for name, value in env.items()
            if not any(fnmatch.fnmatchcase(name, p) for p in patterns)}


# The broker of the extension running in this process (None outside a Jupyter server),
# and why there is none (said by the provisioner when a kernel starts without a key).
ACTIVE: KernelKeyBroker | None = None
NO_BROKER_REASON = "no gateway runs in this process"


def active_broker() -> KernelKeyBroker | None:
    """The broker the provisioner should use, if the extension runs in this process."""
    return ACTIVE


def set_active(broker: KernelKeyBroker | None, reason: str = "") -> None:
    """Called by the extension when it starts (and with None when it stops, or when kernel
    keys are turned off: ``reason`` then says so)."""
    global ACTIVE, NO_BROKER_REASON
    ACTIVE = broker
    NO_BROKER_REASON = reason or "no gateway runs in this process"
