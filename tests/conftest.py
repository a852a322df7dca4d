"""Fixtures: a fresh database per test on the backend $SPRINT_RUNNER_TEST_DB selects.

Unset (or ``sqlite``): a new SQLite file in the test's tmp_path. A server URL
(``postgresql://user@host:port/admin_db``, ``mysql://root@host:port/mysql``): one
throwaway database is created for the run and dropped after it; every test starts
with it empty. With ``CI=true`` an unreachable server fails the run; otherwise
the tests that need it are skipped with a one-line reason.
"""
from __future__ import annotations

import hashlib
import os
import sqlite3
import stat
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest

from sprint_runner import Store, db
from sprint_runner.cli import main

TEST_DB = os.environ.get("SPRINT_RUNNER_TEST_DB", "").strip()
_SCHEME = urlsplit(TEST_DB).scheme.lower() if "://" in TEST_DB else "sqlite"
BACKEND = {"postgres": "postgresql", "postgresql": "postgresql", "mysql": "mysql",
           "mariadb": "mysql"}.get(_SCHEME, "sqlite")
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
ROOT = Path(__file__).resolve().parent.parent
"""The checkout: the folder that holds the package ``sprint_runner``."""


class FakeClock:
    """A clock the test moves by hand."""

    def __init__(self, now: int = 1_700_000_000) -> None:
        self.now = now

    def __call__(self) -> int:
        return self.now

    def advance(self, seconds: int) -> None:
        self.now += seconds


def pytest_report_header(config: pytest.Config) -> str:
    return f"sprint-runner test backend: {BACKEND} ({_mask(TEST_DB) or 'temporary files'})"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if BACKEND == "sqlite":
        return
    skip = pytest.mark.skip(reason=f"SQLite-only behaviour; this run is on {BACKEND}")
    for item in items:
        if "sqlite_only" in item.keywords:
            item.add_marker(skip)


def _mask(url: str) -> str:
    parts = urlsplit(url)
    if parts.password:
        return url.replace(":" + parts.password + "@", ":***@")
    return url


def _with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, "/" + name, parts.query, ""))


def _server_connect(url: str) -> Any:
    parts = urlsplit(url)
    name = parts.path.lstrip("/")
    if BACKEND == "postgresql":
        import psycopg2

        conn = psycopg2.connect(dbname=name, user=parts.username, password=parts.password,
                                host=parts.hostname, port=parts.port or 5432, connect_timeout=5)
        conn.autocommit = True
        return conn
    import pymysql

    return pymysql.connect(database=name, user=parts.username or "root",
                           password=parts.password or "", host=parts.hostname,
                           port=parts.port or 3306, autocommit=True, connect_timeout=5)


@pytest.fixture(scope="session")
def server_url() -> Iterator[str]:
    """The URL of this run's throwaway server database (created here, dropped after)."""
    if BACKEND == "sqlite":
        pytest.skip("needs a server database; set SPRINT_RUNNER_TEST_DB to a URL")
    try:
        admin = _server_connect(TEST_DB)
    except Exception as exc:  # noqa: BLE001 - any driver error means "unreachable"
        message = f"{BACKEND} at {_mask(TEST_DB)} is unreachable: {exc}".splitlines()[0]
        if IN_CI:
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    name = f"sprint_runner_test_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    with admin.cursor() as cur:
        if BACKEND == "postgresql":
            cur.execute(f'CREATE DATABASE "{name}"')
        else:
            cur.execute(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_bin")
    try:
        yield _with_database(TEST_DB, name)
    finally:
        with admin.cursor() as cur:
            if BACKEND == "postgresql":
                cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            else:
                cur.execute(f"DROP DATABASE IF EXISTS `{name}`")
        admin.close()


def empty_server_database(url: str) -> None:
    """Drop every table in the server database at ``url``."""
    conn = _server_connect(url)
    try:
        with conn.cursor() as cur:
            if BACKEND == "postgresql":
                cur.execute("DROP SCHEMA public CASCADE")
                cur.execute("CREATE SCHEMA public")
            else:
                cur.execute("SHOW TABLES")
                tables = [r[0] for r in cur.fetchall()]
                cur.execute("SET FOREIGN_KEY_CHECKS = 0")
                for table in tables:
                    cur.execute(f"DROP TABLE `{table}`")
                cur.execute("SET FOREIGN_KEY_CHECKS = 1")
    finally:
        conn.close()


class ServerSession:
    """A second session on the test database, to lock tables and kill our own connections."""

    def __init__(self, url: str) -> None:
        self.conn = _server_connect(url)

    @staticmethod
    def connection_id(store: Store) -> int:
        """Return the server's id of the connection the store's next call in this thread uses."""
        sql = "SELECT pg_backend_pid()" if BACKEND == "postgresql" else "SELECT CONNECTION_ID()"
        return int(store._executor.fetchall(sql)[0][0])

    def execute(self, sql: str, params: tuple[Any, ...] = ()) -> list[Any]:
        with self.conn.cursor() as cur:
            cur.execute(sql, params or None)  # no parameters: no %-formatting
            return list(cur.fetchall()) if cur.description else []

    def is_alive(self, conn_id: int) -> bool:
        if BACKEND == "postgresql":
            return bool(self.execute("SELECT 1 FROM pg_stat_activity WHERE pid = %s", (conn_id,)))
        return bool(self.execute(
            "SELECT 1 FROM information_schema.PROCESSLIST WHERE ID = %s", (conn_id,)))

    def waits_for_lock(self, conn_id: int) -> bool:
        if BACKEND == "postgresql":
            rows = self.execute("SELECT wait_event_type FROM pg_stat_activity WHERE pid = %s",
                                (conn_id,))
            return bool(rows) and rows[0][0] == "Lock"
        rows = self.execute("SELECT STATE FROM information_schema.PROCESSLIST WHERE ID = %s",
                            (conn_id,))
        return bool(rows) and "lock" in (rows[0][0] or "").lower()

    def kill(self, conn_id: int) -> None:
        """End connection ``conn_id`` (one this test opened) and wait until it is gone."""
        if BACKEND == "postgresql":
            self.execute("SELECT pg_terminate_backend(%s, 5000)", (conn_id,))
        else:
            self.execute(f"KILL {int(conn_id)}")
        wait_until(lambda: not self.is_alive(conn_id), f"connection {conn_id} to end")

    def wait_until(self, condition: Any, what: str, timeout: float = 10.0) -> None:
        """Poll ``condition`` until it is true; fail the test after ``timeout`` seconds."""
        wait_until(condition, what, timeout)

    def close(self) -> None:
        self.conn.close()


def wait_until(condition: Any, what: str, timeout: float = 10.0) -> None:
    """Poll ``condition`` until it is true; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.01)


@pytest.fixture
def server_session(server_url: str, db_target: str) -> Iterator[ServerSession]:
    """A second session on this test's server database (skips on SQLite runs)."""
    session = ServerSession(db_target)
    yield session
    session.close()


@pytest.fixture
def db_target(tmp_path: Any, request: pytest.FixtureRequest) -> str:
    """A path or URL naming an empty database for this test alone."""
    if BACKEND == "sqlite":
        return str(tmp_path / "sprint-runner.db")
    url: str = request.getfixturevalue("server_url")
    empty_server_database(url)
    return url


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def make_store(db_target: str, clock: FakeClock) -> Iterator[Any]:
    """A factory of stores on this test's database (closed after the test)."""
    stores: list[Store] = []

    def make(target: Any = None, **kwargs: Any) -> Store:
        kwargs.setdefault("clock", clock)
        store = Store(db_target if target is None else target, **kwargs)
        stores.append(store)
        return store

    yield make
    for store in stores:
        store.close()


@pytest.fixture
def store(make_store: Any) -> Store:
    """A store on a fresh database, with the fake clock."""
    return make_store()  # type: ignore[no-any-return]


@pytest.fixture
def module_db(db_target: str, clock: FakeClock, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """``sprint_runner.db`` initialised on this test's database, restored afterwards."""
    monkeypatch.setattr(db, "DB_PATH", db_target)
    monkeypatch.setattr(db, "_default", None)
    db.init_db(clock=clock)
    yield db
    if db._default is not None:
        db._default.close()


@pytest.fixture
def batch(store: Store) -> int:
    return store.create_batch(5)


@pytest.fixture
def story(store: Store, batch: int) -> int:
    return store.create_story(batch, "2a-1", "2a")


@pytest.fixture
def command(store: Store, story: int) -> int:
    return store.create_command(story, "dev-story", "setup")


_EVENT = {"story_id": None, "command_id": None, "epic_id": "2a", "story_key": "2a-1",
          "command": "dev-story", "task_id": "setup", "status": "progress"}


def log_event(store: Store, batch: int, message: str | None = "m", **overrides: Any) -> int:
    """Log an event of ``batch``, a dev-story progress event of story 2a-1 unless
    ``overrides`` (``story_id``, ``command_id``, ``status``, ...) say otherwise."""
    unknown = set(overrides) - set(_EVENT)
    if unknown:
        raise TypeError(f"log_event() got unknown fields {sorted(unknown)}")
    return store.create_event(batch_id=batch, message=message, **{**_EVENT, **overrides})


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """Run the command line; return its exit status, stdout and stderr."""
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def subprocess_env(*, without: tuple[str, ...] = (), **extra: str) -> dict[str, str]:
    """The environment for a child Python: this one with the checkout first on
    PYTHONPATH (the package need not be installed), less ``without``, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if k not in without}
    env["PYTHONPATH"] = os.pathsep.join(
        [str(ROOT), *(p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p)])
    env.update(extra)
    return env


# -- files the writer must refuse or leave alone -------------------------------------------

SPECIAL_KINDS = ("symlink", "dangling-symlink", "fifo", "device", "directory")
"""Destinations that exist and are not regular files (what ``make_special`` makes)."""


def digest(path: Any) -> str:
    """The sha256 of a file's bytes (the whole file: byte-identity, not a few header bytes)."""
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def make_special(kind: str, path: Any, victim: Any) -> str:
    """Make a destination of ``kind`` at ``path`` (a symlink points at ``victim``); return it.

    A device node is made with ``mknod`` (the null device's numbers) when running as
    root; otherwise the system's own ``/dev/null`` stands in, which an unprivileged
    writer could not replace anyway.
    """
    path = str(path)
    if kind == "symlink":
        os.symlink(victim, path)
    elif kind == "dangling-symlink":
        os.symlink(str(victim) + ".absent", path)
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "device":
        if os.geteuid() != 0:
            return os.devnull
        os.mknod(path, stat.S_IFCHR | 0o600, os.makedev(1, 3))
    elif kind == "directory":
        os.mkdir(path)
    else:
        raise ValueError(kind)
    return path


def node_of(path: Any) -> tuple[int, int, str | None]:
    """What sits at ``path``: its file type, inode and symlink target (never followed)."""
    st = os.lstat(path)
    return stat.S_IFMT(st.st_mode), st.st_ino, (
        os.readlink(path) if stat.S_ISLNK(st.st_mode) else None)


def victim_database(path: Any) -> str:
    """Someone else's SQLite database at ``path``, which a planted symlink points at."""
    conn = sqlite3.connect(path)
    conn.executescript("CREATE TABLE precious (x); INSERT INTO precious VALUES ('mine');")
    conn.close()
    return str(path)


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A fresh 4 MiB tmpfs, unmounted after the test (needs root: skipped without it,
    failed under ``CI=true``)."""
    mountpoint = tmp_path / "small"
    mountpoint.mkdir()
    why = None
    if os.geteuid() != 0:
        why = "mounting a tmpfs needs root"
    else:
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs",
                               str(mountpoint)], capture_output=True, text=True)
        if done.returncode != 0:
            why = f"cannot mount a tmpfs: {done.stderr.strip() or done.returncode}"
    if why is not None:
        if IN_CI:
            pytest.fail(why, pytrace=False)
        pytest.skip(why)
    try:
        yield mountpoint
    finally:
        subprocess.run(["umount", "-l", str(mountpoint)], check=False)
