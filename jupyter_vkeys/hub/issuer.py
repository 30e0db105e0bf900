"""Keys of Hub users: a personal key per user (caps from the user and group config), a
child key per kernel, revoked when the kernel or its server stops.

Called by the service's routes (:mod:`.handlers`) on behalf of a Hub user already
authenticated and allowed ``custom:vkeys:use``; every lookup is by that user's name,
so a kernel id or key id sent by one user never reaches another user's key.
"""

from __future__ import annotations

import logging
from typing import Any, Iterable, Mapping

from ..gateway.core import VKeysGateway
from ..keys import KeyRecord
from ..registry import InvalidKeyRequest, KeyConflict
from .scopes import HubCaller

log = logging.getLogger("jupyter_vkeys.hub")
ACTOR = "jupyter-vkeys:hub-service"
MAX_SERVER_NAME = 255


class KernelKeyIssuer:
    """Mints and revokes the keys of Hub users' kernels in the service's gateway."""

    def __init__(self, gateway: VKeysGateway, *, data_plane_url: str,
                 default_policy: Mapping[str, Any] | None = None,
                 user_policies: Mapping[str, Mapping[str, Any]] | None = None,
                 group_policies: Mapping[str, Mapping[str, Any]] | None = None) -> None:
        self.gateway = gateway
        self.data_plane_url = data_plane_url.rstrip("/")
        self.default_policy = dict(default_policy or {})
        self.user_policies = {k: dict(v) for k, v in (user_policies or {}).items()}
        self.group_policies = {k: dict(v) for k, v in (group_policies or {}).items()}
        # (user, server name, kernel id) -> (key id, token): a restart keeps its key.
        self.kernels: dict[tuple[str, str, str], tuple[str, str]] = {}

    # -- who gets which caps -----------------------------------------------------------
    def team_of(self, groups: Iterable[str]) -> str:
        """A user's team: the first of their Hub groups (sorted) that has a group policy,
        else the first of their groups, else none."""
        ordered = sorted(groups)
        for group in ordered:
            if group in self.group_policies:
                return group
        return ordered[0] if ordered else ""

    def personal_policy(self, user: str, team: str) -> dict[str, Any]:
        """The policy a new personal key starts with: the user's own config, else their
        team's group config, else the default. Admins change it later like any key's."""
        if user in self.user_policies:
            return dict(self.user_policies[user])
        if team and team in self.group_policies:
            return dict(self.group_policies[team])
        return dict(self.default_policy)

    def personal_key(self, caller: HubCaller) -> KeyRecord:
        """The user's personal key: the active one, else (so a revocation holds) the
        newest revoked or expired one, else a new one with the configured caps.

        With several service replicas on one PostgreSQL registry, two kernels of a new
        user started at once on two replicas both find no key here; the registry's
        unique index refuses the second one (:class:`KeyConflict`), and that replica
        reads the first back from the registry and uses it: one personal key per user."""
        found = self._personal_keys(caller.name)
        if found:
            return found[0]
        team = self.team_of(caller.groups)
        try:
            record, _ = self.gateway.registry.create(
                {"owner": caller.name, "team": team, "alias": f"{caller.name} (personal)",
                 "metadata": {"kind": "user", "hub": True},
                 **self.personal_policy(caller.name, team)}, actor=ACTOR)
        except KeyConflict:
            self.gateway.registry.reload_owner(caller.name)
            found = self._personal_keys(caller.name)
            if not found:
                raise
            log.info("hub user %s's personal key %s was created by another replica; using "
                     "it", caller.name, found[0].id)
            return found[0]
        log.info("created personal key %s for hub user %s (team %r)", record.id, caller.name,
                 team)
        return record

    def _personal_keys(self, user: str) -> list[KeyRecord]:
        """``user``'s personal keys in memory, the one to use first: the active one, else
        the newest revoked or expired one."""
        now = self.gateway.clock()
        found = [r for r in self.gateway.registry.records.values()
                 if r.metadata.get("kind") == "user" and r.owner == user]
        return sorted(found, key=lambda r: (r.state(now) == "active", r.created_at),
                      reverse=True)

    # -- kernels -----------------------------------------------------------------------
    def kernel_key(self, caller: HubCaller, body: Mapping[str, Any]) -> dict[str, Any]:
        """``POST /api/hub/kernels``: the key of one kernel of the caller's server, minted
        at its first start and reused at restarts; with the environment the kernel gets."""
        kernel_id = _text(body, "kernel_id", required=True, limit=128)
        server = _text(body, "server_name", limit=MAX_SERVER_NAME)
        notebook = _text(body, "notebook_path", limit=4096)
        slot = (caller.name, server, kernel_id)
        current = self.kernels.get(slot)
        record = self.gateway.registry.get(current[0]) if current else None
        if record is None or record.state(self.gateway.clock()) != "active":
            parent = self.personal_key(caller)
            record, token = self.gateway.registry.create(
                {"parent_id": parent.id, "owner": caller.name,
                 "alias": f"kernel {kernel_id[:8]}" + (f" {notebook}" if notebook else ""),
                 "metadata": {"kind": "kernel", "kernel_id": kernel_id, "server": server,
                              "notebook_path": notebook, "hub": True}}, actor=ACTOR)
            current = self.kernels[slot] = (record.id, token)
            log.info("hub user %s kernel %s gets key %s (parent %s)", caller.name,
                     kernel_id, record.id, parent.id)
        elif notebook and record.metadata.get("notebook_path") != notebook:
            self.gateway.registry.update(record.id, {"metadata": {
                **record.metadata, "notebook_path": notebook}}, actor=ACTOR)
        key_id, token = current
        return {"key_id": key_id, "key": token, "url": self.data_plane_url,
                "openai_base_url": f"{self.data_plane_url}/openai/v1",
                "anthropic_base_url": f"{self.data_plane_url}/anthropic",
                "api_url": f"{self.data_plane_url}/api"}

    def revoke_kernel(self, caller: HubCaller, key_id: str) -> dict[str, Any]:
        """``DELETE /api/hub/kernels/{key_id}``: a kernel of the caller's stopped. Another
        user's key id answers as unknown (404), never revokes."""
        record = self.gateway.registry.get(key_id)
        if record is None or record.owner != caller.name or \
                record.metadata.get("kind") != "kernel" or not record.metadata.get("hub"):
            raise KeyError(key_id)
        self._forget(key_id)
        revoked = self.gateway.registry.revoke(key_id, actor=f"hub:{caller.name}")
        return {"id": revoked.id, "state": revoked.state(self.gateway.clock())}

    def revoke_server(self, user: str, server: str | None = None, *, actor: str) -> list[str]:
        """Revoke every active kernel key of ``user``'s server ``server`` (None: all their
        servers). Called when a server says it stops, and by the reaper for servers the
        Hub no longer runs. Returns the key ids revoked."""
        now = self.gateway.clock()
        revoked = []
        for record in list(self.gateway.registry.records.values()):
            meta = record.metadata
            if record.owner != user or meta.get("kind") != "kernel" or not meta.get("hub"):
                continue
            if server is not None and meta.get("server", "") != server:
                continue
            if record.state(now) != "active":
                continue
            self._forget(record.id)
            self.gateway.registry.revoke(record.id, actor=actor)
            revoked.append(record.id)
        if revoked:
            log.info("revoked %d kernel key(s) of %s's server %r", len(revoked), user,
                     "*" if server is None else server)
        return revoked

    def active_servers(self) -> set[tuple[str, str]]:
        """``(user, server name)`` of every server holding an active kernel key (the reaper
        asks the Hub about these)."""
        now = self.gateway.clock()
        return {(r.owner, str(r.metadata.get("server", "")))
                for r in self.gateway.registry.records.values()
                if r.metadata.get("kind") == "kernel" and r.metadata.get("hub")
                and r.state(now) == "active"}

    def _forget(self, key_id: str) -> None:
        for slot, (kid, _) in list(self.kernels.items()):
            if kid == key_id:
                del self.kernels[slot]


def _text(body: Mapping[str, Any], name: str, *, required: bool = False,
          limit: int = 256) -> str:
    """A string field of a request body, validated (the service answers 400 otherwise)."""
    value = body.get(name, "")
    if value is None:
        value = ""
    if not isinstance(value, str):
        raise InvalidKeyRequest(f"{name} must be a string, got {type(value).__name__}")
    if required and not value:
        raise InvalidKeyRequest(f"{name} is required")
    if len(value) > limit or any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise InvalidKeyRequest(f"{name} must be at most {limit} printable characters")
    return value
