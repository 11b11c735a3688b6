"""Saga definitions: Step, Saga, SagaOrchestrator, Registry, load_definitions, public surface."""

from __future__ import annotations

import ast
import importlib
import importlib.util
import inspect
import pkgutil
import re
import sys
import uuid
from collections.abc import Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

import sagaflow
from sagaflow import (
    DefinitionError,
    InvalidSagaInput,
    Registry,
    Saga,
    SagaOrchestrator,
    Step,
    UnknownSagaType,
    load_definitions,
)

REPO_ROOT = Path(__file__).resolve().parents[2]

VALID_ORDER = {
    "order_id": "o-1",
    "customer": "c-1",
    "sku": "WIDGET",
    "quantity": 2,
    "amount": 1999,
    "country": "NL",
}


@pytest.fixture
def examples(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """`workers.definitions`, importable from the repository root."""
    monkeypatch.syspath_prepend(str(REPO_ROOT))
    return importlib.import_module("workers.definitions")


def two_steps() -> list[Step]:
    return [Step("a", "svc.a", "svc.undo_a"), Step("b", "svc.b")]


# -- Step -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    ["", " ", "1st", "-x", ".x", "has space", "a/b", "a:b", "ünïcode", "x" * 201, None, 7],
)
def test_step_rejects_bad_names(name: Any) -> None:
    with pytest.raises(DefinitionError, match=r"step name .* is invalid"):
        Step(name, "svc.task")


@pytest.mark.parametrize("name", ["a", "_private", "Reserve_Stock", "v2.charge-card", "x" * 200])
def test_step_accepts_good_names(name: str) -> None:
    assert Step(name, "svc.task").name == name


@pytest.mark.parametrize("action", [None, 42, "", "   ", b"svc.task", ["svc.task"]])
def test_step_action_must_be_a_task_name(action: Any) -> None:
    with pytest.raises(DefinitionError, match="action must be a Celery task name"):
        Step("s", action)


@pytest.mark.parametrize("compensation", [42, "", "  ", b"svc.undo"])
def test_step_compensation_must_be_a_task_name_or_none(compensation: Any) -> None:
    with pytest.raises(DefinitionError, match="compensation must be a Celery task name"):
        Step("s", "svc.do", compensation)


@pytest.mark.parametrize("field", ["queue", "compensation_queue"])
@pytest.mark.parametrize("value", ["", "  ", 3])
def test_step_queues_must_be_non_empty_strings(field: str, value: Any) -> None:
    with pytest.raises(DefinitionError, match=f"{field} must be a non-empty string"):
        Step("s", "svc.do", "svc.undo", **{field: value})


def test_compensate_on_failure_needs_a_compensation() -> None:
    with pytest.raises(DefinitionError, match="compensate_on_failure needs a compensation"):
        Step("s", "svc.do", compensate_on_failure=True)
    step = Step("s", "svc.do", "svc.undo", compensate_on_failure=True)
    assert step.compensate_on_failure


def test_step_is_immutable() -> None:
    step = Step("s", "svc.do")
    with pytest.raises(AttributeError):
        step.action = "svc.other"  # type: ignore[misc]


# -- Saga -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("saga_type", ["", "has space", "9lives", "a/b", "x" * 201, None, 3])
def test_saga_rejects_bad_type_names(saga_type: Any) -> None:
    with pytest.raises(DefinitionError, match=r"saga type .* is invalid"):
        Saga(saga_type, steps=two_steps())


def test_saga_needs_steps() -> None:
    with pytest.raises(DefinitionError, match="has no steps"):
        Saga("empty", steps=[])
    with pytest.raises(DefinitionError, match="has no steps"):
        Saga("empty")


def test_saga_rejects_duplicate_step_names() -> None:
    with pytest.raises(DefinitionError, match="step name 'a' is used twice"):
        Saga("dup", steps=[Step("a", "svc.a"), Step("b", "svc.b"), Step("a", "svc.c")])


@pytest.mark.parametrize("steps", ["ab", b"ab", 5, None])
def test_saga_steps_must_be_a_list(steps: Any) -> None:
    with pytest.raises(DefinitionError, match="steps must be a list of Step"):
        Saga("bad", steps=steps)


def test_saga_steps_must_be_step_objects() -> None:
    with pytest.raises(DefinitionError, match="is not a Step"):
        Saga("bad", steps=[Step("a", "svc.a"), {"name": "b", "action": "svc.b"}])  # type: ignore[list-item]


def test_saga_freezes_its_steps() -> None:
    steps = two_steps()
    saga = Saga("frozen", steps=steps)
    steps.append(Step("c", "svc.c"))
    assert isinstance(saga.steps, tuple)
    assert [s.name for s in saga.steps] == ["a", "b"]
    assert [s.name for s in saga.define_steps({})] == ["a", "b"]


# -- Registry -------------------------------------------------------------------------------------


def test_registering_a_type_twice_fails() -> None:
    registry = Registry([Saga("order", steps=two_steps())])
    with pytest.raises(DefinitionError, match="saga type 'order' is registered twice"):
        registry.register(Saga("order", steps=two_steps()))
    assert len(registry) == 1


def test_registering_the_same_definition_again_is_harmless() -> None:
    saga = Saga("order", steps=two_steps())
    registry = Registry([saga])
    assert registry.register(saga) is saga
    assert registry.get("order") is saga
    assert len(registry) == 1


def test_registering_an_orchestrator_class_instantiates_it(examples: ModuleType) -> None:
    registry = Registry([examples.GiftOrder])
    definition = registry.get("gift_order")
    assert isinstance(definition, examples.GiftOrder)
    with pytest.raises(DefinitionError, match="registered twice"):
        registry.register(Saga("gift_order", steps=two_steps()))


@pytest.mark.parametrize("thing", ["order", 42, object(), Step("a", "svc.a"), dict])
def test_register_rejects_non_definitions(thing: Any) -> None:
    with pytest.raises(DefinitionError, match="neither a Saga nor a SagaOrchestrator"):
        Registry().register(thing)


def test_register_rejects_orchestrator_without_saga_type() -> None:
    class Nameless(SagaOrchestrator):
        def define_steps(self, data: Mapping[str, Any]) -> list[Step]:
            return two_steps()

    with pytest.raises(DefinitionError, match="saga type None is invalid"):
        Registry().register(Nameless)


def test_unknown_type_lists_registered_types() -> None:
    registry = Registry([Saga("order", steps=two_steps()), Saga("refund", steps=two_steps())])
    with pytest.raises(UnknownSagaType) as info:
        registry.get("shipment")
    assert str(info.value) == "unknown saga type 'shipment' (registered: order, refund)"
    with pytest.raises(UnknownSagaType, match="shipment"):
        registry.plan("shipment", {})


def test_unknown_type_in_an_empty_registry() -> None:
    with pytest.raises(UnknownSagaType, match=r"registered: none"):
        Registry().get("order")


def test_registry_introspection() -> None:
    registry = Registry([Saga("zeta", steps=two_steps()), Saga("alpha", steps=two_steps())])
    assert registry.saga_types == ["alpha", "zeta"]
    assert len(registry) == 2
    assert "alpha" in registry
    assert "beta" not in registry


def test_plan_returns_the_steps(examples: ModuleType) -> None:
    registry = Registry([examples.order])
    steps = registry.plan("order", VALID_ORDER)
    assert isinstance(steps, tuple)
    assert [s.name for s in steps] == ["reserve_stock", "charge_payment", "schedule_shipping"]
    assert [s.action for s in steps] == [
        "inventory.reserve",
        "payments.charge",
        "shipping.schedule",
    ]


@pytest.mark.parametrize("data", [None, [], ["order_id"], "order", 3, 1.5, (("a", 1),)])
def test_plan_rejects_non_objects(examples: ModuleType, data: Any) -> None:
    registry = Registry([examples.order])
    with pytest.raises(InvalidSagaInput, match="saga input must be a JSON object, got"):
        registry.plan("order", data)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        ({}, "missing order_id, customer, sku, quantity, amount, country"),
        ({**VALID_ORDER, "quantity": 0}, "quantity must be a positive integer"),
        ({**VALID_ORDER, "amount": "12"}, "amount must be a non-negative integer"),
    ],
)
def test_plan_rejects_input_the_validator_rejects(
    examples: ModuleType, data: dict[str, Any], reason: str
) -> None:
    registry = Registry([examples.order, examples.GiftOrder])
    for saga_type in ("order", "gift_order"):
        with pytest.raises(InvalidSagaInput) as info:
            registry.plan(saga_type, data)
        assert str(info.value).startswith(f"invalid input for saga {saga_type!r}: ")
        assert reason in str(info.value)
        assert isinstance(info.value.__cause__, ValueError)


def test_validator_may_raise_invalid_saga_input() -> None:
    def validate(data: Mapping[str, Any]) -> None:
        raise InvalidSagaInput("no thanks")

    registry = Registry([Saga("picky", steps=two_steps(), validate=validate)])
    with pytest.raises(InvalidSagaInput, match="invalid input for saga 'picky': no thanks"):
        registry.plan("picky", {})


def test_validator_sees_the_input() -> None:
    seen: list[Mapping[str, Any]] = []
    registry = Registry([Saga("watched", steps=two_steps(), validate=seen.append)])
    registry.plan("watched", {"k": "v"})
    assert seen == [{"k": "v"}]


def test_orchestrator_steps_depend_on_input(examples: ModuleType) -> None:
    registry = Registry([examples.GiftOrder])
    paid = registry.plan("gift_order", VALID_ORDER)
    voucher = registry.plan("gift_order", {**VALID_ORDER, "voucher": "V-1"})
    assert [s.name for s in paid] == ["reserve_stock", "charge_payment", "schedule_shipping"]
    assert [s.name for s in voucher] == ["reserve_stock", "schedule_shipping"]
    assert all(isinstance(s, Step) for s in voucher)


def test_orchestrator_steps_are_validated_at_plan_time() -> None:
    class Broken(SagaOrchestrator):
        saga_type = "broken"

        def define_steps(self, data: Mapping[str, Any]) -> list[Step]:
            return [Step("a", "svc.a")] * int(data["copies"])

    registry = Registry([Broken])
    assert len(registry.plan("broken", {"copies": 1})) == 1
    with pytest.raises(DefinitionError, match="has no steps"):
        registry.plan("broken", {"copies": 0})
    with pytest.raises(DefinitionError, match="used twice"):
        registry.plan("broken", {"copies": 2})


def test_orchestrator_base_has_no_steps() -> None:
    with pytest.raises(NotImplementedError):
        SagaOrchestrator().define_steps({})


# -- load_definitions -----------------------------------------------------------------------------


def test_load_definitions_finds_both_forms(examples: ModuleType) -> None:
    registry = load_definitions(["workers.definitions"])
    assert registry.saga_types == ["gift_order", "order"]
    assert registry.get("order") is examples.order
    assert isinstance(registry.get("gift_order"), examples.GiftOrder)
    # Imported names (Saga, SagaOrchestrator) are not definitions.
    assert len(registry) == 2


def test_load_definitions_of_nothing_is_empty() -> None:
    assert len(load_definitions([])) == 0


def test_load_definitions_of_a_missing_module() -> None:
    with pytest.raises(DefinitionError) as info:
        load_definitions(["sagaflow_no_such_module.definitions"])
    message = str(info.value)
    assert message.startswith(
        "cannot import saga definitions module 'sagaflow_no_such_module.definitions': "
    )
    assert "No module named 'sagaflow_no_such_module'" in message
    assert isinstance(info.value.__cause__, ImportError)


def test_load_definitions_skips_orchestrator_classes_imported_from_elsewhere(
    examples: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    name = f"sagaflow_test_defs_{uuid.uuid4().hex}"
    (tmp_path / f"{name}.py").write_text(
        "from sagaflow import Saga, Step\n"
        "from workers.definitions import GiftOrder\n"
        "refund = Saga('refund', steps=[Step('refund', 'payments.refund')])\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        assert load_definitions([name]).saga_types == ["refund"]
        both = load_definitions(["workers.definitions", name])
        assert both.saga_types == ["gift_order", "order", "refund"]
    finally:
        sys.modules.pop(name, None)


def test_load_definitions_accepts_a_single_module_name(examples: ModuleType) -> None:
    registry = load_definitions("workers.definitions")
    assert registry.saga_types == ["gift_order", "order"]


# -- public surface -------------------------------------------------------------------------------

PUBLIC = [
    "AsyncSagaClient",
    "BrokerUnavailable",
    "ConcurrencyConflict",
    "ConfigurationError",
    "DefinitionError",
    "Durability",
    "EffectLog",
    "ErrorInfo",
    "ErrorType",
    "EventPublisher",
    "HistoryEvent",
    "InvalidOperation",
    "InvalidSagaInput",
    "NonRetryable",
    "OnTimeout",
    "OutboxUnavailable",
    "Phase",
    "Registry",
    "Retry",
    "Saga",
    "SagaClient",
    "SagaNotFound",
    "SagaOrchestrator",
    "SagaRecord",
    "SagaState",
    "SagaStepTask",
    "SagaTimeout",
    "SagaflowError",
    "Settings",
    "StartReceipt",
    "Step",
    "StepRecord",
    "StepStatus",
    "StoreNotMigrated",
    "StoreUnavailable",
    "UnknownSagaType",
    "__version__",
    "create_orchestrator_app",
    "create_service_app",
    "effect_log_table",
    "install_service_support",
    "load_definitions",
]


def test_public_surface_is_pinned() -> None:
    assert sagaflow.__all__ == PUBLIC
    assert sorted(PUBLIC) == PUBLIC


def readme_names() -> set[str]:
    """Names the README imports from sagaflow or its subpackages, names as `sagaflow.Name`, and
    the classes of the package it names in backquotes."""
    text = (REPO_ROOT / "README.md").read_text()
    # The Layout table names internal modules and classes: it is a map, not an API.
    before, _, rest = text.partition("\n## Layout\n")
    text = before + "\n## " + rest.split("\n## ", 1)[-1]
    names = set()
    for imported in re.findall(r"^from sagaflow[\w.]* import (.+)$", text, re.M):
        names.update(n.strip() for n in imported.split("#")[0].split(","))
    quoted = {q.split(".")[0] for q in re.findall(r"`([A-Z]\w*)", text)}
    classes = {
        name
        for module in package_modules()
        for name, value in vars(module).items()
        if inspect.isclass(value) and value.__module__.startswith("sagaflow.")
    }
    names |= quoted & classes
    for attribute in re.findall(r"`sagaflow\.(\w+)(?![\w.])", text):
        # `celery -A sagaflow.worker` is the orchestrator's app; `sagaflow.events` an exchange;
        # `sagaflow.example` the example services' package.
        if attribute not in ("worker", "events", "example"):
            names.add(attribute)
    return names


def test_every_name_the_readme_uses_is_public() -> None:
    names = readme_names()
    assert {"Saga", "SagaClient", "Durability", "OutboxUnavailable", "NonRetryable"} <= names
    assert names - set(PUBLIC) == set()


def test_every_public_name_is_importable() -> None:
    namespace: dict[str, Any] = {}
    exec("from sagaflow import *", namespace)
    for name in PUBLIC:
        assert name in namespace, name
        assert namespace[name] is getattr(sagaflow, name)


# Modules that act when imported (run the CLI, build the orchestrator app, run migrations): read,
# not imported, and they must define no class.
ACTS_ON_IMPORT = {"sagaflow.__main__", "sagaflow.worker", "sagaflow.store.migrations.env"}


def package_modules() -> list[ModuleType]:
    names = [m.name for m in pkgutil.walk_packages(sagaflow.__path__, "sagaflow.")]
    assert set(names) >= ACTS_ON_IMPORT
    for name in ACTS_ON_IMPORT:
        source = Path(importlib.util.find_spec(name).origin or "").read_text()  # type: ignore[union-attr]
        assert not any(isinstance(n, ast.ClassDef) for n in ast.walk(ast.parse(source))), name
    return [importlib.import_module(n) for n in sorted(set(names) - ACTS_ON_IMPORT)]


def test_every_exception_of_the_package_is_a_sagaflow_error_defined_in_errors() -> None:
    errors = {
        value
        for module in package_modules()
        for value in vars(module).values()
        if inspect.isclass(value)
        and issubclass(value, Exception)
        and value.__module__.split(".")[0] == "sagaflow"
    }
    assert len(errors) >= 18  # every module was imported, not just the first few
    assert {e for e in errors if not issubclass(e, sagaflow.SagaflowError)} == set()
    assert {e.__qualname__ for e in errors if e.__module__ != "sagaflow.errors"} == set()
    assert sagaflow.NonRetryable("x", details={"code": 51}).details == {"code": 51}


def test_errors_keep_their_old_import_paths() -> None:
    from sagaflow.client import BrokerUnavailable, InvalidOperation
    from sagaflow.client.saga_client import OutboxUnavailable
    from sagaflow.service import NonRetryable
    from sagaflow.service.tasks import NonRetryable as TasksNonRetryable

    assert BrokerUnavailable is sagaflow.errors.BrokerUnavailable
    assert InvalidOperation is sagaflow.errors.InvalidOperation
    assert OutboxUnavailable is sagaflow.errors.OutboxUnavailable
    assert NonRetryable is TasksNonRetryable is sagaflow.errors.NonRetryable


# -- pivot and retriable steps ---------------------------------------------------------------------


def comp(name: str) -> Step:
    return Step(name, "svc.do", "svc.undo")


def pivot(name: str = "p") -> Step:
    return Step(name, "svc.do", pivot=True)


def retriable(name: str) -> Step:
    return Step(name, "svc.do", retriable=True)


def test_compensatable_then_pivot_then_retriable_is_accepted() -> None:
    saga = Saga("ok", [comp("a"), pivot(), retriable("r1"), retriable("r2")])
    assert [(s.pivot, s.retriable) for s in saga.steps] == [
        (False, False),
        (True, False),
        (False, True),
        (False, True),
    ]
    Saga("pivot-last", [comp("a"), pivot()])
    Saga("pivot-first", [pivot(), retriable("r")])
    Saga("no-pivot", [comp("a"), retriable("r")])  # retriable steps may end a saga
    Saga("only-retriable", [retriable("r")])


@pytest.mark.parametrize(
    ("steps", "message"),
    [
        ([pivot("p1"), pivot("p2")], r"2 pivot steps \(p1, p2\): at most one"),
        ([pivot(), comp("a")], r"step 'a' comes after the pivot 'p' and must be retriable"),
        ([retriable("r"), pivot()], r"retriable step 'r' comes before the pivot 'p'"),
        ([retriable("r"), comp("a")], r"step 'a' comes after the retriable step 'r'"),
        (
            [comp("a"), pivot(), retriable("r"), Step("b", "svc.do")],
            r"step 'b' comes after the pivot 'p' and must be retriable",
        ),
    ],
)
def test_definitions_that_break_the_pivot_rules_are_refused(
    steps: list[Step], message: str
) -> None:
    with pytest.raises(DefinitionError, match=message):
        Saga("bad", steps)


def test_the_pivot_rules_are_checked_for_orchestrator_subclasses_too() -> None:
    class Bad(SagaOrchestrator):
        saga_type = "bad_dynamic"

        def define_steps(self, data: Mapping[str, Any]) -> list[Step]:
            return [pivot(), comp("late")]

    registry = Registry([Bad])
    with pytest.raises(DefinitionError, match="must be retriable"):
        registry.plan("bad_dynamic", {})


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"pivot": True, "compensation": "svc.undo"}, "is the pivot: it is never undone"),
        ({"retriable": True, "compensation": "svc.undo"}, "is retriable: .* never compensated"),
        ({"pivot": True, "retriable": True}, "cannot be both the pivot and retriable"),
    ],
)
def test_pivot_and_retriable_steps_take_no_compensation(
    kwargs: dict[str, Any], message: str
) -> None:
    with pytest.raises(DefinitionError, match=f"step 's' {message}"):
        Step("s", "svc.do", **kwargs)
