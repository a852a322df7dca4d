"""A full disk: every call raises StorageFull, nothing is half-written, and the same store
writes again once space is freed (issue 15, part 1).

The SQLite proof runs on a real tmpfs of 4 MiB (needs root to mount; under ``CI=true``
a failure to mount fails the test, otherwise it is skipped). The servers' translation is
checked by raising the driver's own exception with the server's code.
"""
from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import peewee
import pytest
from conftest import FakeClock

import sprint_runner
from sprint_runner import StorageFull, Store
from sprint_runner import sqlite_executor as sqlite_executor_module
from sprint_runner.executor import ROWS

BIG = "x" * 60_000  # an event message: a few dozen fill the 4 MiB filesystem
FILLER = 1 << 20


def _event(batch: int, message: str) -> dict[str, Any]:
    return {"batch_id": batch, "story_id": None, "command_id": None, "epic_id": "2a",
            "story_key": "2a-1", "command": "dev-story", "task_id": "setup",
            "status": "progress", "message": message}


def _fill(store: Store, batch: int) -> tuple[int, StorageFull]:
    """Log big events until the disk is full; return how many were written and the error."""
    written = 0
    for _ in range(1000):
        try:
            store.create_event(**_event(batch, BIG))
        except StorageFull as exc:
            return written, exc
        written += 1
    pytest.fail("the 4 MiB filesystem never filled")


@pytest.mark.sqlite_only
def test_a_full_disk_loses_nothing_and_the_store_writes_again_once_freed(tmpfs: Path) -> None:
    path = str(tmpfs / "sprint-runner.db")
    filler = tmpfs / "filler"
    filler.write_bytes(b"\0" * FILLER)
    store = Store(path, clock=FakeClock())
    try:
        batch = store.create_batch(5)
        store.create_event(**_event(batch, "before"))
        before = store.count_events()

        written, exc = _fill(store, batch)
        assert written > 0
        assert isinstance(exc, peewee.OperationalError)
        assert exc.path == path and path in str(exc)
        assert exc.free_bytes is not None and f"{exc.free_bytes} bytes left" in str(exc)
        during = store.count_events()
        assert during == before + written

        # Every kind of write fails whole; reads go on.
        with pytest.raises(StorageFull):
            store.create_events([_event(batch, BIG) for _ in range(20)])
        with pytest.raises(StorageFull):
            with store.transaction():
                store.create_story(batch, "2a-9", "2a")
                for _ in range(20):
                    store.create_event(**_event(batch, BIG))
        assert store.count_events() == during
        assert store.get_story_by_key("2a-9", batch) is None
        assert [e["message"] for e in store.get_events_by_batch(batch)][:1] == ["before"]
        assert store.integrity_check() == []

        # Space freed: the same store writes again, nothing reopened.
        filler.unlink()
        store.create_event(**_event(batch, "after"))
        assert store.create_events([_event(batch, "bulk after")] * 3) == 3
        after = store.count_events()
        assert after == during + 4
        assert store.integrity_check() == []
        print(f"disk-full proof: rows before {before}, during {during}, after {after}")
    finally:
        store.close()
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        assert conn.execute("SELECT COUNT(*) FROM events").fetchone()[0] == after


@pytest.mark.sqlite_only
def test_a_transaction_the_disk_fills_under_is_rolled_back_whole(tmpfs: Path) -> None:
    path = str(tmpfs / "sprint-runner.db")
    filler = tmpfs / "filler"
    filler.write_bytes(b"\0" * FILLER)
    store = Store(path, clock=FakeClock())
    try:
        batch = store.create_batch(5)
        story = store.create_story(batch, "2a-1", "2a")
        with pytest.raises(StorageFull):
            with store.transaction():
                store.update_story(story, status="done")
                store.create_command(story, "dev-story", "setup")
                for _ in range(1000):
                    store.create_event(**_event(batch, BIG))
        assert store.count_events() == 0
        assert store.get_commands_by_story(story) == []
        assert store.get_story(story)["status"] != "done"  # type: ignore[index]
        filler.unlink()
        with store.transaction():
            store.update_story(story, status="done")
            store.create_event(**_event(batch, "after"))
        assert store.count_events() == 1
        assert store.integrity_check() == []
    finally:
        store.close()


@pytest.mark.sqlite_only
def test_a_block_that_swallows_the_error_still_writes_nothing_half(tmpfs: Path) -> None:
    """A caller catching StorageFull inside its block: the block ends with everything it
    wrote or, if SQLite rolled it back, with nothing of it; never a part."""
    path = str(tmpfs / "sprint-runner.db")
    filler = tmpfs / "filler"
    filler.write_bytes(b"\0" * FILLER)
    store = Store(path, clock=FakeClock())
    try:
        batch = store.create_batch(5)
        kept = 0
        try:
            with store.transaction():
                store.create_event(**_event(batch, "first"))
                try:
                    for _ in range(1000):
                        store.create_event(**_event(batch, BIG))
                        kept += 1
                except StorageFull:
                    pass
                store.create_event(**_event(batch, "last"))
        except StorageFull:
            assert store.count_events() == 0
        else:
            assert store.count_events() == kept + 2
        assert store.integrity_check() == []
        filler.unlink()
        store.create_event(**_event(batch, "after"))
        assert store.integrity_check() == []
    finally:
        store.close()


def test_an_io_error_on_a_full_filesystem_is_storage_full(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """WAL mode often reports ENOSPC as SQLITE_IOERR: taken for a full disk only when
    the filesystem has (almost) no room left."""
    exc = sqlite3.OperationalError("disk I/O error")
    exc.sqlite_errorcode = 778  # type: ignore[misc]  # SQLITE_IOERR_WRITE
    path = str(tmp_path / "x.db")
    monkeypatch.setattr(sqlite_executor_module, "free_bytes", lambda path: 4096)
    assert sqlite_executor_module.is_full(exc, path)
    monkeypatch.setattr(sqlite_executor_module, "free_bytes", lambda path: 1 << 30)
    assert not sqlite_executor_module.is_full(exc, path)
    full = sqlite3.OperationalError("database or disk is full")
    full.sqlite_errorcode = 13  # type: ignore[misc]
    assert sqlite_executor_module.is_full(full, path)


def test_storage_full_is_exported() -> None:
    assert sprint_runner.StorageFull is StorageFull
    assert issubclass(StorageFull, peewee.OperationalError)


def _driver_full_error(backend: str) -> BaseException:
    if backend == "postgresql":
        import psycopg2.errors

        return psycopg2.errors.DiskFull("could not extend file: No space left on device")
    import pymysql

    return pymysql.err.OperationalError(1114, "The table 'events' is full")


def test_a_server_reporting_its_disk_full_raises_storage_full(store: Store) -> None:
    if store.backend == "sqlite":
        pytest.skip("a server's driver error; this run is on SQLite")
    error = _driver_full_error(store.backend)

    def raising(conn: Any, sql: str, params: Any, result: Any) -> Any:
        raise error

    executor = store._executor
    with pytest.raises(StorageFull) as caught:
        executor._call(ROWS, "INSERT INTO batches DEFAULT VALUES", (), runner=raising)
    assert store.location in str(caught.value)
    assert isinstance(executor.error_for(error), StorageFull)
    if store.backend == "mysql":
        import pymysql

        assert isinstance(executor.error_for(pymysql.err.OperationalError(1021, "Disk full")),
                          StorageFull)
    # The connection is kept and the store goes on.
    batch = store.create_batch(5)
    assert store.get_batch(batch) is not None


@pytest.mark.sqlite_only
def test_a_bulk_insert_failing_inside_a_callers_block_leaves_nothing_half(tmpfs: Path) -> None:
    """create_events nests a savepoint in the caller's block; a full disk there, caught by
    the caller, must not let the rest of the block run outside the transaction."""
    path = str(tmpfs / "sprint-runner.db")
    filler = tmpfs / "filler"
    filler.write_bytes(b"\0" * FILLER)
    store = Store(path, clock=FakeClock())
    try:
        batch = store.create_batch(5)
        outcome = "committed"
        try:
            with store.transaction():
                store.create_event(**_event(batch, "first"))
                try:
                    store.create_events([_event(batch, BIG) for _ in range(300)])
                except StorageFull:
                    pass
                store.create_event(**_event(batch, "last"))
        except StorageFull:
            outcome = "refused"
        messages = [e["message"] for e in store.get_events_by_batch(batch)]
        assert messages == ([] if outcome == "refused" else ["first", "last"])
        assert store.integrity_check() == []
        filler.unlink()
        store.create_event(**_event(batch, "after"))
        assert store.count_events() == len(messages) + 1
    finally:
        store.close()
