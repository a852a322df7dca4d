"""Concurrency: processes and threads sharing one database, kill -9, the write lock.

The multi-process proofs live in ``benchmarks/stress.py`` (people run it in long
mode); these tests run the same functions: the writer and read-modify-write proofs
at the issue's full counts (a few seconds each), the others at quick sizes, or at
full sizes too with ``SPRINT_RUNNER_STRESS=long``.
"""
from __future__ import annotations

import os
import sqlite3
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import log_event

from sprint_runner import LockTimeout, Store
from sprint_runner.connect import backend_of, open_database

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import stress  # the proofs, shared with the script

LONG = os.environ.get("SPRINT_RUNNER_STRESS", "").lower() in ("1", "long", "true", "yes")
SIZES = stress.LONG if LONG else stress.QUICK
FULL = stress.LONG


def _backend(target: str) -> str:
    return backend_of(open_database(target))


def _holds(result: stress.Result) -> None:
    assert result.ok, result.describe()


def test_concurrent_first_open(db_target: str) -> None:
    # Every opener may be the one creating the schema; on MySQL each CREATE TABLE
    # commits at once, so the others must read the state only under the lock.
    backend = _backend(db_target)
    result = stress.prove_first_open(db_target, 4 if backend == "sqlite" else 8)
    _holds(result)
    assert result.figures["opened"] == (4 if backend == "sqlite" else 8)


def test_writer_processes_with_a_paging_reader(db_target: str) -> None:
    writers = FULL.writers if _backend(db_target) == "sqlite" else FULL.server_writers
    result = stress.prove_writers(db_target, writers, FULL.events)
    _holds(result)
    assert result.figures["events"] == writers * FULL.events
    assert result.figures["reader_final"] == writers * FULL.events
    assert result.figures["reader_passes"] >= 2


def test_read_modify_write_transactions_across_processes(db_target: str) -> None:
    result = stress.prove_rmw(db_target, FULL.rmw_processes, FULL.rmw_transactions)
    _holds(result)
    assert result.figures["counter"] == FULL.rmw_processes * FULL.rmw_transactions


def test_rmw_proof_detects_lost_updates_without_a_transaction(db_target: str) -> None:
    # The control: the same increments outside store.transaction() must lose some,
    # or the proof above could not tell a working lock from luck.
    result = stress.prove_rmw(db_target, FULL.rmw_processes, FULL.rmw_transactions,
                              locked=False)
    assert result.errors == 0, result.describe()
    assert result.figures["counter"] < FULL.rmw_processes * FULL.rmw_transactions
    assert any("lost updates" in p for p in result.problems), result.describe()


@pytest.mark.sqlite_only
def test_kill_9_loses_no_returned_event(tmp_path: Path) -> None:
    result = stress.prove_kill(str(tmp_path / "kill.db"), SIZES.kills)
    _holds(result)
    assert result.figures["reported_events"] > 0
    assert result.figures["survivor_events"] > 0


def test_threads_sharing_one_store(db_target: str) -> None:
    result = stress.prove_threads(db_target, SIZES.threads, SIZES.thread_events,
                                  SIZES.thread_increments)
    _holds(result)
    assert result.figures["events"] == SIZES.threads * SIZES.thread_events
    assert result.figures["counter"] == SIZES.threads * SIZES.thread_increments


def _hold_write_lock(path: str) -> sqlite3.Connection:
    holder = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN IMMEDIATE")
    return holder


@pytest.mark.sqlite_only
def test_lock_timeout_names_the_database_and_writes_nothing(tmp_path: Path) -> None:
    path = str(tmp_path / "locked.db")
    store = Store(path, busy_timeout=0.05, lock_retries=2)
    batch = store.create_batch(1)
    holder = _hold_write_lock(path)
    try:
        started = time.monotonic()
        with pytest.raises(LockTimeout) as raised, store.transaction():
            log_event(store, batch)
        assert time.monotonic() - started < 1.0
        assert path in str(raised.value)
        assert "3 attempts" in str(raised.value)
        with pytest.raises(LockTimeout):  # a single statement outside a transaction too
            log_event(store, batch)
        assert store.get_batch(batch) is not None  # readers are not blocked
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert store.page_events(batch_id=batch)["events"] == []
    with store.transaction():  # the store is usable once the lock is free
        log_event(store, batch)
    assert len(store.page_events(batch_id=batch)["events"]) == 1
    store.close()


@pytest.mark.sqlite_only
def test_lock_released_midway_lets_the_transaction_through(tmp_path: Path) -> None:
    path = str(tmp_path / "locked.db")
    store = Store(path, busy_timeout=0.05, lock_retries=20)
    batch = store.create_batch(1)
    holder = _hold_write_lock(path)
    release = threading.Timer(0.1, holder.execute, args=("ROLLBACK",))
    release.start()
    try:
        started = time.monotonic()
        with store.transaction():
            event_id = log_event(store, batch)
        waited = time.monotonic() - started
    finally:
        release.join()
        holder.close()
    assert waited >= 0.08
    assert [e["id"] for e in store.page_events(batch_id=batch)["events"]] == [event_id]
    store.close()
