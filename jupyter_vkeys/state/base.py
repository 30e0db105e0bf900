"""What the data plane asks of shared state, whatever holds it.

The call path (:class:`~jupyter_vkeys.gateway.proxy.ProxyCall`) talks to a
:class:`SharedLedger` only when ``c.VKeysGateway.state_url`` names one; without it the
in-process :class:`~jupyter_vkeys.policy.PolicyEngine` is the whole ledger and the
call path pays one attribute test for this seam.
"""

from __future__ import annotations

import os
import secrets
import socket
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from ..policy.engine import Ticket
    from ..pricing import ModelRates

__all__ = ["SharedLedger", "StateUnavailable", "default_replica_id"]


def default_replica_id() -> str:
    """``<host>-<pid>-<random>``: unique per process, readable in ``redis-cli`` and in
    PostgreSQL's ``vkeys_replicas``; ``c.VKeysGateway.replica_id`` overrides it."""
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"


class StateUnavailable(Exception):
    """The shared ledger cannot be reached (or lost its state): the call is refused
    with 503, because admitting it could overspend a budget other replicas share."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class SharedLedger(Protocol):
    """Holds, settles, windows and concurrency shared by every replica of a gateway."""

    replica: str  # this replica's name in the shared state
    reachable: bool  # whether the last round trip to the backend succeeded
    where: str  # the backend's address without credentials, for messages

    async def start(self) -> None:
        """Begin the lease and background work; called once by ``VKeysGateway.start``.
        Must not fail when the backend is down (calls fail closed until it is back)."""

    async def admit(self, request_id: str, ticket: Ticket, rates: ModelRates | None, *,
                    input_bound: int, max_output: int | None, choices: int,
                    ceiling: int) -> bool:
        """Check every shared limit of ``ticket``'s scope path and reserve on all of them,
        atomically; called by the data plane right after the local engine admitted the
        call. May lower ``ticket.hold`` (clamping a request without max_tokens to what
        the shared budget affords). Returns whether a shared hold was placed (False only
        when RPM fail-open let the call through an outage); raises
        :class:`~jupyter_vkeys.policy.Refusal` or :class:`StateUnavailable`."""

    def settle(self, request_id: str, cost_pico: int, tokens: int) -> None:
        """Replace the call's shared hold with its cost; called once by the data plane
        when the call ends. Never blocks and never raises: delivery is retried until it
        lands, and a repeat of it changes nothing."""

    def read_budgets(self, scope: str, periods: list[str], now: float
                     ) -> list[tuple[int, int]]:
        """``(spent, held)`` pico-USD of ``scope``'s current window of each of ``periods``,
        over every replica; called (synchronously) by the admin API's reports. Raises
        :class:`StateUnavailable` when the backend does not answer."""

    async def close(self) -> None:
        """Deliver pending settlements (bounded wait), stop, disconnect; at shutdown."""
