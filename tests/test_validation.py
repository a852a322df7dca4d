"""Bad input: a clear error naming what was wrong, and nothing written."""
from __future__ import annotations

import sqlite3
from collections.abc import Callable
from typing import Any

import peewee
import pytest

from sprint_runner import IntegrityError, Store
from sprint_runner import events as events_module
from sprint_runner.models import MODELS
from sprint_runner.validation import (
    check_int,
    check_optional_int,
    check_optional_text,
    check_text,
)


def dump(store: Store) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every table, for before/after comparisons."""
    tables = {}
    with store.get_connection() as conn:
        for model in MODELS:
            name = model._meta.table_name
            cursor = conn.cursor()
            cursor.execute(f"SELECT * FROM {name} ORDER BY id")
            tables[name] = [tuple(row) if not isinstance(row, dict) else tuple(row.values())
                            for row in cursor.fetchall()]
    return tables


@pytest.fixture
def world(store: Store, clock) -> dict[str, int]:
    batch = store.create_batch(2)
    story = store.create_story(batch, "2a-1", "2a")
    command = store.create_command(story, "dev-story", "setup")
    task = store.create_background_task(batch, "2a-1", "context-refresh")
    event = store.create_event(batch, story, command, "2a", "2a-1", "dev-story", "setup",
                               "start", None)
    return {"batch": batch, "story": story, "command": command, "task": task, "event": event}


BAD_CALLS = [
    # (description, call, error type, message fragment)
    ("max_cycles str", lambda s, w: s.create_batch("3"), TypeError, "max_cycles"),
    ("max_cycles bool", lambda s, w: s.create_batch(True), TypeError, "max_cycles"),
    ("max_cycles float", lambda s, w: s.create_batch(2.0), TypeError, "max_cycles"),
    ("max_cycles zero", lambda s, w: s.create_batch(0), ValueError, "max_cycles must be >= 1"),
    ("max_cycles huge", lambda s, w: s.create_batch(2**70), ValueError, "max_cycles"),
    ("batch_id str", lambda s, w: s.create_story("1", "k", "e"), TypeError, "batch_id"),
    ("story_key empty", lambda s, w: s.create_story(w["batch"], "", "e"), ValueError,
     "story_key must be a non-empty str"),
    ("story_key None", lambda s, w: s.create_story(w["batch"], None, "e"), TypeError,
     "story_key"),
    ("story_key too long", lambda s, w: s.create_story(w["batch"], "k" * 256, "e"), ValueError,
     "story_key is longer than 255"),
    ("epic_id int", lambda s, w: s.create_story(w["batch"], "k", 2), TypeError, "epic_id"),
    ("NUL in key", lambda s, w: s.create_story(w["batch"], "a\x00b", "e"), ValueError, "NUL"),
    ("command empty", lambda s, w: s.create_command(w["story"], "", "t"), ValueError, "command"),
    ("task_id bytes", lambda s, w: s.create_command(w["story"], "c", b"t"), TypeError,
     "task_id"),
    ("event story_id str", lambda s, w: s.create_event(w["batch"], "1", None, "e", "k", "c",
                                                       "t", "s", None), TypeError, "story_id"),
    ("event status empty", lambda s, w: s.create_event(w["batch"], None, None, "e", "k", "c",
                                                       "t", "", None), ValueError, "status"),
    ("event message int", lambda s, w: s.create_event(w["batch"], None, None, "e", "k", "c",
                                                      "t", "s", 5), TypeError, "message"),
    ("task_type empty", lambda s, w: s.create_background_task(w["batch"], "k", ""), ValueError,
     "task_type"),
    ("get_events negative", lambda s, w: s.get_events(-1), ValueError, "limit"),
    ("get_events offset str", lambda s, w: s.get_events(10, "5"), TypeError, "offset"),
    ("update unknown field", lambda s, w: s.update_batch(w["batch"], colour="red"), ValueError,
     "Invalid fields"),
    ("update id", lambda s, w: s.update_story(w["story"], id=99), ValueError, "Invalid fields"),
    ("update mixes good and bad", lambda s, w: s.update_command(w["command"], status="failed",
                                                                 bogus=1), ValueError,
     "Invalid fields for commands: bogus"),
    ("hostile field name", lambda s, w: s.update_batch(
        w["batch"], **{"status = 'x'; DROP TABLE batches; --": 1}), ValueError, "Invalid fields"),
    ("batch status outside vocabulary", lambda s, w: s.update_batch(w["batch"], status="done"),
     ValueError, "running, completed, stopped, error"),
    ("command status outside vocabulary", lambda s, w: s.update_command(
        w["command"], status="ok"), ValueError, "running, completed, failed"),
    ("task status outside vocabulary", lambda s, w: s.update_background_task(
        w["task"], status="done"), ValueError, "running, completed, failed, error"),
    ("story status empty", lambda s, w: s.update_story(w["story"], status=""), ValueError,
     "status"),
    ("update timestamp str", lambda s, w: s.update_batch(w["batch"], ended_at="now"),
     TypeError, "ended_at"),
    ("update negative timestamp", lambda s, w: s.update_batch(w["batch"], ended_at=-5),
     ValueError, "ended_at"),
    ("update cycles negative", lambda s, w: s.update_batch(w["batch"], cycles_completed=-1),
     ValueError, "cycles_completed"),
    ("update required to None", lambda s, w: s.update_story(w["story"], story_key=None),
     ValueError, "story_key must not be None"),
    ("update id arg str", lambda s, w: s.update_batch(str(w["batch"]), status="completed"),
     TypeError, "batch_id"),
    ("get_batch float", lambda s, w: s.get_batch(1.0), TypeError, "batch_id"),
    ("get_story_by_key swapped", lambda s, w: s.get_story_by_key(w["batch"], "2a-1"),
     TypeError, "story_key"),
    ("heartbeat str", lambda s, w: s.heartbeat("1"), TypeError, "batch_id"),
    # Issue 10, item 13: a lone surrogate passed validation and failed later with a
    # UnicodeEncodeError that named no parameter.
    ("surrogate story_key", lambda s, w: s.create_story(w["batch"], "2a-\ud800", "2a"),
     ValueError, "story_key contains a lone surrogate"),
    ("surrogate message", lambda s, w: s.create_event(w["batch"], None, None, "e", "k", "c",
                                                      "t", "s", "x\udfff"), ValueError,
     "message contains a lone surrogate"),
    ("surrogate update", lambda s, w: s.update_command(w["command"], output_summary="\ud83d"),
     ValueError, "output_summary contains a lone surrogate"),
    ("surrogate in a batch of events", lambda s, w: s.create_events([{
        "batch_id": w["batch"], "epic_id": "e", "story_key": "k", "command": "c",
        "task_id": "t", "status": "s", "message": "\ud800"}]), ValueError, "surrogate"),
    ("recover negative", lambda s, w: s.recover_stale_batches(-1), ValueError, "stale_after"),
]


@pytest.mark.parametrize(("name", "call", "error", "fragment"), BAD_CALLS,
                         ids=[c[0] for c in BAD_CALLS])
def test_bad_input_raises_and_writes_nothing(store: Store, world, name, call, error,
                                             fragment) -> None:
    before = dump(store)
    with pytest.raises(error) as info:
        call(store, world)
    assert fragment in str(info.value)
    assert dump(store) == before


def test_update_error_names_every_invalid_field(store: Store, world) -> None:
    with pytest.raises(ValueError, match=r"^Invalid fields for batches: id, nope, zzz"):
        store.update_batch(world["batch"], zzz=1, id=2, nope=3)


@pytest.mark.parametrize("call", [
    lambda s, w: s.create_story(999_999, "k", "e"),
    lambda s, w: s.create_command(999_999, "c", "t"),
    lambda s, w: s.create_event(999_999, None, None, "e", "k", "c", "t", "s", None),
    lambda s, w: s.create_event(w["batch"], 999_999, None, "e", "k", "c", "t", "s", None),
    lambda s, w: s.create_event(w["batch"], None, 999_999, "e", "k", "c", "t", "s", None),
    lambda s, w: s.create_background_task(999_999, "k", "t"),
    lambda s, w: s.update_story(w["story"], batch_id=999_999),
], ids=["story", "command", "event-batch", "event-story", "event-command", "task",
        "update-story"])
def test_missing_parent_raises_integrity_error(store: Store, world, call) -> None:
    before = dump(store)
    with pytest.raises(IntegrityError) as info:
        call(store, world)
    assert isinstance(info.value, peewee.IntegrityError)
    assert isinstance(info.value, sqlite3.IntegrityError)
    assert dump(store) == before


def test_integrity_error_catchable_as_sqlite3(store: Store, world) -> None:
    with pytest.raises(sqlite3.IntegrityError):
        store.create_story(424242, "k", "e")
    assert store.get_stories_by_batch(world["batch"])[0]["id"] == world["story"]


HOSTILE = ["'; DROP TABLE events; --", "\" OR 1=1 --", "Robert'); DELETE FROM batches;--",
           "%s %s %(x)s ?", "`backtick`", "\\\\ \\' \\\""]


@pytest.mark.parametrize("text", HOSTILE)
def test_hostile_values_are_bound_not_executed(store: Store, world, text: str) -> None:
    story = store.create_story(world["batch"], text, text)
    event = store.create_event(world["batch"], story, None, text, text, text, text, text, text)
    assert store.update_story(story, status=text) == 1
    assert store.get_story_by_key(text, world["batch"])["status"] == text
    assert store.page_events(story_key=text)["events"][0]["id"] == event
    assert len(store.get_stories_by_batch(world["batch"])) == 2
    assert store.get_batch(world["batch"]) is not None


# -- the fast path of an event row agrees with the rules --------------------------------------

class _Int(int):
    pass


class _Str(str):
    pass


_KEY_FIELDS = ("epic_id", "story_key", "command", "task_id", "status")
_RULES: dict[str, Callable[[str, object], object]] = {
    "batch_id": check_int, "story_id": check_optional_int, "command_id": check_optional_int,
    # "" is a key the later module sends (issue 12); a status is still required.
    "event_type": lambda n, v: check_text(n, v, max_length=255, allow_empty=True),
    **{name: lambda n, v: check_text(n, v, max_length=255, allow_empty=True)
       for name in _KEY_FIELDS},
    "status": lambda n, v: check_text(n, v, max_length=255),
    "message": check_optional_text,
}
"""What each argument of ``create_event`` must be, by the rules alone (in call order)."""

_GOOD_EVENT = {"batch_id": 7, "story_id": 8, "command_id": 9, "event_type": "command:start",
               "epic_id": "2a", "story_key": "2a-1", "command": "dev-story", "task_id": "setup",
               "status": "progress", "message": "m"}
_IDS = [0, 1, 2**63 - 1, -2**63, 2**63, -2**63 - 1, True, False, 1.0, 1.5, float("nan"), "1",
        None, _Int(3)]
_TEXTS = ["x", "2a-1", "", "\x00", "a\x00b", "x" * 255, "x" * 256, "\ud800", "ok\udfff", "café",
          "café\ud800", "é" * 256, None, 1, 1.5, True, b"x", _Str("s")]
_EVENT_CASES = [(name, value) for name in _RULES
                for value in (_IDS if name in ("batch_id", "story_id", "command_id") else _TEXTS)]


def _outcome(call: Callable[[], tuple[Any, ...]]) -> tuple[Any, ...]:
    """What a call gives: the row (its values and their types), or the error raised."""
    try:
        row = call()
    except (TypeError, ValueError) as exc:
        return type(exc), str(exc)
    return "accepted", row, tuple(type(v) for v in row)


def _by_the_rules(event: dict[str, object], timestamp: int) -> tuple[Any, ...]:
    checked = {name: rule(name, event[name]) for name, rule in _RULES.items()}
    return (checked["batch_id"], checked["story_id"], checked["command_id"], timestamp,
            *(checked[name] for name in _KEY_FIELDS), checked["message"],
            checked["event_type"], None)


@pytest.mark.parametrize(("name", "value"), _EVENT_CASES,
                         ids=[f"{n}={v!r:.20}" for n, v in _EVENT_CASES])
def test_event_row_fast_path_agrees_with_the_rules(name: str, value: object) -> None:
    # event_row decides the common case in one expression, then falls back on the
    # check_* rules: whatever the input, it must accept and refuse what they do.
    event = {**_GOOD_EVENT, name: value}
    assert _outcome(lambda: events_module.event_row(*event.values(), None, 1_700_000_000)) == (
        _outcome(lambda: _by_the_rules(event, 1_700_000_000)))
