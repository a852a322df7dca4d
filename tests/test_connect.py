"""Opening databases: paths, URLs, options, and passwords that never leak."""
from __future__ import annotations

import logging
import os
from pathlib import Path

import peewee
import pytest
from playhouse.pool import PooledMySQLDatabase, PooledPostgresqlDatabase

from sprint_runner import Store
from sprint_runner.connect import describe, mask_url, open_database


def test_mask_url() -> None:
    assert mask_url("postgresql://bob:s3cret@db:5432/x") == "postgresql://bob:***@db:5432/x"
    assert mask_url("mysql://root@h/x") == "mysql://root@h/x"
    assert mask_url("/a/path:with@odd") == "/a/path:with@odd"


def test_sqlite_urls(tmp_path: Path) -> None:
    absolute = open_database(f"sqlite:///{tmp_path}/a.db")
    assert absolute.database == f"{tmp_path}/a.db"
    relative = open_database("sqlite:///rel/b.db")
    assert relative.database == "rel/b.db"
    assert isinstance(open_database(tmp_path / "c.db"), peewee.SqliteDatabase)


def test_server_urls_are_pooled_and_bounded() -> None:
    pytest.importorskip("psycopg2", reason="needs the [postgres] extra")
    pytest.importorskip("pymysql", reason="needs the [mysql] extra")
    pg = open_database("postgresql://bob:pw%40x@db.example:6543/sprint?connect_timeout=3",
                       pool_size=3)
    assert isinstance(pg, PooledPostgresqlDatabase)
    assert pg.database == "sprint" and pg._max_connections == 3
    assert pg.connect_params["password"] == "pw@x"
    assert pg.connect_params["port"] == 6543 and pg.connect_params["connect_timeout"] == 3
    my = open_database("mysql://root@127.0.0.1:3306/sprint")
    assert isinstance(my, PooledMySQLDatabase)


def test_describe_masks_passwords() -> None:
    pytest.importorskip("psycopg2", reason="needs the [postgres] extra")
    pg = open_database("postgres://bob:hunter2@db:5432/sprint")
    assert describe(pg) == "postgresql://bob:***@db:5432/sprint"
    assert "hunter2" not in repr(pg.connect_params.get("user"))


@pytest.mark.parametrize(("target", "error", "fragment"), [
    ("", ValueError, "must not be empty"),
    (":memory:", ValueError, "in-memory"),
    ("redis://localhost/0", ValueError, "unsupported database URL scheme 'redis'"),
    ("postgresql://bob:hunter2@db:5432/", ValueError, "names no database"),
    ("postgresql://bob:hunter2@db:notaport/x", ValueError, "bad port"),
    ("sqlite:///", ValueError, "names no file"),
    (42, TypeError, "database must be"),
    (peewee.SqliteDatabase(None), ValueError, "not initialised"),
])
def test_bad_targets(target, error, fragment) -> None:
    with pytest.raises(error) as info:
        open_database(target)
    assert fragment in str(info.value)
    assert "hunter2" not in str(info.value)


@pytest.mark.parametrize(("kwargs", "fragment"), [
    ({"synchronous": "SOMETIMES"}, "synchronous"),
    ({"busy_timeout": -1}, "busy_timeout"),
    ({"busy_timeout": "30"}, "busy_timeout"),
    ({"pool_size": 0}, "pool_size"),
])
def test_bad_options(tmp_path: Path, kwargs, fragment) -> None:
    with pytest.raises((TypeError, ValueError), match=fragment):
        Store(tmp_path / "x.db", **kwargs)
    assert not (tmp_path / "x.db").exists()


def test_bad_clock(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="clock"):
        Store(tmp_path / "x.db", clock=5)  # type: ignore[arg-type]


def test_clock_returning_garbage_is_refused(tmp_path: Path) -> None:
    ticks = iter([1_700_000_000, 1.5])
    store = Store(tmp_path / "x.db", clock=lambda: next(ticks))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"clock\(\) must be an int"):
        store.create_batch(1)
    assert store.list_batches() == []


@pytest.mark.sqlite_only
def test_synchronous_full_is_a_choice(tmp_path: Path) -> None:
    store = Store(tmp_path / "full.db", synchronous="full", busy_timeout=2.5)
    assert store.database.execute_sql("PRAGMA synchronous").fetchone()[0] == 2
    assert store.database.execute_sql("PRAGMA busy_timeout").fetchone()[0] == 2500
    store.close()


@pytest.mark.sqlite_only
def test_existing_peewee_database_is_accepted(tmp_path: Path) -> None:
    database = peewee.SqliteDatabase(str(tmp_path / "mine.db"))
    store = Store(database)
    assert store.database is database
    assert database.execute_sql("PRAGMA foreign_keys").fetchone()[0] == 1
    assert store.get_batch(store.create_batch(1))["max_cycles"] == 1
    store.close()


def test_store_repr_and_location_mask_password(db_target: str, store: Store) -> None:
    assert store.location in repr(store)
    if "@" in db_target and ":" in db_target.split("@")[0].split("//")[-1]:
        assert "***" in store.location


def test_missing_driver_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name in ("psycopg2", "psycopg") else real(name, *a))
    with pytest.raises(ValueError, match=r"pip install 'sprint-runner\[postgres\]'") as info:
        open_database("postgresql://bob:hunter2@db:5432/sprint")
    assert "hunter2" not in str(info.value)


def test_server_error_messages_mask_password(caplog) -> None:
    caplog.set_level(logging.DEBUG, logger="sprint_runner")
    url = "postgresql://bob:hunter2@127.0.0.1:1/nowhere"
    try:
        import psycopg2  # noqa: F401
    except ImportError:
        pytest.skip("psycopg2 is not installed")
    with pytest.raises(peewee.OperationalError) as info:
        Store(url)
    assert "hunter2" not in str(info.value)
    assert "hunter2" not in caplog.text


@pytest.mark.sqlite_only
@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
def test_forked_child_opens_its_own_connection(store: Store) -> None:
    batch = store.create_batch(1)  # the parent's connection is open now
    pid = os.fork()
    if pid == 0:  # the child: never return into pytest
        code = 3
        try:
            if store.database._state.conn is None:  # the inherited one was dropped
                store.create_event(batch, None, None, "e", "k", "c", "t", "s", "child")
                code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert [e["message"] for e in store.get_events_by_batch(batch)] == ["child"]
