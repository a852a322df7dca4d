"""Statements generated once per database from the models, then run as cached SQL.

Building SQL through peewee's query builder costs tens of microseconds per call;
running the same SQL with bound parameters costs a few. So every statement the
store runs is written as a peewee query over the models, rendered once with the
store's own database (its quoting and parameter style) and kept with the names of
its parameters in order and the names of its result columns.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast

from peewee import ColumnBase, Context, Database, Field, Node

from .models import BaseModel


class _Marker:
    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name


class Slot(ColumnBase):
    """A named parameter in a query compiled once and bound at each call."""

    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name

    def __sql__(self, ctx: Context) -> Context:
        # converter=False: the value is bound later, already checked by validation.
        return cast(Context, ctx.value(_Marker(self.name), converter=False))


@dataclass(frozen=True)
class Statement:
    """SQL text, its parameter names in binding order and its result column names."""

    sql: str
    slots: tuple[str, ...]
    columns: tuple[str, ...] = ()

    def bind(self, values: dict[str, Any]) -> tuple[Any, ...]:
        """Return the parameter tuple for ``values`` (a name -> value mapping)."""
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
    for p in params:
        if not isinstance(p, _Marker):
            raise TypeError(f"statement has a literal parameter {p!r}; use Slot: {sql}")
        slots.append(p.name)
    statement = Statement(sql, tuple(slots), columns)
    if expect is not None and statement.slots != expect:
        raise RuntimeError(f"slot order {statement.slots} != expected {expect}: {sql}")
    return statement
