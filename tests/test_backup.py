"""backup(): a consistent copy of the live database into a new SQLite file."""
from __future__ import annotations

import os
import sqlite3
import stat
import threading
from pathlib import Path

import pytest
from conftest import SPECIAL_KINDS, digest, make_special, node_of, victim_database

from sprint_runner import Store, files, sqlite_executor


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


# -- where a backup may be written ---------------------------------------------------------

def test_backup_never_writes_through_a_planted_part_symlink(store: Store,
                                                            tmp_path: Path) -> None:
    batch = _fill(store)
    victim = victim_database(tmp_path / "victim.db")
    victim_bytes = digest(victim)
    (tmp_path / "out").mkdir()
    dest = tmp_path / "out" / "copy.db"
    planted = [f"{dest}.part-{os.getpid()}{side}" for side in ("", "-journal", "-wal", "-shm")]
    for name in planted:
        os.symlink(victim, name)
    store.backup(dest)
    assert digest(victim) == victim_bytes
    assert [os.readlink(name) for name in planted] == [victim] * len(planted)
    assert stat.S_ISREG(os.lstat(dest).st_mode)
    assert stat.S_IMODE(os.lstat(dest).st_mode) == 0o600
    assert sorted(os.listdir(tmp_path / "out")) == sorted(
        ["copy.db"] + [os.path.basename(n) for n in planted])
    copy = Store(str(dest))
    try:
        assert copy.get_events_by_batch(batch) == store.get_events_by_batch(batch)
    finally:
        copy.close()


@pytest.mark.parametrize("kind", SPECIAL_KINDS)
def test_backup_refuses_what_is_not_a_regular_file(store: Store, tmp_path: Path,
                                                   kind: str) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    (tmp_path / "out").mkdir()
    dest = make_special(kind, tmp_path / "out" / "copy.db", victim)
    node = node_of(dest)
    with pytest.raises(files.RefusedDestination, match="not a regular file; nothing was written"):
        store.backup(dest)
    assert node_of(dest) == node
    assert victim.read_text() == "precious"
    if dest != os.devnull:  # (the stand-in device when not root)
        assert os.listdir(tmp_path / "out") == ["copy.db"]


@pytest.mark.sqlite_only
@pytest.mark.parametrize("side", ["", "-wal", "-shm", "-journal"])
def test_backup_refuses_the_database_and_its_files(store: Store, db_target: str,
                                                   tmp_path: Path, side: str) -> None:
    _fill(store)
    store.close()
    before = {n: digest(tmp_path / n) for n in os.listdir(tmp_path)}
    os.link(db_target, tmp_path / "hard.db")
    for dest in (db_target + side, os.path.relpath(db_target + side), str(tmp_path / "hard.db")):
        with pytest.raises(files.DatabaseDestination, match="nothing was written"):
            store.backup(dest)
    os.unlink(tmp_path / "hard.db")
    assert {n: digest(tmp_path / n) for n in os.listdir(tmp_path)} == before


def test_a_failed_backup_leaves_nothing_behind(store: Store, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    _fill(store)

    def broken(path: str, *args: object, **kwargs: object) -> None:
        with open(path, "wb") as f:
            f.write(b"half a copy")
        with open(path + "-journal", "wb") as f:
            f.write(b"journal")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(sqlite_executor, "copy_sqlite_file", broken)
    monkeypatch.setattr(Store, "_copy_to_sqlite", lambda self, path: broken(path))
    (tmp_path / "out").mkdir()
    with pytest.raises(OSError, match="No space left"):
        store.backup(tmp_path / "out" / "copy.db")
    assert os.listdir(tmp_path / "out") == []
