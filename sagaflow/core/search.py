"""Finding sagas by what they are about: a field of the saga's input equal to a value.

`order_id=o-4711` or `customer.id=c-1` (nested keys with dots). Typed from a command line, the
value is text, but the input may hold a number or a boolean: `amount=500` matches 500 and "500".
Given in Python, the value matches as given.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from sagaflow.errors import DefinitionError, InvalidSagaInput

Scalar = str | int | float | bool | None
MAX_MATCHES = 10
MAX_PATH_DEPTH = 8
WHERE_FORM = "KEY=VALUE (nested keys with dots: customer.id=c-1)"


@dataclass(frozen=True)
class FieldMatch:
    """Sagas whose input holds one of `values` at `path` (a key, then keys inside it)."""

    path: tuple[str, ...]
    values: tuple[Scalar, ...]

    def __post_init__(self) -> None:
        if not self.path or len(self.path) > MAX_PATH_DEPTH or not self._names_ok():
            raise InvalidSagaInput(
                f"a search key is one to {MAX_PATH_DEPTH} non-empty names joined by dots, "
                f"without double quotes, got {self.key!r}"
            )
        if not self.values:
            raise InvalidSagaInput(f"search on {self.key!r} names no value")
        for value in self.values:
            if isinstance(value, float) and not math.isfinite(value):
                raise InvalidSagaInput(f"search on {self.key!r}: {value} is not a JSON number")
            if not isinstance(value, (str, int, float, bool)) and value is not None:
                raise InvalidSagaInput(
                    f"search on {self.key!r}: a value is text, a number, true, false or null, "
                    f"not {type(value).__name__}"
                )

    def _names_ok(self) -> bool:
        # No double quotes: SQLite's JSON paths cannot name such a key.
        return all(isinstance(n, str) and n.strip() and '"' not in n for n in self.path)

    @property
    def key(self) -> str:
        return ".".join(map(str, self.path))

    def nested(self, value: Scalar) -> dict[str, Any]:
        """The smallest input that holds `value` at this path: {"customer": {"id": "c-1"}}."""
        document: Any = value
        for name in reversed(self.path):
            document = {name: document}
        assert isinstance(document, dict)
        return document


def parse_where(expression: str) -> FieldMatch:
    """`key=value` as typed: the value as text and, if it spells a JSON number, true, false or
    null, as that too."""
    key, equals, text = expression.partition("=")
    if not equals or not key.strip():
        raise InvalidSagaInput(f"a search is {WHERE_FORM}, got {expression!r:.80}")
    values: list[Scalar] = [text]
    try:
        parsed = json.loads(text)
    except ValueError:
        parsed = text
    if isinstance(parsed, float) and not math.isfinite(parsed):
        parsed = text  # NaN, Infinity: not JSON values a saga's input can hold
    if parsed != text and (parsed is None or isinstance(parsed, (int, float, bool))):
        values.append(parsed)
    return FieldMatch(tuple(name.strip() for name in key.split(".")), tuple(values))


def field_matches(where: Iterable[str | FieldMatch] | Mapping[str, Any] | None) -> list[FieldMatch]:
    """Searches as a caller gives them: `key=value` texts, FieldMatches, or a mapping from keys
    (dotted for nested ones) to exact values. Several all have to hold."""
    if where is None:
        return []
    if isinstance(where, str):
        raise InvalidSagaInput(f"where takes a list of searches, each {WHERE_FORM}")
    if isinstance(where, Mapping):
        matches = [FieldMatch(tuple(str(k).split(".")), (v,)) for k, v in where.items()]
    else:
        matches = [m if isinstance(m, FieldMatch) else _parse_item(m) for m in where]
    if len(matches) > MAX_MATCHES:
        raise InvalidSagaInput(f"at most {MAX_MATCHES} searches at once, got {len(matches)}")
    return matches


def _parse_item(item: object) -> FieldMatch:
    if not isinstance(item, str):
        raise InvalidSagaInput(f"a search is {WHERE_FORM}, got {item!r}")
    return parse_where(item)


def check_keys(owner: str, keys: object) -> tuple[str, ...]:
    """A saga type's key fields (what its sagas are about), each a dotted path into the input."""
    if isinstance(keys, str) or not isinstance(keys, (tuple, list)):
        raise DefinitionError(f"{owner}: keys must be a tuple of input field names, got {keys!r}")
    for key in keys:
        if not isinstance(key, str) or not all(key.split(".")):
            raise DefinitionError(f"{owner}: key {key!r} is not a field name (nested with dots)")
    if len(set(keys)) != len(keys):
        raise DefinitionError(f"{owner}: keys {tuple(keys)!r} name a field twice")
    return tuple(keys)


def key_value(data: Mapping[str, Any] | None, key: str) -> Any:
    """The input's value at a dotted key, None if it has none."""
    value: Any = data
    for name in key.split("."):
        if not isinstance(value, Mapping) or name not in value:
            return None
        value = value[name]
    return value
