"""Read-only stores: the database itself refuses every write (SQLite ``mode=ro``, a
read-only session on the servers); nothing is created or migrated."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import legacy_schema
import peewee
import pytest
from conftest import BACKEND, digest, log_event

from sprint_runner import SchemaError, Store
from sprint_runner.aio import AsyncStore

sqlite_only = pytest.mark.sqlite_only


@pytest.fixture
def reader(store: Store, make_store: Any) -> Store:
    """A read-only store on the same database as ``store`` (which made its schema)."""
    return make_store(read_only=True)  # type: ignore[no-any-return]


def test_a_read_only_store_reads_what_the_writer_wrote(store: Store, reader: Store,
                                                       batch: int, story: int) -> None:
    first = log_event(store, batch, "before")
    assert reader.read_only and not store.read_only
    assert reader.get_batch(batch) == store.get_batch(batch)
    assert reader.get_stories_by_batch(batch) == store.get_stories_by_batch(batch)
    assert [e["id"] for e in reader.tail_events(0)] == [first]
    later = log_event(store, batch, "after")  # written while the reader is open
    assert [e["id"] for e in reader.tail_events(first)] == [later]
    assert reader.time_unit == store.time_unit
    assert reader.schema_version() == store.schema_version()


WRITES = [
    ("create_batch", lambda s, ids: s.create_batch(3)),
    ("update_batch", lambda s, ids: s.update_batch(ids["batch"], status="completed")),
    ("heartbeat", lambda s, ids: s.heartbeat(ids["batch"])),
    ("create_story", lambda s, ids: s.create_story(ids["batch"], "9z-1", "9z")),
    ("update_story", lambda s, ids: s.update_story(ids["story"], status="done")),
    ("create_event", lambda s, ids: s.create_event(ids["batch"], None, None, "e", "9z", "c",
                                                   "t", "ok", "m")),
    ("create_events", lambda s, ids: s.create_events([{
        "batch_id": ids["batch"], "event_type": "e", "epic_id": "9z", "story_key": "k",
        "command": "c", "task_id": "t", "status": "ok", "message": "m"}])),
    ("create_background_task", lambda s, ids: s.create_background_task(ids["batch"], "k",
                                                                       "review")),
    ("prune", lambda s, ids: s.prune(older_than=2**40)),
    ("recover_stale_batches", lambda s, ids: s.recover_stale_batches(60)),
]


@pytest.mark.parametrize("name, write", WRITES, ids=[w[0] for w in WRITES])
def test_every_write_is_refused_by_the_database(store: Store, reader: Store, batch: int,
                                                story: int, clock: Any, name: str,
                                                write: Any) -> None:
    log_event(store, batch, "old")
    if name == "recover_stale_batches":
        clock.advance(3600)  # the running batch is stale: there is work to refuse
    else:
        store.update_batch(batch, status="stopped")  # so prune has work to do
    before = store.table_counts()
    rows = store.get_events(limit=10)
    with pytest.raises(peewee.DatabaseError):
        write(reader, {"batch": batch, "story": story})
    assert store.table_counts() == before
    assert store.get_events(limit=10) == rows


def test_a_read_only_store_never_migrates(reader: Store) -> None:
    with pytest.raises(SchemaError, match="open read-only"):
        reader.migrate()
    assert reader.applied_migrations == []


def test_raw_sql_on_a_read_only_connection_is_refused(store: Store, reader: Store,
                                                      batch: int) -> None:
    before = store.table_counts()
    with pytest.raises(peewee.DatabaseError):
        with reader.transaction():
            reader.database.execute_sql("DELETE FROM events")
    with pytest.raises(Exception) as raised:
        with reader.get_connection() as conn:
            cursor = conn.cursor()
            cursor.execute("UPDATE batches SET status = 'stopped'")
    assert "read" in str(raised.value).lower()  # read-only / readonly, not another fault
    reader.close()
    assert store.table_counts() == before


def test_read_only_needs_a_path_or_url(store: Store) -> None:
    with pytest.raises(ValueError, match="read_only needs a path or URL"):
        Store(store.database, read_only=True)
    with pytest.raises(TypeError, match="read_only must be a bool"):
        Store(store.location if BACKEND == "sqlite" else "x.db", read_only="yes")


@sqlite_only
def test_a_missing_file_is_not_created(tmp_path: Path) -> None:
    path = tmp_path / "missing.db"
    with pytest.raises(FileNotFoundError, match="never creates one"):
        Store(str(path), read_only=True)
    assert os.listdir(tmp_path) == []


@sqlite_only
def test_a_file_that_needs_migrations_is_refused_untouched(tmp_path: Path) -> None:
    path = str(tmp_path / "old.db")
    legacy_schema.version2(path)
    before = digest(path)
    names = sorted(os.listdir(tmp_path))
    with pytest.raises(SchemaError, match="read-only store never migrates"):
        Store(path, read_only=True)
    assert digest(path) == before
    assert sorted(os.listdir(tmp_path)) == names


@pytest.mark.asyncio
async def test_an_async_read_only_store_reads_and_refuses_writes(store: Store, db_target: str,
                                                                 batch: int) -> None:
    event = log_event(store, batch, "seen")
    async with AsyncStore(db_target, read_only=True) as reader:
        assert [e["id"] for e in await reader.tail_events(0)] == [event]
        with pytest.raises(peewee.DatabaseError):
            await reader.create_batch(2)
        with pytest.raises(peewee.DatabaseError):
            await reader.run_in_transaction(lambda s: s.create_batch(2))
    assert store.count_events() == 1 and len(store.list_batches()) == 1


@pytest.mark.asyncio
async def test_the_dashboards_connections_refuse_writes(store: Store, db_target: str,
                                                        batch: int) -> None:
    from aiohttp.test_utils import TestClient, TestServer

    from sprint_runner.web.app import STORE, create_app

    log_event(store, batch, "shown")
    before = store.table_counts()
    app = create_app(db_target)
    async with TestClient(TestServer(app)) as client:
        assert (await client.get("/api/now")).status == 200
        dashboard = app[STORE]
        assert dashboard.store.read_only
        with pytest.raises(peewee.DatabaseError):
            await dashboard.create_event(batch, None, None, "e", "k", "c", "t", "ok", "x")
        with pytest.raises(peewee.DatabaseError):
            await dashboard.run_in_transaction(
                lambda s: s.database.execute_sql("DELETE FROM events"))
    assert store.table_counts() == before
