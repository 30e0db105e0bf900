"""Which keys and scopes an admin of some teams only may act on.

The admin API's handlers ask their auth base class for an :class:`AdminReach`
(:meth:`~jupyter_vkeys.gateway.admin.AdminMixin.admin_reach`): ``None`` means
everything (the standalone admin token, a Jupyter server's user, a Hub user with
``custom:vkeys:admin``); a reach limited to teams is what a Hub group admin
(``custom:vkeys:admin!group=<g>``) gets. Under a Hub, a user's keys carry their
Hub group as ``team``, so "the keys of group g" are the keys whose team is ``g``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Mapping


@dataclass(frozen=True)
class AdminReach:
    """An admin's reach: the teams whose keys and scopes they administer."""

    teams: frozenset[str]

    def describe(self) -> str:
        """For refusals: what this admin may act on."""
        names = ", ".join(sorted(self.teams)) or "none"
        return f"the keys and caps of team(s) {names}"

    def key(self, record: Any) -> bool:
        """Whether a key (a record, or its public view as a mapping) is within reach."""
        team = record.get("team") if isinstance(record, Mapping) else getattr(record, "team", "")
        return bool(team) and team in self.teams

    def scope(self, scope: str, records: Iterable[Any]) -> bool:
        """Whether a policy scope is within reach: ``team:<t>`` of a team in reach; a
        ``user:``, ``project:`` or ``key:`` scope all of whose keys are in reach (and that
        has at least one). ``global`` never is."""
        kind, _, name = scope.partition(":")
        if kind == "team":
            return name in self.teams
        if kind not in ("user", "project", "key") or not name:
            return False
        attr = {"user": "owner", "project": "project", "key": "id"}[kind]
        matching = [r for r in records if getattr(r, attr, "") == name]
        return bool(matching) and all(self.key(r) for r in matching)
