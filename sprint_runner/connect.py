"""A path or URL in, a configured peewee ``Database`` out (pragmas, pools, masking)."""
from __future__ import annotations

import importlib.util
import os
import re
import sqlite3
from typing import Any, cast
from urllib.parse import parse_qsl, unquote, urlsplit
from urllib.request import pathname2url

import peewee
from playhouse.pool import PooledMySQLDatabase, PooledPostgresqlDatabase

SYNCHRONOUS_LEVELS = ("OFF", "NORMAL", "FULL", "EXTRA")
SQLITE_CACHE_KIB = 16384
SQLITE_JOURNAL_SIZE_LIMIT = 64 * 1024 * 1024
DEFAULT_BUSY_TIMEOUT = 30.0
DEFAULT_POOL_SIZE = 8

_SCHEMES = {
    "sqlite": "sqlite",
    "postgres": "postgresql",
    "postgresql": "postgresql",
    "mysql": "mysql",
    "mariadb": "mysql",
}
_DRIVERS = {
    "postgresql": (("psycopg2", "psycopg"), "sprint-runner[postgres]"),
    "mysql": (("pymysql",), "sprint-runner[mysql]"),
}
_URL_RE = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def is_url(target: str) -> bool:
    """Return True if ``target`` looks like ``scheme://...`` rather than a file path."""
    return bool(_URL_RE.match(target))


def mask_url(target: str) -> str:
    """Return ``target`` with any password replaced by ``***`` (paths unchanged)."""
    if not is_url(target):
        return target
    parts = urlsplit(target)
    if parts.password is None:
        return target
    userinfo, _, hostinfo = parts.netloc.rpartition("@")
    user = userinfo.split(":", 1)[0]
    return parts._replace(netloc=f"{user}:***@{hostinfo}").geturl()


def backend_of(database: peewee.Database) -> str:
    """Return ``"sqlite"``, ``"postgresql"`` or ``"mysql"`` for a peewee database."""
    if isinstance(database, peewee.SqliteDatabase):
        return "sqlite"
    if isinstance(database, peewee.PostgresqlDatabase):
        return "postgresql"
    if isinstance(database, peewee.MySQLDatabase):
        return "mysql"
    raise TypeError(f"unsupported database type: {type(database).__name__}")


def describe(database: peewee.Database) -> str:
    """Return a human-readable location for ``database``, never with a password."""
    backend = backend_of(database)
    if backend == "sqlite":
        return str(database.database)
    params = database.connect_params
    user = params.get("user")
    host = params.get("host", "localhost")
    port = params.get("port")
    where = f"{host}:{port}" if port else str(host)
    auth = f"{user}:***@" if params.get("password") else (f"{user}@" if user else "")
    return f"{backend}://{auth}{where}/{database.database}"


def sqlite_pragmas(busy_timeout: float, synchronous: str) -> list[tuple[str, Any]]:
    """Return the pragmas every new SQLite connection gets, in order."""
    return [
        ("journal_mode", "wal"),
        ("synchronous", synchronous),
        ("foreign_keys", 1),
        ("busy_timeout", int(busy_timeout * 1000)),
        ("cache_size", -SQLITE_CACHE_KIB),
        ("journal_size_limit", SQLITE_JOURNAL_SIZE_LIMIT),
    ]


def connect_sqlite_readonly(path: str, busy_timeout: float = DEFAULT_BUSY_TIMEOUT
                            ) -> sqlite3.Connection:
    """Open a plain read-only connection to the SQLite file ``path`` (no pragma applied).

    Read-only, so neither reading nor closing changes the file: closing cannot
    checkpoint a WAL left behind into it. A hot journal left by a crashed writer needs
    a read-write connection to roll back; then one is opened instead: that recovery is
    what SQLite does on any open, not a change of ours.
    """
    conn = sqlite3.connect(f"file:{pathname2url(os.path.abspath(path))}?mode=ro", uri=True,
                           isolation_level=None, timeout=busy_timeout)
    try:
        conn.execute("SELECT 1 FROM sqlite_master LIMIT 1").fetchall()
    except sqlite3.DatabaseError as exc:
        if "readonly" not in str(exc) and "read-only" not in str(exc):
            return conn  # the caller's first query reports the problem
        conn.close()
        conn = sqlite3.connect(path, isolation_level=None, timeout=busy_timeout)
    return conn


def copy_sqlite_file(source: str, dest: str, *, busy_timeout: float) -> None:
    """Copy a live SQLite database into the file ``dest`` with SQLite's online backup API.

    One step (all pages at once) reads one consistent snapshot, so writers in
    other processes may go on meanwhile (in WAL mode they are never blocked). The
    source is only read. ``dest`` should be a temporary from :mod:`sprint_runner.files`,
    which also keeps the journal SQLite creates beside it out of anyone else's reach.
    """
    src = connect_sqlite_readonly(source, busy_timeout)
    try:
        copy = sqlite3.connect(dest)
        try:
            src.backup(copy)
        finally:
            copy.close()
    finally:
        src.close()


def _check_options(busy_timeout: float, synchronous: str, pool_size: int) -> str:
    if isinstance(busy_timeout, bool) or not isinstance(busy_timeout, (int, float)):
        raise TypeError(f"busy_timeout must be a number of seconds, not {busy_timeout!r}")
    if busy_timeout < 0:
        raise ValueError(f"busy_timeout must be >= 0, got {busy_timeout!r}")
    if not isinstance(synchronous, str) or synchronous.upper() not in SYNCHRONOUS_LEVELS:
        raise ValueError(
            f"synchronous must be one of {', '.join(SYNCHRONOUS_LEVELS)}; got {synchronous!r}"
        )
    if isinstance(pool_size, bool) or not isinstance(pool_size, int) or pool_size < 1:
        raise ValueError(f"pool_size must be an int >= 1, got {pool_size!r}")
    return synchronous.upper()


def _require_driver(backend: str) -> None:
    modules, extra = _DRIVERS[backend]
    if not any(importlib.util.find_spec(m) for m in modules):
        raise ValueError(
            f"{backend} needs a database driver ({' or '.join(modules)}): "
            f"pip install '{extra}'"
        )


def _server_params(target: str) -> tuple[str, dict[str, Any]]:
    parts = urlsplit(target)
    name = unquote(parts.path.lstrip("/"))
    if not name:
        raise ValueError(f"database URL names no database: {mask_url(target)}")
    params: dict[str, Any] = {}
    if parts.username:
        params["user"] = unquote(parts.username)
    if parts.password:
        params["password"] = unquote(parts.password)
    if parts.hostname:
        params["host"] = parts.hostname
    try:
        port = parts.port
    except ValueError:
        raise ValueError(f"database URL has a bad port: {mask_url(target)}") from None
    if port:
        params["port"] = port
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        params[key] = int(value) if value.isdigit() else value
    return name, params


def open_database(target: str | os.PathLike[str] | peewee.Database, *,
                  busy_timeout: float = DEFAULT_BUSY_TIMEOUT, synchronous: str = "NORMAL",
                  pool_size: int = DEFAULT_POOL_SIZE) -> peewee.Database:
    """Return a configured, not yet connected peewee database for ``target``.

    ``target`` is a peewee ``Database`` (used as given, with foreign keys switched
    on for SQLite), a file path, or a URL: ``sqlite:///relative/path``,
    ``sqlite:////absolute/path``, ``postgresql://user:pass@host:port/db`` or
    ``mysql://user:pass@host:port/db``. Server databases are pooled (at most
    ``pool_size`` connections); SQLite gets WAL, the chosen ``synchronous`` level,
    foreign keys and a ``busy_timeout`` in seconds on every connection.
    """
    level = _check_options(busy_timeout, synchronous, pool_size)
    if isinstance(target, peewee.Database):
        if target.deferred:
            raise ValueError("the peewee database given is not initialised (deferred)")
        backend_of(target)
        if isinstance(target, peewee.SqliteDatabase):
            # peewee keeps a database's pragmas in _pragmas and applies them per connection.
            pragmas = dict(target._pragmas or ())  # type: ignore[attr-defined]
            pragmas.setdefault("foreign_keys", 1)
            target._pragmas = list(pragmas.items())  # type: ignore[attr-defined]
        return target
    if isinstance(target, os.PathLike):
        target = os.fspath(target)
    if not isinstance(target, str):
        raise TypeError(f"database must be a path, a URL or a peewee Database, not {target!r}")
    if not target:
        raise ValueError("database path must not be empty")
    if is_url(target):
        scheme = urlsplit(target).scheme.lower()
        backend = _SCHEMES.get(scheme)
        if backend is None:
            raise ValueError(
                f"unsupported database URL scheme {scheme!r} in {mask_url(target)}; "
                "use sqlite:///, postgresql:// or mysql://"
            )
        if backend == "sqlite":
            path = unquote(urlsplit(target).path)[1:]
            if not path:
                raise ValueError(f"sqlite URL names no file: {target}")
            target = path
        else:
            name, params = _server_params(target)
            _require_driver(backend)
            pool = {"max_connections": pool_size, "stale_timeout": 300,
                    "timeout": max(busy_timeout, 1)}
            if backend == "postgresql":
                return cast(peewee.Database, PooledPostgresqlDatabase(name, **pool, **params))
            # LONGTEXT: MySQL's TEXT stops at 64 KiB where SQLite and PostgreSQL do not.
            # FOUND_ROWS (client flag 2): UPDATE reports rows matched, as SQLite and
            # PostgreSQL do, not only rows whose values changed.
            params.setdefault("client_flag", 2)
            return cast(peewee.Database, PooledMySQLDatabase(
                name, field_types={"TEXT": "LONGTEXT"}, charset="utf8mb4", **pool, **params))
    if target == ":memory:" or target.startswith("file::memory:"):
        raise ValueError(
            "in-memory SQLite is not supported: every thread would see its own "
            "empty database; use a file (a temporary one in tests)"
        )
    return peewee.SqliteDatabase(
        target, pragmas=sqlite_pragmas(busy_timeout, level), timeout=busy_timeout
    )
