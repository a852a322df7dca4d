"""Commands: create, update, per-story listing and the blocked-story rule."""
from __future__ import annotations

import pytest

from sprint_runner import Store


def test_create_command_defaults(store: Store, story: int, clock) -> None:
    command_id = store.create_command(story, "create-story", "analyze")
    assert store.get_commands_by_story(story) == [{
        "id": command_id, "story_id": story, "command": "create-story", "task_id": "analyze",
        "started_at": clock.now, "ended_at": None, "status": "running", "output_summary": None,
    }]


def test_update_command(store: Store, command: int, story: int) -> None:
    assert store.update_command(command, status="completed", ended_at=1_700_000_009,
                                output_summary="3 files changed") == 1
    row = store.get_commands_by_story(story)[0]
    assert (row["status"], row["ended_at"], row["output_summary"]) == (
        "completed", 1_700_000_009, "3 files changed")
    assert store.update_command(command + 50, status="failed") == 0


def test_output_summary_can_be_cleared(store: Store, command: int, story: int) -> None:
    store.update_command(command, output_summary="x")
    assert store.update_command(command, output_summary=None) == 1
    assert store.get_commands_by_story(story)[0]["output_summary"] is None


def test_commands_ordered_by_id(store: Store, story: int) -> None:
    ids = [store.create_command(story, name, "t") for name in ("b", "a", "c")]
    assert [c["id"] for c in store.get_commands_by_story(story)] == ids
    assert store.get_commands_by_story(story + 1000) == []


def _commands(store: Store, story: int, statuses: list[str]) -> None:
    for status in statuses:
        command_id = store.create_command(story, "dev-story", "t")
        if status != "running":
            store.update_command(command_id, status=status)


@pytest.mark.parametrize(("statuses", "blocked"), [
    ([], False),
    (["failed"], False),
    (["failed", "failed"], False),
    (["failed", "failed", "failed"], True),
    (["completed", "failed", "failed", "failed"], True),
    (["failed", "failed", "failed", "completed"], False),
    (["failed", "completed", "failed", "failed"], False),
    (["failed", "failed", "running"], False),
    (["failed"] * 6, True),
])
def test_check_story_blocked(store: Store, story: int, statuses: list[str],
                             blocked: bool) -> None:
    _commands(store, story, statuses)
    assert store.check_story_blocked(story) is blocked


def test_blocked_uses_id_order_not_time(store: Store, story: int, clock) -> None:
    _commands(store, story, ["failed", "failed"])
    later = store.create_command(story, "dev-story", "t")
    store.update_command(later, status="completed", started_at=1)
    assert store.check_story_blocked(story) is False


def test_blocked_unknown_story(store: Store) -> None:
    assert store.check_story_blocked(31337) is False
