"""Events: logging, newest-first listing with offset, per-batch history."""
from __future__ import annotations

from typing import Any

import pytest
from conftest import log_event

from sprint_runner import Store


def test_create_event_row(store: Store, batch: int, story: int, command: int, clock) -> None:
    event_id = store.create_event(batch, story, command, "2a", "2a-1", "dev-story", "setup",
                                  "start", "Starting")
    assert store.get_events() == [{
        "id": event_id, "batch_id": batch, "story_id": story, "command_id": command,
        "timestamp": clock.now, "epic_id": "2a", "story_key": "2a-1", "command": "dev-story",
        "task_id": "setup", "status": "start", "message": "Starting", "event_type": "",
        "payload_json": None,
    }]


def test_event_optional_references(store: Store, batch: int) -> None:
    event_id = log_event(store, batch, message=None)
    row = store.get_events()[0]
    assert (row["id"], row["story_id"], row["command_id"], row["message"]) == (
        event_id, None, None, None)


def test_event_keyword_call(store: Store, batch: int) -> None:
    event_id = store.create_event(batch_id=batch, story_id=None, command_id=None,
                                  epic_id="e", story_key="k", command="c", task_id="t",
                                  status="end", message="")
    assert store.get_events()[0]["id"] == event_id
    assert store.get_events()[0]["message"] == ""


def test_get_events_newest_first_then_id(store: Store, batch: int, clock) -> None:
    a = log_event(store, batch)
    b = log_event(store, batch)
    clock.advance(5)
    c = log_event(store, batch)
    clock.now -= 100  # a clock that went backwards: timestamp order still wins
    d = log_event(store, batch)
    assert [e["id"] for e in store.get_events()] == [c, b, a, d]


def test_get_events_limit_offset(store: Store, batch: int, clock) -> None:
    ids = []
    for _ in range(7):
        ids.append(log_event(store, batch))
        clock.advance(1)
    newest = list(reversed(ids))
    assert [e["id"] for e in store.get_events(limit=3)] == newest[:3]
    assert [e["id"] for e in store.get_events(3, 3)] == newest[3:6]
    assert [e["id"] for e in store.get_events(limit=3, offset=6)] == newest[6:]
    assert store.get_events(limit=5, offset=50) == []
    assert store.get_events(limit=0) == []
    assert len(store.get_events()) == 7


def test_get_events_default_limit_is_100(store: Store, batch: int) -> None:
    store.create_events([{"batch_id": batch, "epic_id": "e", "story_key": "k",
                          "command": "c", "task_id": "t", "status": "s"}] * 150)
    assert len(store.get_events()) == 100


def test_get_events_by_batch_oldest_first(store: Store, clock) -> None:
    one, two = store.create_batch(1), store.create_batch(1)
    clock.advance(10)
    late = log_event(store, one)
    clock.now -= 5
    early = log_event(store, one)
    same_time = log_event(store, one)
    log_event(store, two)
    assert [e["id"] for e in store.get_events_by_batch(one)] == [early, same_time, late]
    assert store.get_events_by_batch(777) == []


def test_unicode_and_large_text_round_trip(store: Store, batch: int) -> None:
    message = "héllo — 世界 🚀 " + "x" * 200_000 + "\n\ttabs 'quotes' \"double\""
    event_id = store.create_event(batch, None, None, "épique", "2a-1✓", "dev-story", "t",
                                  "progress", message)
    row = store.get_events()[0]
    assert row["id"] == event_id
    assert row["message"] == message
    assert (row["epic_id"], row["story_key"]) == ("épique", "2a-1✓")


@pytest.mark.parametrize("unit", ["s", "ms"])
def test_events_per_minute(make_store: Any, unit: str) -> None:
    """Counts per minute of one batch, minutes floored in the store's unit."""
    now = [1_700_000_000 * (1000 if unit == "ms" else 1)]  # a minute boundary + 20 s
    store = make_store(clock=lambda: now[0], time_unit=unit)
    per_second = 1000 if unit == "ms" else 1
    batch, other = store.create_batch(1), store.create_batch(1)
    minute = now[0] - now[0] % (60 * per_second)
    for offset, target in ((0, batch), (30, batch), (39, batch), (40, batch), (41, other),
                           (200, batch)):
        now[0] = minute + 20 * per_second + offset * per_second
        log_event(store, target, f"at +{offset}")
    assert store.events_per_minute(batch) == [
        (minute, 3), (minute + 60 * per_second, 1), (minute + 180 * per_second, 1)]
    assert store.events_per_minute(other) == [(minute + 60 * per_second, 1)]
    assert store.events_per_minute(999) == []
    with pytest.raises(TypeError):
        store.events_per_minute("1")
