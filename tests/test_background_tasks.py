"""Background tasks: create, update, pending listing."""
from __future__ import annotations

import pytest

from sprint_runner import Store


def test_create_background_task(store: Store, batch: int, clock) -> None:
    task_id = store.create_background_task(batch, "2a-1", "story-review-chain")
    assert store.get_pending_background_tasks(batch) == [{
        "id": task_id, "batch_id": batch, "story_key": "2a-1",
        "task_type": "story-review-chain", "spawned_at": clock.now, "completed_at": None,
        "status": "running",
    }]


@pytest.mark.parametrize("status", ["completed", "failed", "error"])
def test_finished_tasks_are_not_pending(store: Store, batch: int, status: str) -> None:
    task_id = store.create_background_task(batch, "2a-1", "context-refresh")
    assert store.update_background_task(task_id, status=status, completed_at=1_700_000_001) == 1
    assert store.get_pending_background_tasks(batch) == []


def test_pending_ordered_by_spawned_at_then_id(store: Store, batch: int, clock) -> None:
    clock.advance(100)
    late = store.create_background_task(batch, "a", "t")
    clock.now -= 50
    early_1 = store.create_background_task(batch, "b", "t")
    early_2 = store.create_background_task(batch, "c", "t")
    other = store.create_batch(1)
    store.create_background_task(other, "d", "t")
    assert [t["id"] for t in store.get_pending_background_tasks(batch)] == [
        early_1, early_2, late]
    assert store.get_pending_background_tasks(5555) == []


def test_update_missing_task(store: Store) -> None:
    assert store.update_background_task(404, status="completed") == 0


@pytest.mark.parametrize("field", ["id", "batch_id", "story_key"])
def test_immutable_task_fields(store: Store, batch: int, field: str) -> None:
    task_id = store.create_background_task(batch, "2a-1", "t")
    before = store.get_pending_background_tasks(batch)
    with pytest.raises(ValueError, match=rf"^Invalid fields.*{field}"):
        store.update_background_task(task_id, **{field: 1})
    assert store.get_pending_background_tasks(batch) == before
