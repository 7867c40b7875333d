"""Durable store: tables, repositories, unit of work, migrations."""

from hub.store.db import database_url, make_engine, shared_engine
from hub.store.repository import OutboxItem, OutboxState
from hub.store.uow import UnitOfWork

__all__ = [
    "OutboxItem",
    "OutboxState",
    "UnitOfWork",
    "database_url",
    "make_engine",
    "shared_engine",
]
