"""Typed events (issue 12): event_type and payload, both create_event forms, "" keys."""
from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import legacy_schema
import pytest

from sprint_runner import Store, db, migrations


def _row(store: Store, event_id: int) -> dict[str, Any]:
    return next(e for e in store.iter_events() if e["id"] == event_id)


def test_old_positional_form_is_unchanged(store: Store, batch: int, story: int,
                                          command: int) -> None:
    event = store.create_event(batch, story, command, "2a", "2a-1", "dev-story", "t", "start",
                               "go")
    row = _row(store, event)
    assert (row["epic_id"], row["story_key"], row["command"], row["task_id"], row["status"],
            row["message"], row["event_type"], row["payload_json"]) == (
        "2a", "2a-1", "dev-story", "t", "start", "go", "", None)


def test_keywords_on_the_old_form(store: Store, batch: int) -> None:
    event = store.create_event(batch, None, None, "2a", "2a-1", "dev-story", "t", "start",
                               "go", event_type="command:start", payload={"n": 1, "é": [True]})
    row = _row(store, event)
    assert row["event_type"] == "command:start"
    assert row["payload_json"] == '{"n":1,"é":[true]}'  # compact, not ASCII-escaped
    assert json.loads(row["payload_json"]) == {"n": 1, "é": [True]}


@pytest.mark.parametrize("form", ["ten", "eleven", "nine+message", "keywords"])
def test_the_later_modules_form(store: Store, batch: int, story: int, command: int,
                                form: str) -> None:
    later = (batch, story, command, "command:end", "2a", "2a-1", "dev-story", "t", "end")
    payload = {"exit": 0}
    if form == "ten":
        event = store.create_event(*later, "done", payload=payload)
    elif form == "eleven":
        event = store.create_event(*later, "done", payload)
    elif form == "nine+message":
        event = store.create_event(*later, message="done", payload=payload)
    else:
        names = ("batch_id", "story_id", "command_id", "event_type", "epic_id", "story_key",
                 "command", "task_id", "status")
        event = store.create_event(**dict(zip(names, later)), message="done", payload=payload)
    row = _row(store, event)
    assert (row["event_type"], row["epic_id"], row["story_key"], row["command"],
            row["task_id"], row["status"], row["message"], row["payload_json"]) == (
        "command:end", "2a", "2a-1", "dev-story", "t", "end", "done", '{"exit":0}')


@pytest.mark.parametrize(("args", "kwargs", "fragment"), [
    ((1, None, None, "t", "e", "k", "c", "t", "s", "m", None, "extra"), {},
     "at most 11 positional"),
    ((1, None, None, "t", "e", "k", "c", "t", "s", "m", None), {"payload": {}},
     "multiple values for argument 'payload'"),
    ((1, None, None, "e", "k", "c", "t", "s"), {}, "missing required arguments: message"),
    ((1, None, None, "e", "k", "c", "t", "s", "m"), {"colour": 1}, "unexpected keyword"),
    ((1, None, None, "t", "e", "k", "c", "t", "s", "m"), {"event_type": "x"},
     "multiple values for argument 'event_type'"),
])
def test_bad_calls_are_type_errors(store: Store, batch: int, args: tuple[Any, ...],
                                   kwargs: dict[str, Any], fragment: str) -> None:
    before = store.count_events()
    with pytest.raises(TypeError, match=fragment):
        store.create_event(*args, **kwargs)
    assert store.count_events() == before


def test_nine_positional_and_message_keyword_is_the_later_form(store: Store,
                                                               batch: int) -> None:
    # The ninth positional is then the status, and the fourth the event type.
    event = store.create_event(batch, None, None, "batch:end", "", "", "batch", "", "end",
                               message="over")
    row = _row(store, event)
    assert (row["event_type"], row["status"], row["message"]) == ("batch:end", "end", "over")


def test_empty_keys_where_the_later_module_sends_them(store: Store, batch: int) -> None:
    # Batch-level events without a story, and a task whose key joins an empty list.
    event = store.create_event(batch, None, None, "batch:start", "", "", "", "", "start", None)
    task = store.create_background_task(batch, ",".join([]), "context-refresh")
    assert store.get_pending_background_tasks(batch)[0]["id"] == task
    assert store.get_pending_background_tasks(batch)[0]["story_key"] == ""
    assert [e["id"] for e in store.page_events(story_key="")["events"]] == [event]
    assert store.count_events(story_key="", command="", event_type="batch:start") == 1
    with pytest.raises(ValueError, match="status"):
        store.create_event(batch, None, None, "t", "", "", "", "", "", None)
    with pytest.raises(ValueError, match="story_key"):
        store.create_story(batch, "", "e")


def test_event_type_filters(store: Store, batch: int) -> None:
    other = store.create_batch(1)
    ids = [store.create_event(b, None, None, t, "e", "k", "c", "t", "s", None)
           for b, t in ((batch, "command:start"), (batch, "command:end"), (other, "command:end"),
                        (batch, ""), (batch, "command:end"))]
    assert [e["id"] for e in store.page_events(event_type="command:end")["events"]] == [
        ids[4], ids[2], ids[1]]
    assert [e["id"] for e in store.iter_events(batch_id=batch, event_type="command:end")] == [
        ids[1], ids[4]]
    assert store.count_events(event_type="") == 1
    assert store.count_events(batch_id=other, event_type="command:start") == 0


def test_create_events_takes_both_keys(store: Store, batch: int) -> None:
    base = {"batch_id": batch, "epic_id": "", "story_key": "", "command": "", "task_id": "",
            "status": "s"}
    assert store.create_events([{**base, "event_type": "a", "payload": {"k": [1]}},
                                {**base}]) == 2
    rows = list(store.iter_events())
    assert [(r["event_type"], r["payload_json"]) for r in rows] == [("a", '{"k":[1]}'),
                                                                     ("", None)]
    with pytest.raises(TypeError, match=r"events\[1\]: payload"):
        store.create_events([base, {**base, "payload": [1]}])
    assert store.count_events() == 2


def test_message_and_payload_bounds(store: Store, batch: int) -> None:
    limit = 4 * 2**20
    store.create_event(batch, None, None, "e", "k", "c", "t", "s", "x" * limit)
    store.create_event(batch, None, None, "e", "k", "c", "t", "s", None,
                       payload={"x": "y" * (limit - 8)})
    with pytest.raises(ValueError, match="message is larger than 4 MiB"):
        store.create_event(batch, None, None, "e", "k", "c", "t", "s", "x" * (limit + 1))
    with pytest.raises(ValueError, match="payload is larger than 4 MiB"):
        store.create_event(batch, None, None, "e", "k", "c", "t", "s", None,
                           payload={"x": "y" * limit})
    assert store.count_events() == 2


def test_module_api_takes_both_forms(module_db: Any) -> None:
    batch = module_db.create_batch(1)
    old = db.create_event(batch, None, None, "e", "k", "c", "t", "s", "m")
    later = db.create_event(batch, None, None, "command:start", "e", "k", "c", "t", "s", "m",
                            {"a": 1})
    rows = {e["id"]: e for e in db.iter_events(batch_id=batch)}
    assert rows[old]["event_type"] == "" and rows[later]["payload_json"] == '{"a":1}'
    assert [e["id"] for e in db.page_events(event_type="command:start")["events"]] == [later]


# -- every generation of file ------------------------------------------------------------------

def _events_of(path: Path) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(path)
    try:
        names = [r[1] for r in conn.execute("PRAGMA table_info(events)")]
        wanted = [c for c in ("id", "batch_id", "story_id", "command_id", "timestamp",
                              "event_type", "epic_id", "story_key", "command", "task_id",
                              "status", "message", "payload_json") if c in names]
        return [dict(zip(wanted, r)) for r in conn.execute(
            f"SELECT {', '.join(wanted)} FROM events ORDER BY id")]
    finally:
        conn.close()


def _table_rows(path: Path, table: str) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(path)
    try:
        return conn.execute(f"SELECT * FROM {table} ORDER BY id").fetchall()
    finally:
        conn.close()


@pytest.mark.sqlite_only
@pytest.mark.parametrize("kind", ["kind2", "kind3"])
def test_the_later_modules_files_are_adopted(kind: str, tmp_path: Path, make_store: Any) -> None:
    path = tmp_path / f"{kind}.db"
    getattr(legacy_schema, kind)(str(path))
    before = _events_of(path)
    others = {t: _table_rows(path, t) for t in ("stories", "commands", "background_tasks")}
    store = make_store(path)
    assert store.applied_migrations == [m.version for m in migrations.MIGRATIONS]
    after = {e["id"]: e for e in store.iter_events()}
    assert sorted(after) == [e["id"] for e in before]
    for old in before:
        new = after[old["id"]]
        for column, value in old.items():
            assert new[column] == value, (old["id"], column)  # payload_json byte for byte
        if "event_type" not in old:
            assert new["event_type"] == ""
    for table, rows in others.items():
        assert _table_rows(path, table) == rows, table
    assert store.integrity_check() == []
    fks = {(r[3], r[2]) for r in store.database.execute_sql(
        "PRAGMA foreign_key_list(events)").fetchall()}
    assert fks == {("batch_id", "batches"), ("story_id", "stories"), ("command_id", "commands")}
