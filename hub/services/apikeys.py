"""API keys: generated once, shown once, stored only as a SHA-256 digest plus a prefix.

Keys are 256-bit random tokens, so a plain (unsalted) SHA-256 is enough: there is no
dictionary to attack, and a unique digest lets the check be one indexed lookup.
`HUB_API_KEYS` (comma-separated plain keys) serves simple set-ups without a database row.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta

from sqlalchemy import Engine, insert, select, update
from sqlalchemy.exc import IntegrityError

from hub.model import utcnow
from hub.store import tables as t

API_KEYS_ENV = "HUB_API_KEYS"
KEY_PREFIX = "hub_"
PREFIX_CHARS = 12
# Recording last use is a write: do it at most this often per key, not on every request.
LAST_USED_EVERY = timedelta(minutes=5)


class ApiKeyError(ValueError):
    pass


@dataclass(frozen=True)
class ApiKey:
    name: str
    prefix: str
    scopes: str
    created_at: datetime
    revoked_at: datetime | None
    last_used_at: datetime | None

    @property
    def active(self) -> bool:
        return self.revoked_at is None

    def as_dict(self) -> dict[str, object]:
        data = asdict(self)
        data["active"] = self.active
        return {k: v.isoformat() if isinstance(v, datetime) else v for k, v in data.items()}


def digest(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def env_keys() -> list[str]:
    return [k.strip() for k in os.environ.get(API_KEYS_ENV, "").split(",") if k.strip()]


class ApiKeyService:
    def __init__(self, engine: Engine, *, read_engine: Engine | None = None) -> None:
        self.engine = engine
        # The lookup is a read: on SQLite a read engine's BEGIN takes no write lock, so a
        # key check does not queue behind intake's group commits (only the rare
        # last-used update writes).
        self.read_engine = read_engine or engine

    def create(self, name: str, *, scopes: str = "write") -> tuple[ApiKey, str]:
        """A new key named `name`; returns the record and the plain key (never stored)."""
        name = name.strip()
        if not name:
            raise ApiKeyError("a key needs a name")
        key = KEY_PREFIX + secrets.token_urlsafe(32)
        now = utcnow()
        row = {
            "name": name,
            "prefix": key[:PREFIX_CHARS],
            "key_hash": digest(key),
            "scopes": scopes,
            "created_at": now,
        }
        try:
            with self.engine.begin() as conn:
                conn.execute(insert(t.api_keys).values(**row))
        except IntegrityError as exc:
            raise ApiKeyError(f"a key named {name!r} already exists") from exc
        return ApiKey(name, row["prefix"], scopes, now, None, None), key

    def list(self) -> list[ApiKey]:
        with self.engine.connect() as conn:
            rows = conn.execute(select(t.api_keys).order_by(t.api_keys.c.name)).all()
        return [self._key(row) for row in rows]

    def revoke(self, name: str) -> ApiKey:
        with self.engine.begin() as conn:
            row = conn.execute(select(t.api_keys).where(t.api_keys.c.name == name)).first()
            if row is None:
                raise ApiKeyError(f"no key named {name!r}")
            if row.revoked_at is None:
                conn.execute(
                    update(t.api_keys).where(t.api_keys.c.id == row.id).values(revoked_at=utcnow())
                )
            row = conn.execute(select(t.api_keys).where(t.api_keys.c.id == row.id)).one()
        return self._key(row)

    def verify(self, key: str | None) -> str | None:
        """The name of the active key `key`, or None (missing, unknown or revoked)."""
        if not key:
            return None
        for plain in env_keys():  # constant-time compare; the env key's name is its prefix
            if hmac.compare_digest(plain.encode(), key.encode()):
                return f"env:{plain[:PREFIX_CHARS]}"
        with self.read_engine.connect() as conn:
            row = conn.execute(
                select(
                    t.api_keys.c.id,
                    t.api_keys.c.name,
                    t.api_keys.c.revoked_at,
                    t.api_keys.c.last_used_at,
                ).where(t.api_keys.c.key_hash == digest(key))
            ).first()
        if row is None or row.revoked_at is not None:
            return None
        now = utcnow()
        if row.last_used_at is None or now - row.last_used_at > LAST_USED_EVERY:
            with self.engine.begin() as conn:
                conn.execute(
                    update(t.api_keys).where(t.api_keys.c.id == row.id).values(last_used_at=now)
                )
        return row.name

    @staticmethod
    def _key(row) -> ApiKey:
        return ApiKey(
            row.name, row.prefix, row.scopes, row.created_at, row.revoked_at, row.last_used_at
        )
