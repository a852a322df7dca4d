"""A path or URL in, a configured peewee ``Database`` out (pragmas, pools, masking)."""
from __future__ import annotations

import importlib.util
import os
import re
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast
from urllib.parse import unquote, urlsplit
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
# C0 controls and DEL: urlsplit silently drops some of them, SQLite would not.
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")
_SURROGATE_RE = re.compile(r"[\ud800-\udfff]")
_UNPRINTABLE_RE = re.compile(r"[\x00-\x1f\x7f-\x9f\ud800-\udfff]")
# A query field whose name says it holds a secret (password, passwd, sslpassword, ...).
_SECRET_FIELD_RE = re.compile(r"([?&;][^=&?#;]*pass[^=&?#;]*=)[^&#]*", re.IGNORECASE)
_URL_IN_TEXT_RE = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>]*")
# A password in a connection string (password=...) or a dict's repr ('password': ...).
_SECRET_PAIR_RE = re.compile(
    r"""(\b\w*pass\w*\s*=\s*|['"]\w*pass\w*['"]\s*:\s*)"""
    r"""(b?'(?:[^'\\]|\\.)*'|b?"(?:[^"\\]|\\.)*"|[^\s&,;)}]+)""",
    re.IGNORECASE)
_MAX_SECONDS = 31_536_000  # one year: PyMySQL's own bound for connect_timeout


def is_url(target: str) -> bool:
    """Return True if ``target`` looks like ``scheme://...`` rather than a file path."""
    return bool(_URL_RE.match(target))


def _printable(text: str) -> str:
    """``text`` with controls and lone surrogates as escapes, safe to print and encode."""
    return _UNPRINTABLE_RE.sub(
        lambda m: f"\\x{ord(m[0]):02x}" if ord(m[0]) < 0x100 else f"\\u{ord(m[0]):04x}", text)


def _is_secret_key(key: str) -> bool:
    return "pass" in key.lower()


def _mask_unparsed(target: str) -> str:
    """Mask a URL that does not parse: password-like query values, then everything
    between ``://`` and the last ``@`` (where the user and password would be)."""
    scheme, sep, rest = target.partition("://")
    rest = _SECRET_FIELD_RE.sub(r"\1***", rest)
    if "@" in rest:
        rest = "***@" + rest.rpartition("@")[2]
    return _printable(scheme + sep + rest)


def _mask_rest(rest: str) -> str:
    """Mask what follows a URL's host: password-like query values and any fragment."""
    rest, hash_, fragment = rest.partition("#")
    path, question, query = rest.partition("?")
    fields = []
    for field_ in query.split("&") if question else ():
        key, eq, _ = field_.partition("=")
        secret = eq and _is_secret_key(unquote(key.replace("+", " ")))
        fields.append(f"{key}=***" if secret else field_)
    masked = path + question + "&".join(fields)
    return masked + (hash_ + "***" if fragment else hash_)


@dataclass(frozen=True)
class DatabaseURL:
    """A database URL taken apart by :func:`parse_url`; ``masked`` is safe to show."""

    scheme: str
    user: str | None
    password: str | None = field(repr=False)
    host: str | None
    port: int | None
    path: str
    """The path as written (still percent-encoded), from its leading ``/``."""
    query: tuple[tuple[str, str], ...]
    """The query's ``(key, value)`` pairs, decoded, in order, repeats kept."""
    has_authority: bool
    """Whether anything (a user, a host, a port) sits between ``//`` and the path."""
    has_fragment: bool
    masked: str
    """The URL with the password and password-like query values replaced by ``***``."""

    @property
    def backend(self) -> str | None:
        """``"sqlite"``, ``"postgresql"``, ``"mysql"``, or None for another scheme."""
        return _SCHEMES.get(self.scheme)


def parse_url(target: str) -> DatabaseURL:
    """Take a ``scheme://...`` database URL apart; raise ``ValueError`` if it does not parse.

    Every message names the problem and shows the URL masked. A URL that does not
    parse (a lone surrogate or a control character, a malformed host or port, an
    ``@`` after the host, which is what a password holding an unencoded ``/``, ``?``
    or ``#`` looks like) is shown with everything between ``://`` and its last
    ``@`` masked.
    """
    if not is_url(target):
        raise ValueError(f"not a database URL (scheme://...): {_mask_unparsed(target)}")
    bad = _SURROGATE_RE.search(target)
    if bad:
        raise ValueError(f"database URL is not valid text (a lone surrogate, "
                         f"\\u{ord(bad[0]):04x}, at position {bad.start()}): "
                         f"{_mask_unparsed(target)}")
    bad = _CONTROL_RE.search(target)
    if bad:
        raise ValueError(f"database URL holds a control character (\\x{ord(bad[0]):02x}) at "
                         f"position {bad.start()}: {_mask_unparsed(target)}")
    try:
        parts = urlsplit(target)
    except ValueError:
        # urlsplit's own messages may quote the host part, password and all.
        raise ValueError(f"database URL has a bad host: {_mask_unparsed(target)}") from None
    scheme_end = len(parts.scheme) + len("://")
    rest = target[scheme_end + len(parts.netloc):]
    if "@" in rest and (parts.netloc or _SCHEMES.get(parts.scheme) != "sqlite"):
        raise ValueError(
            "database URL has an '@' after the host: percent-encode a '/', '?' or '#' "
            f"in the password (%2F, %3F, %23) and an '@' after the host (%40): "
            f"{_mask_unparsed(target)}")
    try:
        port = parts.port
    except ValueError:
        raise ValueError(f"database URL has a bad port: {_mask_unparsed(target)}") from None
    userinfo, at, hostinfo = parts.netloc.rpartition("@")
    netloc = parts.netloc
    if at and parts.password is not None:
        netloc = f"{userinfo.split(':', 1)[0]}:***@{hostinfo}"
    query = tuple(
        (unquote(key.replace("+", " ")), unquote(value.replace("+", " ")))
        for key, _, value in (f.partition("=") for f in parts.query.split("&") if f))
    return DatabaseURL(
        scheme=parts.scheme, user=None if parts.username is None else unquote(parts.username),
        password=None if parts.password is None else unquote(parts.password),
        host=parts.hostname, port=port, path=parts.path, query=query,
        has_authority=bool(parts.netloc), has_fragment=bool(parts.fragment),
        masked=f"{parts.scheme}://{netloc}{_mask_rest(rest)}")


def mask_url(target: str) -> str:
    """Return ``target`` with any password replaced by ``***`` (paths unchanged).

    Never raises: a URL that does not parse is masked from ``://`` to its last ``@``.
    """
    if not is_url(target):
        return target
    try:
        return parse_url(target).masked
    except ValueError:
        return _mask_unparsed(target)


def mask_secrets(text: str, target: str | None = None) -> str:
    """Return ``text`` (an error message, a log line) with passwords masked.

    Structural, never by searching for the password itself (a password ``1`` must
    not turn ``127.0.0.1`` into ``***27.0.0.***``): the URL ``target`` as written
    becomes its masked form, so does any other URL in ``text``, and so does the
    value of any ``password=...``-like pair (a driver's connection string).
    """
    if target is not None and is_url(target):
        text = text.replace(target, mask_url(target))
    text = _URL_IN_TEXT_RE.sub(lambda m: mask_url(m[0]), text)
    return _SECRET_PAIR_RE.sub(r"\1***", text)


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
    host = f"[{host}]" if ":" in str(host) else host  # an IPv6 address
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


def readonly_uri(path: str) -> str:
    """Return the SQLite URI that opens the file ``path`` read-only (``mode=ro``)."""
    return f"file:{pathname2url(os.path.abspath(path))}?mode=ro"


class ReadOnlySqliteDatabase(peewee.SqliteDatabase):
    """A SQLite database whose every connection is opened ``mode=ro``: SQLite itself
    refuses any write ("attempt to write a readonly database"), and ``query_only`` is set
    on top. It never creates the file."""

    read_only = True

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(readonly_uri(self.database), uri=True,
                               timeout=self._timeout,  # type: ignore[attr-defined]
                               isolation_level=None, **self.connect_params)
        try:
            self._add_conn_hooks(conn)  # type: ignore[attr-defined]
        except Exception:
            conn.close()
            raise
        return conn


def sqlite_readonly_pragmas(busy_timeout: float) -> list[tuple[str, Any]]:
    """Return the pragmas of a read-only SQLite connection: none that writes the file
    (journal mode and size are the writers' business)."""
    return [("query_only", 1), ("foreign_keys", 1), ("busy_timeout", int(busy_timeout * 1000)),
            ("cache_size", -SQLITE_CACHE_KIB)]


# What makes a server session read-only, per backend: the server refuses every write.
_READ_ONLY_SESSION: dict[str, tuple[str, str]] = {
    "postgresql": ("options", "-c default_transaction_read_only=on"),
    "mysql": ("init_command", "SET SESSION TRANSACTION READ ONLY"),
}


def connect_sqlite_readonly(path: str, busy_timeout: float = DEFAULT_BUSY_TIMEOUT
                            ) -> sqlite3.Connection:
    """Open a plain read-only connection to the SQLite file ``path`` (no pragma applied).

    Read-only, so neither reading nor closing changes the file: closing cannot
    checkpoint a WAL left behind into it. A hot journal left by a crashed writer needs
    a read-write connection to roll back; then one is opened instead: that recovery is
    what SQLite does on any open, not a change of ours.
    """
    conn = sqlite3.connect(readonly_uri(path), uri=True,
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


class DriverMissing(ValueError):
    """A URL names a backend whose driver is not installed (a ``ValueError``, as it always
    was; the command line reports it as a problem of the machine, exit 1, not a usage
    error)."""


def _require_driver(backend: str) -> None:
    modules, extra = _DRIVERS[backend]
    if not any(importlib.util.find_spec(m) for m in modules):
        raise DriverMissing(
            f"{backend} needs a database driver ({' or '.join(modules)}): "
            f"pip install '{extra}'"
        )


# -- URL options: what each backend's driver may be told through a URL ------------------

def _whole_seconds(minimum: int) -> Callable[[str, str], int]:
    def convert(key: str, text: str) -> int:
        if not re.fullmatch(r"[0-9]{1,9}", text) or not minimum <= int(text) <= _MAX_SECONDS:
            raise ValueError(f"database URL option {key!r} must be whole seconds from "
                             f"{minimum} to {_MAX_SECONDS}, not {_shown(text)}")
        return int(text)
    return convert


def _seconds(key: str, text: str) -> int | float:
    if not re.fullmatch(r"[0-9]{1,9}(?:\.[0-9]{1,6})?", text) or not (
            0 < float(text) <= _MAX_SECONDS):
        raise ValueError(f"database URL option {key!r} must be seconds > 0 and <= "
                         f"{_MAX_SECONDS} (e.g. 30 or 2.5), not {_shown(text)}")
    return int(text) if text.isdigit() else float(text)


def _choice(*choices: str) -> Callable[[str, str], str]:
    def convert(key: str, text: str) -> str:
        if text not in choices:
            raise ValueError(f"database URL option {key!r} must be one of "
                             f"{', '.join(choices)}; not {_shown(text)}")
        return text
    return convert


_BOOLEANS = {"1": True, "true": True, "yes": True, "on": True,
             "0": False, "false": False, "no": False, "off": False}


def _flag(key: str, text: str) -> bool:
    value = _BOOLEANS.get(text.lower())
    if value is None:
        raise ValueError(f"database URL option {key!r} must be true or false, not {_shown(text)}")
    return value


def _text(key: str, text: str) -> str:
    if not text:
        raise ValueError(f"database URL option {key!r} must not be empty")
    return text


def _file(*special: str) -> Callable[[str, str], str]:
    def convert(key: str, text: str) -> str:
        if text not in special and not os.path.isfile(text):
            raise ValueError(f"database URL option {key!r} names no file: {_shown(text)}")
        return text
    return convert


def _shown(text: str) -> str:
    return repr(_printable(text if len(text) <= 60 else text[:60] + "..."))


# The TLS and timeout settings each driver documents, converted to the type it expects.
# Nothing that runs SQL (init_command, options), reads local files into the database
# (local_infile) or elsewhere (read_default_file, passfile) or changes the protocol
# (client_flag): a URL travels through environment variables and config files.
_URL_OPTIONS: dict[str, dict[str, Callable[[str, str], Any]]] = {
    "postgresql": {  # libpq connection parameters, passed through psycopg
        "sslmode": _choice("disable", "allow", "prefer", "require", "verify-ca",
                           "verify-full"),
        "sslrootcert": _file("system"),
        "sslcert": _file(),
        "sslkey": _file(),
        "sslcrl": _file(),
        "connect_timeout": _whole_seconds(0),
        "application_name": _text,
    },
    "mysql": {  # keyword arguments of pymysql.connect()
        "ssl_ca": _file(),
        "ssl_cert": _file(),
        "ssl_key": _file(),
        "ssl_verify_cert": _flag,
        "ssl_verify_identity": _flag,
        "ssl_disabled": _flag,
        "connect_timeout": _whole_seconds(1),
        "read_timeout": _seconds,
        "write_timeout": _seconds,
    },
}


def _url_options(url: DatabaseURL, backend: str) -> dict[str, Any]:
    allowed = _URL_OPTIONS[backend]
    unknown = [key for key, _ in url.query if key not in allowed]
    if unknown:
        raise ValueError(
            f"database URL option{'s' if len(unknown) > 1 else ''} "
            f"{', '.join(repr(_printable(k)) for k in dict.fromkeys(unknown))} not allowed for "
            f"{backend} (allowed: {', '.join(allowed)}): {url.masked}")
    options: dict[str, Any] = {}
    for key, value in url.query:
        if key in options:
            raise ValueError(f"database URL repeats the option {key!r}: {url.masked}")
        options[key] = allowed[key](key, value)
    return options


def _server_params(url: DatabaseURL, backend: str) -> tuple[str, dict[str, Any]]:
    name = unquote(url.path.lstrip("/"))
    if not name:
        raise ValueError(f"database URL names no database: {url.masked}")
    params: dict[str, Any] = {}
    if url.user:
        params["user"] = url.user
    if url.password:
        params["password"] = url.password
    if url.host:
        params["host"] = url.host
    if url.port:
        params["port"] = url.port
    params.update(_url_options(url, backend))
    return name, params


def _sqlite_path(url: DatabaseURL) -> str:
    if url.has_authority:
        raise ValueError("a sqlite URL must not name a user or host: use "
                         f"sqlite:///relative/path or sqlite:////absolute/path, not {url.masked}")
    if url.query:
        keys = ", ".join(repr(_printable(k)) for k in dict.fromkeys(k for k, _ in url.query))
        raise ValueError(f"a sqlite URL takes no options (got {keys}): {url.masked}")
    path = unquote(url.path)[1:]
    if not path:
        raise ValueError(f"sqlite URL names no file: {url.masked}")
    return path


def _check_sqlite_path(path: str) -> None:
    """Refuse a path SQLite would read as something else, or cannot open as a file."""
    bad = _SURROGATE_RE.search(path)
    if bad:
        raise ValueError(f"database path is not valid UTF-8 text (a lone surrogate, "
                         f"\\u{ord(bad[0]):04x}, at position {bad.start()}): "
                         f"{_printable(path)}")
    if "\x00" in path:
        raise ValueError(f"database path holds a NUL character: {_printable(path)}")
    if path.startswith("file:"):
        # SQLite reads it as a URI (mode=, vfs=, ...), naming a file other than this path.
        raise ValueError(
            f"{_printable(path)} is an SQLite URI; pass a plain path instead (the file's "
            "path without 'file:', or ./file:... for a file whose name starts so)")
    if path == ":memory:":
        raise ValueError(
            "in-memory SQLite is not supported: every thread would see its own "
            "empty database; use a file (a temporary one in tests)"
        )
    if os.path.isdir(path):
        raise ValueError(f"{_printable(path)} is a directory, not a database file")


def open_database(target: str | os.PathLike[str] | peewee.Database, *,
                  busy_timeout: float = DEFAULT_BUSY_TIMEOUT, synchronous: str = "NORMAL",
                  pool_size: int = DEFAULT_POOL_SIZE, read_only: bool = False
                  ) -> peewee.Database:
    """Return a configured, not yet connected peewee database for ``target``.

    ``target`` is a peewee ``Database`` (used as given, with foreign keys switched
    on for SQLite), a file path, or a URL: ``sqlite:///relative/path``,
    ``sqlite:////absolute/path``, ``postgresql://user:pass@host:port/db`` or
    ``mysql://user:pass@host:port/db``. Server databases are pooled (at most
    ``pool_size`` connections); SQLite gets WAL, the chosen ``synchronous`` level,
    foreign keys and a ``busy_timeout`` in seconds on every connection. A server URL's
    query may hold only its backend's TLS and timeout options (``_URL_OPTIONS``); a
    ``sqlite:`` URL none. Bad input raises ``ValueError`` with any password masked.
    With ``read_only``, every connection is one the database itself keeps from writing
    (SQLite ``mode=ro``; a read-only session on the servers), and a SQLite file that
    does not exist is ``FileNotFoundError``; a peewee ``Database`` cannot be made so.
    """
    level = _check_options(busy_timeout, synchronous, pool_size)
    if not isinstance(read_only, bool):
        raise TypeError(f"read_only must be a bool, not {read_only!r}")
    if isinstance(target, peewee.Database):
        if read_only:
            raise ValueError("read_only needs a path or URL: a peewee Database given "
                             "is used as configured")
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
        url = parse_url(target)
        backend = url.backend
        if url.scheme == "file":
            raise ValueError(f"{url.masked} is an SQLite URI; pass a plain path instead")
        if backend is None:
            raise ValueError(
                f"unsupported database URL scheme {url.scheme!r} in {url.masked}; "
                "use sqlite:///, postgresql:// or mysql://"
            )
        if url.has_fragment:
            raise ValueError(f"a database URL takes no #fragment: {url.masked}")
        if backend == "sqlite":
            target = _sqlite_path(url)
        else:
            name, params = _server_params(url, backend)
            _require_driver(backend)
            if read_only:
                key, value = _READ_ONLY_SESSION[backend]
                params[key] = value
            pool = {"max_connections": pool_size, "stale_timeout": 300,
                    "timeout": max(busy_timeout, 1)}
            if backend == "postgresql":
                return cast(peewee.Database, PooledPostgresqlDatabase(name, **pool, **params))
            # LONGTEXT: MySQL's TEXT stops at 64 KiB where SQLite and PostgreSQL do not.
            # FOUND_ROWS (client flag 2): UPDATE reports rows matched, as SQLite and
            # PostgreSQL do, not only rows whose values changed.
            params["client_flag"] = 2
            password = params.get("password", "")
            if any(ord(c) > 0xFF for c in password):
                # PyMySQL encodes a str password as latin-1, failing with an error that
                # quotes a character of it; as UTF-8 it is what a UTF-8 client sends.
                params["password"] = password.encode("utf-8")
            return cast(peewee.Database, PooledMySQLDatabase(
                name, field_types={"TEXT": "LONGTEXT"}, charset="utf8mb4", **pool, **params))
    _check_sqlite_path(target)
    if read_only:
        if not os.path.isfile(target):
            raise FileNotFoundError(f"{_printable(target)}: no such database file (a "
                                    "read-only store never creates one)")
        return ReadOnlySqliteDatabase(target, pragmas=sqlite_readonly_pragmas(busy_timeout),
                                      timeout=busy_timeout)
    return peewee.SqliteDatabase(
        target, pragmas=sqlite_pragmas(busy_timeout, level), timeout=busy_timeout
    )
