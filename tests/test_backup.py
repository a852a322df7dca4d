"""backup(): a consistent copy of the live database into a new SQLite file."""
from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import pytest

from sprint_runner import Store


def _fill(store: Store) -> int:
    batch = store.create_batch(2)
    story = store.create_story(batch, "2a-1", "2a")
    command = store.create_command(story, "dev-story", "t")
    store.create_background_task(batch, "2a-1", "context-refresh")
    store.create_events({"batch_id": batch, "story_id": story, "command_id": command,
                         "epic_id": "2a", "story_key": "2a-1", "command": "dev-story",
                         "task_id": "t", "status": "progress", "message": f"ünïcode {i}"}
                        for i in range(2500))
    return batch


def test_backup_copies_everything(store: Store, tmp_path: Path) -> None:
    batch = _fill(store)
    dest = tmp_path / "copy.db"
    store.backup(dest)
    copy = Store(str(dest))
    try:
        assert copy.table_counts() == store.table_counts()
        assert copy.get_events_by_batch(batch) == store.get_events_by_batch(batch)
        assert copy.get_batch(batch) == store.get_batch(batch)
        assert copy.integrity_check() == []
        assert copy.schema_version() == store.schema_version()
    finally:
        copy.close()
    assert not list(tmp_path.glob("copy.db.part*"))


def test_backup_never_overwrites(store: Store, tmp_path: Path) -> None:
    dest = tmp_path / "exists.db"
    dest.write_bytes(b"keep me")
    with pytest.raises(ValueError, match="already exists"):
        store.backup(dest)
    assert dest.read_bytes() == b"keep me"


def test_backup_bad_destination(store: Store) -> None:
    with pytest.raises(TypeError, match="dest"):
        store.backup(42)  # type: ignore[arg-type]


@pytest.mark.sqlite_only
def test_backup_while_a_writer_runs(store: Store, db_target: str, tmp_path: Path) -> None:
    batch = _fill(store)
    stop = threading.Event()
    errors: list[BaseException] = []

    def writer() -> None:
        other = Store(db_target)
        try:
            while not stop.is_set():
                other.create_event(batch, None, None, "2a", "2a-1", "c", "t", "s", "bg")
        except BaseException as exc:  # noqa: BLE001 - surfaced by the assertion below
            errors.append(exc)
        finally:
            other.close()

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        copies = []
        for n in range(3):
            dest = tmp_path / f"live-{n}.db"
            store.backup(dest)
            copies.append(dest)
    finally:
        stop.set()
        thread.join()
    assert errors == []
    for dest in copies:
        conn = sqlite3.connect(dest)
        try:
            assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
            assert conn.execute("PRAGMA foreign_key_check").fetchall() == []
            assert conn.execute("SELECT COUNT(*) FROM events").fetchone()[0] >= 2500
        finally:
            conn.close()
