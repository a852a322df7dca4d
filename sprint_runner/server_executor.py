"""PostgreSQL and MariaDB/MySQL: pooled connections, dead ones discarded, a server write lock.

A server connection can die under any call (a restart, a failover, an idle timeout,
``pg_terminate_backend``, ``KILL``). :class:`ServerExecutor` discards a dead
connection and retries a call once on a fresh one when that is safe (nothing was
sent, or it is a read); a write lost in flight raises
:class:`~sprint_runner.errors.ConnectionLost` and is never re-sent. The write lock
is the server's: a transaction-scoped advisory lock on PostgreSQL, a named lock
around the transaction on MySQL.
"""
from __future__ import annotations

import logging
import random
import select
import threading
import time
import weakref
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any, cast

import peewee
from playhouse.pool import PooledDatabase

from .errors import ConnectionLost, LockTimeout, StorageFull
from .executor import (
    BACKOFF_BASE,
    LASTROWID,
    ROWCOUNT,
    ROWS,
    WRITE_LOCK,
    Executor,
    T,
    chunks,
    first_line,
    nothing,
    run,
    run_many,
)
from .statements import Statement

logger = logging.getLogger("sprint_runner")

_RETRYABLE_CODES = {"40001", "40P01", 1213, 1205}  # serialization, deadlock, lock wait


def _returned_id(cursor: Any) -> Any:
    return cursor.fetchone()[0]


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


def _is_select(sql: str) -> bool:
    return sql.lstrip()[:6].upper() == "SELECT"


def server_code(exc: BaseException) -> object:
    """Return the server's error code behind ``exc`` (SQLSTATE or MySQL number), or None."""
    for candidate in (exc, exc.__cause__, exc.__context__):
        if candidate is None:
            continue
        code = getattr(candidate, "pgcode", None)
        if code is None and candidate.args and isinstance(candidate.args[0], int):
            code = candidate.args[0]
        if code is not None:
            return code
    return None


class ServerExecutor(Executor):
    """What PostgreSQL and MySQL share: a pool, connection health, server transactions."""

    ids_commit_in_order = False  # ids are handed out before commit

    lost_codes: frozenset[object] = frozenset()
    """Error codes after which the server has closed the connection."""
    refused_codes: frozenset[object] = frozenset()
    """... and those of them where the server refused the statement before running it."""
    full_codes: frozenset[object] = frozenset()
    """Error codes of the server reporting its storage (disk or table) full."""
    full_classes: frozenset[str] = frozenset()
    """Names of driver exception classes that mean the same."""

    def __init__(self, database: peewee.Database, *, busy_timeout: float = 30.0,
                 lock_retries: int = 5) -> None:
        super().__init__(database, busy_timeout=busy_timeout, lock_retries=lock_retries)
        self.returning = bool(database.returning_clause)
        self._inserted_id = _returned_id if self.returning else LASTROWID

    def socket_of(self, conn: Any) -> int | None:
        """Return the connection's socket, or None if the driver knows it closed."""
        raise NotImplementedError

    def storage_full(self, exc: BaseException) -> BaseException | None:
        """Return StorageFull if the server reports its disk or table full."""
        if isinstance(exc, StorageFull):
            return exc
        if server_code(exc) not in self.full_codes and not any(
                cls.__name__ in self.full_classes for cls in type(exc).__mro__):
            return None
        return StorageFull(
            f"{self.location} reports its storage full ({first_line(exc)}); the call was "
            "rolled back and nothing of it was written; reads still work, and writes "
            "succeed again once the server has space (no reconnecting needed)",
            path=self.location)

    # -- the tail's gaps -------------------------------------------------------------

    def open_writers(self) -> frozenset[Any] | None:
        """A server that cannot tell which transactions are open: None (gaps time out)."""
        return None

    def gap_settled(self, probe: Statement, first: int, last: int,
                    writers_then: frozenset[Any] | None,
                    writers_now: frozenset[Any] | None) -> bool:
        """A server that cannot tell: never (gaps time out)."""
        return False

    def _writers(self, sql: str) -> frozenset[Any] | None:
        """Run ``sql`` (one column naming open transactions); None if it fails (a missing
        privilege, say), so that gaps are held for gap_timeout."""
        try:
            return frozenset(row[0] for row in self.fetchall(sql))
        except ConnectionLost:
            raise
        except peewee.DatabaseError as exc:
            logger.warning("cannot list the open transactions on %s (%s); the tail holds "
                           "each gap for gap_timeout", self.location, first_line(exc))
            return None

    def dict_cursor(self, conn: Any) -> Any:
        """Return a cursor of ``conn`` whose rows are addressable by column name."""
        raise NotImplementedError

    # -- connections ---------------------------------------------------------------

    def connect(self) -> Any:
        """Open this thread's connection if it is closed; return it."""
        try:
            self.database.connect(reuse_if_open=True)
        except Exception as exc:
            raise self.error_for(exc) from exc
        return self._state.conn

    @contextmanager
    def session(self) -> Iterator[Any]:
        """Yield this thread's connection for the block.

        A connection is checked out of the pool for the block and returned at its
        end, unless the thread already holds one (inside a transaction, or one it kept
        open), so threads that come and go never strand pooled connections. A held
        connection the server has closed is discarded and replaced first.
        """
        if self._state.transactions:
            yield self._state.conn
            return
        conn, checked_out = self._checkout()
        try:
            yield conn
        finally:
            if checked_out:
                self._checkin()

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
                           first_line(exc))
            return self.connect(), True

    def _checkin(self) -> None:
        if not self._state.closed and not self._state.transactions:
            self.database.close()

    def _idle_and_alive(self, conn: Any) -> bool:
        fd = self.socket_of(conn)
        return fd is not None and not _has_input(fd)

    def _is_open(self, conn: Any) -> bool:
        return self.socket_of(conn) is not None

    def _lost(self, exc: BaseException, conn: Any) -> bool:
        """Return True if ``exc`` means ``conn`` is dead."""
        return not self._is_open(conn) or server_code(exc) in self.lost_codes

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
        """Close this thread's connection and every idle one of the pool."""
        super().close()
        if isinstance(self.database, PooledDatabase):
            self.database.close_idle()

    def forget_inherited_connections(self) -> None:
        """In a forked child: forget the parent's connections and pool, unclosed."""
        super().forget_inherited_connections()
        if isinstance(self.database, PooledDatabase):
            self.database._connections = []
            self.database._in_use = {}

    # -- statements ----------------------------------------------------------------

    def fetchall(self, sql: str, params: Sequence[Any] = ()) -> Sequence[Sequence[Any]]:
        """Run a query and return all its rows as tuples."""
        return cast(Sequence[Sequence[Any]], self._call(ROWS, sql, params, read=True))

    def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Run a write statement and return the number of rows it changed."""
        return cast(int, self._call(ROWCOUNT, sql, params))

    def insert_id(self, sql: str, params: Sequence[Any]) -> int:
        """Run an INSERT of one row and return its id."""
        return cast(int, self._call(self._inserted_id, sql, params))

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        """Run one statement for many parameter rows (inside the caller's transaction)."""
        # A list, so that a retry (when nothing was sent) sends the same rows.
        self._call(nothing, sql, rows if isinstance(rows, Sequence) else list(rows),
                   runner=run_many)

    def _call(self, result: Callable[[Any], T], sql: str, params: Any, *,
              read: bool = False, runner: Callable[..., Any] = run) -> T:
        """Run one statement on a (pooled) connection; return ``result(cursor)``.

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
                    raise self.error_for(exc) from exc
                self._discard(conn)
                if server_code(exc) in self.refused_codes:
                    raise ConnectionLost(
                        f"{self.location} refused the statement and closed the connection "
                        f"({first_line(exc)}); it was not applied; the next call opens a "
                        "fresh connection") from exc
                if not (_unsent(exc) or (read and _is_select(sql))):
                    raise ConnectionLost(
                        f"lost the connection to {self.location} while a write was in flight "
                        f"({first_line(exc)}); whether it was applied is unknown, so it was "
                        "not re-sent; the next call opens a fresh connection") from exc
                if attempt == 2:
                    raise ConnectionLost(
                        f"lost the connection to {self.location} ({first_line(exc)}), and "
                        "again on a fresh connection; the next call opens another") from exc
                logger.warning("lost the connection to %s (%s); retrying once on a fresh one",
                               self.location, first_line(exc))
            finally:
                if checked_out:
                    self._checkin()
        raise AssertionError("unreachable")  # pragma: no cover

    def _in_transaction(self, runner: Callable[..., Any], sql: str, params: Any,
                        result: Callable[[Any], Any]) -> Any:
        """Run a statement inside the thread's open transaction; a lost connection
        fails it with ConnectionLost (the server has rolled the transaction back;
        nothing is retried)."""
        conn = self._state.conn
        if not self._is_open(conn):
            raise self._lost_in_transaction("it was lost earlier in this transaction")
        try:
            return runner(conn, sql, params, result)
        except Exception as exc:
            raise self._failed_in_transaction(exc, conn) from exc

    def _failed_in_transaction(self, exc: Exception, conn: Any) -> BaseException:
        """Return what to raise for ``exc`` from a statement inside a transaction."""
        if isinstance(exc, ConnectionLost):
            return exc
        if self._lost(exc, conn):
            self._discard(conn)
            return self._lost_in_transaction(first_line(exc))
        return self.error_for(exc)

    def _lost_in_transaction(self, why: str) -> ConnectionLost:
        return ConnectionLost(
            f"lost the connection to {self.location} inside a transaction ({why}); the "
            "transaction is rolled back; the next call after the block opens a fresh "
            "connection")

    # Hooks for PostgreSQL's statement savepoints (see PostgresExecutor).

    def _release_statement_savepoint(self, conn: Any) -> None:
        """Release the open statement savepoint before a nested savepoint (none here)."""

    def _forget_statement_savepoint(self) -> None:
        """Forget the open statement savepoint (none here)."""

    # -- transactions ------------------------------------------------------------------

    @contextmanager
    def transaction(self, *, lock: str = WRITE_LOCK) -> Iterator[None]:
        """Run the block atomically; nested blocks are savepoints.

        The outermost block takes the server's write lock first, so read-modify-write
        blocks serialise as they do on SQLite.
        """
        if self.database.in_transaction():
            with self._savepoint():
                yield
            return
        with self._transaction(lock):
            yield

    def snapshot(self) -> AbstractContextManager[None]:
        """Read several statements from one consistent snapshot (no write lock taken)."""
        if self.database.in_transaction():
            return nullcontext()
        return self._transaction(None, "REPEATABLE READ")

    @contextmanager
    def _transaction(self, lock: str | None, *begin: str) -> Iterator[None]:
        """Run the block as the outermost transaction on a live connection.

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
                    translated = self.error_for(exc)
                    if translated is exc:
                        raise
                    raise translated from exc
                if attempt == 2:
                    raise ConnectionLost(
                        f"lost the connection to {self.location} ({first_line(exc)}) "
                        "starting a transaction, and again on a fresh connection") from exc
                logger.warning("lost the connection to %s (%s) starting a transaction; "
                               "retrying once on a fresh one", self.location, first_line(exc))
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
            try:
                txn.__enter__()
            except Exception as exc:
                raise self.error_for(exc) from exc
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
                    raise self.error_for(failed) from failed
        self._forget_transaction()
        if isinstance(exc, peewee.PeeweeException) and not isinstance(exc, ConnectionLost):
            raise self._lost_in_transaction(first_line(exc)) from exc

    def _commit(self, txn: Any, conn: Any) -> None:
        if not self._is_open(conn):  # the block caught the ConnectionLost and went on
            self._forget_transaction()
            raise self._lost_in_transaction("it was lost earlier in this transaction")
        try:
            txn.__exit__(None, None, None)
        except Exception as exc:
            if not self._lost(exc, conn):
                raise self.error_for(exc) from exc
            self._forget_transaction()
            raise ConnectionLost(
                f"lost the connection to {self.location} during COMMIT ({first_line(exc)}); "
                "whether the transaction was committed is unknown, so nothing was re-sent; "
                "the next call opens a fresh connection") from exc

    @contextmanager
    def _savepoint(self) -> Iterator[None]:
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

    # The write lock, per server.

    def _lock_before_begin(self, conn: Any, name: str) -> None:
        """Take a write lock that must be held before BEGIN (none here)."""

    def _lock_after_begin(self, conn: Any, name: str) -> None:
        """Take a write lock inside the transaction (none here)."""

    def _unlock(self, conn: Any, name: str | None) -> None:
        """Release a lock that outlives transactions (none here)."""

    def lock_key(self, name: str) -> int:
        """Return the signed 32-bit key a lock name maps to."""
        return zlib.crc32(name.encode()) - 2**31

    # -- whole operations ----------------------------------------------------------

    def retrying(self, operation: Callable[[], T], attempts: int = 5) -> T:
        """Run a whole operation of the store's own, again on a deadlock or serialization
        failure (the caller's blocks are never re-run)."""
        for attempt in range(attempts):
            try:
                return operation()
            except peewee.OperationalError as exc:
                if (self.database.in_transaction()
                        or server_code(exc) not in _RETRYABLE_CODES
                        or attempt == attempts - 1):
                    raise
                time.sleep(BACKOFF_BASE * 2**attempt * (0.5 + random.random()))
        raise AssertionError("unreachable")  # pragma: no cover

    @contextmanager
    def named_rows(self, conn: Any) -> Iterator[Any]:
        """Yield ``conn`` whose new cursors return rows addressable by column name."""
        yield _NamedRowConnection(conn, self.dict_cursor)


class _NamedRowConnection:
    """A server connection whose cursors return rows addressable by column name."""

    def __init__(self, conn: Any, dict_cursor: Callable[[Any], Any]) -> None:
        self._conn = conn
        self._dict_cursor = dict_cursor

    def cursor(self, *args: Any, **kwargs: Any) -> Any:
        if args or kwargs:
            return self._conn.cursor(*args, **kwargs)
        return self._dict_cursor(self._conn)

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Any:
        """Run ``sql`` on a new named-row cursor and return it (like sqlite3)."""
        cursor = self.cursor()
        cursor.execute(sql, params)
        return cursor

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn, name)


# -- PostgreSQL ---------------------------------------------------------------------------

# The savepoint each statement in an open transaction runs under.
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

_watched: weakref.WeakSet[peewee.Database] = weakref.WeakSet()  # see _watch_savepoints
_watch_lock = threading.Lock()


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


# The other transactions open on this database: every transaction holds the lock on
# its own virtual transaction id (virtualxid = virtualtransaction) while it runs.
_PG_OPEN_WRITERS = """SELECT l.virtualtransaction FROM pg_locks l
JOIN pg_stat_activity a ON a.pid = l.pid
WHERE l.locktype = 'virtualxid' AND l.virtualxid = l.virtualtransaction AND l.granted
AND l.pid <> pg_backend_pid() AND a.datname = current_database()
UNION ALL SELECT 'prepared:' || gid FROM pg_prepared_xacts
WHERE database = current_database()"""


class PostgresExecutor(ServerExecutor):
    """PostgreSQL: an advisory write lock; a savepoint under each statement of a transaction.

    PostgreSQL aborts the whole transaction on a failed statement; SQLite and MySQL
    undo only that statement. A savepoint per statement gives PostgreSQL theirs.
    """

    backend = "postgresql"
    full_codes = frozenset({"53100"})  # disk_full
    full_classes = frozenset({"DiskFull"})  # psycopg2.errors.DiskFull

    def __init__(self, database: peewee.Database, *, busy_timeout: float = 30.0,
                 lock_retries: int = 5) -> None:
        super().__init__(database, busy_timeout=busy_timeout, lock_retries=lock_retries)
        self._isolate_statements = True
        # psycopg2 binds parameters client-side, so the savepoint shares the statement's
        # round trip; psycopg 3 binds server-side: one statement per call.
        adapter = getattr(database, "_adapter", None)
        self._savepoint_in_statement = type(adapter).__name__ == "Psycopg2Adapter"
        _watch_savepoints(database)

    def insert_rows(self, one: Statement, many: Callable[[int], Statement],
                    rows: Sequence[Sequence[Any]]) -> list[int]:
        """Insert ``rows`` in multi-row ``INSERT ... RETURNING id``: one round trip per
        chunk, not per row. A statement draws its ids from the sequence row by row, in
        VALUES order (other sessions may draw between them), so sorted they are the
        rows' ids in order."""
        if len(rows) == 1:
            return [self.insert(one, rows[0])]
        ids: list[int] = []
        for size, values in chunks(rows):
            statement = many(size)
            ids += sorted(row[0] for row in self._call(ROWS, statement.sql, values))
        return ids

    def socket_of(self, conn: Any) -> int | None:
        """Return the psycopg2 connection's socket, or None once it is closed."""
        return None if conn.closed else int(conn.fileno())

    def dict_cursor(self, conn: Any) -> Any:
        """Return a psycopg2 ``DictCursor``."""
        from psycopg2.extras import DictCursor
        return conn.cursor(cursor_factory=DictCursor)

    def _lock_after_begin(self, conn: Any, name: str) -> None:
        run(conn, "SELECT pg_advisory_xact_lock(%s)", (self.lock_key(name),), ROWS)

    def open_writers(self) -> frozenset[Any] | None:
        """Return the virtual transaction ids of the other transactions open on this
        database (and the prepared ones, which can still commit).

        Every transaction holds the lock on its own virtual transaction id from its start
        to its end, whether or not it has written yet or ``track_activities`` is on, and
        a virtual id is never reused while the server runs: an open transaction is
        listed, and a listed id that is gone later has ended.
        """
        return self._writers(_PG_OPEN_WRITERS)

    def gap_settled(self, probe: Statement, first: int, last: int,
                    writers_then: frozenset[Any] | None,
                    writers_now: frozenset[Any] | None) -> bool:
        """Settled once every transaction open at the gap's first sight has ended.

        Exact: the sequence hands out ids in order, so the writer of a missing id took
        it before the visible row above it was written, that is before the read that
        saw the gap, and was open then. If it was still open when ``writers_then`` was
        listed it is in that set; once no member is open it has committed (the caller's
        read after this call sees its row) or rolled back (the id never appears). A
        transaction that began after the first sight cannot hold an id below a row
        already visible, so a steady stream of new writers never holds a gap.
        """
        return writers_then is not None and writers_now is not None \
            and not writers_then & writers_now

    def _in_transaction(self, runner: Callable[..., Any], sql: str, params: Any,
                        result: Callable[[Any], Any]) -> Any:
        """Run a statement under a savepoint, so that its failure undoes only itself and
        the transaction goes on (a bulk statement is undone as a whole)."""
        if not self._isolate_statements:
            return super()._in_transaction(runner, sql, params, result)
        conn = self._state.conn
        if not self._is_open(conn):
            raise self._lost_in_transaction("it was lost earlier in this transaction")
        state = self._state
        mark = (conn, state.transactions[0])
        held = getattr(state, _MARK, None)
        head = (_RESAVEPOINT_SQL if held is not None and held[0] is conn and held[1] is mark[1]
                else _SAVEPOINT_SQL)
        setattr(state, _MARK, mark)
        try:
            if self._savepoint_in_statement and runner is run:
                return runner(conn, f"{head}; {sql}", params, result)
            run(conn, head, None, nothing)
            return runner(conn, sql, params, result)
        except Exception as exc:
            raise self._undo_statement(exc, conn) from exc

    def _undo_statement(self, exc: Exception, conn: Any) -> BaseException:
        """Roll back to the failed statement's savepoint; return what to raise."""
        failed = self._failed_in_transaction(exc, conn)
        if isinstance(failed, ConnectionLost):
            return failed
        if server_code(exc) == _NO_SUCH_SAVEPOINT:
            setattr(self._state, _MARK, None)
            return type(failed)(
                f"the store's statement savepoint on {self.location} is gone "
                f"({first_line(exc)}): SQL run beside the store inside this transaction "
                "released or rolled back a savepoint older than it (nest blocks with "
                "transaction(), not the database's atomic()); the transaction is aborted")
        try:
            run(conn, _UNDO_SQL, None, nothing)
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
                run(conn, _RELEASE_SQL, None, nothing)
            except Exception as exc:
                raise self._failed_in_transaction(exc, conn) from exc

    def _forget_statement_savepoint(self) -> None:
        setattr(self._state, _MARK, None)


# -- MySQL / MariaDB ----------------------------------------------------------------------

# The other InnoDB transactions open, of connections on this database or on none (a
# connection elsewhere could still write here by a qualified name, but this store's
# writers connect to its database). Needs the PROCESS privilege.
_MYSQL_OPEN_WRITERS = """SELECT t.trx_mysql_thread_id FROM information_schema.INNODB_TRX t
LEFT JOIN information_schema.PROCESSLIST p ON p.ID = t.trx_mysql_thread_id
WHERE t.trx_mysql_thread_id <> CONNECTION_ID() AND (p.DB IS NULL OR p.DB = DATABASE())"""


class MySQLExecutor(ServerExecutor):
    """MySQL and MariaDB: a named write lock around the transaction; DDL commits itself."""

    backend = "mysql"
    # The server has closed the connection, though PyMySQL may still think it open:
    # server shutdown, packet too large, killed, gone away, lost, idle timeout.
    lost_codes = frozenset({1053, 1153, 1927, 2006, 2013, 2055, 4031})
    refused_codes = frozenset({1153})
    full_codes = frozenset({1114, 1021})  # ER_RECORD_FILE_FULL, ER_DISK_FULL
    _nowait: str | None = None

    def socket_of(self, conn: Any) -> int | None:
        """Return the PyMySQL connection's socket, or None once it is closed."""
        sock = conn._sock
        return None if sock is None else int(sock.fileno())

    def dict_cursor(self, conn: Any) -> Any:
        """Return a PyMySQL ``DictCursor``."""
        from pymysql.cursors import DictCursor
        return conn.cursor(DictCursor)

    def _lock_before_begin(self, conn: Any, name: str) -> None:
        cursor = conn.cursor()
        try:
            wait = max(1, int(self.busy_timeout)) * (self.lock_retries + 1)
            cursor.execute("SELECT GET_LOCK(CONCAT(%s, DATABASE()), %s)", (name + ":", wait))
            (got,) = cursor.fetchone()
        except Exception as exc:
            raise self.error_for(exc) from exc
        finally:
            cursor.close()
        if got != 1:
            raise LockTimeout(f"could not take the write lock on {self.location}")

    def _unlock(self, conn: Any, name: str | None) -> None:
        """Release the named lock (it outlives transactions); a lock on a dead connection
        died with it."""
        if name is None or not self._is_open(conn):
            return
        try:
            cursor = conn.cursor()
            try:
                cursor.execute("SELECT RELEASE_LOCK(CONCAT(%s, DATABASE()))", (name + ":",))
                cursor.fetchall()
            finally:
                cursor.close()
        except Exception as exc:
            if not self._lost(exc, conn):
                raise self.error_for(exc) from exc
            self._discard(conn)

    def open_writers(self) -> frozenset[Any] | None:
        """Return the thread ids of the other InnoDB transactions open (connections on
        this database or on none; needs the PROCESS privilege, else None)."""
        return self._writers(_MYSQL_OPEN_WRITERS)

    def gap_settled(self, probe: Statement, first: int, last: int,
                    writers_then: frozenset[Any] | None,
                    writers_now: frozenset[Any] | None) -> bool:
        """Settled when no other transaction is open and no row of the gap is locked.

        ``INNODB_TRX`` is a cache that InnoDB refreshes only when it was not read for
        0.1 s, so frequent readers can keep it stale: a transaction that began since
        the last refresh is missing from it. So the gap's ids are also read with a
        share lock that does not wait (``NOWAIT``): a row an open transaction inserted
        carries that transaction's lock, and the read fails at once. Between those two
        a writer can hide only in the microseconds between InnoDB reserving its id and
        inserting its row. Inside the caller's transaction the read would keep its locks,
        so the caller never asks then.
        """
        if writers_now is None or writers_now:
            return False
        try:
            self.fetchall(probe.sql + self._share_nowait(),
                          probe.complete((first, last)))
        except ConnectionLost:
            raise
        except peewee.DatabaseError as exc:  # locked (1205, 3572), or no NOWAIT here
            logger.debug("gap %d..%d on %s is not settled: %s", first, last, self.location,
                         first_line(exc))
            return False
        return True

    def _share_nowait(self) -> str:
        if self._nowait is None:
            version = str(self.fetchall("SELECT VERSION()")[0][0])
            # MariaDB (10.3+) spells it LOCK IN SHARE MODE NOWAIT; MySQL 8 FOR SHARE NOWAIT.
            self._nowait = (" LOCK IN SHARE MODE NOWAIT" if "mariadb" in version.lower()
                            else " FOR SHARE NOWAIT")
        return self._nowait

    def index_hint(self, index: str) -> str:
        """Return ``FORCE INDEX (`index`)``."""
        return f" FORCE INDEX (`{index}`)"

    def migration_step(self) -> AbstractContextManager[Any]:
        """No savepoint: MySQL commits at every DDL statement, which ends any savepoint."""
        return nullcontext()
