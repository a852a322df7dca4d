"""A model-checked store (issue 15, part 5).

A Hypothesis state machine drives random sequences of the store's public operations,
valid and invalid, against a plain in-memory model of the five tables. After every
step the database and the model hold the same rows, and every call returned what the
model predicts or raised the error it predicts, with nothing written.

A fixed seed (``derandomize``) keeps CI reproducible; the number of examples is chosen
per backend (about a minute on SQLite, fewer on a server).
"""
from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Mapping
from typing import Any

import pytest
from conftest import BACKEND, FakeClock, empty_server_database
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    rule,
    run_state_machine_as_test,
)

from sprint_runner import IntegrityError, Store
from sprint_runner.models import (
    BACKGROUND_TASK_STATUSES,
    BATCH_STATUSES,
    COMMAND_STATUSES,
)
from sprint_runner.store import _owner

pytestmark = [pytest.mark.heavy, pytest.mark.slow]

EXAMPLES = {"sqlite": 500, "postgresql": 100, "mysql": 60}[BACKEND]
STEPS = 30
INT64_MAX = 2**63 - 1
TABLES = ("batches", "stories", "commands", "events", "background_tasks")
STATS = {"examples": 0, "steps": 0, "rows": 0, "written": 0, "refused": 0}


class Boom(Exception):
    """Raised inside a transaction to make it fail half-way."""


# -- the model's copy of the validation rules -----------------------------------------------

# (kind, nullable, minimum or choices): kind "int", "fk", "key" (1..255 chars), "text"
# (any length, empty allowed), "choice".
Spec = tuple[str, bool, Any]
FIELDS: dict[str, dict[str, Spec]] = {
    "batches": {"started_at": ("int", False, 0), "ended_at": ("int", True, 0),
                "max_cycles": ("int", False, 1), "cycles_completed": ("int", True, 0),
                "status": ("choice", False, BATCH_STATUSES), "owner": ("text", True, None),
                "heartbeat_at": ("int", True, 0)},
    "stories": {"batch_id": ("fk", False, "batches"), "story_key": ("key", False, None),
                "epic_id": ("key", False, None), "status": ("key", False, None),
                "started_at": ("int", False, 0), "ended_at": ("int", True, 0)},
    "commands": {"story_id": ("fk", False, "stories"), "command": ("key", False, None),
                 "task_id": ("key", False, None), "started_at": ("int", False, 0),
                 "ended_at": ("int", True, 0), "status": ("choice", False, COMMAND_STATUSES),
                 "output_summary": ("text", True, None)},
    "background_tasks": {"task_type": ("key", False, None), "spawned_at": ("int", False, 0),
                         "completed_at": ("int", True, 0),
                         "status": ("choice", False, BACKGROUND_TASK_STATUSES)},
}
IMMUTABLE = {"batches": {"id"}, "stories": {"id"}, "commands": {"id"},
             "background_tasks": {"id", "batch_id", "story_key"}}

INTS = st.sampled_from([0, 1, 3, 1_700_000_500] * 3 + [-1, True, "3", None, 2**63, 2.0])
TEXTS = st.sampled_from(["a", "k-1", "épopée"] * 3 + ["", "x" * 256, 7, None, "nul\x00"])
STATUS_WORDS = st.sampled_from(["running", "completed", "stopped", "error", "failed",
                                "in-progress", "done", "bogus", "", 5, None])


def check_int(value: object, minimum: int | None) -> type[Exception] | None:
    if type(value) is not int:
        return TypeError
    if not -(2**63) <= value <= INT64_MAX or (minimum is not None and value < minimum):
        return ValueError
    return None


def check_text(value: object, *, max_length: int | None, allow_empty: bool) -> type[Exception] | None:
    if not isinstance(value, str):
        return TypeError
    if (not value and not allow_empty) or (max_length is not None and len(value) > max_length) \
            or "\x00" in value:
        return ValueError
    return None


def check_field(spec: Spec, value: object) -> type[Exception] | None:
    kind, nullable, extra = spec
    if value is None:
        return None if nullable else ValueError
    if kind == "int":
        return check_int(value, extra)
    if kind == "fk":
        return check_int(value, None)
    if kind == "choice":
        return check_text(value, max_length=255, allow_empty=False) or (
            None if value in extra else ValueError)
    if kind == "key":
        return check_text(value, max_length=255, allow_empty=False)
    return check_text(value, max_length=None, allow_empty=True)


class StoreModel(RuleBasedStateMachine):
    """The store against five dicts of rows."""

    target: Callable[[], tuple[str, Callable[[], None]]]

    def __init__(self) -> None:
        super().__init__()
        self.where, self.cleanup = type(self).target()
        self.clock = FakeClock(1_700_000_000)
        self.store = Store(self.where, clock=self.clock)
        self.rows: dict[str, dict[int, dict[str, Any]]] = {t: {} for t in TABLES}
        STATS["examples"] += 1

    def teardown(self) -> None:
        STATS["rows"] += sum(len(rows) for rows in self.rows.values())
        self.store.close()
        self.cleanup()

    # -- helpers ------------------------------------------------------------------------

    def ids(self, table: str) -> list[int]:
        return sorted(self.rows[table])

    def some_id(self, data: st.DataObject, table: str) -> int:
        """An id of ``table``: mostly an existing one, sometimes one that is not there."""
        known = self.ids(table)
        missing = (max(known) if known else 0) + 1000
        return data.draw(st.sampled_from(known + [missing]) if known else st.just(missing))

    def expect(self, error: type[Exception] | None, call: Callable[[], Any]) -> Any:
        """Run ``call``; check it raised ``error`` (None: it must succeed)."""
        if error is None:
            return call()
        with pytest.raises(error):
            call()
        STATS["refused"] += 1
        return None

    def add(self, table: str, row_id: int, row: dict[str, Any]) -> None:
        assert isinstance(row_id, int) and row_id not in self.rows[table]
        STATS["written"] += 1
        self.rows[table][row_id] = {"id": row_id, **row}

    def fk_ok(self, table: str, value: int | None) -> bool:
        return value is None or value in self.rows[table]

    def read_table(self, table: str) -> dict[int, dict[str, Any]]:
        with self.store.get_connection() as conn:
            cursor = conn.cursor()
            cursor.execute(f"SELECT * FROM {table} ORDER BY id")
            names = [d[0] for d in cursor.description]
            # A dict cursor's rows (MySQL's) are mappings already.
            rows = [dict(row) if isinstance(row, Mapping) else dict(zip(names, row, strict=True))
                    for row in cursor.fetchall()]
            cursor.close()
        return {int(r["id"]): r for r in rows}

    # -- invariants -----------------------------------------------------------------------

    @invariant()
    def tables_agree(self) -> None:
        STATS["steps"] += 1
        for table in TABLES:
            assert self.read_table(table) == self.rows[table], table

    # -- rules ------------------------------------------------------------------------------

    @rule(seconds=st.sampled_from([1, 60, 3600, 86_400 * 3]))
    def advance(self, seconds: int) -> None:
        self.clock.advance(seconds)

    @rule(max_cycles=INTS)
    def create_batch(self, max_cycles: object) -> None:
        error = check_int(max_cycles, 1)
        got = self.expect(error, lambda: self.store.create_batch(max_cycles))  # type: ignore[arg-type]
        if error is None:
            now = self.clock.now
            self.add("batches", got, {"started_at": now, "ended_at": None,
                                      "max_cycles": max_cycles, "cycles_completed": 0,
                                      "status": "running", "owner": _owner(),
                                      "heartbeat_at": now})

    def _update(self, data: st.DataObject, table: str, update: Callable[..., int]) -> None:
        row_id = self.some_id(data, table)
        specs = FIELDS[table]
        names = data.draw(st.lists(st.sampled_from(sorted(specs) + ["id", "bogus"]),
                                   max_size=3, unique=True))
        fields: dict[str, Any] = {}
        for name in names:
            spec = specs.get(name, ("int", False, None))
            if spec[0] in ("int", "fk"):
                value = data.draw(INTS if spec[0] == "int" else st.one_of(
                    st.just(self.some_id(data, spec[2])), INTS))
            elif spec[0] == "choice" or name == "status":
                value = data.draw(STATUS_WORDS)
            else:
                value = data.draw(TEXTS)
            fields[name] = value
        error: type[Exception] | None = None
        if any(n not in specs or n in IMMUTABLE[table] for n in fields):
            error = ValueError
        else:
            for name, value in fields.items():
                error = check_field(specs[name], value)
                if error is not None:
                    break
        exists = row_id in self.rows[table]
        if error is None and exists:
            for name, value in fields.items():
                if specs[name][0] == "fk" and value not in self.rows[specs[name][2]]:
                    error = IntegrityError
        got = self.expect(error, lambda: update(row_id, **fields))
        if error is None:
            assert got == (1 if exists and fields else 0)
            if exists:
                self.rows[table][row_id].update(fields)

    @rule(data=st.data())
    def update_batch(self, data: st.DataObject) -> None:
        self._update(data, "batches", self.store.update_batch)

    @rule(data=st.data())
    def update_story(self, data: st.DataObject) -> None:
        self._update(data, "stories", self.store.update_story)

    @rule(data=st.data())
    def update_command(self, data: st.DataObject) -> None:
        self._update(data, "commands", self.store.update_command)

    @rule(data=st.data())
    def update_background_task(self, data: st.DataObject) -> None:
        self._update(data, "background_tasks", self.store.update_background_task)

    @rule(data=st.data(), key=TEXTS, epic=st.sampled_from(["2a", "", 3]))
    def create_story(self, data: st.DataObject, key: object, epic: object) -> None:
        batch = self.some_id(data, "batches")
        error = (check_text(key, max_length=255, allow_empty=False)
                 or check_text(epic, max_length=255, allow_empty=False)
                 or (None if self.fk_ok("batches", batch) else IntegrityError))
        got = self.expect(error, lambda: self.store.create_story(batch, key, epic))  # type: ignore[arg-type]
        if error is None:
            self.add("stories", got, {"batch_id": batch, "story_key": key, "epic_id": epic,
                                      "status": "in-progress", "started_at": self.clock.now,
                                      "ended_at": None})

    @rule(data=st.data(), command=st.sampled_from(["dev-story"] * 4 + ["", None]), task=TEXTS)
    def create_command(self, data: st.DataObject, command: object, task: object) -> None:
        story = self.some_id(data, "stories")
        error = (check_text(command, max_length=255, allow_empty=False)
                 or check_text(task, max_length=255, allow_empty=False)
                 or (None if self.fk_ok("stories", story) else IntegrityError))
        got = self.expect(error, lambda: self.store.create_command(story, command, task))  # type: ignore[arg-type]
        if error is None:
            self.add("commands", got, {"story_id": story, "command": command, "task_id": task,
                                       "started_at": self.clock.now, "ended_at": None,
                                       "status": "running", "output_summary": None})

    @rule(data=st.data(), key=st.sampled_from(["2a-1", "", "x" * 256]),
          kind=st.sampled_from(["review", "", 4]))
    def create_background_task(self, data: st.DataObject, key: str, kind: object) -> None:
        batch = self.some_id(data, "batches")
        error = (check_text(key, max_length=255, allow_empty=True)
                 or check_text(kind, max_length=255, allow_empty=False)
                 or (None if self.fk_ok("batches", batch) else IntegrityError))
        got = self.expect(error, lambda: self.store.create_background_task(batch, key, kind))  # type: ignore[arg-type]
        if error is None:
            self.add("background_tasks", got, {
                "batch_id": batch, "story_key": key, "task_type": kind,
                "spawned_at": self.clock.now, "completed_at": None, "status": "running"})

    # events ---------------------------------------------------------------------------------

    def draw_event(self, data: st.DataObject) -> dict[str, Any]:
        event: dict[str, Any] = {
            "batch_id": self.some_id(data, "batches"),
            "story_id": data.draw(st.one_of(st.none(), st.just(self.some_id(data, "stories")))),
            "command_id": data.draw(st.one_of(st.none(),
                                              st.just(self.some_id(data, "commands")))),
            "epic_id": "2a", "story_key": data.draw(st.sampled_from(["2a-1", "2a-2", ""])),
            "command": "dev-story", "task_id": "setup",
            "status": data.draw(st.sampled_from(["progress", "done"] * 3 + ["", 9])),
            "message": data.draw(st.sampled_from(["m", None, "", "ünï"] * 2 + [3])),
        }
        return event

    def event_error(self, event: Mapping[str, Any]) -> type[Exception] | None:
        if "timestamp" in event:  # create_events checks it before the row
            error = check_int(event["timestamp"], 0)
            if error:
                return error
        for name in ("event_type", "epic_id", "story_key", "command", "task_id"):
            if name in event:
                error = check_text(event[name], max_length=255, allow_empty=True)
                if error:
                    return error
        error = check_text(event["status"], max_length=255, allow_empty=False)
        if error:
            return error
        if event.get("message") is not None:
            error = check_text(event["message"], max_length=None, allow_empty=True)
            if error:
                return error
        if not (self.fk_ok("batches", event["batch_id"])
                and self.fk_ok("stories", event.get("story_id"))
                and self.fk_ok("commands", event.get("command_id"))):
            return IntegrityError
        return None

    def event_row(self, event: Mapping[str, Any]) -> dict[str, Any]:
        return {"batch_id": event["batch_id"], "story_id": event.get("story_id"),
                "command_id": event.get("command_id"),
                "timestamp": event.get("timestamp", self.clock.now),
                "epic_id": event["epic_id"], "story_key": event["story_key"],
                "command": event["command"], "task_id": event["task_id"],
                "status": event["status"], "message": event.get("message"),
                "event_type": event.get("event_type", ""), "payload_json": None}

    @rule(data=st.data())
    def create_event(self, data: st.DataObject) -> None:
        event = self.draw_event(data)
        error = self.event_error(event)
        got = self.expect(error, lambda: self.store.create_event(**event))
        if error is None:
            self.add("events", got, self.event_row(event))

    @rule(data=st.data(), size=st.integers(0, 6))
    def create_events(self, data: st.DataObject, size: int) -> None:
        events = [self.draw_event(data) for _ in range(size)]
        for event in events:
            if data.draw(st.booleans()):
                event["timestamp"] = data.draw(st.sampled_from(
                    [self.clock.now - 86_400 * 10, 5, -1]))
        errors = [self.event_error(e) for e in events]
        # Checks come first, row by row; broken references only show when inserting.
        first = next((e for e in errors if e not in (None, IntegrityError)), None)
        error = first or (IntegrityError if IntegrityError in errors else None)
        before = set(self.store_event_ids())
        got = self.expect(error, lambda: self.store.create_events(events))
        if error is None:
            assert got == len(events)
            new = sorted(set(self.store_event_ids()) - before)
            assert len(new) == len(events)
            for row_id, event in zip(new, events, strict=True):
                self.add("events", row_id, self.event_row(event))

    def store_event_ids(self) -> list[int]:
        return [e["id"] for e in self.store.iter_events()]

    # transactions ---------------------------------------------------------------------

    @rule(fail_at=st.integers(0, 3), inner=st.booleans())
    def transaction(self, fail_at: int, inner: bool) -> None:
        """A block of writes that raises after ``fail_at`` of them (3: it completes);
        with ``inner`` the failing part is a nested block the caller catches."""
        written: list[tuple[str, int, dict[str, Any]]] = []
        now = self.clock.now

        def body() -> None:
            batch = self.store.create_batch(2)
            written.append(("batches", batch, {
                "started_at": now, "ended_at": None, "max_cycles": 2, "cycles_completed": 0,
                "status": "running", "owner": _owner(), "heartbeat_at": now}))
            if fail_at == 0:
                raise Boom
            story = self.store.create_story(batch, "t-1", "t")
            written.append(("stories", story, {"batch_id": batch, "story_key": "t-1",
                                               "epic_id": "t", "status": "in-progress",
                                               "started_at": now, "ended_at": None}))
            if fail_at == 1:
                raise Boom
            with pytest.raises(IntegrityError):  # a failed statement undoes only itself
                self.store.create_story(batch + 10_000, "t-2", "t")
            if fail_at == 2:
                raise Boom

        if inner:
            with self.store.transaction():
                outer = self.store.create_batch(1)
                try:
                    with self.store.transaction():
                        body()
                except Boom:
                    written.clear()
            written.insert(0, ("batches", outer, {
                "started_at": now, "ended_at": None, "max_cycles": 1, "cycles_completed": 0,
                "status": "running", "owner": _owner(), "heartbeat_at": now}))
        else:
            try:
                with self.store.transaction():
                    body()
            except Boom:
                written.clear()
        for table, row_id, row in written:
            self.add(table, row_id, row)

    # recovery and retention -------------------------------------------------------------

    @rule(stale_after=st.sampled_from([0, 60, 86_400, -1, "1"]))
    def recover(self, stale_after: object) -> None:
        error = check_int(stale_after, 0)
        before = set(self.store_event_ids())
        got = self.expect(error, lambda: self.store.recover_stale_batches(stale_after))  # type: ignore[arg-type]
        if error is not None:
            return
        now = self.clock.now
        assert isinstance(stale_after, int)
        expected = [b for b in self.ids("batches")
                    if self.rows["batches"][b]["status"] == "running"
                    and Store.last_seen(self.rows["batches"][b]) < now - stale_after]
        assert got == expected
        new = sorted(set(self.store_event_ids()) - before)
        assert len(new) == len(expected)
        for batch_id, event_id in zip(expected, new, strict=True):
            batch = self.rows["batches"][batch_id]
            message = (f"batch {batch_id} recovered as stale: owner "
                       f"{batch['owner'] or 'unknown'}, last heartbeat "
                       f"{now - Store.last_seen(batch)}s ago (stale after {stale_after}s)")
            batch.update(status="stopped", ended_at=now)
            stories = {s for s, r in self.rows["stories"].items() if r["batch_id"] == batch_id}
            for command in self.rows["commands"].values():
                if command["status"] == "running" and command["story_id"] in stories:
                    command.update(status="failed", ended_at=now)
            for task in self.rows["background_tasks"].values():
                if task["batch_id"] == batch_id and task["status"] == "running":
                    task.update(status="failed", completed_at=now)
            self.add("events", event_id, {
                "batch_id": batch_id, "story_id": None, "command_id": None, "timestamp": now,
                "epic_id": "system", "story_key": "recovery",
                "command": "recover-stale-batches", "task_id": "recovery",
                "status": "stopped", "message": message, "event_type": "batch:end",
                "payload_json": None})

    @rule(days=st.sampled_from([0, 1, 5, -1]), dry_run=st.booleans())
    def prune_events(self, days: int, dry_run: bool) -> None:
        cutoff = self.clock.now - days * 86_400 if days >= 0 else -1
        error = check_int(cutoff, 0)
        got = self.expect(error, lambda: self.store.prune_events(older_than=cutoff,
                                                                 dry_run=dry_run))
        if error is not None:
            return
        doomed = [i for i, e in self.rows["events"].items()
                  if e["timestamp"] < cutoff
                  and self.rows["batches"][e["batch_id"]]["status"] != "running"]
        assert got == len(doomed)
        if not dry_run:
            for i in doomed:
                del self.rows["events"][i]

    # reads ----------------------------------------------------------------------------

    def model_events(self, batch_id: int | None = None) -> list[dict[str, Any]]:
        return [e for _, e in sorted(self.rows["events"].items())
                if batch_id is None or e["batch_id"] == batch_id]

    @rule(data=st.data(), limit=st.integers(1, 4), newest_first=st.booleans(),
          by_batch=st.booleans())
    def page_through(self, data: st.DataObject, limit: int, newest_first: bool,
                     by_batch: bool) -> None:
        batch = self.some_id(data, "batches") if by_batch else None
        seen: list[int] = []
        cursor = None
        for _ in range(1000):
            page = self.store.page_events(limit=limit, cursor=cursor, batch_id=batch,
                                          newest_first=newest_first)
            assert len(page["events"]) <= limit
            seen += [e["id"] for e in page["events"]]
            cursor = page["next_cursor"]
            if cursor is None:
                break
        expected = [e["id"] for e in self.model_events(batch)]
        assert seen == (expected[::-1] if newest_first else expected)

    @rule(limit=st.integers(1, 5), offset=st.integers(0, 3))
    def get_events(self, limit: int, offset: int) -> None:
        ordered = sorted(self.rows["events"].values(),
                         key=lambda e: (e["timestamp"], e["id"]), reverse=True)
        got = self.store.get_events(limit=limit, offset=offset)
        assert [e["id"] for e in got] == [e["id"] for e in ordered[offset:offset + limit]]

    @rule(data=st.data(), limit=st.integers(1, 5))
    def tail(self, data: st.DataObject, limit: int) -> None:
        ids = [0, *self.ids("events")]
        after = data.draw(st.sampled_from(ids))
        got = self.store.tail_events(after, limit=limit)
        assert [e["id"] for e in got] == [i for i in ids if i > after][:limit]
        for event in got:
            assert {k: event[k] for k in self.rows["events"][event["id"]]} == \
                self.rows["events"][event["id"]]

    @rule(data=st.data())
    def read_rows(self, data: st.DataObject) -> None:
        batch = self.some_id(data, "batches")
        row = self.store.get_batch(batch)
        assert row == self.rows["batches"].get(batch)
        stories = [r for _, r in sorted(self.rows["stories"].items()) if r["batch_id"] == batch]
        assert self.store.get_stories_by_batch(batch) == stories
        by_time = sorted(self.model_events(batch), key=lambda e: (e["timestamp"], e["id"]))
        assert [e["id"] for e in self.store.get_events_by_batch(batch)] == \
            [e["id"] for e in by_time]
        assert self.store.count_events(batch_id=batch) == len(by_time)


def _target_factory(db_target: str) -> Callable[[], tuple[str, Callable[[], None]]]:
    if BACKEND == "sqlite":
        def fresh_file() -> tuple[str, Callable[[], None]]:
            folder = tempfile.mkdtemp(prefix="sprint-runner-model-")
            return f"{folder}/model.db", lambda: shutil.rmtree(folder, ignore_errors=True)
        return fresh_file

    def fresh_database() -> tuple[str, Callable[[], None]]:
        empty_server_database(db_target)
        return db_target, lambda: None
    return fresh_database


def test_the_store_agrees_with_its_model(db_target: str) -> None:
    StoreModel.target = staticmethod(_target_factory(db_target))  # type: ignore[assignment]
    STATS.update(examples=0, steps=0, rows=0, written=0, refused=0)
    run_state_machine_as_test(StoreModel, settings=settings(
        max_examples=EXAMPLES, stateful_step_count=STEPS, deadline=None, derandomize=True,
        database=None, suppress_health_check=list(HealthCheck), print_blob=True))
    print(f"model check on {BACKEND}: {STATS['examples']} examples, {STATS['steps']} steps, "
          f"{STATS['written']} rows written, {STATS['refused']} calls refused as predicted, "
          f"{STATS['rows']} rows left at the ends")
