"""Finding sagas by what they are about (`--where order_id=o-4711`), on SQLite and PostgreSQL,
through the store, the client, the CLI and the dashboard."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from flask.testing import FlaskClient

from sagaflow.client.saga_client import SagaClient
from sagaflow.client.validation import list_filters
from sagaflow.config import Settings
from sagaflow.core.definitions import Registry, Saga, Step
from sagaflow.core.machine import new_saga
from sagaflow.core.search import FieldMatch, parse_where
from sagaflow.errors import DefinitionError, InvalidSagaInput
from sagaflow.ops.dashboard import create_dashboard
from sagaflow.store.protocol import SagaStore
from tests.acceptance.test_cli import describe, isolated_env, json_of, sagaflow
from tests.integration import test_store
from tests.integration.test_store import NOW, STEPS, Backend

backend = test_store.backend  # the store on each database, a database of this module's own
store = test_store.store

INPUTS: dict[str, dict[str, Any]] = {
    "first": {"order_id": "o-1", "customer": {"id": "c-1"}, "amount": 500, "gift": True},
    "text-amount": {"order_id": "o-2", "customer": {"id": "c-2"}, "amount": "500"},
    "longer-id": {"order_id": "o-10", "gift": False, "note": None},
    "number-id": {"order_id": 1, "customer": "c-1"},
    "true-id": {"order_id": True, "amount": 500.5},
}


@dataclass
class Stored:
    saga_type: str  # this test's own
    ids: dict[str, str]  # name in INPUTS -> saga id


@pytest.fixture
def sagas(store: SagaStore) -> Stored:
    """One saga per input above, created in the order of INPUTS."""
    stored = Stored(f"search-{uuid.uuid4().hex[:8]}", {})
    for n, (name, data) in enumerate(INPUTS.items()):
        saga_id = f"{stored.saga_type}-{n}"
        created = NOW + timedelta(seconds=n)
        assert store.create(new_saga(saga_id, stored.saga_type, data, STEPS, created))
        stored.ids[name] = saga_id
    return stored


def found(store: SagaStore, sagas: Stored, *where: Any, **filters: Any) -> set[str]:
    checked = list_filters({"where": list(where), **filters})
    names = {saga_id: name for name, saga_id in sagas.ids.items()}
    return {names[s.saga_id] for s in store.list_sagas(saga_type=sagas.saga_type, **checked)}


def test_a_field_matches_its_exact_value_only(store: SagaStore, sagas: Stored) -> None:
    assert found(store, sagas, "order_id=o-1") == {"first"}  # not o-10
    assert found(store, sagas, "order_id=o-") == set()


def test_nested_keys_are_reached_with_dots(store: SagaStore, sagas: Stored) -> None:
    assert found(store, sagas, "customer.id=c-1") == {"first"}
    assert found(store, sagas, "customer=c-1") == {"number-id"}  # a text, not the nested object


def test_typed_text_matches_the_number_and_the_text(store: SagaStore, sagas: Stored) -> None:
    assert found(store, sagas, "amount=500") == {"first", "text-amount"}
    assert found(store, sagas, "amount=500.5") == {"true-id"}
    assert found(store, sagas, "order_id=1") == {"number-id"}


def test_booleans_and_null_are_not_confused_with_numbers(store: SagaStore, sagas: Stored) -> None:
    assert found(store, sagas, "order_id=true") == {"true-id"}  # not the saga whose id is 1
    assert found(store, sagas, "gift=true") == {"first"}
    assert found(store, sagas, "gift=false") == {"longer-id"}
    assert found(store, sagas, "note=null") == {"longer-id"}  # present and null, not missing


def test_values_given_in_python_match_exactly(store: SagaStore, sagas: Stored) -> None:
    checked = list_filters({"where": {"amount": 500}})
    assert checked["where"] == [FieldMatch(("amount",), (500,))]
    assert found(store, sagas, FieldMatch(("amount",), (500,))) == {"first"}
    assert found(store, sagas, FieldMatch(("amount",), ("500",))) == {"text-amount"}


def test_several_searches_must_all_hold(store: SagaStore, sagas: Stored) -> None:
    assert found(store, sagas, "amount=500", "customer.id=c-2") == {"text-amount"}
    assert found(store, sagas, "order_id=o-1", "customer.id=c-2") == set()
    assert found(store, sagas, "amount=500", limit=1) == {"text-amount"}  # the newest


def test_postgresql_serves_the_search_from_its_index(backend: Backend) -> None:
    if backend.name != "postgresql":
        pytest.skip("the GIN index is PostgreSQL's")
    statements: list[tuple[str, Any]] = []  # the store's own statement, as it sent it

    def capture(conn: Any, cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        if "sagaflow_sagas" in statement and "@>" in statement:
            statements.append((statement, parameters))

    sa.event.listen(backend.store.engine, "before_cursor_execute", capture)
    try:
        backend.store.list_sagas(where=[parse_where("order_id=o-1")])
    finally:
        sa.event.remove(backend.store.engine, "before_cursor_execute", capture)
    assert len(statements) == 1, statements
    statement, parameters = statements[0]
    with backend.store.engine.connect() as conn:
        conn.exec_driver_sql("SET enable_seqscan = off")  # a tiny table: make the planner show
        plan = "\n".join(r[0] for r in conn.exec_driver_sql(f"EXPLAIN {statement}", parameters))
    assert "ix_sagaflow_sagas_data" in plan, plan


def test_big_integers_and_keys_beyond_ascii(backend: Backend) -> None:
    saga_type = f"wide-{uuid.uuid4().hex[:8]}"
    data = {"big": 99999999999999999999, "clé": "v", "a\\b": "v", "\U000e23c0": "v"}
    assert backend.store.create(new_saga(f"{saga_type}-0", saga_type, data, STEPS, NOW))
    big = backend.store.list_sagas(
        saga_type=saga_type, where=[parse_where("big=99999999999999999999")]
    )
    assert [s.saga_id for s in big] == [f"{saga_type}-0"]
    for key in ("clé", "a\\b", "\U000e23c0"):  # stored JSON-escaped on SQLite: found all the same
        found = backend.store.list_sagas(saga_type=saga_type, where=[FieldMatch((key,), ("v",))])
        assert [s.saga_id for s in found] == [f"{saga_type}-0"], key


@pytest.mark.parametrize(
    ("where", "message"),
    [
        (["order_id"], "a search is KEY=VALUE"),
        (["=o-1"], "a search is KEY=VALUE"),
        (["customer..id=c-1"], "non-empty names joined by dots"),
        (['say"hi"=x'], "without double quotes"),
        (["a.b.c.d.e.f.g.h.i=1"], "one to 8"),
        ("order_id=o-1", "a list of searches"),
        ([f"k{i}=v" for i in range(11)], "at most 10"),
        (["order_id=o\x00"], "NUL"),
        ([42], "a search is KEY=VALUE"),
        ({"amount": [500]}, "not list"),
        ({"amount": float("nan")}, "not a JSON number"),
    ],
)
def test_a_bad_search_is_refused_with_the_reason(where: Any, message: str) -> None:
    with pytest.raises(InvalidSagaInput, match=message):
        list_filters({"where": where})


def test_nan_typed_as_text_stays_text() -> None:
    assert parse_where("amount=NaN").values == ("NaN",)
    assert parse_where("amount=").values == ("",)


# -- keys of a saga type --------------------------------------------------------------------------


def test_a_saga_type_declares_its_keys() -> None:
    steps = [Step("a", "svc.a")]
    registry = Registry([Saga("order", steps=steps, keys=("order_id", "customer.id"))])
    assert registry.keys_of("order") == ("order_id", "customer.id")
    assert registry.keys_of("unknown") == ()
    for keys, message in (
        ("order_id", "must be a tuple"),
        (("order_id", "order_id"), "twice"),
        (("customer..id",), "not a field name"),
    ):
        with pytest.raises(DefinitionError, match=message):
            Saga("order", steps=steps, keys=keys)  # type: ignore[arg-type]


# -- the CLI and the dashboard --------------------------------------------------------------------


@pytest.fixture
def embedded(tmp_path: Path) -> Iterator[tuple[Settings, SagaStore, dict[str, str]]]:
    """An embedded store holding sagas of the example's `order` type (keys: order_id, customer)."""
    settings = Settings(
        home=tmp_path,
        definitions=("workers.definitions",),
        database_url=f"sqlite:///{tmp_path}/s.db",
    )
    client = SagaClient(settings)
    client.store.upgrade()
    ids = {}
    for name, data in INPUTS.items():
        saga_id = f"order-{name}"
        assert client.store.create(new_saga(saga_id, "order", data, STEPS, NOW))
        ids[name] = saga_id
    try:
        yield settings, client.store, ids
    finally:
        client.close()


def test_sagaflow_list_where(embedded: tuple[Settings, SagaStore, dict[str, str]]) -> None:
    settings, _, ids = embedded
    env = isolated_env(settings.home, **settings.to_env())
    result = sagaflow("list", "--where", "amount=500", "--where", "customer.id=c-1", env=env)
    assert result.returncode == 0, describe(result)
    lines = [line for line in result.stdout.splitlines() if "order-" in line]
    assert len(lines) == 1 and ids["first"] in lines[0], describe(result)
    header = next(line for line in result.stdout.splitlines() if "saga id" in line)
    assert "order_id" in header and "customer" in header, describe(result)  # the type's keys
    assert "o-1" in lines[0], describe(result)

    as_json = sagaflow("list", "--where", "order_id=o-10", "--json", env=env)
    assert [s["saga_id"] for s in json_of(as_json)] == [ids["longer-id"]], describe(as_json)

    bad = sagaflow("list", "--where", "order_id", env=env)
    assert bad.returncode == 2, describe(bad)
    assert "--where" in bad.stderr and "a search is KEY=VALUE" in bad.stderr, describe(bad)


@pytest.fixture
def web(embedded: tuple[Settings, SagaStore, dict[str, str]]) -> FlaskClient:
    settings, store, _ = embedded
    return create_dashboard(settings, client=SagaClient(settings, store=store)).test_client()


def test_the_dashboard_api_searches_the_input(
    web: FlaskClient, embedded: tuple[Settings, SagaStore, dict[str, str]]
) -> None:
    _, _, ids = embedded
    answer = web.get("/api/sagas?where=amount=500&where=customer.id=c-2")
    assert answer.status_code == 200, answer.text
    assert [s["saga_id"] for s in answer.json] == [ids["text-amount"]]
    bad = web.get("/api/sagas?where=customer..id=c-1")
    assert bad.status_code == 400 and "non-empty names" in bad.json["error"]["message"], bad.text


def test_the_dashboard_search_box_takes_key_value_terms(
    web: FlaskClient, embedded: tuple[Settings, SagaStore, dict[str, str]]
) -> None:
    _, _, ids = embedded
    page = web.get("/", query_string={"q": "order_id=o-1"})
    assert page.status_code == 200
    assert ids["first"] in page.text and ids["longer-id"] not in page.text
    assert "<th>order_id</th><th>customer</th>" in page.text  # the type's keys as columns
    quoted = web.get("/", query_string={"q": 'customer.id="c-2" amount=500'})
    assert ids["text-amount"] in quoted.text and ids["first"] not in quoted.text
    unbalanced = web.get("/", query_string={"q": 'order_id="o-1'})
    assert unbalanced.status_code == 400
