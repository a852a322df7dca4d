"""Writing files safely: every file the package writes (exports, backups) goes through here.

A file is first written under an unpredictable name (``mkstemp``: ``O_EXCL``, mode
0600) inside a private folder (mode 0700) made for it in the destination's folder,
synced, then published under its name in one step: ``os.replace`` when it may replace
an older regular file, a hard link when it must be new (a link never overwrites). The
private folder is there because SQLite creates files beside the one it writes
(``-journal``, ``-wal``, ``-shm``) by name, following symlinks: in a folder nobody
else may enter, nobody can plant one. The folder and all it holds are removed
afterwards, whatever happened.

A destination is refused, with nothing written anywhere, when it is the database
itself or one of SQLite's files beside it (compared by resolved path and by device
and inode, so relative paths, symlinks and hard links to it are caught), or when it
exists and is not a regular file (a symlink, FIFO, device, socket or directory:
replacing one would destroy it, writing into one would write elsewhere).
"""
from __future__ import annotations

import errno
import os
import shutil
import stat
import tempfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import IO, TypeVar

import peewee

T = TypeVar("T")

SQLITE_SIDE_FILES = ("-wal", "-shm", "-journal")
"""What SQLite keeps beside a database file of the same name."""
SQLITE_REPLAYED = ("-wal", "-journal")
"""The side files SQLite would apply to a database file it opens (a stale WAL's frames,
a hot journal's pages): none may sit beside a new SQLite file."""

_KINDS = ((stat.S_ISLNK, "a symbolic link"), (stat.S_ISDIR, "a directory"),
          (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))
_NAME_ROOM = 200  # of a file name's 255 bytes, leaving room for the temporary suffix


class RefusedDestination(ValueError):
    """A destination the writer will not write to; the message names it and says why."""


class DatabaseDestination(RefusedDestination):
    """The destination is the database itself or one of its -wal/-shm/-journal files."""


def files_of(database: peewee.Database) -> tuple[str, ...]:
    """Return the files ``database`` keeps its data in (its SQLite file; none on a server)."""
    if isinstance(database, peewee.SqliteDatabase):
        return (str(database.database),)
    return ()


def _same_file(path: str, other: str) -> bool:
    if os.path.realpath(path) == os.path.realpath(other):
        return True
    try:
        return os.path.samestat(os.stat(path), os.stat(other))
    except OSError:  # one of them does not exist (yet): only the names could match
        return False


def _kind(mode: int) -> str | None:
    """Name what is not a regular file (None for a regular file)."""
    if stat.S_ISREG(mode):
        return None
    return next((name for test, name in _KINDS if test(mode)), "a special file")


def _refuse_database(path: str, protect: Iterable[str], what: str) -> None:
    for database in protect:
        # SQLite names the side files after the database's resolved path.
        for base in dict.fromkeys((database, os.path.realpath(database))):
            for side in ("", *SQLITE_SIDE_FILES):
                if _same_file(path, base + side):
                    which = f"the database {database}" if not side else (
                        f"the {side[1:]} file of the database {database}")
                    raise DatabaseDestination(f"{what} {path} is {which}; nothing was written")


def check_destination(path: str, *, protect: Iterable[str] = (), new: bool = False,
                      what: str = "destination") -> None:
    """Raise :class:`RefusedDestination` unless a file may be written at ``path``.

    Refused: any file of a database in ``protect``, anything that exists and is not
    a regular file, and (``new``) anything that exists at all.
    """
    if not path:
        raise RefusedDestination(f"{what} must not be empty")
    _refuse_database(path, protect, what)
    try:
        mode = os.lstat(path).st_mode
    except (FileNotFoundError, NotADirectoryError):
        return  # a new file; a missing folder is reported when the file is written
    kind = _kind(mode)
    if kind is not None:
        raise RefusedDestination(
            f"{what} {path} is {kind}, not a regular file; nothing was written")
    if new:
        raise RefusedDestination(f"{what} {path} already exists; choose a new path")


@contextmanager
def _draft(path: str) -> Iterator[str]:
    """Yield the path of a new, empty 0600 file in a private folder beside ``path``;
    the folder and everything in it are removed afterwards."""
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise FileNotFoundError(errno.ENOENT, f"no such directory {folder}", path)
    name = os.path.basename(path)[:_NAME_ROOM]
    private = tempfile.mkdtemp(prefix=f"{name}.part-", dir=folder)  # mode 0700
    try:
        fd, temporary = tempfile.mkstemp(dir=private)  # O_EXCL, mode 0600
        os.close(fd)  # reopened by name: nobody else can reach into the private folder
        yield temporary
    finally:
        shutil.rmtree(private, ignore_errors=True)


def _sync(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _sync_folder(path: str) -> None:
    # Makes the new name itself durable; some filesystems cannot sync a folder.
    try:
        _sync(os.path.dirname(os.path.abspath(path)))
    except OSError:
        pass


def write_text(path: str, write: Callable[[IO[str]], T], *, protect: Iterable[str] = (),
               what: str = "output file") -> T:
    """Write a UTF-8 text file through ``write(out)``; return what it returns.

    A regular file already at ``path`` is replaced atomically once the new one is
    complete (readers see the old file or the new one, never half of one).
    """
    protect = tuple(protect)
    check_destination(path, protect=protect, what=what)
    with _draft(path) as temporary:
        with open(temporary, "w", encoding="utf-8", newline="") as out:
            result = write(out)
            out.flush()
            os.fsync(out.fileno())
        check_destination(path, protect=protect, what=what)  # again: it may have changed
        os.replace(temporary, path)
    _sync_folder(path)
    return result


def create_file(path: str, fill: Callable[[str], None], *, protect: Iterable[str] = (),
                beside: Iterable[str] = (), what: str = "destination") -> None:
    """Create a new file at ``path`` by ``fill(temporary_path)``; never overwrite anything.

    ``fill`` writes the file at the path it is given (an empty 0600 file), with any
    files beside it it needs; it may open it by name, as SQLite does. A file named
    ``path`` plus one of the suffixes in ``beside`` must not exist either
    (:data:`SQLITE_REPLAYED` for a SQLite file).
    """
    protect, beside = tuple(protect), tuple(beside)
    check_destination(path, protect=protect, new=True, what=what)
    for side in beside:
        if os.path.lexists(path + side):
            raise RefusedDestination(
                f"{what} {path} has a {path + side} beside it, which SQLite would apply "
                "to the new file; remove it or choose a new path")
    _publish_new(path, fill, protect, beside, what, numbered=False)


def create_numbered(base: str, fill: Callable[[str], None], *, protect: Iterable[str] = (),
                    beside: Iterable[str] = (), what: str = "destination") -> str:
    """Create a new file as :func:`create_file` does, at ``base`` or, when that name is
    taken (by anything at all, or by a file beside it), at the first free one of
    ``base.1``, ``base.2``, ...; return the path used."""
    if not base:
        raise RefusedDestination(f"{what} must not be empty")
    return _publish_new(base, fill, tuple(protect), tuple(beside), what, numbered=True)


def _publish_new(base: str, fill: Callable[[str], None], protect: tuple[str, ...],
                 beside: tuple[str, ...], what: str, *, numbered: bool) -> str:
    with _draft(base) as temporary:
        fill(temporary)
        _sync(temporary)
        n = 0
        while True:
            candidate = f"{base}.{n}" if n else base
            _refuse_database(candidate, protect, what)
            if numbered and any(os.path.lexists(candidate + side) for side in beside):
                n += 1
                continue
            try:
                os.link(temporary, candidate)  # fails, never overwrites, if the name is taken
            except FileExistsError:
                if not numbered:
                    raise RefusedDestination(
                        f"{what} {candidate} already exists; choose a new path") from None
                n += 1
                continue
            break
    _sync_folder(candidate)
    return candidate
