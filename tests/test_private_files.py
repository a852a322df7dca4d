"""Private by default: new database files, their -wal/-shm, backups and exports are
owner-only whatever the umask; an existing file keeps its mode; doctor warns about a
file others can read, and about a filesystem running out of room (issue 15, parts 2, 4).
"""
from __future__ import annotations

import json
import os
import stat
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import FakeClock, run_cli

from sprint_runner import Store

pytestmark = pytest.mark.sqlite_only


def mode(path: Path | str) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture(params=[0o000, 0o077, 0o022], ids=["umask000", "umask077", "umask022"])
def umask(request: pytest.FixtureRequest) -> Iterator[int]:
    previous = os.umask(request.param)
    try:
        yield int(request.param)
    finally:
        os.umask(previous)


def _event(batch: int, message: str = "m", **extra: object) -> dict[str, object]:
    return {"batch_id": batch, "story_id": None, "command_id": None, "epic_id": "2a",
            "story_key": "2a-1", "command": "dev-story", "task_id": "setup",
            "status": "progress", "message": message, **extra}


def test_a_new_database_and_its_side_files_are_owner_only(
        tmp_path: Path, umask: int, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "new.db"
    store = Store(str(path), clock=FakeClock())
    try:
        batch = store.create_batch(5)
        store.create_event(**_event(batch))
        assert mode(path) == 0o600
        for side in ("-wal", "-shm"):
            assert os.path.exists(f"{path}{side}")
            assert mode(f"{path}{side}") == 0o600, side
        store.backup(str(tmp_path / "copy.db"))
        assert mode(tmp_path / "copy.db") == 0o600
    finally:
        store.close()
    code, _, err = run_cli(capsys, "--db", str(path), "export", "-o", str(tmp_path / "out.jsonl"))
    assert code == 0, err
    assert mode(tmp_path / "out.jsonl") == 0o600
    code, _, err = run_cli(capsys, "--db", str(path), "backup", str(tmp_path / "cli.db"))
    assert code == 0, err
    assert mode(tmp_path / "cli.db") == 0o600
    code, _, err = run_cli(capsys, "--db", str(tmp_path / "init.db"), "init")
    assert code == 0, err
    assert mode(tmp_path / "init.db") == 0o600


def test_an_existing_file_keeps_its_mode(tmp_path: Path, umask: int) -> None:
    path = tmp_path / "shared.db"
    Store(str(path), clock=FakeClock()).close()
    os.chmod(path, 0o640)
    store = Store(str(path), clock=FakeClock())
    try:
        store.create_batch(5)
    finally:
        store.close()
    assert mode(path) == 0o640
    empty = tmp_path / "empty.db"
    empty.touch()
    os.chmod(empty, 0o644)
    Store(str(empty), clock=FakeClock()).close()
    assert mode(empty) == 0o644


def test_doctor_warns_about_a_file_others_can_read(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "doc.db"
    Store(str(path), clock=FakeClock()).close()
    assert run_cli(capsys, "--db", str(path), "doctor")[0] == 0
    os.chmod(path, 0o644)
    code, out, _ = run_cli(capsys, "--db", str(path), "doctor")
    assert code == 1
    assert "readable by group and others (mode 0644)" in out
    assert "chmod 600" in out
    os.chmod(path, 0o604)
    code, out, _ = run_cli(capsys, "--db", str(path), "--json", "doctor")
    report = json.loads(out)
    assert code == 1 and not report["ok"]
    assert any("readable by others" in p for p in report["problems"])


def _store_with_days_of_events(path: Path, days: int, per_day: int, size: int) -> None:
    now = int(time.time())
    store = Store(str(path), clock=FakeClock(now))  # the batch is fresh, not stale
    try:
        batch = store.create_batch(5)
        store.create_events([_event(batch, "x" * size, timestamp=now - (days - day) * 86_400)
                             for day in range(days + 1) for _ in range(per_day)])
    finally:
        store.close()


def test_doctor_warns_below_ten_percent_free(
        tmpfs: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmpfs / "low.db"
    _store_with_days_of_events(path, days=0, per_day=5, size=100)
    code, out, _ = run_cli(capsys, "--db", str(path), "doctor")
    assert code == 0, out
    (tmpfs / "filler").write_bytes(b"\0" * (int(3.8 * 2**20) - os.path.getsize(path)))
    code, out, _ = run_cli(capsys, "--db", str(path), "doctor")
    assert code == 1, out
    assert "low disk space" in out and "of its filesystem is free" in out
    assert "prune --older-than 30d" in out and "would delete" in out


def test_doctor_warns_below_twenty_days_of_growth(
        tmpfs: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmpfs / "growing.db"
    # About 450 KiB over two days: 20 days of that growth is more than the 4 MiB holds.
    _store_with_days_of_events(path, days=2, per_day=50, size=3_000)
    code, out, _ = run_cli(capsys, "--db", str(path), "--json", "doctor")
    report = json.loads(out)
    assert code == 1, out
    assert report["space"]["daily_growth_bytes"] > 100_000
    assert any("a day and only" in p for p in report["problems"])
    assert any("prune --older-than 30d" in a for a in report["advice"])
    # One day of events is too short a span to estimate growth from.
    short = tmpfs / "short.db"
    _store_with_days_of_events(short, days=1, per_day=5, size=100)
    code, out, _ = run_cli(capsys, "--db", str(short), "--json", "doctor")
    assert json.loads(out)["space"]["daily_growth_bytes"] is None
