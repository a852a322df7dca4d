"""Batches: create, update, read, the active batch, cycles."""
from __future__ import annotations

import os
import socket

import pytest
from freezegun import freeze_time

from sprint_runner import Store


def test_create_batch_defaults(store: Store, clock) -> None:
    batch_id = store.create_batch(3)
    assert isinstance(batch_id, int)
    assert store.get_batch(batch_id) == {
        "id": batch_id, "started_at": clock.now, "ended_at": None, "max_cycles": 3,
        "cycles_completed": 0, "status": "running",
        "owner": f"{socket.gethostname()}:{os.getpid()}", "heartbeat_at": clock.now,
    }


def test_create_batch_uses_frozen_system_clock(make_store) -> None:
    store = make_store(clock=None)
    with freeze_time("2026-01-02 03:04:05"):
        batch_id = store.create_batch(1)
    batch = store.get_batch(batch_id)
    assert batch["started_at"] == 1767323045
    assert batch["heartbeat_at"] == 1767323045


def test_ids_increase(store: Store) -> None:
    first, second = store.create_batch(1), store.create_batch(1)
    assert second > first


def test_get_batch_missing_returns_none(store: Store) -> None:
    assert store.get_batch(12345) is None


def test_update_batch_fields(store: Store, batch: int) -> None:
    assert store.update_batch(batch, status="completed", ended_at=1_700_000_100,
                              cycles_completed=4) == 1
    row = store.get_batch(batch)
    assert (row["status"], row["ended_at"], row["cycles_completed"]) == (
        "completed", 1_700_000_100, 4)


def test_update_batch_same_value_counts_as_changed(store: Store, batch: int) -> None:
    assert store.update_batch(batch, status="running") == 1


def test_update_batch_missing_id_returns_zero(store: Store) -> None:
    assert store.update_batch(999, status="completed") == 0


def test_update_batch_without_fields_is_noop(store: Store, batch: int) -> None:
    before = store.get_batch(batch)
    assert store.update_batch(batch) == 0
    assert store.get_batch(batch) == before


@pytest.mark.parametrize("status", ["running", "completed", "stopped", "error"])
def test_batch_status_vocabulary(store: Store, batch: int, status: str) -> None:
    assert store.update_batch(batch, status=status) == 1
    assert store.get_batch(batch)["status"] == status


def test_active_batch_is_most_recent_running(store: Store) -> None:
    assert store.get_active_batch() is None
    older = store.create_batch(1)
    newer = store.create_batch(2)
    assert store.get_active_batch()["id"] == newer
    store.update_batch(newer, status="completed")
    assert store.get_active_batch()["id"] == older
    store.update_batch(older, status="stopped")
    assert store.get_active_batch() is None


def test_current_batch_status_includes_cycles(store: Store) -> None:
    assert store.get_current_batch_status() is None
    batch_id = store.create_batch(7)
    store.update_batch(batch_id, cycles_completed=2)
    status = store.get_current_batch_status()
    assert (status["id"], status["max_cycles"], status["cycles_completed"]) == (batch_id, 7, 2)


def test_count_completed_cycles(store: Store, batch: int) -> None:
    assert store.count_completed_cycles(batch) == 0
    store.update_batch(batch, cycles_completed=3)
    assert store.count_completed_cycles(batch) == 3
    assert store.count_completed_cycles(424242) == 0


def test_heartbeat(store: Store, batch: int, clock) -> None:
    clock.advance(30)
    assert store.heartbeat(batch) == 1
    assert store.get_batch(batch)["heartbeat_at"] == clock.now
    assert store.heartbeat(987654) == 0


def test_results_are_plain_dicts(store: Store, batch: int) -> None:
    row = store.get_batch(batch)
    assert type(row) is dict
    assert all(type(k) is str for k in row)
