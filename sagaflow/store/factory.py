"""Which saga store a database URL names: the one place that tells SQLite and PostgreSQL apart."""

from __future__ import annotations

import os

import sqlalchemy as sa

from sagaflow.errors import ConfigurationError
from sagaflow.store.cache import REMEMBERED_SAGAS
from sagaflow.store.postgres import PostgresSagaStore
from sagaflow.store.sql import SqlSagaStore
from sagaflow.store.sqlite import SqliteSagaStore
from sagaflow.urls import mask_url

STORES: dict[str, type[SqlSagaStore]] = {
    "sqlite": SqliteSagaStore,
    "postgresql": PostgresSagaStore,
}


def store_class(url: str) -> type[SqlSagaStore]:
    """The store for `url`'s database; ConfigurationError if sagaflow has none for it."""
    try:
        backend = sa.engine.make_url(url).get_backend_name()
    except (sa.exc.ArgumentError, ValueError):
        raise ConfigurationError(
            f"saga store URL {mask_url(url)}: not a SQLAlchemy URL of the form "
            "dialect+driver://user@host:port/database"
        ) from None
    try:
        return STORES[backend]
    except KeyError:
        raise ConfigurationError(
            f"saga store URL {mask_url(url)}: sagaflow keeps sagas in SQLite or PostgreSQL, "
            f"not {backend!r}"
        ) from None


def open_store(url: str, *, echo: bool = False, remember: int = REMEMBERED_SAGAS) -> SqlSagaStore:
    """The saga store on `url` (it connects on first use). `remember`: how many sagas it may
    decide on as it last wrote them (sagaflow.store.cache); `echo` logs every statement."""
    return store_class(url)(url, echo=echo, remember=remember)


def embedded(url: str) -> bool:
    """True if the store is a file on this host (SQLite), False for a database server."""
    return store_class(url) is SqliteSagaStore


def store_key(url: str) -> str:
    """Which store a URL names, whoever wrote it: the URL without its password, a SQLite file's
    path made absolute."""
    parsed = sa.engine.make_url(url)
    if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
        database = parsed.database or ""
        if not database.startswith("file:"):
            parsed = parsed.set(database=os.path.abspath(database))
    return mask_url(parsed.render_as_string(hide_password=False))
