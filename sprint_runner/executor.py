"""Running statements on the right connection: per-thread SQLite connections,
pooled server connections, the write lock and its bounded retries, and driver
errors turned into peewee's (and the store's) error classes.
"""
from __future__ import annotations

import logging
import operator
import os
import random
import sys
import threading
import time
import weakref
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar, cast

import peewee
from playhouse.pool import PooledDatabase

from .connect import backend_of, describe
from .errors import IntegrityError, LockTimeout

logger = logging.getLogger("sprint_runner")

T = TypeVar("T")

DEFAULT_LOCK_RETRIES = 5
_BACKOFF_BASE = 0.02
_BACKOFF_CAP = 1.0
_SQLITE_BUSY_CODES = (5, 6)  # SQLITE_BUSY, SQLITE_LOCKED (and their extended codes' low byte)
_RETRYABLE_SERVER_CODES = {"40001", "40P01", 1213, 1205}  # serialization, deadlock, lock wait
_MIGRATION_LOCK = "sprint_runner:migrate"
_PEEWEE_ERRORS: dict[str, type[Exception]] = getattr(peewee, "EXCEPTIONS")  # name -> class
_WRITE_LOCK = "sprint_runner:write"

# What a statement returns, taken from its cursor (prebuilt: hot paths make no lambdas).
_ROWS = operator.methodcaller("fetchall")
_ROWCOUNT = operator.attrgetter("rowcount")
_LASTROWID = operator.attrgetter("lastrowid")


def _RETURNED_ID(cursor: Any) -> Any:  # noqa: N802 - named like its siblings
    return cursor.fetchone()[0]

_executors: weakref.WeakSet[Executor] = weakref.WeakSet()
_fork_hook_lock = threading.Lock()
_fork_hook_installed = False


def _after_fork_in_child() -> None:
    # A connection inherited across fork() belongs to the parent: drop it unclosed
    # (closing could release the parent's locks) and let the child connect anew.
    for executor in list(_executors):
        db = executor.database
        executor._state.reset()
        if isinstance(db, PooledDatabase):
            db._connections = []
            db._in_use = {}


def _install_fork_hook() -> None:
    global _fork_hook_installed
    with _fork_hook_lock:
        if not _fork_hook_installed and hasattr(os, "register_at_fork"):
            os.register_at_fork(after_in_child=_after_fork_in_child)
            _fork_hook_installed = True


def is_busy(exc: BaseException) -> bool:
    """Return True if ``exc`` is SQLite reporting that another connection holds a lock."""
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None and code & 0xFF in _SQLITE_BUSY_CODES:
        return True
    text = str(exc).lower()
    return "database is locked" in text or "database is busy" in text or "table is locked" in text


def _server_code(exc: BaseException) -> object:
    for candidate in (exc, exc.__cause__, exc.__context__):
        if candidate is None:
            continue
        code = getattr(candidate, "pgcode", None)
        if code is None and candidate.args and isinstance(candidate.args[0], int):
            code = candidate.args[0]
        if code is not None:
            return code
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
    """Runs SQL for one store on its database, the way its backend needs."""

    def __init__(self, database: peewee.Database, *, busy_timeout: float = 30.0,
                 lock_retries: int = DEFAULT_LOCK_RETRIES) -> None:
        if isinstance(lock_retries, bool) or not isinstance(lock_retries, int) or lock_retries < 0:
            raise ValueError(f"lock_retries must be an int >= 0, got {lock_retries!r}")
        self.database = database
        self.backend = backend_of(database)
        self.location = describe(database)
        self.lock_retries = lock_retries
        self.busy_timeout = busy_timeout
        self.returning = bool(database.returning_clause)
        # peewee's per-thread connection state; reading it directly keeps hot paths short.
        self._state: Any = database._state  # type: ignore[attr-defined]
        self._sqlite = self.backend == "sqlite"
        _executors.add(self)
        _install_fork_hook()

    # -- connections ---------------------------------------------------------------

    def connect(self) -> Any:
        """Open this thread's connection if it is closed; return it."""
        if self._sqlite:
            # The first connection switches a new file to WAL, which needs the file to
            # itself; SQLite reports busy there at once instead of waiting out
            # busy_timeout, so processes opening a new file together retry here.
            self._retry_locked(lambda: self.database.connect(reuse_if_open=True))
            return self._state.conn
        try:
            self.database.connect(reuse_if_open=True)
        except Exception as exc:
            raise translate(exc) from exc
        return self._state.conn

    @contextmanager
    def session(self) -> Iterator[Any]:
        """Yield this thread's connection for the block.

        SQLite keeps one persistent connection per thread. A server connection is
        checked out of the pool for the block and returned at its end, unless the
        thread already holds one (inside a transaction), so threads that come and
        go never strand pooled connections.
        """
        if self._sqlite or not self.database.is_closed():
            yield self._state.conn or self.connect()
            return
        conn = self.connect()
        try:
            yield conn
        finally:
            if not self.database.in_transaction():
                self.database.close()

    def close(self) -> None:
        """Close this thread's connection (and, for a pool, every idle one)."""
        if not self.database.is_closed() and not self.database.in_transaction():
            self.database.close()
        if isinstance(self.database, PooledDatabase):
            self.database.close_idle()

    # -- statements ----------------------------------------------------------------

    # Each SQLite fast path runs inline (a point read costs ~5 us; another call frame
    # shows); what happens when it fails lives once, in _sqlite_failed.

    def fetchall(self, sql: str, params: Sequence[Any] = ()) -> Sequence[Sequence[Any]]:
        """Run a query and return all its rows as tuples (or the thread's row type)."""
        if self._sqlite:
            conn = self._state.conn or self.connect()
            try:
                return cast(Sequence[Sequence[Any]], conn.execute(sql, params).fetchall())
            except Exception as exc:
                return cast(Sequence[Sequence[Any]], self._sqlite_failed(exc, _ROWS, sql, params))
        return cast(Sequence[Sequence[Any]], self._server(_ROWS, sql, params))

    def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Run a write statement and return the number of rows it changed."""
        if self._sqlite:
            conn = self._state.conn or self.connect()
            try:
                return cast(int, conn.execute(sql, params).rowcount)
            except Exception as exc:
                return cast(int, self._sqlite_failed(exc, _ROWCOUNT, sql, params))
        return cast(int, self._server(_ROWCOUNT, sql, params))

    def insert(self, sql: str, params: Sequence[Any]) -> int:
        """Run an INSERT of one row and return its id."""
        if self._sqlite:
            conn = self._state.conn or self.connect()
            try:
                return cast(int, conn.execute(sql, params).lastrowid)
            except Exception as exc:
                return cast(int, self._sqlite_failed(exc, _LASTROWID, sql, params))
        return cast(int, self._server(_RETURNED_ID if self.returning else _LASTROWID, sql, params))

    def _sqlite_failed(self, exc: Exception, result: Callable[[Any], T], sql: str,
                       params: Sequence[Any]) -> T:
        """Handle a failed SQLite statement: outside a transaction a statement is its
        own lock acquisition, so a busy one is retried; anything else is raised."""
        if is_busy(exc) and not self.database.in_transaction():
            return self._retry_locked(lambda: result(self._state.conn.execute(sql, params)),
                                      failed=exc)
        raise translate(exc) from exc

    def _server(self, result: Callable[[Any], T], sql: str, params: Sequence[Any]) -> T:
        """Run one statement on a (pooled) server connection; return ``result(cursor)``."""
        with self.session() as conn:
            try:
                cursor = conn.cursor()
                try:
                    cursor.execute(sql, params)
                    return result(cursor)
                finally:
                    cursor.close()
            except Exception as exc:
                raise translate(exc) from exc

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        """Run one statement for many parameter rows (inside the caller's transaction)."""
        with self.session() as conn:
            try:
                cursor = conn.cursor()
                cursor.executemany(sql, rows)
                cursor.close()
            except Exception as exc:
                raise translate(exc) from exc

    # -- the write lock --------------------------------------------------------------

    def _retry_locked(self, operation: Callable[[], T],
                      failed: BaseException | None = None) -> T:
        """Run ``operation``, retrying while SQLite reports busy, a bounded number of times.

        At most ``lock_retries + 1`` attempts in all (``failed`` is a first attempt the
        caller already made). Each attempt waits up to the connection's busy timeout;
        between attempts a jittered, growing backoff sleeps. The bound counts
        attempts, not clock time, so a frozen clock cannot make it spin forever.
        """
        attempts = 0 if failed is None else 1
        while True:
            if failed is not None:
                if attempts > self.lock_retries:
                    raise LockTimeout(
                        f"could not take the write lock on {self.location} after "
                        f"{attempts} attempts: {failed}. Another process holds it; "
                        "raise busy_timeout or find the long transaction."
                    ) from failed
                delay = min(_BACKOFF_CAP, _BACKOFF_BASE * 2**(attempts - 1)) * (
                    0.5 + random.random())
                logger.debug("write lock busy on %s (attempt %d), retrying in %.3fs",
                             self.location, attempts, delay)
                time.sleep(delay)
            try:
                return operation()
            except Exception as exc:
                if not is_busy(exc):
                    raise translate(exc) from exc
                failed = exc
                attempts += 1

    def _lock_key(self, name: str) -> int:
        return zlib.crc32(name.encode()) - 2**31

    @contextmanager
    def transaction(self, *, lock: str = _WRITE_LOCK) -> Iterator[None]:
        """Run the block atomically; nested blocks are savepoints.

        The outermost block takes the write lock first, so read-modify-write
        blocks serialise the same way on every backend: ``BEGIN IMMEDIATE`` on
        SQLite (retried while busy), a transaction-scoped advisory lock on
        PostgreSQL, a named lock around the transaction on MySQL.
        """
        db = self.database
        if db.in_transaction():
            with db.atomic():
                yield
            return
        with self.session() as conn:
            if self.backend == "mysql":
                self._mysql_lock(conn, lock)
            try:
                if self._sqlite:
                    txn = db.transaction("IMMEDIATE")
                    self._retry_locked(txn.__enter__)
                else:
                    txn = db.transaction()
                    self._enter(txn)
                    if self.backend == "postgresql":
                        self._pg_lock(txn, lock)
                try:
                    yield
                except BaseException:
                    txn.__exit__(*sys.exc_info())
                    raise
                try:
                    txn.__exit__(None, None, None)
                except Exception as exc:
                    raise translate(exc) from exc
            finally:
                if self.backend == "mysql":
                    self._mysql_unlock(conn, lock)

    @contextmanager
    def snapshot(self) -> Iterator[None]:
        """Read several statements from one consistent snapshot (no write lock taken)."""
        db = self.database
        if db.in_transaction():
            yield
            return
        with self.session():
            args = () if self._sqlite else ("REPEATABLE READ",)
            txn = db.transaction(*args)
            self._enter(txn)
            try:
                yield
            except BaseException:
                txn.__exit__(*sys.exc_info())
                raise
            txn.__exit__(None, None, None)

    def _enter(self, txn: Any) -> None:
        try:
            txn.__enter__()
        except Exception as exc:
            raise translate(exc) from exc

    def _pg_lock(self, txn: Any, name: str) -> None:
        try:
            self.database.execute_sql("SELECT pg_advisory_xact_lock(%s)", (self._lock_key(name),))
        except BaseException:
            txn.__exit__(*sys.exc_info())
            raise

    def _mysql_lock(self, conn: Any, name: str) -> None:
        cursor = conn.cursor()
        try:
            wait = max(1, int(self.busy_timeout)) * (self.lock_retries + 1)
            cursor.execute("SELECT GET_LOCK(CONCAT(%s, DATABASE()), %s)", (name + ":", wait))
            (got,) = cursor.fetchone()
        except Exception as exc:
            raise translate(exc) from exc
        finally:
            cursor.close()
        if got != 1:
            raise LockTimeout(f"could not take the write lock on {self.location}")

    def _mysql_unlock(self, conn: Any, name: str) -> None:
        cursor = conn.cursor()
        try:
            cursor.execute("SELECT RELEASE_LOCK(CONCAT(%s, DATABASE()))", (name + ":",))
            cursor.fetchall()
        finally:
            cursor.close()

    def retrying(self, operation: Callable[[], T], attempts: int = 5) -> T:
        """Run a whole operation of the store's own, again on a server deadlock or
        serialization failure (the caller's blocks are never re-run)."""
        for attempt in range(attempts):
            try:
                return operation()
            except peewee.OperationalError as exc:
                if (self._sqlite or self.database.in_transaction()
                        or _server_code(exc) not in _RETRYABLE_SERVER_CODES
                        or attempt == attempts - 1):
                    raise
                time.sleep(_BACKOFF_BASE * 2**attempt * (0.5 + random.random()))
        raise AssertionError("unreachable")  # pragma: no cover

    def row_factory_block(self, conn: Any) -> Any:
        """Return a connection for ``get_connection``: rows addressable by column name."""
        if self._sqlite:
            return conn
        return _NamedRowConnection(conn, self.backend)


class _NamedRowConnection:
    """A server connection whose cursors return rows addressable by column name."""

    def __init__(self, conn: Any, backend: str) -> None:
        self._conn = conn
        self._backend = backend

    def cursor(self, *args: Any, **kwargs: Any) -> Any:
        if args or kwargs:
            return self._conn.cursor(*args, **kwargs)
        if self._backend == "postgresql":
            from psycopg2.extras import DictCursor
            return self._conn.cursor(cursor_factory=DictCursor)
        from pymysql.cursors import DictCursor as MySQLDictCursor
        return self._conn.cursor(MySQLDictCursor)

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Any:
        """Run ``sql`` on a new named-row cursor and return it (like sqlite3)."""
        cursor = self.cursor()
        cursor.execute(sql, params)
        return cursor

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn, name)
