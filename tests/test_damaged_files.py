"""Damaged, foreign and unwritable files are refused at open, by name, untouched
(issue 15, part 3)."""
from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import peewee
import pytest
from conftest import IN_CI, FakeClock, digest, run_cli, subprocess_env, victim_database

from sprint_runner import SchemaError, Store

pytestmark = pytest.mark.sqlite_only


def _real_database(path: Path) -> None:
    store = Store(str(path), clock=FakeClock())
    batch = store.create_batch(1)
    store.create_events([{"batch_id": batch, "epic_id": "e", "story_key": "k", "command": "c",
                          "task_id": "t", "status": "s", "message": "x" * 200}] * 500)
    store.database.execute_sql("PRAGMA wal_checkpoint(TRUNCATE)")
    store.close()
    for side in ("-wal", "-shm"):
        if os.path.exists(f"{path}{side}"):
            os.unlink(f"{path}{side}")


def _damage(path: Path, how: str) -> None:
    if how == "zero-filled":
        path.write_bytes(b"\0" * 16384)
    elif how == "garbage":
        path.write_bytes(os.urandom(5000))
    elif how == "short-header":
        path.write_bytes(b"SQLite format 3\0" + b"\1" * 20)
    else:
        _real_database(path)
        size = os.path.getsize(path)
        with open(path, "r+b") as f:
            f.truncate(size // 2 if how == "truncated-half" else 4096)


@pytest.mark.parametrize("how", ["zero-filled", "garbage", "short-header",
                                 "truncated-half", "truncated-to-a-page"])
def test_a_damaged_file_is_refused_untouched(tmp_path: Path, how: str,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "damaged.db"
    _damage(path, how)
    before = digest(path)
    with pytest.raises(SchemaError) as caught:
        Store(str(path), clock=FakeClock())
    assert str(path) in str(caught.value)
    assert "not a readable SQLite database" in str(caught.value)
    code, out, err = run_cli(capsys, "--db", str(path), "init")
    assert code == 1 and err.count("\n") == 1 and str(path) in err
    assert digest(path) == before
    assert not os.path.exists(f"{path}-wal") and not os.path.exists(f"{path}-shm")


def test_an_empty_file_is_a_fresh_database(tmp_path: Path) -> None:
    path = tmp_path / "empty.db"
    path.touch()
    store = Store(str(path), clock=FakeClock())
    try:
        assert store.get_batch(store.create_batch(1)) is not None
    finally:
        store.close()


def test_a_foreign_file_is_refused_unless_adopted(tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "theirs.db"
    victim_database(path)
    before = digest(path)
    for target in (str(path), f"sqlite:///{path}"):
        with pytest.raises(SchemaError) as caught:
            Store(target, clock=FakeClock())
        assert "another program's SQLite database (tables precious" in str(caught.value)
        assert "adopt_foreign=True" in str(caught.value)
    code, _, err = run_cli(capsys, "--db", str(path), "init")
    assert code == 1 and "--adopt-foreign" in err
    code, _, _ = run_cli(capsys, "--db", str(path), "doctor")
    assert code == 1
    assert digest(path) == before
    code, out, err = run_cli(capsys, "--db", str(path), "init", "--adopt-foreign")
    assert code == 0, err
    store = Store(str(path), clock=FakeClock())  # ours now: opened as any other
    store.close()
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT x FROM precious").fetchall() == [("mine",)]
        assert conn.execute("SELECT COUNT(*) FROM batches").fetchone() == (0,)


def test_a_foreign_file_adopted_by_argument_or_as_a_database(tmp_path: Path) -> None:
    for n, make in enumerate((
            lambda p: Store(str(p), clock=FakeClock(), adopt_foreign=True),
            lambda p: Store(peewee.SqliteDatabase(str(p)), clock=FakeClock()))):
        path = tmp_path / f"theirs{n}.db"
        victim_database(path)
        store = make(path)
        try:
            store.create_batch(1)
            assert store.count_batches() == 1
        finally:
            store.close()


@pytest.fixture
def read_only_tmpfs(tmpfs: Path) -> Iterator[Path]:
    """The tmpfs holding a database, then remounted read-only."""
    _real_database(tmpfs / "ro.db")
    done = subprocess.run(["mount", "-o", "remount,ro", str(tmpfs)], capture_output=True,
                          text=True)
    if done.returncode != 0:
        why = f"cannot remount read-only: {done.stderr.strip()}"
        if IN_CI:
            pytest.fail(why, pytrace=False)
        pytest.skip(why)
    yield tmpfs


def test_a_read_only_filesystem_is_named_at_open(read_only_tmpfs: Path) -> None:
    path = read_only_tmpfs / "ro.db"
    before = digest(path)
    with pytest.raises(peewee.OperationalError) as caught:
        Store(str(path), clock=FakeClock())
    assert f"cannot open {path} for writing" in str(caught.value)
    assert "read-only filesystem" in str(caught.value)
    new = read_only_tmpfs / "new.db"
    with pytest.raises(peewee.OperationalError) as caught:
        Store(str(new), clock=FakeClock())
    assert f"cannot create the database file {new}" in str(caught.value)
    assert "Read-only file system" in str(caught.value)
    assert digest(path) == before


_OPEN = """
import sys
from sprint_runner import Store
try:
    Store(sys.argv[1])
except Exception as exc:
    print(type(exc).__name__, exc)
else:
    print("opened")
"""


@pytest.mark.parametrize("mode, expected", [
    (0o644, "OperationalError cannot open {path} for writing: permission denied: this "
            "process (uid 65534) may not write {path} (mode 0644, owner uid 0)"),
    (0o600, "SchemaError cannot open {path}: permission denied: this process (uid 65534) "
            "may not read {path} (mode 0600, owner uid 0)"),
])
def test_a_file_this_user_may_not_write_or_read_is_named(mode: int, expected: str) -> None:
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv to run as an unprivileged user")
    folder = tempfile.mkdtemp(prefix="sprint-runner-perm-")
    try:
        os.chmod(folder, 0o755)
        path = Path(folder) / "root.db"
        _real_database(path)
        os.chmod(path, mode)
        before = digest(path)
        done = subprocess.run(
            ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable,
             "-c", _OPEN, str(path)], capture_output=True, text=True, timeout=60,
            env=subprocess_env())
        if "No module named" in done.stderr:
            pytest.skip(f"the unprivileged user cannot import the package: {done.stderr}")
        if not done.stdout:  # this interpreter cannot run as that user (a pyenv build whose
            # libpython sits under /root, say); the read-only tmpfs tests cover the message
            pytest.skip(f"{sys.executable} cannot run as uid 65534: {done.stderr.strip()[:200]}")
        assert done.stdout.splitlines()[0].startswith(expected.format(path=path)), done
        assert digest(path) == before
    finally:
        shutil.rmtree(folder)
