"""What a Hub user may do with the gateway, read off the scopes the Hub gave their token.

The Hub service's handlers call :meth:`HubCaller.from_model` with the model that
JupyterHub's ``HubAuth`` returns for a request's token or OAuth cookie
(``{"kind", "name", "groups", "scopes", ...}``), then ask it
:meth:`~HubCaller.can_use` and :meth:`~HubCaller.administers`. No I/O here: the
Hub has already expanded roles into scopes (``!user`` into ``!user=<name>``).

Scopes, defined by the hub admin in ``c.JupyterHub.custom_scopes``:

- ``custom:vkeys:use``: keys for one's own kernels, one's own caps and spend.
- ``custom:vkeys:admin``: every key, cap and audit entry.
- ``custom:vkeys:admin!group=<g>``: the keys and caps of group ``g``'s members and the
  team scope ``team:<g>`` (an admin of one group).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

SCOPE_USE = "custom:vkeys:use"
SCOPE_ADMIN = "custom:vkeys:admin"

CUSTOM_SCOPES = {
    SCOPE_USE: {"description": "Use jupyter-vkeys: virtual keys for your own kernels, "
                               "your own caps and spend."},
    SCOPE_ADMIN: {"description": "Administer jupyter-vkeys: keys, caps, model allowlists "
                                 "and the audit trail (of everyone, or of one group with "
                                 "!group=<name>)."},
}


def _split(scope: str) -> tuple[str, str, str]:
    """``"name!kind=value"`` as ``(name, kind, value)``; no filter gives ``(name, "", "")``."""
    name, _, filter_ = scope.partition("!")
    kind, _, value = filter_.partition("=")
    return name, kind, value


@dataclass(frozen=True)
class HubCaller:
    """A Hub user (or service) as the gateway sees them."""

    name: str
    kind: str = "user"
    groups: frozenset[str] = frozenset()
    scopes: frozenset[str] = frozenset()
    admin_groups: frozenset[str] = field(default=frozenset())
    admin_of_all: bool = False

    @classmethod
    def from_model(cls, model: Mapping[str, Any]) -> "HubCaller":
        """Called once per request with the Hub's model of the caller."""
        scopes = frozenset(str(s) for s in model.get("scopes") or ())
        admin_groups: set[str] = set()
        admin_of_all = False
        for scope in scopes:
            name, kind, value = _split(scope)
            if name != SCOPE_ADMIN:
                continue
            if not kind:
                admin_of_all = True
            elif kind == "group" and value:
                admin_groups.add(value)
        return cls(name=str(model.get("name") or ""), kind=str(model.get("kind") or "user"),
                   groups=frozenset(str(g) for g in model.get("groups") or ()),
                   scopes=scopes, admin_groups=frozenset(admin_groups),
                   admin_of_all=admin_of_all)

    @property
    def is_admin(self) -> bool:
        """Whether the caller administers anything (all, or at least one group)."""
        return self.admin_of_all or bool(self.admin_groups)

    def can_use(self) -> bool:
        """Whether the caller may mint keys for their own kernels and read their usage:
        ``custom:vkeys:use`` unfiltered or filtered to them (``!user=<name>``), or any
        admin scope."""
        if self.is_admin:
            return True
        for scope in self.scopes:
            name, kind, value = _split(scope)
            if name == SCOPE_USE and (not kind or (kind == "user" and value == self.name)):
                return True
        return False

    def administers(self, *, owner_groups: Iterable[str] = (), team: str = "",
                    scope: str = "") -> bool:
        """Whether the caller may act on a key or scope whose owner is in ``owner_groups``
        (the Hub groups of the key's owner), whose team is ``team``, or which is the
        policy scope ``scope`` (``team:<g>``). Admins of everything may act on all."""
        if self.admin_of_all:
            return True
        if not self.admin_groups:
            return False
        if team and team in self.admin_groups:
            return True
        if scope.startswith("team:") and scope[5:] in self.admin_groups:
            return True
        return bool(self.admin_groups & set(owner_groups))
