"""Apply sagaflow's Alembic migrations programmatically (`sagaflow db upgrade`)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from alembic import command
from alembic.config import Config
from sqlalchemy import exc as sa_exc
from sqlalchemy import make_url

from sagaflow.errors import StoreUnavailable

if TYPE_CHECKING:
    from sagaflow.store.sql import SagaStore

MIGRATIONS = Path(__file__).parent / "migrations"
VERSION_TABLE = "sagaflow_alembic_version"


def alembic_config(url: str) -> Config:
    config = Config()
    config.set_main_option("version_table", VERSION_TABLE)
    config.set_main_option("script_location", str(MIGRATIONS))
    # ConfigParser interpolation would choke on '%' in URL-encoded passwords.
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def upgrade(store: SagaStore, revision: str = "head") -> None:
    _migrate(store, lambda config: command.upgrade(config, revision))


def downgrade(store: SagaStore, revision: str) -> None:
    _migrate(store, lambda config: command.downgrade(config, revision))


def _migrate(store: SagaStore, run: Callable[[Config], None]) -> None:
    config = alembic_config(store.url)
    if make_url(store.url).get_backend_name() == "sqlite":
        # A plain engine: foreign keys off, as SQLite's batch table rebuilds need (with them
        # on, dropping the old sagas table would cascade to every step row).
        from sagaflow.store.sql import create_sqlite_engine

        store.engine  # noqa: B018 - raises StoreUnavailable for a missing folder
        # WAL before the first table exists: in rollback-journal mode, the migration's write
        # lock would make every other connection's switch to WAL fail (see store.use_wal).
        engine = create_sqlite_engine(store.url)
        try:
            with _unavailable_as_error(store), engine.begin() as conn:
                config.attributes["connection"] = conn
                run(config)
        finally:
            engine.dispose()
        return
    with _unavailable_as_error(store), store.engine.begin() as conn:
        config.attributes["connection"] = conn
        run(config)


def current_revision(store: SagaStore) -> str | None:
    from alembic.runtime.migration import MigrationContext

    with _unavailable_as_error(store), store.engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"version_table": VERSION_TABLE})
        return context.get_current_revision()


def head_revision() -> str | None:
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()


@contextmanager
def _unavailable_as_error(store: SagaStore) -> Iterator[None]:
    from sagaflow.store.sql import mask_url

    try:
        yield
    except (sa_exc.OperationalError, sa_exc.InterfaceError) as exc:
        raise StoreUnavailable(f"saga store {mask_url(store.url)} unavailable: {exc.orig}") from exc
