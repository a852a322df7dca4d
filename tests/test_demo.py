"""sprint_runner.demo: a realistic sprint simulated into a store, the same for the same clock."""
from __future__ import annotations

from typing import Any

from sprint_runner import Store
from sprint_runner.demo import MINUTES, OWNER, PLAN, simulate_sprint


def _sprint(store: Store, batch: int) -> dict[str, Any]:
    """Every row of the batch, its ids (and the batch id in messages) replaced by their
    position in the batch, so two simulations compare equal when only their ids differ."""
    stories = store.get_stories_by_batch(batch)
    commands = store.get_commands_by_batch(batch)
    story_at = {s["id"]: n for n, s in enumerate(stories)}
    command_at = {c["id"]: n for n, c in enumerate(commands)}
    events = store.get_events_by_batch(batch)
    return {
        "batch": {k: v for k, v in (store.get_batch(batch) or {}).items() if k != "id"},
        "stories": [{**s, "id": story_at[s["id"]], "batch_id": None} for s in stories],
        "commands": [{**c, "id": command_at[c["id"]], "story_id": story_at[c["story_id"]]}
                     for c in commands],
        "events": [{**e, "id": None, "batch_id": None,
                    "story_id": story_at.get(e["story_id"]),
                    "command_id": command_at.get(e["command_id"]),
                    "message": e["message"].replace(f"batch {batch} ", "batch # ")}
                   for e in events],
        "background_tasks": [{**t, "id": None, "batch_id": None}
                             for t in store.get_background_tasks_by_batch(batch)],
    }


def test_simulate_sprint_follows_the_plan(store: Store, clock: Any) -> None:
    now = clock.now
    batch = simulate_sprint(store)
    assert clock.now == now  # the store's own clock is not moved
    row = store.get_batch(batch)
    assert row is not None
    assert (row["status"], row["max_cycles"], row["cycles_completed"], row["owner"]) == (
        "completed", 2, 2, OWNER)
    # It ends at the store's now, and starts as long before as its commands take.
    assert (row["started_at"], row["ended_at"], row["heartbeat_at"]) == (
        now - 60 * MINUTES, now, now)

    stories = store.get_stories_by_batch(batch)
    assert [(s["story_key"], s["epic_id"]) for s in stories] == [(k, e) for k, e, _ in PLAN]
    assert [s["status"] for s in stories] == ["done", "done", "done", "blocked"]
    assert [store.check_story_blocked(s["id"]) for s in stories] == [False] * 3 + [True]
    assert all(s["ended_at"] is not None for s in stories)

    for story, (_, _, plan) in zip(stories, PLAN, strict=True):
        commands = store.get_commands_by_story(story["id"])
        assert [(c["command"], c["task_id"], c["status"], c["ended_at"] - c["started_at"])
                for c in commands] == [
            (name, task, "failed" if failure else "completed", 60 * length)
            for name, task, length, failure in plan]
        failures = [c["output_summary"] for c in commands if c["status"] == "failed"]
        assert failures == [failure for *_, failure in plan if failure]
    assert len(store.get_commands_by_batch(batch)) == sum(len(p) for _, _, p in PLAN)
    assert len(store.get_commands_by_batch(batch, "failed")) == 4

    events = store.get_events_by_batch(batch)
    # The batch's start and end, each cycle's, each story's and each command's.
    assert len(events) == 2 + 2 * 2 + sum(2 + 2 * len(p) for _, _, p in PLAN)
    assert store.count_events(batch_id=batch) == len(events)
    assert [e["status"] for e in events].count("failed") == 4
    assert [e["story_key"] for e in events if e["status"] == "blocked"] == ["2b-2"]
    assert events[0]["message"] == f"batch {batch} started: 2 cycles, 4 stories"
    assert events[-1]["message"] == f"batch {batch} completed: 3 stories done, 1 blocked"
    assert events[-1]["timestamp"] == now

    (task,) = store.get_background_tasks_by_batch(batch)
    assert (task["task_type"], task["story_key"], task["status"]) == (
        "context-refresh", "2a-1", "completed")


def test_the_same_clock_gives_the_same_sprint(store: Store) -> None:
    end = 1_700_000_000
    first = simulate_sprint(store, end=end)
    second = simulate_sprint(store, end=end)
    assert second != first
    assert _sprint(store, second) == _sprint(store, first)
    # Another end: the same sprint, moved in time.
    later = _sprint(store, simulate_sprint(store, end=end + 3600))
    assert later != _sprint(store, first)
    assert [e["timestamp"] - 3600 for e in later["events"]] == [
        e["timestamp"] for e in _sprint(store, first)["events"]]


def test_simulate_sprint_beside_other_batches(store: Store, batch: int) -> None:
    # Nothing refuses a database that holds data: only the demo command checks that.
    simulated = simulate_sprint(store)
    assert sorted(b["id"] for b in store.list_batches()) == sorted([batch, simulated])
    assert store.get_stories_by_batch(batch) == []
