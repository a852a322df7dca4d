"""The safe-file writer: every file the package writes (exports, backups) goes through it."""
from __future__ import annotations

import os
import sqlite3
import stat
from pathlib import Path
from typing import IO, Any

import peewee
import pytest
from conftest import SPECIAL_KINDS, digest, make_special, node_of

from sprint_runner import files


@pytest.fixture
def database(tmp_path: Path) -> Path:
    """A small SQLite file standing for the store's database, with its -wal beside it."""
    (tmp_path / "data").mkdir()
    path = tmp_path / "data" / "state.db"
    conn = sqlite3.connect(path)
    conn.executescript("CREATE TABLE t (x); INSERT INTO t VALUES ('keep');")
    conn.close()
    Path(f"{path}-wal").write_bytes(b"wal frames")
    return path


@pytest.fixture
def victim(tmp_path: Path) -> Path:
    """Someone else's file that a symlink planted by an attacker points at."""
    folder = tmp_path / "elsewhere"
    folder.mkdir()
    path = folder / "victim.txt"
    path.write_text("precious\n" * 100)
    return path


def _write(text: str) -> Any:
    def write(out: IO[str]) -> int:
        out.write(text)
        return len(text)
    return write


def _fill(content: bytes) -> Any:
    def fill(path: str) -> None:
        with open(path, "r+b") as f:
            f.write(content)
    return fill


def _copy_database(source: Path) -> Any:
    def fill(path: str) -> None:
        src = sqlite3.connect(source)
        dest = sqlite3.connect(path)  # creates path-journal beside the temporary
        try:
            src.backup(dest)
        finally:
            dest.close()
            src.close()
    return fill


def _listing(folder: Path) -> list[str]:
    return sorted(os.listdir(folder))


# -- what is written, and how -------------------------------------------------------------

def test_write_text_creates_the_file(tmp_path: Path) -> None:
    dest = tmp_path / "out.jsonl"
    assert files.write_text(str(dest), _write("a line\n")) == 7
    assert dest.read_text() == "a line\n"
    assert stat.S_IMODE(dest.stat().st_mode) == 0o600  # owner-only, as its temporary was
    assert _listing(tmp_path) == ["out.jsonl"]


def test_write_text_replaces_a_regular_file_atomically(tmp_path: Path) -> None:
    dest = tmp_path / "out.csv"
    dest.write_text("old export\n")
    old_inode = dest.stat().st_ino
    seen: list[str] = []

    def write(out: IO[str]) -> None:
        out.write("new export\n")
        seen.append(dest.read_text())  # while it is written, the old file is whole

    files.write_text(str(dest), write)
    assert seen == ["old export\n"]
    assert dest.read_text() == "new export\n"
    assert dest.stat().st_ino != old_inode  # renamed over it, not rewritten in place
    assert _listing(tmp_path) == ["out.csv"]


def test_write_text_keeps_newlines_and_utf8(tmp_path: Path) -> None:
    dest = tmp_path / "out.csv"
    files.write_text(str(dest), _write("été,\"a\r\nb\"\n"))
    assert dest.read_bytes() == "été,\"a\r\nb\"\n".encode()


def test_create_file_fills_a_new_file(tmp_path: Path) -> None:
    dest = tmp_path / "copy.bin"
    files.create_file(str(dest), _fill(b"copied"))
    assert dest.read_bytes() == b"copied"
    assert stat.S_IMODE(dest.stat().st_mode) == 0o600
    assert _listing(tmp_path) == ["copy.bin"]


def test_the_temporary_is_private_and_beside_the_destination(tmp_path: Path) -> None:
    dest = tmp_path / "copy.bin"
    seen: list[tuple[int, int, bool, bool]] = []

    def fill(path: str) -> None:
        folder = os.path.dirname(path)
        seen.append((stat.S_IMODE(os.stat(path).st_mode), stat.S_IMODE(os.stat(folder).st_mode),
                     os.path.samefile(os.path.dirname(folder), tmp_path),
                     os.path.basename(path) != "copy.bin"))

    files.create_file(str(dest), fill)
    files.write_text(str(tmp_path / "out.txt"),
                     lambda out: fill(out.name))
    # 0600 file in a 0700 folder of its own, made in the destination's folder (same
    # filesystem, so publishing it is one rename or link), under an unpredictable name.
    assert seen == [(0o600, 0o700, True, True)] * 2
    assert _listing(tmp_path) == ["copy.bin", "out.txt"]


def test_the_temporary_is_synced_before_it_is_published(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    synced: list[int] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        synced.append(os.fstat(fd).st_ino)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    text, copy = tmp_path / "out.txt", tmp_path / "copy.bin"
    files.write_text(str(text), _write("x"))
    files.create_file(str(copy), _fill(b"y"))
    assert text.stat().st_ino in synced
    assert copy.stat().st_ino in synced


def test_a_failing_writer_leaves_nothing_behind(tmp_path: Path) -> None:
    dest = tmp_path / "out.txt"
    dest.write_text("the previous export\n")
    before = _listing(tmp_path)

    def write(out: IO[str]) -> None:
        out.write("half")
        raise RuntimeError("disk on fire")

    def fill(path: str) -> None:
        with open(path + "-journal", "w") as f:  # what SQLite leaves beside a copy
            f.write("journal")
        raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError, match="disk on fire"):
        files.write_text(str(dest), write)
    with pytest.raises(RuntimeError, match="disk on fire"):
        files.create_file(str(tmp_path / "copy.db"), fill)
    assert dest.read_text() == "the previous export\n"
    assert _listing(tmp_path) == before


def test_a_missing_folder_is_an_error_naming_it(tmp_path: Path) -> None:
    dest = tmp_path / "no" / "such" / "out.txt"
    with pytest.raises(FileNotFoundError, match="no such directory") as err:
        files.write_text(str(dest), _write("x"))
    assert str(tmp_path / "no" / "such") in str(err.value)
    with pytest.raises(FileNotFoundError, match="no such directory"):
        files.create_file(str(dest), _fill(b"x"))
    assert _listing(tmp_path) == []


# -- the database itself is refused ---------------------------------------------------------

_ALIASES = ("path", "relative", "relative-database", "symlink", "hardlink", "folder-symlink",
            "-wal", "-shm", "-journal", "hardlink-to-wal", "dots")


def _alias(how: str, database: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[str, str]:
    """A destination naming ``database`` (or a file of it) as ``how`` says, and the path
    the store would hold for the database."""
    folder = database.parent
    if how in ("relative", "relative-database"):
        monkeypatch.chdir(folder)
        return (database.name, str(database)) if how == "relative" else (
            str(database), database.name)
    if how == "symlink":
        os.symlink(database, folder / "link.db")
        return str(folder / "link.db"), str(database)
    if how == "hardlink":
        os.link(database, folder / "hard.db")
        return str(folder / "hard.db"), str(database)
    if how == "folder-symlink":
        os.symlink(folder, folder.parent / "alias-folder")
        return str(folder.parent / "alias-folder" / database.name), str(database)
    if how in ("-wal", "-shm", "-journal"):
        return f"{database}{how}", str(database)  # refused whether or not SQLite made it yet
    if how == "hardlink-to-wal":
        os.link(f"{database}-wal", folder / "hard-wal")
        return str(folder / "hard-wal"), str(database)
    if how == "dots":
        return str(folder / "." / ".." / folder.name / database.name), str(database)
    return str(database), str(database)


@pytest.mark.parametrize("how", _ALIASES)
def test_the_database_and_its_side_files_are_refused(how: str, database: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    dest, protected = _alias(how, database, monkeypatch)
    folder = database.parent
    before = {name: digest(folder / name) for name in _listing(folder)
              if os.path.isfile(folder / name)}
    listing = _listing(folder)
    for attempt in (lambda: files.write_text(dest, _write("csv"), protect=[protected]),
                    lambda: files.create_file(dest, _fill(b"copy"), protect=[protected])):
        with pytest.raises(files.DatabaseDestination) as err:
            attempt()
        assert isinstance(err.value, ValueError)
        message = str(err.value)
        assert dest in message and "database" in message and "nothing was written" in message
    assert _listing(folder) == listing
    assert {name: digest(folder / name) for name in before} == before


def test_other_files_beside_the_database_are_fine(database: Path) -> None:
    files.write_text(f"{database}.csv", _write("x"), protect=[str(database)])
    files.create_file(f"{database}-walrus", _fill(b"y"), protect=[str(database)])
    assert Path(f"{database}.csv").read_text() == "x"
    assert Path(f"{database}-walrus").read_bytes() == b"y"


# -- what exists and is not a regular file is refused ----------------------------------------

@pytest.mark.parametrize("kind", SPECIAL_KINDS)
def test_what_is_not_a_regular_file_is_refused(kind: str, tmp_path: Path,
                                               victim: Path) -> None:
    dest = make_special(kind, tmp_path / "dest", victim)
    node, victim_bytes = node_of(dest), digest(victim)
    for attempt in (lambda: files.write_text(dest, _write("x")),
                    lambda: files.create_file(dest, _fill(b"x"))):
        with pytest.raises(files.RefusedDestination) as err:
            attempt()
        assert not isinstance(err.value, files.DatabaseDestination)
        assert dest in str(err.value) and "not a regular file" in str(err.value)
    assert node_of(dest) == node
    assert digest(victim) == victim_bytes
    assert _listing(victim.parent) == ["victim.txt"]


def test_create_file_never_overwrites(tmp_path: Path) -> None:
    dest = tmp_path / "exists.db"
    dest.write_bytes(b"keep me")
    with pytest.raises(files.RefusedDestination,
                       match=f"backup destination {dest} already exists; choose a new path"):
        files.create_file(str(dest), _fill(b"x"), what="backup destination")
    assert dest.read_bytes() == b"keep me"
    assert _listing(tmp_path) == ["exists.db"]


def test_create_file_loses_a_race_without_overwriting(tmp_path: Path) -> None:
    dest = tmp_path / "copy.db"

    def fill(path: str) -> None:
        _fill(b"ours")(path)
        dest.write_bytes(b"theirs")  # another process takes the name meanwhile

    with pytest.raises(files.RefusedDestination, match="already exists"):
        files.create_file(str(dest), fill)
    assert dest.read_bytes() == b"theirs"
    assert _listing(tmp_path) == ["copy.db"]


# -- predictable temporary names are not used -----------------------------------------------

_PLANTED = (".part-{pid}", ".part-{pid}-journal", ".part-{pid}-wal", ".part-{pid}-shm",
            ".tmp", ".part")


def test_planted_temporary_names_are_never_written_through(tmp_path: Path, victim: Path,
                                                           database: Path) -> None:
    text, copy = tmp_path / "out.txt", tmp_path / "copy.db"
    for dest in (text, copy):
        for pattern in _PLANTED:
            os.symlink(victim, str(dest) + pattern.format(pid=os.getpid()))
    listing, victim_bytes = _listing(tmp_path), digest(victim)
    files.write_text(str(text), _write("exported\n"))
    files.create_file(str(copy), _copy_database(database))
    assert digest(victim) == victim_bytes
    assert text.read_text() == "exported\n"
    assert sqlite3.connect(copy).execute("SELECT x FROM t").fetchall() == [("keep",)]
    assert _listing(tmp_path) == sorted([*listing, "out.txt", "copy.db"])
    for dest in (text, copy):
        for pattern in _PLANTED:
            assert os.readlink(str(dest) + pattern.format(pid=os.getpid())) == str(victim)


# -- numbered names (the pre-migration copies) ------------------------------------------------

def test_create_numbered_takes_the_first_free_name(tmp_path: Path, victim: Path) -> None:
    base = str(tmp_path / "state.db.bak-v0")
    assert files.create_numbered(base, _fill(b"first")) == base
    assert files.create_numbered(base, _fill(b"second")) == base + ".1"
    os.symlink(victim, base + ".2")  # taken, even though it points elsewhere
    os.mkfifo(base + ".3")
    assert files.create_numbered(base, _fill(b"third")) == base + ".4"
    assert [Path(p).read_bytes() for p in (base, base + ".1", base + ".4")] == [
        b"first", b"second", b"third"]
    assert victim.read_text() == "precious\n" * 100
    assert stat.S_ISFIFO(os.lstat(base + ".3").st_mode)


@pytest.mark.parametrize("side", files.SQLITE_REPLAYED)
def test_a_new_sqlite_file_never_lands_beside_a_stale_wal_or_journal(tmp_path: Path,
                                                                     side: str) -> None:
    # SQLite would apply a stale -wal's frames or a hot -journal's pages to the new file.
    dest = tmp_path / "copy.db"
    stale = Path(f"{dest}{side}")
    stale.write_bytes(b"left by a file deleted long ago")
    with pytest.raises(files.RefusedDestination, match=f"has a {stale} beside it"):
        files.create_file(str(dest), _fill(b"x"), beside=files.SQLITE_REPLAYED)
    assert _listing(tmp_path) == [stale.name]
    base = str(tmp_path / "state.db.bak-v0")
    Path(base + side).write_bytes(b"stale")
    assert files.create_numbered(base, _fill(b"x"), beside=files.SQLITE_REPLAYED) == base + ".1"


# -- which files a database lives in ------------------------------------------------------------

def test_files_of(tmp_path: Path) -> None:
    path = str(tmp_path / "x.db")
    assert files.files_of(peewee.SqliteDatabase(path)) == (path,)
    assert files.files_of(peewee.PostgresqlDatabase("x")) == ()


def test_side_files_are_named_after_the_resolved_database(tmp_path: Path) -> None:
    real = tmp_path / "real.db"
    real.write_bytes(b"db")
    os.symlink(real, tmp_path / "link.db")  # SQLite keeps link.db's WAL as real.db-wal
    with pytest.raises(files.DatabaseDestination, match="wal file of the database"):
        files.write_text(f"{real}-wal", _write("x"), protect=[str(tmp_path / "link.db")])
    with pytest.raises(files.DatabaseDestination):
        files.check_destination(f"{tmp_path}/link.db-wal", protect=[str(tmp_path / "link.db")])


def test_a_file_in_place_of_a_folder_is_a_missing_folder(tmp_path: Path) -> None:
    (tmp_path / "plain").write_text("x")
    with pytest.raises(FileNotFoundError, match="no such directory"):
        files.write_text(str(tmp_path / "plain" / "out.txt"), _write("x"))
    assert _listing(tmp_path) == ["plain"]


def test_an_empty_destination_is_refused() -> None:
    with pytest.raises(files.RefusedDestination, match="must not be empty"):
        files.write_text("", _write("x"))
    with pytest.raises(files.RefusedDestination, match="must not be empty"):
        files.create_numbered("", _fill(b"x"))
