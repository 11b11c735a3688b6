"""Apply sagaflow's Alembic migrations programmatically (`sagaflow db upgrade`)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Protocol

from alembic import command
from alembic.config import Config
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Connection

from sagaflow.errors import StoreUnavailable
from sagaflow.store.protocol import SagaStore
from sagaflow.urls import mask_url

MIGRATIONS = Path(__file__).parent / "migrations"
VERSION_TABLE = "sagaflow_alembic_version"


def alembic_config(url: str) -> Config:
    config = Config()
    config.set_main_option("version_table", VERSION_TABLE)
    config.set_main_option("script_location", str(MIGRATIONS))
    # ConfigParser interpolation would choke on '%' in URL-encoded passwords.
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


class Migratable(Protocol):
    """A store Alembic can migrate: its URL, and the connection to migrate on (each database
    has its own needs, see SqlSagaStore.migration_connection)."""

    @property
    def url(self) -> str: ...

    def migration_connection(self) -> AbstractContextManager[Connection]: ...


def upgrade(store: Migratable, revision: str = "head") -> None:
    _migrate(store, lambda config: command.upgrade(config, revision))


def downgrade(store: Migratable, revision: str) -> None:
    _migrate(store, lambda config: command.downgrade(config, revision))


def _migrate(store: Migratable, run: Callable[[Config], None]) -> None:
    config = alembic_config(store.url)
    with _unavailable_as_error(store.url), store.migration_connection() as conn:
        config.attributes["connection"] = conn
        run(config)


def current_revision(store: SagaStore) -> str | None:
    from alembic.runtime.migration import MigrationContext

    with _unavailable_as_error(store.url), store.engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"version_table": VERSION_TABLE})
        return context.get_current_revision()


def head_revision() -> str | None:
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()


@contextmanager
def _unavailable_as_error(url: str) -> Iterator[None]:
    try:
        yield
    except (sa_exc.OperationalError, sa_exc.InterfaceError) as exc:
        raise StoreUnavailable(f"saga store {mask_url(url)} unavailable: {exc.orig}") from exc
