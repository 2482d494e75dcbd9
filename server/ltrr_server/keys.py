"""API keys: made once, stored only as salted hashes, checked on every call from memory.

A key reads ``ltrr_<id>_<secret>``: ``id`` (12 hex characters) names it in lists, logs and the
audit trail; ``secret`` (32 random bytes, URL-safe base64) is shown once, when the key is made, and
stored only as SHA-256 of a per-key salt and itself. A fast hash is the right one here: a password
needs a slow hash because people choose few of them, but 256 random bits cannot be guessed however
fast the hash is, and checking a call costs about a microsecond.

The ``KeyRing`` is the server's in-memory view of the keys that are not revoked, re-read from SQL
every ``REFRESH_SECONDS``: a key revoked anywhere (another server, ``ltrr keys revoke`` on the
database) stops working within that time; on the server that revoked it, at once.

>>> key, secret = parse_key("ltrr_0123456789ab_c2VjcmV0")
>>> key, secret
('0123456789ab', 'c2VjcmV0')
>>> parse_key("Bearer nonsense") is None
True
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

from ltrr_server.bounds import KEY_NAME_CHARS, KEY_ROLES, MAX_QUOTA, SUBJECT_CHARS
from ltrr_server.config import Limits, check_name
from ltrr_server.errors import InvalidArgument, NotFound
from ltrr_server.log import schema
from ltrr_server.tenancy import DEFAULT_TENANT

ROLES = ("decide", "feedback", "admin")
REFRESH_SECONDS = 0.5
_PREFIX = "ltrr_"
_ID_CHARS = 12


@dataclass(frozen=True)
class Quotas:
    """What one key may use: decisions (Decide, DecideStream messages, Retrieve, model calls) and
    reward events per second, and streams open at once."""

    decisions_per_second: int
    rewards_per_second: int
    max_streams: int


@dataclass(frozen=True)
class Identity:
    """Who a call is from: the key (its id and name), its tenant, its roles and quotas."""

    key_id: str
    tenant: str
    roles: frozenset[str]
    quotas: Quotas | None = None
    name: str = ""

    @property
    def actor(self) -> str:
        """How the audit trail names the caller."""
        if not self.key_id:
            return self.name or "anonymous"
        return f"key:{self.key_id}" + (f" ({self.name})" if self.name else "")


# With authentication off every caller is this one: every role, the default tenant.
ANONYMOUS = Identity("", DEFAULT_TENANT, frozenset(ROLES))


@dataclass(frozen=True)
class KeyInfo:
    """A stored key as lists show it: everything but its secret."""

    id: str
    tenant: str
    roles: tuple[str, ...]
    name: str
    subject: str
    decisions_per_second: int | None
    rewards_per_second: int | None
    max_streams: int | None
    created_at: float
    revoked_at: float | None

    def to_dict(self) -> dict[str, Any]:
        return {f: getattr(self, f) for f in self.__dataclass_fields__}


@dataclass(frozen=True)
class NewKey:
    """What creating a key asks for."""

    tenant: str
    roles: tuple[str, ...]
    name: str = ""
    subject: str = ""
    decisions_per_second: int | None = None
    rewards_per_second: int | None = None
    max_streams: int | None = None

    def __post_init__(self) -> None:
        check_name(self.tenant, "tenant")
        if not self.roles:
            raise InvalidArgument("roles", f"at least one of {ROLES}")
        if len(self.roles) > KEY_ROLES:
            raise InvalidArgument("roles", f"{len(self.roles)} roles, more than {KEY_ROLES}")
        for i, role in enumerate(self.roles):
            if role not in ROLES:
                raise InvalidArgument(f"roles[{i}]", f"must be one of {ROLES}, got {role!r}")
        if len(self.name) > KEY_NAME_CHARS:
            raise InvalidArgument("name", f"longer than {KEY_NAME_CHARS} characters")
        if len(self.subject) > SUBJECT_CHARS:
            raise InvalidArgument("subject", f"longer than {SUBJECT_CHARS} characters")
        for f in ("decisions_per_second", "rewards_per_second", "max_streams"):
            value = getattr(self, f)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                      or not 1 <= value <= MAX_QUOTA):
                raise InvalidArgument(f, f"must be an integer in [1, {MAX_QUOTA}], got {value!r}")


def parse_key(text: str) -> tuple[str, str] | None:
    """(id, secret) of a key's text, or None for anything not shaped like one."""
    if not text.startswith(_PREFIX) or len(text) < len(_PREFIX) + _ID_CHARS + 2:
        return None
    key_id, sep, secret = text[len(_PREFIX):].partition("_")
    if not sep or len(key_id) != _ID_CHARS or not secret:
        return None
    return key_id, secret


def _digest(salt: str, secret: str) -> str:
    return hashlib.sha256(bytes.fromhex(salt) + secret.encode()).hexdigest()


def _info(row: Mapping[str, Any]) -> KeyInfo:
    return KeyInfo(
        id=row["id"], tenant=row["tenant"], roles=tuple(r for r in row["roles"].split(",") if r),
        name=row["name"], subject=row["subject"] or "", decisions_per_second=row["decisions_per_second"],
        rewards_per_second=row["rewards_per_second"], max_streams=row["max_streams"],
        created_at=row["created_at"], revoked_at=row["revoked_at"])


class KeyStore:
    """The keys in SQL. Synchronous: the server calls it off the event loop."""

    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine

    def create(self, new: NewKey) -> tuple[KeyInfo, str]:
        """Stores a new key; returns it and its text, which exists nowhere else afterwards."""
        key_id = secrets.token_hex(_ID_CHARS // 2)
        secret = secrets.token_urlsafe(32)
        salt = secrets.token_hex(16)
        if new.subject and any(k.subject == new.subject for k in self.list_keys() if k.revoked_at is None):
            raise InvalidArgument("subject", f"another key already maps the client certificate subject "
                                             f"{new.subject!r}")
        row = {
            "id": key_id, "tenant": new.tenant, "roles": ",".join(sorted(set(new.roles), key=ROLES.index)),
            "name": new.name, "salt": salt, "secret_hash": _digest(salt, secret), "subject": new.subject or None,
            "decisions_per_second": new.decisions_per_second, "rewards_per_second": new.rewards_per_second,
            "max_streams": new.max_streams, "created_at": time.time(), "revoked_at": None,
        }
        with self.engine.begin() as conn:
            conn.execute(schema.api_keys.insert().values(**row))
        return _info(row), f"{_PREFIX}{key_id}_{secret}"

    def list_keys(self, tenant: str | None = None) -> list[KeyInfo]:
        q = sa.select(schema.api_keys).order_by(schema.api_keys.c.created_at)
        if tenant is not None:
            q = q.where(schema.api_keys.c.tenant == tenant)
        with self.engine.connect() as conn:
            return [_info(dict(r)) for r in conn.execute(q).mappings()]

    def get(self, key_id: str, tenant: str | None = None) -> KeyInfo:
        """The key ``key_id`` (of ``tenant``, if given: another tenant's is not found)."""
        q = sa.select(schema.api_keys).where(schema.api_keys.c.id == key_id)
        with self.engine.connect() as conn:
            row = conn.execute(q).mappings().first()
        if row is None or (tenant is not None and row["tenant"] != tenant):
            raise NotFound(f"no key {key_id!r}")
        return _info(dict(row))

    def revoke(self, key_id: str, tenant: str | None = None) -> tuple[KeyInfo, KeyInfo]:
        """Revokes a key (again: no change); returns it before and after."""
        before = self.get(key_id, tenant)
        if before.revoked_at is not None:
            return before, before
        with self.engine.begin() as conn:
            conn.execute(schema.api_keys.update().where(schema.api_keys.c.id == key_id)
                         .values(revoked_at=time.time()))
        return before, self.get(key_id, tenant)

    def active_rows(self) -> list[dict[str, Any]]:
        q = sa.select(schema.api_keys).where(schema.api_keys.c.revoked_at.is_(None))
        with self.engine.connect() as conn:
            return [dict(r) for r in conn.execute(q).mappings()]


@dataclass
class KeyRing:
    """The keys a server accepts, in memory: ``verify`` and ``by_subject`` never touch SQL.

    ``replace`` swaps in what SQL holds (the refresh loop, every ``REFRESH_SECONDS``);
    ``drop`` forgets a key at once (a revocation on this server).
    """

    limits: Limits
    loaded: bool = False
    _by_id: dict[str, tuple[str, str, Identity]] = field(default_factory=dict)
    _by_subject: dict[str, Identity] = field(default_factory=dict)

    def replace(self, rows: Iterable[Mapping[str, Any]]) -> None:
        by_id, by_subject = {}, {}
        for row in rows:
            info = _info(row)
            ident = Identity(info.id, info.tenant, frozenset(info.roles), self._quotas(info), info.name)
            by_id[info.id] = (row["salt"], row["secret_hash"], ident)
            if info.subject:
                by_subject[info.subject] = ident
        self._by_id, self._by_subject, self.loaded = by_id, by_subject, True

    def drop(self, key_id: str) -> None:
        entry = self._by_id.pop(key_id, None)
        if entry is not None:
            self._by_subject = {s: i for s, i in self._by_subject.items() if i.key_id != key_id}

    def verify(self, text: str) -> Identity | None:
        """The identity of a key's text, or None for a key that is wrong, unknown or revoked."""
        parsed = parse_key(text)
        if parsed is None:
            return None
        entry = self._by_id.get(parsed[0])
        if entry is None:
            return None
        salt, digest, ident = entry
        return ident if hmac.compare_digest(_digest(salt, parsed[1]), digest) else None

    def by_subject(self, subjects: Sequence[str]) -> Identity | None:
        """The identity a client certificate's subject maps to, if any."""
        for subject in subjects:
            ident = self._by_subject.get(subject)
            if ident is not None:
                return ident
        return None

    def _quotas(self, info: KeyInfo) -> Quotas:
        lim = self.limits
        return Quotas(info.decisions_per_second or lim.key_decisions_per_second,
                      info.rewards_per_second or lim.key_rewards_per_second,
                      info.max_streams or lim.key_max_streams)
