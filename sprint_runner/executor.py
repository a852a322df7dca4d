"""Running statements on the right connection, one class per backend.

:class:`Executor` is what the store and the migrations talk to: statements in, rows
(as dicts) and counts out, transactions with the write lock taken first, and driver
errors turned into peewee's (and the store's) error classes. Everything a backend does
its own way lives in its subclass: :class:`~sprint_runner.sqlite_executor.SqliteExecutor`
(one persistent connection per thread, ``BEGIN IMMEDIATE`` retried while busy) and
:class:`~sprint_runner.server_executor.PostgresExecutor` /
:class:`~sprint_runner.server_executor.MySQLExecutor` (pooled connections, dead ones
discarded, an advisory or named write lock). :func:`executor_for` picks the class from
the peewee database, as ``playhouse.migrate`` picks a ``SchemaMigrator``.
"""
from __future__ import annotations

import itertools
import logging
import operator
import os
import threading
import weakref
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import Any, ClassVar, TypeVar

import peewee

from .connect import describe
from .errors import IntegrityError
from .statements import Statement

logger = logging.getLogger("sprint_runner")

T = TypeVar("T")
Row = dict[str, Any]

DEFAULT_LOCK_RETRIES = 5
BACKOFF_BASE = 0.02
BACKOFF_CAP = 1.0
MIGRATION_LOCK = "sprint_runner:migrate"
WRITE_LOCK = "sprint_runner:write"
_PEEWEE_ERRORS: dict[str, type[Exception]] = getattr(peewee, "EXCEPTIONS")  # name -> class

# What a statement returns, taken from its cursor (prebuilt: hot paths make no lambdas).
ROWS = operator.methodcaller("fetchall")
FIRST_ROW = operator.methodcaller("fetchone")
ROWCOUNT = operator.attrgetter("rowcount")
LASTROWID = operator.attrgetter("lastrowid")

_executors: weakref.WeakSet[Executor] = weakref.WeakSet()
_fork_hook_lock = threading.Lock()
_fork_hook_installed = False


def _after_fork_in_child() -> None:
    # A connection inherited across fork() belongs to the parent: drop it unclosed
    # (closing could release the parent's locks) and let the child connect anew.
    for executor in list(_executors):
        executor.forget_inherited_connections()


def _install_fork_hook() -> None:
    global _fork_hook_installed
    with _fork_hook_lock:
        if not _fork_hook_installed and hasattr(os, "register_at_fork"):
            os.register_at_fork(after_in_child=_after_fork_in_child)
            _fork_hook_installed = True


def first_line(exc: BaseException) -> str:
    """Return the first line of an error's message (its class name if it has none)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _on_cursor(conn: Any, call: str, sql: str, params: Any, result: Callable[[Any], T]) -> T:
    cursor = conn.cursor()
    try:
        getattr(cursor, call)(sql, params)
        return result(cursor)
    finally:
        cursor.close()


def run(conn: Any, sql: str, params: Any, result: Callable[[Any], T]) -> T:
    """Run one statement on a new cursor of ``conn``; return ``result(cursor)``."""
    return _on_cursor(conn, "execute", sql, params, result)


def run_many(conn: Any, sql: str, rows: Any, result: Callable[[Any], T]) -> T:
    """Run one statement for many parameter rows; return ``result(cursor)``."""
    return _on_cursor(conn, "executemany", sql, rows, result)


def chunks(rows: Sequence[Sequence[Any]]) -> Iterator[tuple[int, list[Any]]]:
    """Yield ``(n, values)``: ``rows`` in runs of :func:`~sprint_runner.events.split`'s
    sizes, each run's values flattened (the parameters of an ``n``-row INSERT)."""
    from .events import split

    width = len(rows[0]) if rows else 0
    values = list(itertools.chain.from_iterable(rows))
    start = 0
    for size in split(len(rows)):
        yield size, values[start * width:(start + size) * width]
        start += size


def nothing(cursor: Any) -> None:
    """A statement's result when the caller wants none."""
    return None


def translate(exc: BaseException) -> BaseException:
    """Return the store's error for a driver error (IntegrityError, else peewee's class)."""
    if isinstance(exc, peewee.PeeweeException):
        return exc
    for cls in type(exc).__mro__:
        if cls.__name__ in ("IntegrityError", "IntegrityConstraintViolationError"):
            return IntegrityError(*exc.args)
        mapped = _PEEWEE_ERRORS.get(cls.__name__)
        if mapped is not None:
            return mapped(*exc.args)
    return exc


class Executor:
    """Runs SQL for one store on its database, the way its backend needs.

    Subclasses supply the connection handling (``connect``, ``session``), the three
    primitives (``fetchall``, ``execute``, ``insert_id``), ``executemany`` and the
    transactions; this base turns compiled :class:`Statement` objects into rows.
    """

    backend: ClassVar[str]
    """``"sqlite"``, ``"postgresql"`` or ``"mysql"``."""
    ids_commit_in_order: ClassVar[bool] = True
    """Whether every id below a visible row has committed or never will (one writer at a
    time, as on SQLite). When False, an id handed out before commit can still appear below
    a visible one, and the tail asks :meth:`open_writers` and :meth:`gap_settled`."""

    def __init__(self, database: peewee.Database, *, busy_timeout: float = 30.0,
                 lock_retries: int = DEFAULT_LOCK_RETRIES) -> None:
        if isinstance(lock_retries, bool) or not isinstance(lock_retries, int) or lock_retries < 0:
            raise ValueError(f"lock_retries must be an int >= 0, got {lock_retries!r}")
        self.database = database
        self.location = describe(database)
        self.lock_retries = lock_retries
        self.busy_timeout = busy_timeout
        # peewee's per-thread connection state; reading it directly keeps hot paths short.
        self._state: Any = database._state  # type: ignore[attr-defined]
        _executors.add(self)
        _install_fork_hook()

    # -- connections (per backend) ---------------------------------------------------

    def connect(self) -> Any:
        """Open this thread's connection if it is closed; return it."""
        raise NotImplementedError

    def session(self) -> AbstractContextManager[Any]:
        """Yield this thread's connection for the block."""
        raise NotImplementedError

    def close(self) -> None:
        """Close this thread's connection."""
        if not self.database.is_closed() and not self.database.in_transaction():
            self.database.close()

    def forget_inherited_connections(self) -> None:
        """In a forked child: forget the parent's connections without closing them."""
        self._state.reset()

    # -- errors (per backend) ----------------------------------------------------------

    def storage_full(self, exc: BaseException) -> BaseException | None:
        """Return :class:`~sprint_runner.errors.StorageFull` if ``exc`` is the backend
        reporting its storage full, else None."""
        return None

    def error_for(self, exc: BaseException) -> BaseException:
        """Return the store's error for a driver error: StorageFull, IntegrityError, else
        peewee's class."""
        full = self.storage_full(exc)
        return full if full is not None else translate(exc)

    # -- primitives (per backend) ------------------------------------------------------

    def fetchall(self, sql: str, params: Sequence[Any] = ()) -> Sequence[Sequence[Any]]:
        """Run a query and return all its rows as tuples."""
        raise NotImplementedError

    def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Run a write statement and return the number of rows it changed."""
        raise NotImplementedError

    def insert_id(self, sql: str, params: Sequence[Any]) -> int:
        """Run an INSERT of one row and return its id."""
        raise NotImplementedError

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        """Run one statement for many parameter rows (inside the caller's transaction)."""
        raise NotImplementedError

    def transaction(self, *, lock: str = WRITE_LOCK) -> AbstractContextManager[None]:
        """Run the block atomically, the write lock taken first; nested blocks are savepoints."""
        raise NotImplementedError

    def snapshot(self) -> AbstractContextManager[None]:
        """Read several statements from one consistent snapshot (no write lock taken)."""
        raise NotImplementedError

    def named_rows(self, conn: Any) -> AbstractContextManager[Any]:
        """Yield ``conn`` with rows addressable by column name, for ``get_connection``."""
        raise NotImplementedError

    # -- statements -------------------------------------------------------------------

    def one(self, statement: Statement, params: Sequence[Any] = ()) -> Row | None:
        """Return the statement's first row as a dict of its columns, or None."""
        rows = self.fetchall(statement.sql, statement.complete(params))
        return dict(zip(statement.columns, rows[0], strict=True)) if rows else None

    def all(self, statement: Statement, params: Sequence[Any] = ()) -> list[Row]:
        """Return every row of the statement as a dict of its columns."""
        columns = statement.columns
        return [dict(zip(columns, row, strict=True))
                for row in self.fetchall(statement.sql, statement.complete(params))]

    def column(self, statement: Statement, params: Sequence[Any] = ()) -> list[Any]:
        """Return the first value of every row of the statement."""
        return [row[0] for row in self.fetchall(statement.sql, statement.complete(params))]

    def scalar(self, statement: Statement, params: Sequence[Any] = ()) -> int:
        """Return the single integer the statement selects (a COUNT, say)."""
        return int(self.fetchall(statement.sql, statement.complete(params))[0][0])

    def insert(self, statement: Statement, params: Sequence[Any] = ()) -> int:
        """Run a one-row INSERT statement and return the new row's id."""
        return self.insert_id(statement.sql, statement.complete(params))

    def rowcount(self, statement: Statement, params: Sequence[Any] = ()) -> int:
        """Run a write statement and return the number of rows it changed."""
        return self.execute(statement.sql, statement.complete(params))

    def insert_rows(self, one: Statement, many: Callable[[int], Statement],
                    rows: Sequence[Sequence[Any]]) -> list[int]:
        """Insert ``rows`` (each the slots of the one-row INSERT ``one``) in order, inside
        the caller's transaction; return their ids, in order. ``many(n)`` is the INSERT
        of ``n`` rows, with ``RETURNING`` where the database has it. This base runs one
        INSERT per row; a backend that can tell a multi-row INSERT's ids runs fewer."""
        return [self.insert(one, row) for row in rows]

    def many(self, statement: Statement, rows: Iterable[Sequence[Any]]) -> None:
        """Run a statement once per parameter row."""
        self.executemany(statement.sql, rows)

    def index_hint(self, index: str) -> str:
        """Return the SQL that, after a table in FROM, makes the planner use ``index``."""
        return ""

    # -- the tail's gaps (see sprint_runner.tail) ---------------------------------------

    def open_writers(self) -> frozenset[Any] | None:
        """Return the other transactions now open that could still commit an event (None
        if the backend cannot tell: every gap is then held for ``gap_timeout``)."""
        return frozenset()

    def gap_settled(self, probe: Statement, first: int, last: int,
                    writers_then: frozenset[Any] | None,
                    writers_now: frozenset[Any] | None) -> bool:
        """Return whether ids ``first``..``last``, missing below a visible row, can no
        longer commit. ``writers_then`` were open when the gap was first seen, after the
        read that saw it; ``writers_now`` are open now (both from :meth:`open_writers`);
        ``probe`` selects the gap's ids. Rows that committed before this call are read
        again by the caller, so "settled" only needs every writer that was in flight at
        the first sight to have ended."""
        return True

    def prefers_executemany(self, rows: int) -> bool:
        """Whether ``rows`` rows go faster through executemany than one multi-row INSERT."""
        return False

    # -- whole operations ----------------------------------------------------------

    def retrying(self, operation: Callable[[], T], attempts: int = 5) -> T:
        """Run a whole operation of the store's own (a server retries it on a deadlock)."""
        return operation()

    def file_copier(self) -> Callable[[str], None] | None:
        """Return how to copy the database file to a path, or None (no file to copy)."""
        return None

    def integrity_problems(self) -> list[str]:
        """Return what the database reports wrong with itself (servers enforce it all)."""
        return []

    def storage_info(self) -> dict[str, Any]:
        """Return where the data lives (and, for a file, its sizes)."""
        return {"backend": self.backend, "location": self.location}

    # -- migrations -------------------------------------------------------------------

    def migration_session(self) -> AbstractContextManager[None]:
        """Wrap a whole migration run (SQLite turns foreign keys off around it)."""
        return nullcontext()

    def migration_step(self) -> AbstractContextManager[Any]:
        """Wrap one migration step so that it is undone if it fails."""
        return self.database.atomic()

    def before_migrating(self, version: int, has_data: bool) -> None:
        """Prepare a database holding data at ``version`` for its migrations."""

    def foreign_key_violations(self) -> list[Any]:
        """Return rows breaking foreign keys after a step (servers refuse them outright)."""
        return []


def executor_for(database: peewee.Database, *, busy_timeout: float = 30.0,
                 lock_retries: int = DEFAULT_LOCK_RETRIES) -> Executor:
    """Return the executor class for ``database``'s backend, built on it."""
    from .server_executor import MySQLExecutor, PostgresExecutor
    from .sqlite_executor import SqliteExecutor

    classes: tuple[tuple[type[peewee.Database], type[Executor]], ...] = (
        (peewee.SqliteDatabase, SqliteExecutor),
        (peewee.PostgresqlDatabase, PostgresExecutor),
        (peewee.MySQLDatabase, MySQLExecutor),
    )
    for database_class, executor_class in classes:
        if isinstance(database, database_class):
            return executor_class(database, busy_timeout=busy_timeout, lock_retries=lock_retries)
    raise TypeError(f"unsupported database {type(database).__name__}: "
                    "use SQLite, PostgreSQL or MySQL/MariaDB")
