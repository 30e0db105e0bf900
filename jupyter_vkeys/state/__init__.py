"""Where the counters live when several gateway replicas share keys and budgets.

By default (``c.VKeysGateway.state_url = ""``) there is one gateway process and its
:class:`~jupyter_vkeys.policy.PolicyEngine` holds every counter in memory: nothing here
runs. With ``state_url = "redis://host:6379/0"`` (or ``jupyter vkeys serve
--state-url``) every replica also admits each call on one shared ledger in Redis or
Valkey (:class:`.redis_ledger.RedisLedger`), and the shared answer decides.

Why N replicas cannot overspend
-------------------------------

1. **One atomic check-and-reserve.** Admission is one Lua script: it reads the spent
   and held amounts of every capped budget window on the call's scope path, the
   calls in flight and the RPM/TPM buckets, and only if every check passes adds the
   call's worst-case hold to every budget, a slot to every concurrency counter and
   its request and tokens to every window. Redis runs one script at a time, so for
   every budget window the invariant ``spent + held <= cap`` that holds before a
   script holds after it (a script only adds a hold after checking
   ``spent + held + hold <= cap``). No replica keeps a local budget allowance: there
   is no lease of budget to over-hand, so the bound is the single-process one.
2. **Settlement only lowers or keeps.** A hold is the worst case the call can cost
   (the same figure the single-process engine holds, and settlement caps an
   estimated cost at it), so replacing it by the actual cost never raises
   ``spent + held``. Settlement is keyed by request id and deletes the hold record
   in the same script: a settle delivered twice (a retry after a lost answer) finds
   no open hold and changes nothing; a settle that never arrives leaves the hold in
   place, which can only refuse more, never admit more.
3. **A dead replica's holds are charged, not forgotten.** Each replica renews a lease
   (``c.VKeysGateway.state_lease_seconds``) with every admission and every
   ``lease / 3`` seconds. Once it expires, any replica's reaper charges each open
   hold of the dead replica at the hold itself (status ``lost``, as the
   single-process gateway charges a crash at restart) and frees its slots. A replica
   that was only cut off from Redis longer than its lease has its holds charged the
   same way; its late settlements then find nothing open and change nothing, so the
   error is an overcharge of at most the difference, never an overspend.
4. **Money is exact.** Amounts are kept as whole dollars and pico-dollars in two
   fields (Lua's doubles are exact only to 2^53), compared and added limb by limb.
5. **Fail closed.** When Redis does not answer within ``state_timeout`` the call is
   refused with 503; only with ``state_fail_open_rate`` may a call whose path has no
   budget, concurrency or TPM limit (RPM only) pass on the replica's local RPM count.
   A Redis that lost its data (no epoch key, or a new one) is detected by the epoch
   check inside the admit script and also refused.

The local engine still runs first: what it holds is this replica's share of the
shared figures, so its checks are weaker than the shared ones and never refuse a call
the shared ledger would admit (it answers allowlists and aliases, which need no
shared state). Redis must persist (AOF, ``appendfsync everysec`` or ``always``): a
Redis restarted empty would forget spend, which the epoch check turns into refusals
rather than fresh budgets.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .base import SharedLedger, StateUnavailable

if TYPE_CHECKING:
    from datetime import tzinfo

__all__ = ["SharedLedger", "StateUnavailable", "open_ledger"]

SCHEMES = ("redis://", "rediss://", "unix://")


def open_ledger(url: str, *, tz: tzinfo, lease: float, timeout: float, fail_open_rate: bool,
                clamp_max_tokens: bool, replica: str = "", prefix: str = "{vkeys}:"
                ) -> SharedLedger:
    """The shared ledger named by ``url``; called by ``VKeysGateway.start``.
    Raises ValueError for a URL it does not know, or when the client is missing."""
    if not url.startswith(SCHEMES):
        raise ValueError(f"state_url {url!r} is not a Redis URL (redis://host:port/db, "
                         "rediss://... or unix:///path.sock)")
    try:
        import redis  # noqa: F401
    except ImportError:
        raise ValueError("state_url needs the redis client: pip install "
                         "'jupyter-vkeys[scale]'") from None
    from .redis_ledger import RedisLedger

    return RedisLedger(url, tz=tz, prefix=prefix, replica=replica or None, lease=lease,
                       timeout=timeout, fail_open_rate=fail_open_rate,
                       clamp_max_tokens=clamp_max_tokens)
