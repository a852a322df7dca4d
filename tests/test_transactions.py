"""transaction() and get_connection(): atomicity, savepoints, the write lock."""
from __future__ import annotations

import sqlite3

import peewee
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


class _BusyOnce:
    """A connection stand-in whose next ``execute`` reports SQLite busy, once."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn, self.failures = conn, 0

    def execute(self, sql: str, params: object = ()) -> sqlite3.Cursor:
        if self.failures == 0:
            self.failures += 1
            raise sqlite3.OperationalError("database is locked")
        return self.conn.execute(sql, params)  # type: ignore[arg-type]

    def __getattr__(self, name: str) -> object:
        return getattr(self.conn, name)


@pytest.mark.sqlite_only
@pytest.mark.parametrize("read", ["get_batch", "get_story", "check_story_blocked",
                                  "get_stories_by_batch"])
def test_busy_read_outside_a_transaction_is_retried(store: Store, batch: int,
                                                    read: str) -> None:
    story = store.create_story(batch, "1", "1-1")
    for _ in range(3):
        store.update_command(store.create_command(story, "dev-story", "t"), status="failed")
    arg = batch if read in ("get_batch", "get_stories_by_batch") else story
    expected = getattr(store, read)(arg)
    state = store._executor._state  # type: ignore[attr-defined]  # SQLite only
    busy = _BusyOnce(state.conn)
    state.conn = busy
    try:
        assert getattr(store, read)(arg) == expected
    finally:
        state.conn = busy.conn
    assert busy.failures == 1
    assert expected not in (None, False, [])


@pytest.mark.sqlite_only
def test_foreign_keys_on_for_every_connection(store: Store) -> None:
    assert store.database.execute_sql("PRAGMA foreign_keys").fetchone()[0] == 1
    assert store.database.execute_sql("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert store.database.execute_sql("PRAGMA synchronous").fetchone()[0] == 1
    assert store.database.execute_sql("PRAGMA busy_timeout").fetchone()[0] == 30_000


def test_failed_statement_inside_transaction_undoes_only_itself(store: Store) -> None:
    with store.transaction():
        batch = store.create_batch(1)
        with pytest.raises(IntegrityError):
            store.create_story(99999999, "orphan", "e")
        kept = store.create_story(batch, "kept", "e")
    assert [s["id"] for s in store.get_stories_by_batch(batch)] == [kept]


def test_several_failures_and_nested_blocks_keep_the_rest(store: Store) -> None:
    with store.transaction():
        batch = store.create_batch(1)
        with pytest.raises(IntegrityError):
            store.create_story(99999999, "orphan", "e")
        a = store.create_story(batch, "a", "e")
        with store.transaction():
            b = store.create_story(batch, "b", "e")
            with pytest.raises(IntegrityError):
                store.create_command(99999999, "dev-story", "t")
            c = store.create_story(batch, "c", "e")
        with pytest.raises(IntegrityError), store.transaction():
            store.create_story(batch, "rolled-back", "e")
            store.create_story(99999999, "orphan", "e")
        with pytest.raises(IntegrityError):
            store.update_story(a, batch_id=99999999)
        d = store.create_story(batch, "d", "e")
        with store.get_connection() as conn:
            conn.cursor().execute("UPDATE batches SET max_cycles = 7")
        e = store.create_story(batch, "e", "e")
    assert [s["id"] for s in store.get_stories_by_batch(batch)] == [a, b, c, d, e]
    assert store.get_story(a)["batch_id"] == batch
    assert store.get_batch(batch)["max_cycles"] == 7


def test_failed_bulk_insert_inside_transaction_is_all_or_nothing(store: Store) -> None:
    with store.transaction():
        batch = store.create_batch(1)
        good = {"batch_id": batch, "epic_id": "e", "story_key": "k", "command": "c",
                "task_id": "t", "status": "s"}
        for size in (3, 2500):  # executemany on SQLite; multi-row INSERTs in chunks
            events = [dict(good, message=str(i)) for i in range(size)]
            events[-1]["story_id"] = 99999999
            with pytest.raises(IntegrityError):
                store.create_events(events)
        store.create_event(batch, None, None, "e", "k", "c", "t", "s", "after")
    assert [e["message"] for e in store.get_events_by_batch(batch)] == ["after"]


def test_failed_read_inside_transaction_keeps_the_transaction(store: Store) -> None:
    with store.transaction():
        batch = store.create_batch(1)
        with pytest.raises(peewee.DatabaseError):
            store._executor.fetchall("SELECT no_such_column FROM batches")
        kept = store.create_story(batch, "kept", "e")
    assert store.get_story(kept) is not None


def test_many_statements_in_one_transaction(store: Store) -> None:
    # One savepoint per statement on PostgreSQL must not pile up locks or subtransactions.
    with store.transaction():
        batch = store.create_batch(1)
        for i in range(3000):
            store.create_event(batch, None, None, "e", "k", "c", "t", "s", str(i))
        if store.backend == "postgresql":
            locks = store._executor.fetchall("SELECT COUNT(*) FROM pg_locks WHERE pid = pg_backend_pid()")
            assert locks[0][0] < 50
    assert len(store.get_events_by_batch(batch)) == 3000


def test_peewee_atomic_inside_transaction_around_store_calls(store: Store) -> None:
    with store.transaction():
        batch = store.create_batch(1)
        with store.database.atomic():
            a = store.create_story(batch, "a", "e")
            with pytest.raises(IntegrityError):
                store.create_story(99999999, "orphan", "e")
            b = store.create_story(batch, "b", "e")
        with pytest.raises(Boom), store.database.atomic():
            store.create_story(batch, "rolled-back", "e")
            raise Boom
        with pytest.raises(IntegrityError):
            store.create_story(99999999, "orphan", "e")
        c = store.create_story(batch, "c", "e")
    assert [s["id"] for s in store.get_stories_by_batch(batch)] == [a, b, c]


def test_two_stores_on_one_database_share_a_transaction(store: Store) -> None:
    other = Store(store.database, clock=store.clock, migrate=False)
    with store.transaction():
        batch = store.create_batch(1)
        with pytest.raises(IntegrityError):
            other.create_story(99999999, "orphan", "e")
        a = other.create_story(batch, "a", "e")
        with pytest.raises(IntegrityError):
            store.create_story(99999999, "orphan", "e")
        with other.transaction():
            b = store.create_story(batch, "b", "e")
        c = other.create_story(batch, "c", "e")
    assert [s["id"] for s in store.get_stories_by_batch(batch)] == [a, b, c]


def test_statement_savepoint_in_its_own_round_trip(store: Store) -> None:
    if store.backend != "postgresql":
        pytest.skip("the statement savepoint is PostgreSQL's")
    store._executor._savepoint_in_statement = False  # as under psycopg 3 (server-side binding)
    with store.transaction():
        batch = store.create_batch(1)
        with pytest.raises(IntegrityError):
            store.create_story(99999999, "orphan", "e")
        with store.transaction():
            a = store.create_story(batch, "a", "e")
        with pytest.raises(IntegrityError):
            store.create_story(99999999, "orphan", "e")
        b = store.create_story(batch, "b", "e")
    assert [s["id"] for s in store.get_stories_by_batch(batch)] == [a, b]
