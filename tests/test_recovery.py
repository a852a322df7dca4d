"""Crash recovery: heartbeats and stale running batches."""
from __future__ import annotations

import os
import socket

import pytest
from freezegun import freeze_time

from sprint_runner import Store


@pytest.fixture
def sprint(store: Store, clock) -> dict[str, int]:
    """A stale running batch with running work, a fresh one, and a finished one."""
    stale = store.create_batch(2)
    story = store.create_story(stale, "2a-1", "2a")
    running_cmd = store.create_command(story, "dev-story", "t")
    done_cmd = store.create_command(story, "create-story", "t")
    store.update_command(done_cmd, status="completed")
    running_task = store.create_background_task(stale, "2a-1", "story-review-chain")
    done_task = store.create_background_task(stale, "2a-1", "context-refresh")
    store.update_background_task(done_task, status="completed")
    finished = store.create_batch(1)
    store.update_batch(finished, status="completed", ended_at=clock.now + 1)
    clock.advance(500)
    fresh = store.create_batch(1)
    clock.advance(100)
    return {"stale": stale, "fresh": fresh, "finished": finished, "story": story,
            "running_cmd": running_cmd, "done_cmd": done_cmd, "running_task": running_task,
            "done_task": done_task}


def test_recover_stale_batches(store: Store, sprint, clock) -> None:
    assert store.recover_stale_batches(300) == [sprint["stale"]]
    stale = store.get_batch(sprint["stale"])
    assert (stale["status"], stale["ended_at"]) == ("stopped", clock.now)
    commands = {c["id"]: c for c in store.get_commands_by_story(sprint["story"])}
    assert (commands[sprint["running_cmd"]]["status"],
            commands[sprint["running_cmd"]]["ended_at"]) == ("failed", clock.now)
    assert commands[sprint["done_cmd"]]["status"] == "completed"
    tasks = {t["id"]: t for t in store.get_background_tasks_by_batch(sprint["stale"])}
    assert (tasks[sprint["running_task"]]["status"],
            tasks[sprint["running_task"]]["completed_at"]) == ("failed", clock.now)
    assert tasks[sprint["done_task"]]["status"] == "completed"
    assert store.get_batch(sprint["fresh"])["status"] == "running"
    assert store.get_batch(sprint["finished"])["status"] == "completed"
    events = store.get_events_by_batch(sprint["stale"])
    assert len(events) == 1
    event = events[0]
    assert {k: event[k] for k in ("epic_id", "story_key", "command", "task_id", "status",
                                  "story_id", "command_id", "timestamp")} == {
        "epic_id": "system", "story_key": "recovery", "command": "recover-stale-batches",
        "task_id": "recovery", "status": "stopped", "story_id": None, "command_id": None,
        "timestamp": clock.now}
    owner = f"{socket.gethostname()}:{os.getpid()}"
    assert owner in event["message"] and "600s ago" in event["message"]


def test_recovery_is_idempotent(store: Store, sprint) -> None:
    assert store.recover_stale_batches(300) == [sprint["stale"]]
    assert store.recover_stale_batches(300) == []
    assert len(store.get_events_by_batch(sprint["stale"])) == 1


def test_strictly_older_than_cutoff(store: Store, sprint) -> None:
    # The stale batch's heartbeat is exactly 600 s old: not strictly older than 600.
    assert store.recover_stale_batches(600) == []
    assert store.recover_stale_batches(599) == [sprint["stale"]]


def test_heartbeat_keeps_a_batch_alive(store: Store, sprint, clock) -> None:
    store.heartbeat(sprint["stale"])
    clock.advance(200)
    assert store.recover_stale_batches(300) == []
    clock.advance(200)
    assert store.recover_stale_batches(300) == [sprint["stale"], sprint["fresh"]]


def test_batch_without_heartbeat_counts_from_start(store: Store, clock) -> None:
    batch = store.create_batch(1)
    store.update_batch(batch, heartbeat_at=None)
    clock.advance(61)
    assert store.find_stale_batches(60)[0]["id"] == batch
    assert store.recover_stale_batches(60) == [batch]
    assert "owner" in store.get_events_by_batch(batch)[0]["message"]


def test_unknown_owner_is_named(store: Store, clock) -> None:
    batch = store.create_batch(1)
    store.update_batch(batch, owner=None)
    clock.advance(10)
    store.recover_stale_batches(5)
    assert "owner unknown" in store.get_events_by_batch(batch)[0]["message"]


def test_several_stale_batches_in_one_call(store: Store, clock) -> None:
    ids = [store.create_batch(1) for _ in range(3)]
    clock.advance(1000)
    assert store.recover_stale_batches(10) == ids


def test_recovery_with_frozen_system_clock(make_store) -> None:
    store = make_store(clock=None)
    with freeze_time("2026-03-01 12:00:00") as frozen:
        stale = store.create_batch(1)
        frozen.tick(3600)
        fresh = store.create_batch(1)
        frozen.tick(60)
        assert store.recover_stale_batches(1800) == [stale]
        assert store.get_batch(stale)["ended_at"] == store.get_batch(stale)["started_at"] + 3660
        assert store.get_batch(stale)["started_at"] == 1772366400  # 2026-03-01 12:00 UTC
        assert store.get_batch(fresh)["status"] == "running"


def test_last_seen(store: Store, clock) -> None:
    batch = store.create_batch(1)
    assert Store.last_seen(store.get_batch(batch)) == clock.now
    clock.advance(40)
    store.heartbeat(batch)
    assert Store.last_seen(store.get_batch(batch)) == clock.now
    store.update_batch(batch, heartbeat_at=None)
    assert Store.last_seen(store.get_batch(batch)) == clock.now - 40
