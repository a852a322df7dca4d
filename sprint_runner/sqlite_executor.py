"""SQLite: one persistent connection per thread, ``BEGIN IMMEDIATE`` retried while busy.

A SQLite file is shared by processes that know nothing of each other, so the write
lock is SQLite's own: a multi-statement write takes it up front (``BEGIN
IMMEDIATE``), and a busy lock is retried a bounded number of times with a jittered
backoff (:class:`~sprint_runner.errors.LockTimeout` after that), never surfacing as
"database is locked".
"""
from __future__ import annotations

import logging
import os
import random
import sqlite3
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, cast

import peewee

from . import files
from .connect import copy_sqlite_file
from .errors import LockTimeout, StorageFull
from .executor import (
    BACKOFF_BASE,
    BACKOFF_CAP,
    FIRST_ROW,
    LASTROWID,
    ROWCOUNT,
    ROWS,
    WRITE_LOCK,
    Executor,
    Row,
    T,
    chunks,
)
from .statements import Statement

logger = logging.getLogger("sprint_runner")

_BUSY_CODES = (5, 6)  # SQLITE_BUSY, SQLITE_LOCKED (and their extended codes' low byte)
_FULL_CODE = 13  # SQLITE_FULL
_IOERR_CODE = 10  # SQLITE_IOERR: how WAL mode often reports ENOSPC (writing -wal/-shm)
_NEARLY_FULL = 1 << 20  # an I/O error with less than this free is taken for ENOSPC
_DOOMED = "sprint_runner_doomed"  # on peewee's thread state: a transaction SQLite rolled back
# SQLite 3.32 raised the bound parameters per statement from 999 to 32766: enough for
# a chunk of events (10 columns x 1000 rows) in one INSERT.
_MULTI_ROW = sqlite3.sqlite_version_info >= (3, 32, 0)
_MULTI_ROW_FROM = 1000


def is_busy(exc: BaseException) -> bool:
    """Return True if ``exc`` is SQLite reporting that another connection holds a lock."""
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None and code & 0xFF in _BUSY_CODES:
        return True
    text = str(exc).lower()
    return "database is locked" in text or "database is busy" in text or "table is locked" in text


def permission_problem(path: str, *, write: bool) -> str | None:
    """Say why this process may not read (or, with ``write``, write) the SQLite file
    ``path`` and its folder (SQLite writes -wal/-shm beside it), or None if it may."""
    folder = os.path.dirname(os.path.abspath(path)) or "."
    who = f"this process (uid {os.geteuid()})" if hasattr(os, "geteuid") else "this process"
    checks = [(path, os.R_OK, "read")]
    if write:
        checks += [(path, os.W_OK, "write"), (folder, os.W_OK | os.X_OK, "create files in")]
    for name, bits, verb in checks:
        if os.path.exists(name) and not os.access(name, bits):
            st = os.stat(name)
            return (f"permission denied: {who} may not {verb} {name} (mode "
                    f"{st.st_mode & 0o777:04o}, owner uid {st.st_uid})")
        if write and os.path.exists(name):
            try:
                if os.statvfs(name).f_flag & getattr(os, "ST_RDONLY", 1):
                    return f"{name} is on a read-only filesystem"
            except (OSError, AttributeError):
                pass
    return None


def create_private(path: str) -> None:
    """Create the database file ``path`` owner-only (0600, whatever the umask) if nothing
    is there, before SQLite opens it: SQLite gives its -wal and -shm files the database
    file's mode. An existing file (or anything else at the path) is left as it is."""
    if os.path.lexists(path):
        return
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0),
                     0o600)
    except FileExistsError:  # another process created it first: theirs stands
        return
    except OSError as exc:
        raise peewee.OperationalError(
            f"cannot create the database file {path}: {exc.strerror or exc} "
            f"(the folder {os.path.dirname(os.path.abspath(path))} must be writable "
            "by this user)") from exc
    try:
        os.fchmod(fd, 0o600)  # the umask can only have narrowed it; make it exact
    finally:
        os.close(fd)


def free_bytes(path: str) -> int | None:
    """Return the bytes an unprivileged writer may still use on ``path``'s filesystem
    (its folder's, if it does not exist), or None if that cannot be told."""
    try:
        st = os.statvfs(os.path.dirname(os.path.abspath(path)) or ".")
    except (OSError, AttributeError):
        return None
    return st.f_bavail * st.f_frsize


def is_full(exc: BaseException, path: str) -> bool:
    """Return True if ``exc`` is SQLite reporting the disk or the database full
    (``SQLITE_FULL``, or an I/O error while the file's filesystem has no room left)."""
    for candidate in (exc, exc.__cause__):
        if candidate is None:
            continue
        code = getattr(candidate, "sqlite_errorcode", None)
        if code is not None:
            if code & 0xFF == _FULL_CODE:
                return True
            if code & 0xFF == _IOERR_CODE:
                free = free_bytes(path)
                return free is not None and free < _NEARLY_FULL
        if "database or disk is full" in str(candidate):
            return True
    return False


def sqlite_integrity_problems(fetchall: Callable[[str], Sequence[Sequence[Any]]]) -> list[str]:
    """Return what SQLite's integrity and foreign-key checks report (empty when healthy)."""
    problems = [str(r[0]) for r in fetchall("PRAGMA integrity_check") if r[0] != "ok"]
    problems += [f"foreign key: {tuple(r)}" for r in fetchall("PRAGMA foreign_key_check")]
    return problems


def sqlite_storage_info(path: str) -> dict[str, Any]:
    """Return the storage figures of the SQLite file ``path``, read from the filesystem
    alone (no connection: the file is not touched)."""
    info: dict[str, Any] = {"backend": "sqlite", "location": path}
    for key, name in (("file_bytes", path), ("wal_bytes", path + "-wal")):
        info[key] = os.path.getsize(name) if os.path.exists(name) else 0
    return info


def backup_sqlite_file(path: str, version: int, busy_timeout: float) -> str:
    """Copy a SQLite file to ``<path>.bak-v<version>`` (else ``.1``, ``.2``, ...: never
    overwriting anything); return the copy."""
    dest = files.create_numbered(
        f"{path}.bak-v{version}",
        lambda temporary: copy_sqlite_file(path, temporary, busy_timeout=busy_timeout),
        protect=[path], beside=files.SQLITE_REPLAYED, what="pre-migration backup")
    logger.warning("backed up %s to %s before migrating it from schema version %d",
                   path, dest, version)
    return dest


class SqliteExecutor(Executor):
    """SQLite: a persistent connection per thread; the file's own lock, retried while busy."""

    backend = "sqlite"

    def __init__(self, database: peewee.Database, *, busy_timeout: float = 30.0,
                 lock_retries: int = 5) -> None:
        super().__init__(database, busy_timeout=busy_timeout, lock_retries=lock_retries)
        # Opened mode=ro (ReadOnlySqliteDatabase): the file exists and is never created.
        self.read_only = bool(getattr(database, "read_only", False))
        # Before anything connects (peewee itself may, reading the tables).
        if not self.read_only:
            create_private(self.path)

    @property
    def path(self) -> str:
        """The database file."""
        return str(self.database.database)

    # -- connections ---------------------------------------------------------------

    def connect(self) -> Any:
        """Open this thread's connection if it is closed; return it."""
        # The first connection switches a new file to WAL, which needs the file to
        # itself; SQLite reports busy there at once instead of waiting out
        # busy_timeout, so processes opening a new file together retry here.
        if self._state.closed and not self.read_only:
            create_private(self.path)
        try:
            self._retry_locked(lambda: self.database.connect(reuse_if_open=True))
        except LockTimeout:
            raise
        except peewee.OperationalError as exc:
            denied = permission_problem(self.path, write=not self.read_only)
            if denied is None:
                raise
            raise peewee.OperationalError(
                f"cannot open {self.path} for {'reading' if self.read_only else 'writing'}: "
                f"{denied} ({exc})") from exc
        return self._state.conn

    @contextmanager
    def session(self) -> Iterator[Any]:
        """Yield this thread's persistent connection."""
        yield self._state.conn or self.connect()

    # -- statements ----------------------------------------------------------------

    # Each fast path runs inline (a point read costs ~5 us; another call frame shows);
    # what happens when it fails lives once, in _failed.

    def fetchall(self, sql: str, params: Sequence[Any] = ()) -> Sequence[Sequence[Any]]:
        """Run a query and return all its rows as tuples (or the thread's row type)."""
        conn = self._state.conn or self.connect()
        try:
            return cast(Sequence[Sequence[Any]], conn.execute(sql, params).fetchall())
        except Exception as exc:
            return cast(Sequence[Sequence[Any]], self._failed(exc, ROWS, sql, params))

    def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Run a write statement and return the number of rows it changed."""
        conn = self._state.conn or self.connect()
        try:
            return cast(int, conn.execute(sql, params).rowcount)
        except Exception as exc:
            return cast(int, self._failed(exc, ROWCOUNT, sql, params))

    def insert_id(self, sql: str, params: Sequence[Any]) -> int:
        """Run an INSERT of one row and return its id."""
        conn = self._state.conn or self.connect()
        try:
            return cast(int, conn.execute(sql, params).lastrowid)
        except Exception as exc:
            return cast(int, self._failed(exc, LASTROWID, sql, params))

    # A point read is ~6 us: one() runs its query inline, without the call into
    # fetchall() and the constant-less complete() (0.4-0.6 us, measurable in bench.py).
    def one(self, statement: Statement, params: Sequence[Any] = ()) -> Row | None:
        """Return the statement's first row as a dict of its columns, or None."""
        if statement.template:
            params = statement.complete(params)
        conn = self._state.conn or self.connect()
        try:
            row = conn.execute(statement.sql, params).fetchone()
        except Exception as exc:
            row = self._failed(exc, FIRST_ROW, statement.sql, params)
        return dict(zip(statement.columns, row)) if row is not None else None

    def all(self, statement: Statement, params: Sequence[Any] = ()) -> list[Row]:
        """Return every row of the statement as a dict of its columns."""
        columns = statement.columns
        return [dict(zip(columns, row)) for row in self.fetchall(
            statement.sql, statement.complete(params) if statement.template else params)]

    def column(self, statement: Statement, params: Sequence[Any] = ()) -> list[Any]:
        """Return the first value of every row of the statement."""
        return [row[0] for row in self.fetchall(
            statement.sql, statement.complete(params) if statement.template else params)]

    def insert_rows(self, one: Statement, many: Callable[[int], Statement],
                    rows: Sequence[Sequence[Any]]) -> list[int]:
        """Insert ``rows`` in multi-row INSERTs: with one writer at a time, one
        statement's ids are consecutive and the last is its ``lastrowid``."""
        if len(rows) == 1:
            return [self.insert(one, rows[0])]
        ids: list[int] = []
        for size, values in chunks(rows):
            last = self.insert(many(size), values)
            ids += range(last - size + 1, last + 1)
        return ids

    def storage_full(self, exc: BaseException) -> BaseException | None:
        """Return StorageFull, naming the file and the space left, if SQLite reports
        the disk or the database full."""
        if isinstance(exc, StorageFull):
            return exc
        if not is_full(exc, self.path):
            return None
        free = free_bytes(self.path)
        left = "unknown space" if free is None else f"{free} bytes"
        return StorageFull(
            f"{self.path}: the disk or database is full ({left} left on its filesystem); "
            "the call was rolled back and nothing of it was written; reads still work, "
            "and writes succeed again once space is freed (no reopening needed)",
            path=self.path, free_bytes=free)

    def _failed(self, exc: Exception, result: Callable[[Any], T], sql: str,
                params: Sequence[Any]) -> T:
        """Handle a failed statement: outside a transaction a statement is its own lock
        acquisition, so a busy one is retried; anything else is raised."""
        in_transaction = self.database.in_transaction()
        if is_busy(exc) and not in_transaction:
            return self._retry_locked(lambda: result(self._state.conn.execute(sql, params)),
                                      failed=exc)
        doomed = getattr(self._state, _DOOMED, None)
        if doomed is not None and in_transaction:
            raise doomed from exc
        error = self.error_for(exc)
        if isinstance(error, StorageFull) and in_transaction:
            self._doom_if_rolled_back(error)
        raise error from exc

    def _doom_if_rolled_back(self, error: StorageFull) -> None:
        """SQLite may roll the whole transaction back on a full disk: then close the
        connection, so that no later statement of the block runs (and commits) outside
        it; each fails with ``error`` until the block ends."""
        conn = self._state.conn
        if conn is None or conn.in_transaction:
            return
        logger.warning("SQLite rolled the transaction on %s back when the disk filled; "
                       "failing the rest of the block", self.path)
        setattr(self._state, _DOOMED, StorageFull(
            f"{error} (SQLite rolled the whole transaction back: nothing of the block "
            "was written)", path=error.path, free_bytes=error.free_bytes))
        try:
            conn.close()
        except Exception:
            logger.debug("closing the connection to %s failed", self.path, exc_info=True)

    def _commit_error(self, exc: BaseException) -> BaseException:
        """Return what to raise for a failed COMMIT. When the disk is full SQLite rolls
        back itself, so peewee's ROLLBACK after it fails ("no transaction is active")
        and hides the commit's error: look for it among the errors being handled."""
        seen: BaseException | None = exc
        for _ in range(6):
            if seen is None:
                break
            full = self.storage_full(seen)
            if full is not None:
                return full
            seen = seen.__cause__ or seen.__context__
        return self.error_for(exc)

    def _salvage(self, conn: Any) -> None:
        """After a failed COMMIT or ROLLBACK: keep the thread's connection if it is out of
        any transaction and answers; else roll it back, or discard it (the next call
        opens a fresh one)."""
        doomed = getattr(self._state, _DOOMED, None)
        setattr(self._state, _DOOMED, None)
        try:
            if conn.in_transaction:
                conn.rollback()
            conn.execute("SELECT 1").fetchall()
            if not conn.in_transaction:
                return
        except Exception:
            logger.debug("the connection to %s is unusable", self.path, exc_info=True)
        if doomed is None:
            logger.warning("discarding the connection to %s after a failed commit",
                           self.path)
        try:
            conn.close()
        except Exception:
            logger.debug("closing the connection to %s failed", self.path, exc_info=True)
        if self._state.conn is conn:
            self._state.reset()

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        """Run one statement for many parameter rows (inside the caller's transaction)."""
        conn = self._state.conn or self.connect()
        try:
            cursor = conn.cursor()
            cursor.executemany(sql, rows)
            cursor.close()
        except Exception as exc:
            doomed = getattr(self._state, _DOOMED, None)
            if doomed is not None and self.database.in_transaction():
                raise doomed from exc
            error = self.error_for(exc)
            if isinstance(error, StorageFull) and self.database.in_transaction():
                self._doom_if_rolled_back(error)
            raise error from exc

    def index_hint(self, index: str) -> str:
        """Return ``INDEXED BY "index"``."""
        return f' INDEXED BY "{index}"'

    def prefers_executemany(self, rows: int) -> bool:
        """A short chunk goes faster through executemany; a full one as one INSERT."""
        return rows < _MULTI_ROW_FROM or not _MULTI_ROW

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
                delay = min(BACKOFF_CAP, BACKOFF_BASE * 2**(attempts - 1)) * (
                    0.5 + random.random())
                logger.debug("write lock busy on %s (attempt %d), retrying in %.3fs",
                             self.location, attempts, delay)
                time.sleep(delay)
            try:
                return operation()
            except Exception as exc:
                if not is_busy(exc):
                    raise self.error_for(exc) from exc
                failed = exc
                attempts += 1

    @contextmanager
    def transaction(self, *, lock: str = WRITE_LOCK) -> Iterator[None]:
        """Run the block atomically; nested blocks are savepoints.

        The outermost block takes the write lock first (``BEGIN IMMEDIATE``, retried
        while busy), so read-modify-write blocks never interleave. SQLite has one
        lock per file: ``lock`` only names it.
        """
        db = self.database
        if db.in_transaction():
            try:
                with db.atomic():
                    yield
            except Exception as exc:
                # SQLite rolled the whole transaction back (a full disk): its savepoint
                # is gone too; say why rather than "no such savepoint".
                doomed = getattr(self._state, _DOOMED, None)
                if doomed is not None and exc is not doomed:
                    raise doomed from exc
                raise
            return
        with self.session():
            txn = db.transaction("IMMEDIATE")
            self._retry_locked(txn.__enter__)
            conn = self._state.conn
            try:
                yield
            except BaseException:
                doomed = getattr(self._state, _DOOMED, None)
                try:
                    txn.__exit__(*sys.exc_info())
                except Exception:
                    if doomed is None:  # else the connection was closed on purpose
                        logger.warning("rolling back on %s failed", self.path, exc_info=True)
                    self._salvage(conn)
                else:
                    if doomed is not None:
                        self._salvage(conn)
                raise
            doomed = getattr(self._state, _DOOMED, None)
            if doomed is not None:  # the block caught the StorageFull and went on
                try:
                    txn.__exit__(type(doomed), doomed, None)
                except Exception:
                    pass
                self._salvage(conn)
                raise doomed
            try:
                txn.__exit__(None, None, None)
            except Exception as exc:
                self._salvage(conn)
                raise self._commit_error(exc) from exc

    @contextmanager
    def snapshot(self) -> Iterator[None]:
        """Read several statements from one consistent snapshot (no write lock taken)."""
        db = self.database
        if db.in_transaction():
            yield
            return
        with self.session():
            txn = db.transaction()
            try:
                txn.__enter__()
            except Exception as exc:
                raise self.error_for(exc) from exc
            try:
                yield
            except BaseException:
                txn.__exit__(*sys.exc_info())
                raise
            txn.__exit__(None, None, None)

    @contextmanager
    def named_rows(self, conn: Any) -> Iterator[Any]:
        """Yield ``conn`` with ``sqlite3.Row`` rows for the block."""
        previous = conn.row_factory
        conn.row_factory = sqlite3.Row
        try:
            yield conn
        finally:
            conn.row_factory = previous

    # -- the file ------------------------------------------------------------------

    def file_copier(self) -> Callable[[str], None]:
        """Return an online copy of the file (SQLite's backup API) into a path."""
        source, timeout = self.path, self.busy_timeout
        return lambda dest: copy_sqlite_file(source, dest, busy_timeout=timeout)

    def integrity_problems(self) -> list[str]:
        """Return what ``PRAGMA integrity_check`` and ``foreign_key_check`` report."""
        return sqlite_integrity_problems(self.fetchall)

    def storage_info(self) -> dict[str, Any]:
        """Return the file's path and the sizes of the file and its WAL."""
        return sqlite_storage_info(self.path)

    # -- migrations -------------------------------------------------------------------

    @contextmanager
    def migration_session(self) -> Iterator[None]:
        """Foreign keys off for the run: a checked table rebuild needs them off."""
        # Must precede BEGIN: SQLite ignores this pragma inside a transaction.
        self.database.execute_sql("PRAGMA foreign_keys = 0")
        try:
            yield
        finally:
            self.database.execute_sql("PRAGMA foreign_keys = 1")

    def before_migrating(self, version: int, has_data: bool) -> None:
        """Back a file holding data up once, before its first migration."""
        if has_data:
            backup_sqlite_file(self.path, version, self.busy_timeout)

    def foreign_key_violations(self) -> list[Any]:
        """Return the rows ``PRAGMA foreign_key_check`` reports."""
        return list(self.fetchall("PRAGMA foreign_key_check"))
