"""Running statements on the right connection: per-thread SQLite connections,
pooled server connections, the write lock and its bounded retries, and driver
errors turned into peewee's (and the store's) error classes.
"""
from __future__ import annotations

import logging
import operator
import os
import random
import select
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
from .errors import ConnectionLost, IntegrityError, LockTimeout

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
# MySQL errors after which the server has closed the connection, though PyMySQL may still
# think it open: server shutdown, packet too large, killed, gone away, lost, idle timeout.
_MYSQL_LOST_CODES = frozenset({1053, 1153, 1927, 2006, 2013, 2055, 4031})
# ... and those of them where the server refused the statement before running it.
_MYSQL_REFUSED_CODES = frozenset({1153})
# PostgreSQL: the savepoint each statement in an open transaction runs under.
_STATEMENT_SAVEPOINT = "sprint_runner_statement"
_SAVEPOINT_SQL = f"SAVEPOINT {_STATEMENT_SAVEPOINT}"
# The previous statement's savepoint is released when the next one starts, in the
# same round trip (released ones leave no lock or subtransaction behind).
_RESAVEPOINT_SQL = f"RELEASE SAVEPOINT {_STATEMENT_SAVEPOINT}; {_SAVEPOINT_SQL}"
_RELEASE_SQL = f"RELEASE SAVEPOINT {_STATEMENT_SAVEPOINT}"
_UNDO_SQL = f"ROLLBACK TO SAVEPOINT {_STATEMENT_SAVEPOINT}"
_NO_SUCH_SAVEPOINT = "3B001"
# On peewee's per-thread connection state (shared by every store on the database): the
# (connection, outermost transaction) whose statement savepoint is open, or None.
_MARK = "sprint_runner_statement_savepoint"
_SAVEPOINT_VERBS = ("SAVEPOINT", "RELEASE", "ROLLBACK")

# What a statement returns, taken from its cursor (prebuilt: hot paths make no lambdas).
_ROWS = operator.methodcaller("fetchall")
_ROWCOUNT = operator.attrgetter("rowcount")
_LASTROWID = operator.attrgetter("lastrowid")


def _RETURNED_ID(cursor: Any) -> Any:  # noqa: N802 - named like its siblings
    return cursor.fetchone()[0]

_executors: weakref.WeakSet[Executor] = weakref.WeakSet()
_watched: weakref.WeakSet[peewee.Database] = weakref.WeakSet()  # see _watch_savepoints
_watch_lock = threading.Lock()
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


def _watch_savepoints(database: peewee.Database) -> None:
    """Forget the open statement savepoint whenever SQL run through peewee (its
    atomic() and savepoint()) takes, releases or rolls back a savepoint: releasing
    ours later would then release theirs too. Installed once per database."""
    with _watch_lock:
        if database in _watched:
            return
        _watched.add(database)
    state = database._state  # type: ignore[attr-defined]

    def forget_statement_savepoint(event: Any) -> None:
        if event.sql.lstrip()[:9].upper().startswith(_SAVEPOINT_VERBS):
            setattr(state, _MARK, None)

    database.query_hooks.append(forget_statement_savepoint)


def _psycopg2_socket(conn: Any) -> int | None:
    return None if conn.closed else int(conn.fileno())


def _pymysql_socket(conn: Any) -> int | None:
    sock = conn._sock
    return None if sock is None else int(sock.fileno())


def _has_input(fd: int) -> bool:
    """Return True if the server sent something to an idle connection (which it does only
    when closing it: a kill, a shutdown, an idle timeout), without a round trip."""
    if hasattr(select, "poll"):
        poller = select.poll()
        poller.register(fd, select.POLLIN | select.POLLERR | select.POLLHUP)
        return bool(poller.poll(0))
    readable, _, _ = select.select([fd], [], [], 0)  # pragma: no cover - Windows
    return bool(readable)


def _unsent(exc: BaseException) -> bool:
    # Both drivers raise InterfaceError for a connection they know is closed, before
    # sending anything (psycopg2 "connection already closed", PyMySQL "(0, '')").
    return any(cls.__name__ == "InterfaceError" for cls in type(exc).__mro__)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _is_select(sql: str) -> bool:
    return sql.lstrip()[:6].upper() == "SELECT"


def _run(conn: Any, sql: str, params: Any, result: Callable[[Any], T]) -> T:
    cursor = conn.cursor()
    try:
        cursor.execute(sql, params)
        return result(cursor)
    finally:
        cursor.close()


def _run_many(conn: Any, sql: str, rows: Any, result: Callable[[Any], T]) -> T:
    cursor = conn.cursor()
    try:
        cursor.executemany(sql, rows)
        return result(cursor)
    finally:
        cursor.close()


def _nothing(cursor: Any) -> None:
    return None


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
        if not self._sqlite:
            self._init_server()
        _executors.add(self)
        _install_fork_hook()

    def _init_server(self) -> None:
        postgresql = self.backend == "postgresql"
        self._socket_of: Callable[[Any], int | None] = (
            _psycopg2_socket if postgresql else _pymysql_socket)
        self._lost_codes = frozenset() if postgresql else _MYSQL_LOST_CODES
        self._refused_codes = frozenset() if postgresql else _MYSQL_REFUSED_CODES
        # PostgreSQL aborts the whole transaction on a failed statement; SQLite and MySQL
        # undo only that statement. A savepoint per statement gives PostgreSQL theirs.
        self._isolate_statements = postgresql
        # psycopg2 binds parameters client-side, so the savepoint shares the statement's
        # round trip; psycopg 3 binds server-side: one statement per call.
        adapter = getattr(self.database, "_adapter", None)
        self._savepoint_in_statement = type(adapter).__name__ == "Psycopg2Adapter"
        if postgresql:
            _watch_savepoints(self.database)

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
        thread already holds one (inside a transaction, or one it kept open), so
        threads that come and go never strand pooled connections. A held connection
        the server has closed is discarded and replaced first.
        """
        if self._sqlite:
            yield self._state.conn or self.connect()
            return
        if self._state.transactions:
            yield self._state.conn
            return
        conn, checked_out = self._checkout()
        try:
            yield conn
        finally:
            if checked_out:
                self._checkin()

    # Server connections (only the server paths call these).

    def _checkout(self) -> tuple[Any, bool]:
        """Return a live connection for a call outside a transaction, and whether the
        call checked it out of the pool (and so returns it at its end).

        A connection the thread already holds is reused if it is still open and the
        server has not written to it while idle (what a kill, a shutdown or an idle
        timeout does), a check without a round trip; else it is discarded. The pool
        itself checks a connection it hands out (peewee pings it). Connecting is
        retried once: nothing was sent yet.
        """
        state = self._state
        if not state.closed:
            if self._idle_and_alive(state.conn):
                return state.conn, False
            logger.warning("the connection to %s was closed by the server; discarding it",
                           self.location)
            self._discard(state.conn)
        try:
            return self.connect(), True
        except (peewee.OperationalError, peewee.InterfaceError) as exc:
            logger.warning("could not connect to %s (%s); trying once more", self.location,
                           _first_line(exc))
            return self.connect(), True

    def _checkin(self) -> None:
        if not self._state.closed and not self._state.transactions:
            self.database.close()

    def _idle_and_alive(self, conn: Any) -> bool:
        fd = self._socket_of(conn)
        return fd is not None and not _has_input(fd)

    def _is_open(self, conn: Any) -> bool:
        return self._socket_of(conn) is not None

    def _lost(self, exc: BaseException, conn: Any) -> bool:
        """Return True if ``exc`` means ``conn`` is dead."""
        return not self._is_open(conn) or _server_code(exc) in self._lost_codes

    def _discard(self, conn: Any) -> None:
        """Close a dead connection and drop it from the pool, never to be handed out again.

        Outside a transaction the thread forgets it at once; inside one it stays the
        thread's (closed, so every statement fails clearly and none runs outside the
        transaction) until the outermost block ends.
        """
        db = self.database
        if isinstance(db, PooledDatabase):
            with db._pool_lock:
                db._in_use.pop(db.conn_key(conn), None)
                db._pool_available.notify()
        try:
            conn.close()
        except Exception:  # it is dead already; closing only frees it
            logger.debug("closing a dead connection to %s failed", self.location,
                         exc_info=True)
        if not self._state.transactions and self._state.conn is conn:
            self._state.reset()

    def _forget_transaction(self) -> None:
        """Drop the thread's dead connection and its transaction stack (the server has
        rolled the transaction back when the connection died)."""
        if self._state.conn is not None:
            self._state.transactions = []
            self._discard(self._state.conn)
        self._state.reset()

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
        return cast(Sequence[Sequence[Any]], self._server(_ROWS, sql, params, read=True))

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

    def _server(self, result: Callable[[Any], T], sql: str, params: Any, *,
                read: bool = False, runner: Callable[..., Any] = _run) -> T:
        """Run one statement on a (pooled) server connection; return ``result(cursor)``.

        Outside a transaction, a connection found dead is replaced and the statement
        retried once when that is safe: nothing was sent yet, or it is a read. A write
        lost after it was sent raises ConnectionLost: it may or may not have been
        applied, so it is never re-sent. Inside a transaction see _in_transaction.
        """
        if self._state.transactions:
            return cast(T, self._in_transaction(runner, sql, params, result))
        for attempt in (1, 2):
            conn, checked_out = self._checkout()
            try:
                return cast(T, runner(conn, sql, params, result))
            except Exception as exc:
                if not self._lost(exc, conn):
                    raise translate(exc) from exc
                self._discard(conn)
                refused = _server_code(exc) in self._refused_codes
                if refused:
                    raise ConnectionLost(
                        f"{self.location} refused the statement and closed the connection "
                        f"({_first_line(exc)}); it was not applied; the next call opens a "
                        "fresh connection") from exc
                if not (_unsent(exc) or (read and _is_select(sql))):
                    raise ConnectionLost(
                        f"lost the connection to {self.location} while a write was in flight "
                        f"({_first_line(exc)}); whether it was applied is unknown, so it was "
                        "not re-sent; the next call opens a fresh connection") from exc
                if attempt == 2:
                    raise ConnectionLost(
                        f"lost the connection to {self.location} ({_first_line(exc)}), and "
                        "again on a fresh connection; the next call opens another") from exc
                logger.warning("lost the connection to %s (%s); retrying once on a fresh one",
                               self.location, _first_line(exc))
            finally:
                if checked_out:
                    self._checkin()
        raise AssertionError("unreachable")  # pragma: no cover

    def _in_transaction(self, runner: Callable[..., Any], sql: str, params: Any,
                        result: Callable[[Any], Any]) -> Any:
        """Run a statement inside the thread's open server transaction.

        A lost connection fails it with ConnectionLost (the server has rolled the
        transaction back; nothing is retried). On PostgreSQL the statement runs under
        a savepoint, so that its failure undoes only itself, as on the other backends.
        """
        conn = self._state.conn
        if not self._is_open(conn):
            raise self._lost_in_transaction("it was lost earlier in this transaction")
        if self._isolate_statements:
            return self._isolated(conn, runner, sql, params, result)
        try:
            return runner(conn, sql, params, result)
        except Exception as exc:
            raise self._failed_in_transaction(exc, conn) from exc

    def _isolated(self, conn: Any, runner: Callable[..., Any], sql: str, params: Any,
                  result: Callable[[Any], Any]) -> Any:
        """Run a statement under a savepoint, so that its failure undoes only itself and
        the transaction goes on (PostgreSQL; a bulk statement is undone as a whole)."""
        state = self._state
        mark = (conn, state.transactions[0])
        held = getattr(state, _MARK, None)
        head = (_RESAVEPOINT_SQL if held is not None and held[0] is conn and held[1] is mark[1]
                else _SAVEPOINT_SQL)
        setattr(state, _MARK, mark)
        try:
            if self._savepoint_in_statement and runner is _run:
                return runner(conn, f"{head}; {sql}", params, result)
            _run(conn, head, None, _nothing)
            return runner(conn, sql, params, result)
        except Exception as exc:
            raise self._undo_statement(exc, conn) from exc

    def _undo_statement(self, exc: Exception, conn: Any) -> BaseException:
        """Roll back to the failed statement's savepoint; return what to raise."""
        failed = self._failed_in_transaction(exc, conn)
        if isinstance(failed, ConnectionLost):
            return failed
        if _server_code(exc) == _NO_SUCH_SAVEPOINT:
            setattr(self._state, _MARK, None)
            return type(failed)(
                f"the store's statement savepoint on {self.location} is gone "
                f"({_first_line(exc)}): SQL run beside the store inside this transaction "
                "released or rolled back a savepoint older than it (nest blocks with "
                "transaction(), not the database's atomic()); the transaction is aborted")
        try:
            _run(conn, _UNDO_SQL, None, _nothing)
        except Exception as undo:
            setattr(self._state, _MARK, None)
            lost = self._failed_in_transaction(undo, conn)
            if isinstance(lost, ConnectionLost):
                return lost
            logger.warning("could not roll back to the statement savepoint on %s",
                           self.location, exc_info=True)
        return failed

    def _release_statement_savepoint(self, conn: Any) -> None:
        """Release this transaction's open statement savepoint, if any (before a nested
        savepoint, which must not sit on top of it)."""
        if not self._isolate_statements:
            return
        held = getattr(self._state, _MARK, None)
        setattr(self._state, _MARK, None)
        if held is not None and held[0] is conn and held[1] is self._state.transactions[0]:
            try:
                _run(conn, _RELEASE_SQL, None, _nothing)
            except Exception as exc:
                raise self._failed_in_transaction(exc, conn) from exc

    def _forget_statement_savepoint(self) -> None:
        setattr(self._state, _MARK, None)

    def _failed_in_transaction(self, exc: Exception, conn: Any) -> BaseException:
        """Return what to raise for ``exc`` from a statement inside a transaction."""
        if isinstance(exc, ConnectionLost):
            return exc
        if self._lost(exc, conn):
            self._discard(conn)
            return self._lost_in_transaction(_first_line(exc))
        return translate(exc)

    def _lost_in_transaction(self, why: str) -> ConnectionLost:
        return ConnectionLost(
            f"lost the connection to {self.location} inside a transaction ({why}); the "
            "transaction is rolled back; the next call after the block opens a fresh "
            "connection")

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        """Run one statement for many parameter rows (inside the caller's transaction)."""
        if self._sqlite:
            with self.session() as conn:
                try:
                    cursor = conn.cursor()
                    cursor.executemany(sql, rows)
                    cursor.close()
                except Exception as exc:
                    raise translate(exc) from exc
            return
        # A list, so that a retry (when nothing was sent) sends the same rows.
        self._server(_nothing, sql, rows if isinstance(rows, Sequence) else list(rows),
                     runner=_run_many)

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
            with db.atomic() if self._sqlite else self._server_savepoint():
                yield
            return
        if not self._sqlite:
            with self._server_transaction(lock):
                yield
            return
        with self.session():
            txn = db.transaction("IMMEDIATE")
            self._retry_locked(txn.__enter__)
            try:
                yield
            except BaseException:
                txn.__exit__(*sys.exc_info())
                raise
            try:
                txn.__exit__(None, None, None)
            except Exception as exc:
                raise translate(exc) from exc

    @contextmanager
    def snapshot(self) -> Iterator[None]:
        """Read several statements from one consistent snapshot (no write lock taken)."""
        db = self.database
        if db.in_transaction():
            yield
            return
        if not self._sqlite:
            with self._server_transaction(None, "REPEATABLE READ"):
                yield
            return
        with self.session():
            txn = db.transaction()
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

    # Server transactions (only the server paths call these).

    @contextmanager
    def _server_transaction(self, lock: str | None, *begin: str) -> Iterator[None]:
        """Run the block as the outermost transaction on a live server connection.

        Opening it (the write lock and BEGIN) is retried once on a fresh connection
        if the connection is found dead: nothing of the block was sent yet. A
        connection lost later fails the block with ConnectionLost; the dead
        connection is discarded and the next call gets a fresh one.
        """
        for attempt in (1, 2):
            conn, checked_out = self._checkout()
            try:
                txn = self._begin(conn, lock, begin)
                break
            except Exception as exc:
                lost = self._lost(exc, conn) and not isinstance(exc, LockTimeout)
                if lost:
                    self._forget_transaction()
                if checked_out:
                    self._checkin()
                if not lost:
                    translated = translate(exc)
                    if translated is exc:
                        raise
                    raise translated from exc
                if attempt == 2:
                    raise ConnectionLost(
                        f"lost the connection to {self.location} ({_first_line(exc)}) "
                        "starting a transaction, and again on a fresh connection") from exc
                logger.warning("lost the connection to %s (%s) starting a transaction; "
                               "retrying once on a fresh one", self.location, _first_line(exc))
        try:
            try:
                yield
            except BaseException as exc:
                self._end_failed(txn, conn, exc)
                raise
            self._commit(txn, conn)
        finally:
            self._forget_statement_savepoint()
            self._unlock(conn, lock)
            if checked_out:
                self._checkin()

    def _begin(self, conn: Any, lock: str | None, begin: tuple[str, ...]) -> Any:
        """Take the write lock (unless ``lock`` is None) and BEGIN; on failure nothing
        is left open. Return peewee's transaction."""
        if lock is not None:
            self._lock_before_begin(conn, lock)
        txn = self.database.transaction(*begin)
        try:
            self._enter(txn)
            if lock is not None:
                self._lock_after_begin(conn, lock)
        except BaseException as exc:
            try:
                if self.database.in_transaction():
                    self._end_failed(txn, conn, exc)
            finally:
                self._unlock(conn, lock)
            raise
        return txn

    def _end_failed(self, txn: Any, conn: Any, exc: BaseException | None) -> None:
        """Roll back after the block raised ``exc``; if the connection was lost, forget it
        (the server rolled back) and turn a database error into ConnectionLost."""
        if self._is_open(conn):
            try:
                txn.__exit__(type(exc), exc, None)
                return
            except Exception as failed:
                if not self._lost(failed, conn):
                    raise translate(failed) from failed
        self._forget_transaction()
        if isinstance(exc, peewee.PeeweeException) and not isinstance(exc, ConnectionLost):
            raise self._lost_in_transaction(_first_line(exc)) from exc

    def _commit(self, txn: Any, conn: Any) -> None:
        if not self._is_open(conn):  # the block caught the ConnectionLost and went on
            self._forget_transaction()
            raise self._lost_in_transaction("it was lost earlier in this transaction")
        try:
            txn.__exit__(None, None, None)
        except Exception as exc:
            if not self._lost(exc, conn):
                raise translate(exc) from exc
            self._forget_transaction()
            raise ConnectionLost(
                f"lost the connection to {self.location} during COMMIT ({_first_line(exc)}); "
                "whether the transaction was committed is unknown, so nothing was re-sent; "
                "the next call opens a fresh connection") from exc

    @contextmanager
    def _server_savepoint(self) -> Iterator[None]:
        """A nested block: a savepoint, failing with ConnectionLost if the connection dies."""
        conn = self._state.conn
        if not self._is_open(conn):
            raise self._lost_in_transaction("it was lost earlier in this transaction")
        self._release_statement_savepoint(conn)
        savepoint = self.database.savepoint()
        try:
            savepoint.__enter__()
        except Exception as exc:
            raise self._failed_in_transaction(exc, conn) from exc
        try:
            yield
        except BaseException as exc:
            # Rolling back to (or releasing) the block's savepoint ends any statement
            # savepoint taken inside it.
            self._forget_statement_savepoint()
            if self._is_open(conn):
                try:
                    savepoint.__exit__(type(exc), exc, None)
                except Exception as failed:
                    raise self._failed_in_transaction(failed, conn) from failed
            raise
        self._forget_statement_savepoint()
        if not self._is_open(conn):  # the block caught the ConnectionLost and went on
            raise self._lost_in_transaction("it was lost earlier in this transaction")
        try:
            savepoint.__exit__(None, None, None)
        except Exception as exc:
            raise self._failed_in_transaction(exc, conn) from exc

    def _lock_before_begin(self, conn: Any, name: str) -> None:
        if self.backend == "mysql":
            self._mysql_lock(conn, name)

    def _lock_after_begin(self, conn: Any, name: str) -> None:
        if self.backend == "postgresql":
            _run(conn, "SELECT pg_advisory_xact_lock(%s)", (self._lock_key(name),), _ROWS)

    def _unlock(self, conn: Any, name: str | None) -> None:
        """Release a lock that outlives transactions (MySQL's named lock); a lock on a
        dead connection died with it."""
        if name is None or self.backend != "mysql" or not self._is_open(conn):
            return
        try:
            self._mysql_unlock(conn, name)
        except Exception as exc:
            if not self._lost(exc, conn):
                raise translate(exc) from exc
            self._discard(conn)

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
