"""The in-memory key registry: authenticate on the hot path, change through the store.

The gateway holds one :class:`KeyRegistry`. The data plane calls
:meth:`KeyRegistry.authenticate` on every request (a dict lookup and one
HMAC); the admin API and the CLI call the mutating methods, which write the
store (with its audit row) first and then swap the in-memory record, so a
revocation takes effect on the very next request.
"""

from __future__ import annotations

import math
import re
import time
from datetime import datetime, timezone
from typing import Any, Callable, Mapping

import orjson

from .keys import KeyRecord, MalformedToken, format_token, hash_secret, mint, new_secret, \
    parse_token, secret_matches
from .policy.spec import NAME_PATTERN, POLICY_FIELDS, PolicyError, parse_policy
from .store import Store

KEY_FIELDS = ("alias", "owner", "team", "project", "parent_id", "expires_at", "metadata")

# Bounds of key fields (the OpenAPI description states the same).
MAX_ALIAS_CHARS = 256
MAX_KEY_ID_CHARS = 64
MAX_METADATA_DEPTH = 16
MAX_METADATA_BYTES = 16 * 1024
MAX_GRACE_SECONDS = 366 * 86400
# Times are epoch seconds from 0001-01-01 to 9999-12-31T23:59:59Z: every one of them
# converts to a datetime (the data plane formats expiry times in its refusals).
MIN_TIME, MAX_TIME = -62135596800.0, 253402300799.0
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")
_NAME_RE = re.compile(rf"^{NAME_PATTERN}$")


NEW_KEY_HINT = ("in a notebook, restart the kernel to get a new key; otherwise ask your "
                "jupyter-vkeys admin for a new key")


class AuthError(Exception):
    """The presented credential is not a usable key. ``reason`` is one of
    ``missing``, ``malformed``, ``unknown``, ``revoked``, ``expired``."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


class InvalidKeyRequest(ValueError):
    """An admin request about keys is invalid (bad field, bad state); message says which."""


class KeyNotFound(InvalidKeyRequest):
    """An admin request names a key id that does not exist (the admin API answers 404)."""


class KeyConflict(InvalidKeyRequest):
    """The shared registry refused a key because another replica's committed key conflicts
    with it (a second unrevoked personal key of one Hub user: the PostgreSQL registry's
    ``vkeys_keys_one_hub_personal`` index). Raised by ``PgStore.save_key``; the Hub
    issuer reads the winner back (:meth:`KeyRegistry.reload_owner`) and uses it."""


def _short(value: Any, limit: int = 60) -> str:
    """``repr(value)`` cut to ``limit`` characters, for messages about huge inputs."""
    text = repr(value) if not isinstance(value, (dict, list)) else type(value).__name__
    return text if len(text) <= limit else text[:limit] + "..."


def iso_time(ts: float | None) -> str:
    """RFC 3339 text of an epoch time for messages; never raises (records saved by older
    versions may hold times no datetime can represent)."""
    try:
        return datetime.fromtimestamp(ts or 0, timezone.utc).isoformat()
    except (OverflowError, OSError, ValueError):
        return f"{ts!r} (epoch seconds)"


def parse_time(value: Any, field: str) -> float | None:
    """Accept epoch seconds or RFC 3339 text for ``expires_at``-like fields, between
    0001-01-01 and 9999-12-31; raises :class:`InvalidKeyRequest` naming the field."""
    if value is None or value == "":
        return None
    bounds = "between 0001-01-01T00:00:00Z and 9999-12-31T23:59:59Z"
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise InvalidKeyRequest(f"{field} must be an RFC 3339 time or epoch seconds {bounds}, "
                                f"got {_short(value)}")
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
            if parsed.tzinfo is None:
                parsed = parsed.replace(tzinfo=timezone.utc)
            seconds = parsed.timestamp()
        except (ValueError, OverflowError, OSError):
            raise InvalidKeyRequest(f"{field} must be an RFC 3339 time such as "
                                    f"2026-12-31T00:00:00Z, got {_short(value)}") from None
    else:
        seconds = float(value) if -1e300 < value < 1e300 else math.inf
    if not MIN_TIME <= seconds <= MAX_TIME:
        raise InvalidKeyRequest(f"{field} must be a time {bounds} (epoch seconds "
                                f"{MIN_TIME:.0f} to {MAX_TIME:.0f}), got {_short(value)}")
    return seconds


def _depth_exceeds(value: Any, limit: int) -> bool:
    """Whether ``value`` nests objects/arrays deeper than ``limit`` levels (iterative)."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, Mapping):
            children = item.values()
        elif isinstance(item, (list, tuple)):
            children = item
        else:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children)
    return False


def check_metadata(value: Any) -> dict[str, Any]:
    """Validate a key's free ``metadata`` object: at most :data:`MAX_METADATA_DEPTH` levels
    and :data:`MAX_METADATA_BYTES` of JSON (so it always serializes and stays small)."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise InvalidKeyRequest(f"metadata must be an object of free key/value pairs, "
                                f"got {_short(value)}")
    if _depth_exceeds(value, MAX_METADATA_DEPTH):
        raise InvalidKeyRequest(f"metadata nests deeper than {MAX_METADATA_DEPTH} levels of "
                                "objects and arrays")
    try:
        size = len(orjson.dumps(value))
    except (TypeError, orjson.JSONEncodeError) as exc:
        raise InvalidKeyRequest(f"metadata must be plain JSON: {exc}") from None
    if size > MAX_METADATA_BYTES:
        raise InvalidKeyRequest(f"metadata is {size:,} bytes of JSON; at most "
                                f"{MAX_METADATA_BYTES:,} allowed")
    return dict(value)


def check_grace(value: Any) -> float:
    """``grace_seconds`` of a rotation: a number from 0 to :data:`MAX_GRACE_SECONDS`."""
    if value is None:
        return 0.0
    if isinstance(value, bool) or not isinstance(value, (int, float)) or \
            not 0 <= value <= MAX_GRACE_SECONDS:
        raise InvalidKeyRequest(f"grace_seconds must be a number of seconds from 0 to "
                                f"{MAX_GRACE_SECONDS} (366 days), got {_short(value)}")
    return float(value)


def check_name(field: str, value: Any) -> str:
    """``owner``, ``team`` or ``project``: empty, or a scope name (1-128 characters, no
    whitespace, '/' or control characters), since each names the scope ``user:<owner>``..."""
    if value is None or value == "":
        return ""
    if not isinstance(value, str) or not _NAME_RE.match(value):
        raise InvalidKeyRequest(f"{field} must be a name of 1 to 128 characters without "
                                f"spaces, '/' or control characters, got {_short(value)}")
    return value


class KeyRegistry:
    """All keys of one gateway, in memory, backed by a :class:`Store`."""

    def __init__(self, store: Store, pepper: bytes, clock: Callable[[], float] = time.time,
                 on_change: Callable[[KeyRecord], None] | None = None) -> None:
        self.store = store
        self.pepper = pepper
        self.clock = clock
        self.on_change = on_change
        self.records: dict[str, KeyRecord] = {r.id: r for r in store.load_keys()}

    # -- hot path --------------------------------------------------------------------
    def authenticate(self, token: str | None) -> KeyRecord:
        """The active record for ``token``; raises :class:`AuthError` saying why not.

        Messages never echo the token or reveal whether another key exists.
        """
        if not token:
            raise AuthError("missing", "no virtual key given; send it as the API key "
                                       "(Authorization: Bearer vk-... or x-api-key: vk-...)")
        try:
            key_id, secret = parse_token(token)
        except MalformedToken as exc:
            raise AuthError("malformed", f"invalid API key: {exc}") from None
        record = self.records.get(key_id)
        now = self.clock()
        if record is None or not secret_matches(self.pepper, record, secret, now):
            raise AuthError("unknown", f"invalid API key: no virtual key matches "
                                       f"'vk-{key_id}_...'")
        state = record.state(now)
        if state == "revoked":
            raise AuthError("revoked", f"virtual key {key_id} was revoked at "
                                       f"{iso_time(record.revoked_at)}; {NEW_KEY_HINT}")
        if state == "expired":
            raise AuthError("expired", f"virtual key {key_id} expired at "
                                       f"{iso_time(record.expires_at)}; {NEW_KEY_HINT}")
        parent = self.records.get(record.parent_id) if record.parent_id else None
        if parent is not None and parent.state(now) != "active":
            raise AuthError(parent.state(now), f"virtual key {key_id} belongs to key "
                                               f"{parent.id}, which is {parent.state(now)}: "
                                               "ask your jupyter-vkeys admin")
        return record

    def get(self, key_id: str) -> KeyRecord | None:
        """The record with ``key_id`` or None (the policy engine looks parents up here)."""
        return self.records.get(key_id)

    # -- control plane ---------------------------------------------------------------
    def create(self, fields: Mapping[str, Any], *, actor: str) -> tuple[KeyRecord, str]:
        """Mint and persist a key from admin ``fields`` (key fields plus policy fields).

        Returns the record and its token; the token is never retrievable again.
        """
        attrs, policy = self._split(fields, None)
        parent_id = attrs.get("parent_id") or ""
        if parent_id:
            parent = self.records.get(parent_id)
            if parent is None:
                raise InvalidKeyRequest(f"parent key {parent_id!r} does not exist")
            for inherited in ("owner", "team", "project"):
                attrs.setdefault(inherited, getattr(parent, inherited))
                if not attrs[inherited]:
                    attrs[inherited] = getattr(parent, inherited)
        record, token = mint(self.pepper, self.clock(), policy=policy, **attrs)
        self.store.save_key(None, record, actor=actor, action="key.create")
        self._swap(record)
        return record, token

    def update(self, key_id: str, fields: Mapping[str, Any], *, actor: str) -> KeyRecord:
        """Apply a PATCH of key and policy fields; effective on the next request."""
        before = self._existing(key_id)
        attrs, policy = self._split(fields, before)
        after = before.evolve(policy=policy, **attrs)
        self.store.save_key(before, after, actor=actor, action="key.update")
        self._swap(after)
        return after

    def revoke(self, key_id: str, *, actor: str) -> KeyRecord:
        """Revoke a key now (idempotent). Children are refused through their parent."""
        before = self._existing(key_id)
        if before.revoked_at is not None:
            return before
        after = before.evolve(revoked_at=self.clock())
        # A shared store answers with the record that holds when another replica revoked
        # the key first (nothing written, nothing audited twice); a local one with None.
        after = self.store.save_key(before, after, actor=actor, action="key.revoke") or after
        self._swap(after)
        return after

    def reload_owner(self, owner: str) -> list[KeyRecord]:
        """Read ``owner``'s keys back from the store into memory and return them; called
        by the Hub issuer when the shared registry refused a key another replica had
        just committed (its change notification may not have arrived yet)."""
        records = self.store.load_keys(owner=owner)
        for record in records:
            self.records[record.id] = record
        return records

    def rotate(self, key_id: str, *, actor: str, grace_seconds: float = 0) -> tuple[KeyRecord, str]:
        """Give a key a new secret; the old one stays valid ``grace_seconds`` longer."""
        before = self._existing(key_id)
        if before.state(self.clock()) != "active":
            raise InvalidKeyRequest(f"key {key_id} is {before.state(self.clock())}; only active "
                                    "keys rotate")
        grace_seconds = check_grace(grace_seconds)
        secret = new_secret()
        after = before.evolve(
            secret_hash=hash_secret(self.pepper, secret),
            previous_secret_hash=before.secret_hash if grace_seconds > 0 else None,
            previous_valid_until=self.clock() + grace_seconds if grace_seconds > 0 else None)
        self.store.save_key(before, after, actor=actor, action="key.rotate")
        self._swap(after)
        return after, format_token(key_id, secret)

    # -- internals -------------------------------------------------------------------
    def _existing(self, key_id: str) -> KeyRecord:
        record = self.records.get(key_id)
        if record is None:
            raise KeyNotFound(f"no key with id {key_id!r}")
        return record

    def _swap(self, record: KeyRecord) -> None:
        self.records[record.id] = record
        if self.on_change is not None:
            self.on_change(record)

    def _split(self, fields: Mapping[str, Any], before: KeyRecord | None
               ) -> tuple[dict[str, Any], dict[str, Any]]:
        """Separate key attributes from policy fields and validate both."""
        if not isinstance(fields, Mapping):
            raise InvalidKeyRequest("expected a JSON object of key fields")
        unknown = set(fields) - set(KEY_FIELDS) - set(POLICY_FIELDS)
        if unknown:
            raise InvalidKeyRequest(f"unknown fields {_short(sorted(map(str, unknown)))}; key "
                                    f"fields: {', '.join(KEY_FIELDS)}; policy fields: "
                                    f"{', '.join(POLICY_FIELDS)}")
        attrs: dict[str, Any] = {}
        for name in KEY_FIELDS:
            if name not in fields:
                continue
            value = fields[name]
            if name == "expires_at":
                attrs[name] = parse_time(value, name)
            elif name == "metadata":
                attrs[name] = check_metadata(value)
            elif name in ("owner", "team", "project"):
                attrs[name] = check_name(name, value)
            elif value is not None and not isinstance(value, str):
                raise InvalidKeyRequest(f"{name} must be a string, got {_short(value)}")
            elif name == "alias":
                if len(value or "") > MAX_ALIAS_CHARS or _CONTROL_RE.search(value or ""):
                    raise InvalidKeyRequest(f"alias must be text of at most {MAX_ALIAS_CHARS} "
                                            "characters without control characters, got "
                                            f"{_short(value)}")
                attrs[name] = value or ""
            else:  # parent_id
                if len(value or "") > MAX_KEY_ID_CHARS:
                    raise InvalidKeyRequest(f"parent_id must be a key id of at most "
                                            f"{MAX_KEY_ID_CHARS} characters")
                attrs[name] = value or ""
        if before is not None and "parent_id" in attrs and attrs["parent_id"] != before.parent_id:
            raise InvalidKeyRequest("parent_id cannot change after creation")
        policy_fields = {k: v for k, v in fields.items() if k in POLICY_FIELDS}
        try:
            base = parse_policy(before.policy) if before is not None and before.policy else None
        except PolicyError:  # saved by an older version with laxer checks: replace it
            base = None
        policy = parse_policy(policy_fields, base=base).as_dict()
        return attrs, policy
