"""Which store a URL opens, and the record <-> row mapping the store derives. Nothing connects."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path

import pytest
import sqlalchemy as sa

from sagaflow.core.definitions import SagaState, Step, StepStatus
from sagaflow.core.machine import ErrorInfo, begin, new_saga
from sagaflow.errors import ConfigurationError
from sagaflow.store.factory import embedded, open_store, store_key
from sagaflow.store.postgres import PostgresSagaStore
from sagaflow.store.rows import (
    LOAD_LABELS,
    record_fields,
    saga_from_row,
    saga_from_rows,
    saga_row,
    step_from_row,
    step_row,
)
from sagaflow.store.sqlite import SqliteSagaStore

NOW = datetime(2024, 5, 17, 12, 30, 45, tzinfo=timezone.utc)


def test_open_store_picks_the_store_of_the_url_and_keeps_its_options(tmp_path: Path) -> None:
    lite = open_store(f"sqlite:///{tmp_path / 'a.db'}", remember=3)
    pg = open_store("postgresql+psycopg://u:pw@db:5432/s", echo=True)
    assert type(lite) is SqliteSagaStore and type(pg) is PostgresSagaStore
    assert repr(pg) == "SagaStore('postgresql+psycopg://u:***@db:5432/s')"
    assert embedded(lite.url) and not embedded(pg.url)
    assert not (tmp_path / "a.db").exists()  # opened lazily


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("mysql+pymysql://u:s3cret@db/s", "SQLite or PostgreSQL, not 'mysql'"),
        ("not a url://u:s3cret@", "not a SQLAlchemy URL"),
        ("postgresql+psycopg://u:s3cret@h:port/x", "not a SQLAlchemy URL"),
    ],
)
def test_a_url_of_no_store_is_refused_without_its_password(url: str, reason: str) -> None:
    with pytest.raises(ConfigurationError, match=reason) as info:
        open_store(url)
    assert "s3cret" not in str(info.value)


def test_ensure_database_makes_the_sqlite_folder_only(tmp_path: Path) -> None:
    folder = tmp_path / "a" / "b"
    open_store(f"sqlite:///{folder / 'sagaflow.db'}").ensure_database()
    assert folder.is_dir() and not (folder / "sagaflow.db").exists()
    open_store("sqlite://").ensure_database()  # in memory: nothing to make
    open_store("postgresql+psycopg://u@db/s").ensure_database()


def test_store_key_names_a_sqlite_file_by_its_absolute_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert (
        store_key("sqlite:///rel/sagaflow.db") == f"sqlite:///{os.path.abspath('rel')}/sagaflow.db"
    )
    assert store_key("sqlite://") == "sqlite://"
    assert store_key("postgresql+psycopg://u:pw@db/s") == "postgresql+psycopg://u:***@db/s"


def test_records_round_trip_through_the_derived_rows() -> None:
    steps = [
        Step("a", "svc.a", "svc.undo_a", queue="q"),
        Step("b", "svc.b", timeout=5.0, on_timeout="verify", verify="svc.v"),
    ]
    saga = begin(new_saga("s-1", "order", {"k": [1, None]}, steps, NOW), NOW).saga
    failed = replace(saga.steps[1], status=StepStatus.FAILED, error=ErrorInfo("E", "m"))
    saga = replace(saga, steps=(saga.steps[0], failed))
    row = saga_row(saga)
    assert row["id"] == "s-1" and row["state"] == SagaState.PENDING.value
    step_rows = [step_row(saga.saga_id, s) for s in saga.steps]
    assert step_rows[1]["status"] == "failed" and step_rows[1]["error"] == {
        "type": "E",
        "message": "m",
    }
    assert saga_from_row(row, [step_from_row(r) for r in step_rows]) == saga
    joined = [
        {
            label: (row if label.startswith("saga_") else step)[label.split("_", 1)[1]]
            for label in LOAD_LABELS
        }
        for step in step_rows
    ]
    assert saga_from_rows(joined) == saga
    assert saga_from_rows([]) is None


def test_a_column_without_a_record_field_and_a_field_without_a_column_are_refused() -> None:
    @dataclass(frozen=True)
    class Thing:
        id: str
        size: int

    things = sa.Table(
        "things", sa.MetaData(), sa.Column("id", sa.String), sa.Column("size", sa.Integer)
    )
    assert [f.attr for f in record_fields(Thing, things, "thing", {}, set())] == ["id", "size"]
    more = sa.Table(
        "more",
        sa.MetaData(),
        sa.Column("id", sa.String),
        sa.Column("size", sa.Integer),
        sa.Column("colour", sa.String),
    )
    with pytest.raises(TypeError, match=re.escape("more.colour: Thing has no colour")):
        record_fields(Thing, more, "thing", {}, set())
    fewer = sa.Table("fewer", sa.MetaData(), sa.Column("id", sa.String))
    with pytest.raises(TypeError, match=re.escape("without a column in fewer: {'size'}")):
        record_fields(Thing, fewer, "thing", {}, set())
