"""The errors the store raises beyond ``ValueError`` and ``TypeError``."""
from __future__ import annotations

import sqlite3

import peewee


class IntegrityError(peewee.IntegrityError, sqlite3.IntegrityError):
    """A broken reference (a missing parent row) or another constraint failure.

    It is both a ``peewee.IntegrityError`` and a ``sqlite3.IntegrityError``, so
    code written for the old module (which let sqlite3's error through) keeps
    catching it, on every backend.
    """


class SchemaError(peewee.DatabaseError):
    """The database cannot be used or upgraded as it is; nothing was written."""


class LockTimeout(peewee.OperationalError):
    """The write lock could not be taken within the store's bounded retries."""


class ConnectionLost(peewee.OperationalError):
    """A server connection died under a call; the message says what became of the call.

    The dead connection is closed and never returned to the pool; the next call
    (after the transaction block, inside one) gets a fresh connection.
    """


class StorageFull(peewee.OperationalError):
    """The disk (or the database's own size limit) is full: the call was rolled back.

    Nothing of the failed call was written; reads keep working, and writes succeed
    again once space is freed, on the same store (no reopening). ``path`` is the
    database file (or the server's location) and ``free_bytes`` the space left on
    its filesystem (None when it cannot be told, as on a server).
    """

    def __init__(self, message: str, *, path: str = "", free_bytes: int | None = None) -> None:
        super().__init__(message)
        self.path = path
        self.free_bytes = free_bytes
