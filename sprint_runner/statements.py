"""Statements generated once per database from the models, then run as cached SQL.

Building SQL through peewee's query builder costs tens of microseconds per call;
running the same SQL with bound parameters costs a few. So every statement the
store runs is written as a peewee query over the models, rendered once with the
store's own database (its quoting and parameter style) and kept with the names of
its parameters in order, the constants written into it, and the names of its result
columns.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

from peewee import ColumnBase, Context, Database, Field, Node

from .models import BaseModel


class _Marker:
    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name


class _Constant:
    __slots__ = ("value",)

    def __init__(self, value: object) -> None:
        self.value = value


class Slot(ColumnBase):
    """A named parameter in a query compiled once and bound at each call."""

    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name

    def __sql__(self, ctx: Context) -> Context:
        # converter=False: the value is bound later, already checked by validation.
        return cast(Context, ctx.value(_Marker(self.name), converter=False))


class Fixed(ColumnBase):
    """A constant of the query (``Batch.status == Fixed("running")``), bound with the
    statement: callers pass only the slots."""

    def __init__(self, value: object) -> None:
        super().__init__()
        self.value = value

    def __sql__(self, ctx: Context) -> Context:
        return cast(Context, ctx.value(_Constant(self.value), converter=False))


@dataclass(frozen=True)
class Statement:
    """SQL text, its parameter names in binding order and its result column names.

    ``template`` holds, per parameter of the SQL, either the index of a slot in the
    caller's parameters or a constant; it is empty when the SQL has no constants (the
    caller's parameters are then bound as they are).
    """

    sql: str
    slots: tuple[str, ...]
    columns: tuple[str, ...] = ()
    template: tuple[tuple[bool, Any], ...] = ()

    def complete(self, params: Sequence[Any]) -> Sequence[Any]:
        """Return the full parameters for the slots' values ``params`` (constants added)."""
        if not self.template:
            return params
        return tuple(params[v] if is_slot else v for is_slot, v in self.template)

    def bind(self, values: dict[str, Any]) -> tuple[Any, ...]:
        """Return the slots' values, in order, from ``values`` (a name -> value mapping)."""
        return tuple(values[name] for name in self.slots)


def columns_of(model: type[BaseModel]) -> tuple[str, ...]:
    """Return the model's column names in table order (the keys of its dicts)."""
    return tuple(f.column_name for f in model._meta.sorted_fields)


def fields_of(model: type[BaseModel]) -> tuple[Field, ...]:
    """Return the model's fields in table order."""
    return tuple(model._meta.sorted_fields)


def compile_query(database: Database, query: Node, columns: tuple[str, ...] = (),
                  expect: tuple[str, ...] | None = None) -> Statement:
    """Render ``query`` for ``database`` into a :class:`Statement`.

    Every parameter must come from a :class:`Slot`; ``expect`` pins the slot order
    the caller binds positionally, so a change in peewee's rendering fails loudly
    at compile time instead of binding values to the wrong columns.
    """
    sql, params = database.get_sql_context().sql(query).query()
    slots: list[str] = []
    template: list[tuple[bool, Any]] = []
    for p in params:
        if isinstance(p, _Constant):
            template.append((False, p.value))
        elif isinstance(p, _Marker):
            template.append((True, len(slots)))
            slots.append(p.name)
        else:
            raise TypeError(f"statement has a literal parameter {p!r}; use Slot or Fixed: {sql}")
    constants = any(not is_slot for is_slot, _ in template)
    statement = Statement(sql, tuple(slots), columns, tuple(template) if constants else ())
    if expect is not None and statement.slots != expect:
        raise RuntimeError(f"slot order {statement.slots} != expected {expect}: {sql}")
    return statement
