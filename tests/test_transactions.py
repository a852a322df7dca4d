"""transaction() and get_connection(): atomicity, savepoints, the write lock."""
from __future__ import annotations

import sqlite3

import pytest

from sprint_runner import IntegrityError, Store


class Boom(Exception):
    pass


def test_transaction_commits(store: Store) -> None:
    with store.transaction():
        batch = store.create_batch(1)
        story = store.create_story(batch, "k", "e")
    assert store.get_story(story)["batch_id"] == batch


def test_exception_rolls_back_everything(store: Store) -> None:
    with pytest.raises(Boom):
        with store.transaction():
            batch = store.create_batch(1)
            store.create_story(batch, "k", "e")
            raise Boom
    assert store.get_batch(batch) is None
    assert store.list_batches() == []


def test_inner_block_caught_rolls_back_only_itself(store: Store) -> None:
    with store.transaction():
        batch = store.create_batch(1)
        try:
            with store.transaction():
                store.create_story(batch, "inner", "e")
                raise Boom
        except Boom:
            pass
        kept = store.create_story(batch, "outer", "e")
    assert [s["id"] for s in store.get_stories_by_batch(batch)] == [kept]


def test_inner_exception_escaping_rolls_back_outer(store: Store) -> None:
    with pytest.raises(Boom):
        with store.transaction():
            batch = store.create_batch(1)
            with store.transaction():
                store.create_story(batch, "inner", "e")
                raise Boom
    assert store.get_batch(batch) is None


def test_three_levels(store: Store) -> None:
    with store.transaction():
        batch = store.create_batch(1)
        with store.transaction():
            a = store.create_story(batch, "a", "e")
            try:
                with store.transaction():
                    store.create_story(batch, "b", "e")
                    raise Boom
            except Boom:
                pass
        c = store.create_story(batch, "c", "e")
    assert [s["id"] for s in store.get_stories_by_batch(batch)] == [a, c]


def test_integrity_error_inside_transaction_rolls_back(store: Store) -> None:
    with pytest.raises(IntegrityError):
        with store.transaction():
            batch = store.create_batch(1)
            store.create_story(batch + 1000, "k", "e")
    assert store.get_batch(batch) is None


def test_validation_error_inside_transaction_rolls_back(store: Store) -> None:
    with pytest.raises(ValueError):
        with store.transaction():
            batch = store.create_batch(1)
            store.update_batch(batch, status="bogus")
    assert store.list_batches() == []


def test_get_connection_rows_by_name_and_commit(store: Store, batch: int) -> None:
    with store.get_connection() as conn:
        cursor = conn.cursor()
        cursor.execute("SELECT id, max_cycles FROM batches")
        row = cursor.fetchone()
        assert row["id"] == batch
        assert row["max_cycles"] == 5
        cursor.execute("UPDATE batches SET max_cycles = 9 WHERE id = " + str(batch))
    assert store.get_batch(batch)["max_cycles"] == 9


def test_get_connection_rolls_back_on_exception(store: Store, batch: int) -> None:
    with pytest.raises(Boom):
        with store.get_connection() as conn:
            conn.cursor().execute("UPDATE batches SET max_cycles = 42")
            raise Boom
    assert store.get_batch(batch)["max_cycles"] == 5


def test_get_connection_nests_inside_transaction(store: Store) -> None:
    with pytest.raises(Boom):
        with store.transaction():
            batch = store.create_batch(1)
            with store.get_connection() as conn:
                conn.cursor().execute("UPDATE batches SET max_cycles = 3")
            raise Boom
    assert store.get_batch(batch) is None


@pytest.mark.sqlite_only
def test_row_factory_only_inside_block(store: Store, batch: int) -> None:
    with store.get_connection() as conn:
        assert conn.row_factory is sqlite3.Row
        assert conn.execute("SELECT id FROM batches").fetchone()["id"] == batch
    assert conn.row_factory is None
    assert type(store.get_batch(batch)) is dict


@pytest.mark.sqlite_only
def test_outermost_transaction_takes_write_lock_at_start(store: Store, db_target: str) -> None:
    other = sqlite3.connect(db_target, timeout=0, isolation_level=None)
    try:
        with store.transaction():
            with pytest.raises(sqlite3.OperationalError, match="locked"):
                other.execute("BEGIN IMMEDIATE")
        other.execute("BEGIN IMMEDIATE")
        other.execute("ROLLBACK")
    finally:
        other.close()


@pytest.mark.sqlite_only
def test_reads_leave_no_transaction_open(store: Store, batch: int, db_target: str) -> None:
    store.get_batch(batch)
    store.get_events()
    list(store.iter_events())
    conn = store.database.connection()
    assert not conn.in_transaction
    other = sqlite3.connect(db_target, timeout=0, isolation_level=None)
    try:
        # A checkpoint that must reach every frame fails if a reader pins a snapshot.
        busy, _, _ = other.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        assert busy == 0
    finally:
        other.close()


@pytest.mark.sqlite_only
def test_foreign_keys_on_for_every_connection(store: Store) -> None:
    assert store.database.execute_sql("PRAGMA foreign_keys").fetchone()[0] == 1
    assert store.database.execute_sql("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert store.database.execute_sql("PRAGMA synchronous").fetchone()[0] == 1
    assert store.database.execute_sql("PRAGMA busy_timeout").fetchone()[0] == 30_000
