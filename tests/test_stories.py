"""Stories: create, update, lookups by id, key and batch."""
from __future__ import annotations

from sprint_runner import Store


def test_create_story_defaults(store: Store, batch: int, clock) -> None:
    story_id = store.create_story(batch, "2a-1", "2a")
    assert store.get_story(story_id) == {
        "id": story_id, "batch_id": batch, "story_key": "2a-1", "epic_id": "2a",
        "status": "in-progress", "started_at": clock.now, "ended_at": None,
    }


def test_get_story_missing(store: Store) -> None:
    assert store.get_story(5) is None


def test_update_story(store: Store, story: int) -> None:
    assert store.update_story(story, status="done", ended_at=1_700_000_500) == 1
    row = store.get_story(story)
    assert (row["status"], row["ended_at"]) == ("done", 1_700_000_500)
    assert store.update_story(story + 100, status="done") == 0


def test_story_status_is_free_text(store: Store, story: int) -> None:
    assert store.update_story(story, status="blocked: waiting for review") == 1
    assert store.get_story(story)["status"] == "blocked: waiting for review"


def test_get_story_by_key_returns_most_recent_in_batch(store: Store, batch: int, clock) -> None:
    first = store.create_story(batch, "2a-1", "2a")
    clock.advance(10)
    second = store.create_story(batch, "2a-1", "2a")
    other = store.create_batch(1)
    store.create_story(other, "2a-1", "2a")
    assert store.get_story_by_key("2a-1", batch)["id"] == second > first
    assert store.get_story_by_key("2a-2", batch) is None
    assert store.get_story_by_key("2a-1", 99999) is None


def test_get_story_by_key_is_exact(store: Store, batch: int) -> None:
    store.create_story(batch, "2a-1", "2a")
    assert store.get_story_by_key("2A-1", batch) is None
    assert store.get_story_by_key("2a-1 ", batch) is None


def test_get_stories_by_batch_ordered_by_id(store: Store, batch: int) -> None:
    ids = [store.create_story(batch, key, "3b") for key in ("3b-2", "3b-1", "3b-3")]
    other = store.create_batch(1)
    store.create_story(other, "x-1", "x")
    assert [s["id"] for s in store.get_stories_by_batch(batch)] == ids
    assert store.get_stories_by_batch(other)[0]["story_key"] == "x-1"
    assert store.get_stories_by_batch(4242) == []


def test_story_batch_can_be_moved_to_existing_batch(store: Store, story: int) -> None:
    other = store.create_batch(2)
    assert store.update_story(story, batch_id=other) == 1
    assert store.get_story(story)["batch_id"] == other
