"""The store: every operation on the sprint state, taking checked arguments and
returning plain dicts.

Statements come from :mod:`sprint_runner.statements`, compiled once per store from
the models; rows become dicts with ``dict(zip(columns, row))``.
"""
from __future__ import annotations

import base64
import binascii
import functools
import logging
import os
import socket
import sqlite3
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import peewee

from . import files, migrations
from .clock import Clock, system_clock
from .connect import (
    DEFAULT_BUSY_TIMEOUT,
    DEFAULT_POOL_SIZE,
    backend_of,
    copy_sqlite_file,
    open_database,
)
from .executor import DEFAULT_LOCK_RETRIES, Executor
from .models import (
    COMMAND_STATUSES,
    KEY_LENGTH,
    MODELS,
    BackgroundTask,
    BaseModel,
    Batch,
    Command,
    Event,
    Story,
)
from .statements import Slot, Statement, columns_of, compile_query, fields_of
from .validation import (
    INT64_MAX,
    INT64_MIN,
    SURROGATE,
    check_bool,
    check_choice,
    check_int,
    check_optional_int,
    check_optional_text,
    check_text,
    check_update,
)

logger = logging.getLogger("sprint_runner")

Row = dict[str, Any]

BATCH_COLUMNS = columns_of(Batch)
STORY_COLUMNS = columns_of(Story)
COMMAND_COLUMNS = columns_of(Command)
EVENT_COLUMNS = columns_of(Event)
TASK_COLUMNS = columns_of(BackgroundTask)

EVENT_FIELDS = ("batch_id", "story_id", "command_id", "epic_id", "story_key", "command",
                "task_id", "status", "message")
"""``create_event``'s parameters, in order; also the keys ``create_events`` takes."""

_IMMUTABLE = {
    Batch: frozenset({"id"}),
    Story: frozenset({"id"}),
    Command: frozenset({"id"}),
    BackgroundTask: frozenset({"id", "batch_id", "story_key"}),
}
_BLOCKED_AFTER = 3
_CHUNK = 1000
MAX_PAGE = 10_000
"""The largest ``limit`` a page or tail call takes (bounds memory per call)."""
_CURSOR_PREFIX = "ev1"

# Each takes the events model or an alias of it (the time page reads an alias).
_EVENT_FILTERS: dict[str, Any] = {
    "batch_id": lambda e=Event: e.batch == Slot("batch_id"),
    "story_key": lambda e=Event: e.story_key == Slot("story_key"),
    "command": lambda e=Event: e.command_name == Slot("command"),
    "status": lambda e=Event: e.status == Slot("status"),
    "since": lambda e=Event: e.timestamp >= Slot("since"),
    "until": lambda e=Event: e.timestamp < Slot("until"),
}


# A page with a time bound first counts, up to this many pages' worth, the rows of
# its time range on the timestamp index alone (see _Statements.event_time_page).
_TIME_RANGE_PAGES = 20
_TIME_FILTERS = ("since", "until")


def _owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _select(model: type[BaseModel]) -> Any:
    return model.select(*fields_of(model))


class _Statements:
    """The store's fixed statements, rendered once for its database."""

    def __init__(self, database: peewee.Database) -> None:
        self.database = database
        c = lambda q, cols=(), expect=None: compile_query(database, q, cols, expect)  # noqa: E731

        def insert(query: Any, expect: tuple[str, ...]) -> Statement:
            # Servers with RETURNING (PostgreSQL) hand back the new id that way.
            if database.returning_clause:
                query = query.returning(query.model.id)
            return compile_query(database, query, (), expect)

        self.insert_batch = insert(Batch.insert({
            Batch.started_at: Slot("started_at"), Batch.max_cycles: Slot("max_cycles"),
            Batch.cycles_completed: Slot("cycles_completed"), Batch.status: Slot("status"),
            Batch.owner: Slot("owner"), Batch.heartbeat_at: Slot("heartbeat_at")}),
            expect=("started_at", "max_cycles", "cycles_completed", "status", "owner",
                    "heartbeat_at"))
        self.batch = c(_select(Batch).where(Batch.id == Slot("id")), BATCH_COLUMNS)
        self.batches_by_status = c(
            _select(Batch).where(Batch.status == Slot("status"))
            .order_by(Batch.id.desc()).limit(Slot("limit")), BATCH_COLUMNS,
            expect=("status", "limit"))
        self.cycles = c(Batch.select(Batch.cycles_completed).where(Batch.id == Slot("id")))

        self.insert_story = insert(Story.insert({
            Story.batch: Slot("batch_id"), Story.story_key: Slot("story_key"),
            Story.epic_id: Slot("epic_id"), Story.status: Slot("status"),
            Story.started_at: Slot("started_at")}),
            expect=("batch_id", "story_key", "epic_id", "status", "started_at"))
        self.story = c(_select(Story).where(Story.id == Slot("id")), STORY_COLUMNS)
        self.story_by_key = c(
            _select(Story).where((Story.batch == Slot("batch_id"))
                                 & (Story.story_key == Slot("story_key")))
            .order_by(Story.id.desc()).limit(Slot("limit")), STORY_COLUMNS,
            expect=("batch_id", "story_key", "limit"))
        self.stories_by_batch = c(
            _select(Story).where(Story.batch == Slot("batch_id")).order_by(Story.id),
            STORY_COLUMNS)

        self.insert_command = insert(Command.insert({
            Command.story: Slot("story_id"), Command.command: Slot("command"),
            Command.task_id: Slot("task_id"), Command.started_at: Slot("started_at"),
            Command.status: Slot("status")}),
            expect=("story_id", "command", "task_id", "started_at", "status"))
        self.commands_by_story = c(
            _select(Command).where(Command.story == Slot("story_id")).order_by(Command.id),
            COMMAND_COLUMNS)
        self.last_command_statuses = c(
            Command.select(Command.status).where(Command.story == Slot("story_id"))
            .order_by(Command.id.desc()).limit(Slot("limit")), expect=("story_id", "limit"))

        self.insert_event = insert(Event.insert({
            Event.batch: Slot("batch_id"), Event.story: Slot("story_id"),
            Event.command: Slot("command_id"), Event.timestamp: Slot("timestamp"),
            Event.epic_id: Slot("epic_id"), Event.story_key: Slot("story_key"),
            Event.command_name: Slot("command"), Event.task_id: Slot("task_id"),
            Event.status: Slot("status"), Event.message: Slot("message")}),
            expect=("batch_id", "story_id", "command_id", "timestamp", "epic_id",
                    "story_key", "command", "task_id", "status", "message"))
        self.events_newest = c(
            _select(Event).order_by(Event.timestamp.desc(), Event.id.desc())
            .limit(Slot("limit")).offset(Slot("offset")), EVENT_COLUMNS,
            expect=("limit", "offset"))
        self.events_by_batch = c(
            _select(Event).where(Event.batch == Slot("batch_id"))
            .order_by(Event.timestamp, Event.id), EVENT_COLUMNS)

        self.insert_task = insert(BackgroundTask.insert({
            BackgroundTask.batch: Slot("batch_id"), BackgroundTask.story_key: Slot("story_key"),
            BackgroundTask.task_type: Slot("task_type"),
            BackgroundTask.spawned_at: Slot("spawned_at"),
            BackgroundTask.status: Slot("status")}),
            expect=("batch_id", "story_key", "task_type", "spawned_at", "status"))
        self.tasks_by_status = c(
            _select(BackgroundTask).where((BackgroundTask.batch == Slot("batch_id"))
                                          & (BackgroundTask.status == Slot("status")))
            .order_by(BackgroundTask.spawned_at, BackgroundTask.id), TASK_COLUMNS,
            expect=("batch_id", "status"))

        stale_since = peewee.fn.COALESCE(Batch.heartbeat_at, Batch.started_at)
        self.stale_batches = c(
            _select(Batch).where((Batch.status == Slot("status")) & (stale_since < Slot("cutoff")))
            .order_by(Batch.id), BATCH_COLUMNS, expect=("status", "cutoff"))
        self.stop_batch = c(
            Batch.update({Batch.status: Slot("status"), Batch.ended_at: Slot("ended_at")})
            .where((Batch.id == Slot("id")) & (Batch.status == Slot("running"))))
        batch_stories = Story.select(Story.id).where(Story.batch == Slot("batch_id"))
        self.fail_commands = c(
            Command.update({Command.status: Slot("status"), Command.ended_at: Slot("ended_at")})
            .where((Command.status == Slot("running")) & Command.story.in_(batch_stories)))
        self.fail_tasks = c(
            BackgroundTask.update({BackgroundTask.status: Slot("status"),
                                   BackgroundTask.completed_at: Slot("completed_at")})
            .where((BackgroundTask.batch == Slot("batch_id"))
                   & (BackgroundTask.status == Slot("running"))))
        # History, retention, operations.
        self.recent_batches = c(
            _select(Batch).where(Batch.id < Slot("before")).order_by(Batch.id.desc())
            .limit(Slot("limit")), BATCH_COLUMNS, expect=("before", "limit"))
        self.tasks_by_batch = c(
            _select(BackgroundTask).where(BackgroundTask.batch == Slot("batch_id"))
            .order_by(BackgroundTask.id), TASK_COLUMNS)
        self.commands_by_batch = c(
            _select(Command).where(Command.story.in_(batch_stories)).order_by(Command.id),
            COMMAND_COLUMNS)
        self.commands_by_batch_status = c(
            _select(Command).where(Command.story.in_(batch_stories)
                                   & (Command.status == Slot("status"))).order_by(Command.id),
            COMMAND_COLUMNS, expect=("batch_id", "status"))
        self.count_tables = [(m, c(m.select(peewee.fn.COUNT(peewee.SQL("*"))))) for m in MODELS]

        prunable = ((Batch.status != Slot("running")) & (Event.timestamp < Slot("cutoff")))
        event_batches = Event.select(Event.id).join(Batch, on=(Batch.id == Event.batch))
        self.prunable_events = c(event_batches.where(prunable).limit(Slot("limit")),
                                 expect=("running", "cutoff", "limit"))
        self.count_prunable_events = c(
            Event.select(peewee.fn.COUNT(Event.id)).join(Batch, on=(Batch.id == Event.batch))
            .where(prunable), expect=("running", "cutoff"))
        # "< running OR > running" is "<> running" in a form idx_batches_status serves.
        not_running = (Batch.status < Slot("running")) | (Batch.status > Slot("running"))
        self.prunable_batches = c(
            Batch.select(Batch.id).where(
                not_running
                & (peewee.fn.COALESCE(Batch.ended_at, Batch.started_at) < Slot("cutoff"))),
            expect=("running", "running", "cutoff"))
        self.batch_event_ids = c(
            Event.select(Event.id).where(Event.batch == Slot("batch_id")).limit(Slot("limit")),
            expect=("batch_id", "limit"))
        batch_commands = Command.select(Command.id).where(Command.story.in_(batch_stories))
        # Events of other batches that point into this batch's stories or commands: two
        # disjoint predicates, each served by its own index, instead of one OR that
        # SQLite would answer by scanning the whole events table.
        other_batch = Event.batch != Slot("batch_id")
        by_story = other_batch & Event.story.in_(batch_stories)
        by_command = (other_batch & (Event.story.is_null() | Event.story.not_in(batch_stories))
                      & Event.command.in_(batch_commands))
        references = (("by_story", by_story, 2), ("by_command", by_command, 3))
        self.referencing_batches = [
            (name, c(Event.select(Event.batch).distinct().where(w), expect=("batch_id",) * n))
            for name, w, n in references]
        self.count_references = [
            (name, c(Event.select(peewee.fn.COUNT(Event.id)).where(w), expect=("batch_id",) * n))
            for name, w, n in references]
        # A batch's tree, children first. Only the batch's own events: an event of another
        # batch is never deleted with this one (a batch still referenced is kept instead).
        tree = (
            (Event, Event.batch == Slot("batch_id")),
            (Command, Command.story.in_(batch_stories)),
            (BackgroundTask, BackgroundTask.batch == Slot("batch_id")),
            (Story, Story.batch == Slot("batch_id")),
            (Batch, Batch.id == Slot("batch_id")),
        )
        self.delete_batch_tree = [(m._meta.table_name, c(m.delete().where(w))) for m, w in tree]
        self.count_batch_tree = [
            (m._meta.table_name, c(m.select(peewee.fn.COUNT(m.id)).where(w))) for m, w in tree]
        self.count_old_batch_events = c(
            Event.select(peewee.fn.COUNT(Event.id)).where(
                (Event.batch == Slot("batch_id")) & (Event.timestamp < Slot("cutoff"))),
            expect=("batch_id", "cutoff"))
        self._pages: dict[tuple[Any, ...], Statement] = {}
        self._time_pages: dict[tuple[tuple[str, ...], bool], tuple[Statement, Statement]] = {}
        self._updates: dict[tuple[type[BaseModel], tuple[str, ...]], Statement] = {}

    def event_page(self, filters: tuple[str, ...], newest_first: bool) -> Statement:
        """Return the keyset page statement for this combination of filters.

        The id bound is always present (the first page binds the far end), so
        every page is a range search on the primary key or a filter's index.
        """
        key = (filters, newest_first)
        statement = self._pages.get(key)
        if statement is None:
            conditions = [_EVENT_FILTERS[name]() for name in filters]
            conditions.append(Event.id < Slot("after") if newest_first
                              else Event.id > Slot("after"))
            query = _select(Event)
            for condition in conditions:
                query = query.where(condition)
            query = query.order_by(Event.id.desc() if newest_first else Event.id)
            statement = compile_query(self.database, query.limit(Slot("limit")), EVENT_COLUMNS)
            self._pages[key] = statement
        return statement

    def event_time_page(self, filters: tuple[str, ...],
                        newest_first: bool) -> tuple[Statement, Statement] | None:
        """Return the (probe, page) statements that read a time-bounded page by time.

        None without ``since``/``until``. A page by id walks the id order and tests
        each row's timestamp, so a range holding few rows costs a walk of the whole
        batch (or table). Ids and timestamps are two orders no one index serves, so
        the store asks the index that serves the range first: the probe counts, up
        to ``cap``, the rows of the time range (and batch) below the cursor, on the
        index alone. Under ``cap``, the page statement takes the ids of those rows
        from that index, keeps the page's ``limit`` lowest or highest and only then
        reads their rows: at most ``cap`` index entries. At ``cap`` or more, the id
        walk finds its page after a few rows whenever matches are dense, and both
        statements return exactly the rows, in the order, the id walk would.
        """
        if not any(name in _TIME_FILTERS for name in filters):
            return None

        def build() -> tuple[Statement, Statement]:
            by_time = Event.alias("by_time")
            index = ("idx_events_batch_timestamp" if "batch_id" in filters
                     else "idx_events_timestamp")
            served = ("batch_id",) + _TIME_FILTERS
            bound = (by_time.id < Slot("after") if newest_first
                     else by_time.id > Slot("after"))

            def where(query: Any, names: Iterable[str]) -> Any:
                for name in names:
                    query = query.where(_EVENT_FILTERS[name](by_time))
                return query.where(bound)

            in_range = (where(by_time.select(peewee.SQL("1")), [n for n in filters if n in served])
                        .limit(Slot("cap")).alias("in_range"))
            probe = peewee.Select([in_range], [peewee.fn.COUNT(peewee.SQL("*"))])
            order = by_time.id.desc() if newest_first else by_time.id
            ids = (where(by_time.select(by_time.id), filters).order_by(order)
                   .limit(Slot("limit")).alias("page"))
            page = (_select(Event).join(ids, on=(Event.id == ids.c.id))
                    .order_by(Event.id.desc() if newest_first else Event.id))
            return (self._hinted(compile_query(self.database, probe), index),
                    self._hinted(compile_query(self.database, page, EVENT_COLUMNS), index))
        key = (filters, newest_first)
        pair = self._time_pages.get(key)
        if pair is None:
            pair = self._time_pages[key] = build()
        return pair

    def _hinted(self, statement: Statement, index: str) -> Statement:
        # The planners would rather walk an index in id order than sort even a few
        # rows, which is the walk this statement exists to avoid: name the index.
        q = self.database.quote
        table = f"{q[0]}events{q[1]} AS {q[0]}by_time{q[1]}"
        extra = {"sqlite": f" INDEXED BY {q[0]}{index}{q[1]}",
                 "mysql": f" FORCE INDEX ({q[0]}{index}{q[1]})"}.get(backend_of(self.database), "")
        assert statement.sql.count(table) == 1, statement.sql
        return Statement(statement.sql.replace(table, table + extra), statement.slots,
                         statement.columns)

    def event_count(self, filters: tuple[str, ...]) -> Statement:
        """Return ``SELECT COUNT(*)`` of the events matching this combination of filters."""
        def build() -> Statement:
            query = Event.select(peewee.fn.COUNT(Event.id))
            for name in filters:
                query = query.where(_EVENT_FILTERS[name]())
            return compile_query(self.database, query, expect=filters)
        return self._cached(("event_count", filters), build)

    def delete_events(self, n: int) -> Statement:
        """Return ``DELETE FROM events WHERE id IN (<n parameters>)``."""
        return self._in_list("delete_events", n, lambda slots: Event.delete().where(
            Event.id.in_(slots)))

    def insert_events(self, n: int) -> Statement:
        """Return a multi-row INSERT of ``n`` events (columns as ``insert_event``)."""
        fields = [Event.batch, Event.story, Event.command, Event.timestamp, Event.epic_id,
                  Event.story_key, Event.command_name, Event.task_id, Event.status, Event.message]
        return self._in_list("insert_events", n, lambda slots: Event.insert_many(
            [[slots[i * len(fields) + j] for j in range(len(fields))] for i in range(n)],
            fields=fields), width=len(fields))

    def _in_list(self, name: str, n: int, build: Any, width: int = 1) -> Statement:
        key = (name, n)
        statement = self._pages.get(key)
        if statement is None:
            slots = [Slot(f"p{i}") for i in range(n * width)]
            statement = compile_query(self.database, build(slots),
                                      expect=tuple(s.name for s in slots))
            self._pages[key] = statement
        return statement

    def select_all(self, model: type[BaseModel]) -> Statement:
        """Return ``SELECT <all columns> WHERE id > ? ORDER BY id LIMIT ?`` for ``model``."""
        return self._cached(("select_all", model), lambda: compile_query(
            self.database, _select(model).where(model._meta.primary_key > Slot("after"))
            .order_by(model._meta.primary_key).limit(Slot("limit")), columns_of(model),
            expect=("after", "limit")))

    def insert_all(self, model: type[BaseModel]) -> Statement:
        """Return an INSERT of one row with every column, id included, in table order."""
        return self._cached(("insert_all", model), lambda: compile_query(
            self.database, model.insert({f: Slot(f.column_name) for f in fields_of(model)}),
            expect=columns_of(model)))

    def _cached(self, key: tuple[Any, ...], build: Any) -> Statement:
        statement = self._pages.get(key)
        if statement is None:
            statement = self._pages[key] = build()
        return statement

    def update(self, model: type[BaseModel], columns: tuple[str, ...]) -> Statement:
        """Return the cached ``UPDATE model SET <columns> WHERE id = ?`` statement."""
        key = (model, columns)
        statement = self._updates.get(key)
        if statement is None:
            fields = {f.column_name: f for f in model._meta.sorted_fields}
            query = model.update({fields[col]: Slot(col) for col in columns}).where(
                model._meta.primary_key == Slot("id"))
            statement = compile_query(self.database, query, expect=columns + ("id",))
            self._updates[key] = statement
        return statement


@dataclass(init=False, repr=False, eq=False)
class Store:
    """The sprint-runner state store over one database.

    ``Store(target)`` takes a file path, a URL (``sqlite:///``, ``postgresql://``,
    ``mysql://``) or a peewee ``Database``, creates or upgrades its schema, and
    offers every operation as a method returning plain dicts. ``clock`` supplies
    whole Unix seconds for every timestamp (default: :func:`system_clock`, read at
    call time). Safe to share between threads: SQLite gets one connection per
    thread, server backends a bounded pool.
    """

    database: peewee.Database
    clock: Clock

    def __init__(self, database: str | os.PathLike[str] | peewee.Database,
                 clock: Clock | None = None, *, busy_timeout: float = DEFAULT_BUSY_TIMEOUT,
                 synchronous: str = "NORMAL", pool_size: int = DEFAULT_POOL_SIZE,
                 lock_retries: int = DEFAULT_LOCK_RETRIES, migrate: bool = True) -> None:
        if clock is not None and not callable(clock):
            raise TypeError(f"clock must be a callable returning Unix seconds, not {clock!r}")
        db = open_database(database, busy_timeout=busy_timeout, synchronous=synchronous,
                           pool_size=pool_size)
        if isinstance(db, peewee.SqliteDatabase):
            # Before the first connection applies any pragma: a refused file stays untouched.
            migrations.inspect_sqlite_file(str(db.database), busy_timeout)
        self.database = db
        self.clock = clock if clock is not None else system_clock
        self._x = Executor(db, busy_timeout=busy_timeout, lock_retries=lock_retries)
        self._q = _Statements(db)
        # The migration versions this store applied when it opened (for messages).
        self.applied_migrations: list[int] = self.migrate() if migrate else []

    @property
    def location(self) -> str:
        """Where the store keeps its data (a path, or a URL with the password masked)."""
        return self._x.location

    @property
    def backend(self) -> str:
        """``"sqlite"``, ``"postgresql"`` or ``"mysql"``."""
        return self._x.backend

    def __repr__(self) -> str:
        return f"Store({self.location!r}, clock={getattr(self.clock, '__name__', self.clock)!r})"

    def close(self) -> None:
        """Close the calling thread's connection (and a server pool's idle ones)."""
        self._x.close()

    def _now(self) -> int:
        return check_int("clock()", self.clock(), minimum=0)

    # -- schema ------------------------------------------------------------------------

    def migrate(self) -> list[int]:
        """Apply pending schema migrations; return the versions applied (may be empty)."""
        return migrations.migrate(self._x, self._now)

    def schema_version(self) -> int:
        """Return the database's schema version (0 for an unversioned legacy file)."""
        return migrations.schema_version(self._x)

    # -- transactions ------------------------------------------------------------------

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """Group calls into one atomic unit; nested blocks are savepoints.

        An exception leaving the outermost block rolls back everything in it; an
        inner block whose exception the caller catches rolls back only that block.
        The outermost block takes the write lock when it starts (``BEGIN IMMEDIATE``
        on SQLite), so read-modify-write blocks never interleave.
        """
        with self._x.transaction():
            yield

    @contextmanager
    def get_connection(self) -> Iterator[Any]:
        """Yield this thread's DB-API connection inside a transaction, for ad-hoc SQL.

        Rows from it are addressable by column name (``row["name"]``) for the block
        only; it commits on success and rolls back on an exception.
        """
        with self._x.transaction(), self._x.session() as conn:
            if self.backend != "sqlite":
                yield self._x.row_factory_block(conn)
                return
            previous = conn.row_factory
            conn.row_factory = sqlite3.Row
            try:
                yield conn
            finally:
                conn.row_factory = previous

    # -- batches ----------------------------------------------------------------------

    def create_batch(self, max_cycles: int) -> int:
        """Start a batch (status running, started now, owned by this host:pid); return its id."""
        check_int("max_cycles", max_cycles, minimum=1)
        now = self._now()
        return self._x.insert(self._q.insert_batch.sql,
                              (now, max_cycles, 0, "running", _owner(), now))

    def update_batch(self, batch_id: int, **fields: Any) -> int:
        """Update a batch's fields; return the rows changed (0 if it does not exist)."""
        return self._update(Batch, "batch_id", batch_id, fields)

    def get_batch(self, batch_id: int) -> Row | None:
        """Return the batch as a dict, or None."""
        check_int("batch_id", batch_id)
        rows = self._x.fetchall(self._q.batch.sql, (batch_id,))
        return dict(zip(BATCH_COLUMNS, rows[0])) if rows else None

    def get_active_batch(self) -> Row | None:
        """Return the most recent running batch, or None."""
        rows = self._x.fetchall(self._q.batches_by_status.sql, ("running", 1))
        return dict(zip(BATCH_COLUMNS, rows[0])) if rows else None

    def get_current_batch_status(self) -> Row | None:
        """Return the running batch row (with max_cycles and cycles_completed), or None."""
        return self.get_active_batch()

    def count_completed_cycles(self, batch_id: int) -> int:
        """Return the batch's completed cycles (0 for an unknown batch)."""
        check_int("batch_id", batch_id)
        rows = self._x.fetchall(self._q.cycles.sql, (batch_id,))
        return int(rows[0][0] or 0) if rows else 0

    def heartbeat(self, batch_id: int) -> int:
        """Set the batch's heartbeat to now; return rows changed (0 for an unknown batch)."""
        check_int("batch_id", batch_id)
        statement = self._q.update(Batch, ("heartbeat_at",))
        return self._x.execute(statement.sql, (self._now(), batch_id))

    # -- stories ------------------------------------------------------------------------

    def create_story(self, batch_id: int, story_key: str, epic_id: str) -> int:
        """Start a story in a batch (status in-progress, started now); return its id."""
        check_int("batch_id", batch_id)
        check_text("story_key", story_key, max_length=KEY_LENGTH)
        check_text("epic_id", epic_id, max_length=KEY_LENGTH)
        return self._x.insert(self._q.insert_story.sql,
                              (batch_id, story_key, epic_id, "in-progress", self._now()))

    def update_story(self, story_id: int, **fields: Any) -> int:
        """Update a story's fields; return the rows changed (0 if it does not exist)."""
        return self._update(Story, "story_id", story_id, fields)

    def get_story(self, story_id: int) -> Row | None:
        """Return the story as a dict, or None."""
        check_int("story_id", story_id)
        rows = self._x.fetchall(self._q.story.sql, (story_id,))
        return dict(zip(STORY_COLUMNS, rows[0])) if rows else None

    def get_story_by_key(self, story_key: str, batch_id: int) -> Row | None:
        """Return the batch's most recent story (highest id) with this key, or None."""
        check_text("story_key", story_key, max_length=KEY_LENGTH)
        check_int("batch_id", batch_id)
        rows = self._x.fetchall(self._q.story_by_key.sql, (batch_id, story_key, 1))
        return dict(zip(STORY_COLUMNS, rows[0])) if rows else None

    def get_stories_by_batch(self, batch_id: int) -> list[Row]:
        """Return the batch's stories, ordered by id."""
        check_int("batch_id", batch_id)
        return [dict(zip(STORY_COLUMNS, r))
                for r in self._x.fetchall(self._q.stories_by_batch.sql, (batch_id,))]

    def check_story_blocked(self, story_id: int) -> bool:
        """Return True when the story's three most recent commands (by id) all failed."""
        check_int("story_id", story_id)
        rows = self._x.fetchall(self._q.last_command_statuses.sql, (story_id, _BLOCKED_AFTER))
        return len(rows) == _BLOCKED_AFTER and all(r[0] == "failed" for r in rows)

    # -- commands -------------------------------------------------------------------------

    def create_command(self, story_id: int, command: str, task_id: str) -> int:
        """Start a command for a story (status running, started now); return its id."""
        check_int("story_id", story_id)
        check_text("command", command, max_length=KEY_LENGTH)
        check_text("task_id", task_id, max_length=KEY_LENGTH)
        return self._x.insert(self._q.insert_command.sql,
                              (story_id, command, task_id, self._now(), "running"))

    def update_command(self, command_id: int, **fields: Any) -> int:
        """Update a command's fields; return the rows changed (0 if it does not exist)."""
        return self._update(Command, "command_id", command_id, fields)

    def get_commands_by_story(self, story_id: int) -> list[Row]:
        """Return the story's commands, ordered by id."""
        check_int("story_id", story_id)
        return [dict(zip(COMMAND_COLUMNS, r))
                for r in self._x.fetchall(self._q.commands_by_story.sql, (story_id,))]

    # -- events ---------------------------------------------------------------------------

    def create_event(self, batch_id: int, story_id: int | None, command_id: int | None,
                     epic_id: str, story_key: str, command: str, task_id: str, status: str,
                     message: str | None) -> int:
        """Log an event (timestamp now); return its id."""
        row = _event_row(batch_id, story_id, command_id, epic_id, story_key, command,
                         task_id, status, message, self._now())
        return self._x.insert(self._q.insert_event.sql, row)

    def get_events(self, limit: int = 100, offset: int = 0) -> list[Row]:
        """Return events newest first (timestamp, then id, descending)."""
        check_int("limit", limit, minimum=0)
        check_int("offset", offset, minimum=0)
        if limit > MAX_PAGE:
            raise ValueError(f"limit must be <= {MAX_PAGE}, got {limit}; "
                             "page_events or iter_events read more")
        return [dict(zip(EVENT_COLUMNS, r))
                for r in self._x.fetchall(self._q.events_newest.sql, (limit, offset))]

    def get_events_by_batch(self, batch_id: int) -> list[Row]:
        """Return all the batch's events oldest first (timestamp, then id, ascending).

        Unbounded by contract (the old module's); ``iter_events(batch_id=...)``
        streams a long batch in bounded memory.
        """
        check_int("batch_id", batch_id)
        return [dict(zip(EVENT_COLUMNS, r))
                for r in self._x.fetchall(self._q.events_by_batch.sql, (batch_id,))]

    # -- background tasks ------------------------------------------------------------------

    def create_background_task(self, batch_id: int, story_key: str, task_type: str) -> int:
        """Record a spawned background task (status running, spawned now); return its id."""
        check_int("batch_id", batch_id)
        check_text("story_key", story_key, max_length=KEY_LENGTH)
        check_text("task_type", task_type, max_length=KEY_LENGTH)
        return self._x.insert(self._q.insert_task.sql,
                              (batch_id, story_key, task_type, self._now(), "running"))

    def update_background_task(self, task_id: int, **fields: Any) -> int:
        """Update a background task's fields; return the rows changed (0 if none)."""
        return self._update(BackgroundTask, "task_id", task_id, fields)

    def get_pending_background_tasks(self, batch_id: int) -> list[Row]:
        """Return the batch's running background tasks, by spawned_at then id."""
        check_int("batch_id", batch_id)
        return [dict(zip(TASK_COLUMNS, r))
                for r in self._x.fetchall(self._q.tasks_by_status.sql, (batch_id, "running"))]

    # -- crash recovery ----------------------------------------------------------------

    def recover_stale_batches(self, stale_after: int) -> list[int]:
        """Stop every running batch whose heartbeat (or start) is older than
        ``stale_after`` seconds; return their ids.

        In one transaction, each such batch becomes ``stopped`` with ``ended_at``
        now, its running commands and background tasks ``failed``, and one event
        records the recovery, naming the batch's owner and the heartbeat's age.
        """
        check_int("stale_after", stale_after, minimum=0)
        return self._x.retrying(lambda: self._recover(stale_after))

    def _recover(self, stale_after: int) -> list[int]:
        q = self._q
        recovered = []
        with self._x.transaction():
            now = self._now()
            stale = self._x.fetchall(q.stale_batches.sql, ("running", now - stale_after))
            for row in stale:
                batch = dict(zip(BATCH_COLUMNS, row))
                ids = {"id": batch["id"], "batch_id": batch["id"], "running": "running"}
                stopped = q.stop_batch.bind({**ids, "status": "stopped", "ended_at": now})
                if not self._x.execute(q.stop_batch.sql, stopped):
                    continue
                failed = {**ids, "status": "failed", "ended_at": now, "completed_at": now}
                self._x.execute(q.fail_commands.sql, q.fail_commands.bind(failed))
                self._x.execute(q.fail_tasks.sql, q.fail_tasks.bind(failed))
                message = (f"batch {batch['id']} recovered as stale: owner "
                           f"{batch['owner'] or 'unknown'}, last heartbeat "
                           f"{now - _last_seen(batch)}s ago "
                           f"(stale after {stale_after}s)")
                self._x.insert(q.insert_event.sql, (
                    batch["id"], None, None, now, "system", "recovery", "recover-stale-batches",
                    "recovery", "stopped", message))
                logger.warning("%s", message)
                recovered.append(batch["id"])
        return recovered

    # -- event history -----------------------------------------------------------------

    def page_events(self, *, limit: int = 100, cursor: str | None = None,
                    batch_id: int | None = None, story_key: str | None = None,
                    command: str | None = None, status: str | None = None,
                    since: int | None = None, until: int | None = None,
                    newest_first: bool = True) -> dict[str, Any]:
        """Return one page of events by id and the opaque cursor of the next page.

        ``{"events": [...], "next_cursor": str | None}``; ``newest_first`` orders by id
        descending. Filters combine with AND; ``since`` is inclusive and ``until``
        exclusive (Unix seconds). Pages never skip or repeat a row, even while new
        events arrive; ``next_cursor`` is None on the last page.
        """
        check_int("limit", limit, minimum=1)
        if limit > MAX_PAGE:
            raise ValueError(f"limit must be <= {MAX_PAGE}, got {limit}")
        filters = _event_filters(batch_id, story_key, command, status, since, until)
        check_bool("newest_first", newest_first)
        after = None if cursor is None else _decode_cursor(cursor, newest_first)
        rows = self._event_chunk(filters, newest_first, after, limit + 1)
        events = [dict(zip(EVENT_COLUMNS, r)) for r in rows[:limit]]
        more = len(rows) > limit
        return {"events": events,
                "next_cursor": _encode_cursor(events[-1]["id"], newest_first) if more else None}

    def tail_events(self, after_id: int = 0, *, batch_id: int | None = None,
                    limit: int = 1000) -> list[Row]:
        """Return events with id greater than ``after_id``, oldest first (for polling)."""
        check_int("after_id", after_id)
        check_int("limit", limit, minimum=1)
        if limit > MAX_PAGE:
            raise ValueError(f"limit must be <= {MAX_PAGE}, got {limit}")
        filters = _event_filters(batch_id, None, None, None, None, None)
        return [dict(zip(EVENT_COLUMNS, r))
                for r in self._event_chunk(filters, False, after_id, limit)]

    def count_events(self, *, batch_id: int | None = None, story_key: str | None = None,
                     command: str | None = None, status: str | None = None,
                     since: int | None = None, until: int | None = None) -> int:
        """Return how many events match the filters (as ``page_events`` takes them)."""
        filters = _event_filters(batch_id, story_key, command, status, since, until)
        statement = self._q.event_count(tuple(filters))
        return int(self._x.fetchall(statement.sql, statement.bind(filters))[0][0])

    def iter_events(self, *, batch_id: int | None = None, story_key: str | None = None,
                    command: str | None = None, status: str | None = None,
                    since: int | None = None, until: int | None = None,
                    newest_first: bool = False, chunk_size: int = _CHUNK) -> Iterator[Row]:
        """Stream every matching event (oldest first by default) in bounded memory.

        Reads chunks of ``chunk_size`` rows by keyset; no transaction stays open
        between chunks, so writers are never held up by a slow consumer.
        """
        filters = _event_filters(batch_id, story_key, command, status, since, until)
        check_int("chunk_size", chunk_size, minimum=1)
        if chunk_size > MAX_PAGE:
            raise ValueError(f"chunk_size must be <= {MAX_PAGE}, got {chunk_size}")
        check_bool("newest_first", newest_first)
        return self._iter_events(filters, newest_first, chunk_size)

    def _iter_events(self, filters: dict[str, Any], newest_first: bool,
                     chunk_size: int) -> Iterator[Row]:
        after: int | None = None
        while True:
            rows = self._event_chunk(filters, newest_first, after, chunk_size)
            for r in rows:
                yield dict(zip(EVENT_COLUMNS, r))
            if len(rows) < chunk_size:
                return
            after = rows[-1][0]

    def _event_chunk(self, filters: dict[str, Any], newest_first: bool, after: int | None,
                     limit: int) -> Any:
        if after is None:
            after = INT64_MAX if newest_first else INT64_MIN
        names = tuple(filters)
        values = {**filters, "after": after, "limit": limit, "cap": limit * _TIME_RANGE_PAGES}
        by_time = self._q.event_time_page(names, newest_first)
        if by_time is not None:
            probe, page = by_time
            # Each statement alone returns the exact page, so new rows landing
            # between the two cannot make it skip or repeat one.
            if self._x.fetchall(probe.sql, probe.bind(values))[0][0] < values["cap"]:
                return self._x.fetchall(page.sql, page.bind(values))
        statement = self._q.event_page(names, newest_first)
        return self._x.fetchall(statement.sql, statement.bind(values))

    def create_events(self, events: Iterable[Mapping[str, Any]]) -> int:
        """Insert many events in one transaction; return how many.

        Each mapping takes ``create_event``'s parameter names (``story_id``,
        ``command_id`` and ``message`` may be left out) and optionally a
        ``timestamp``; it defaults to now. One bad event raises (naming its index)
        and nothing is written.
        """
        if isinstance(events, (str, bytes, Mapping)) or not isinstance(events, Iterable):
            raise TypeError("events must be an iterable of mappings")
        count = 0
        with self._x.transaction():
            now = self._now()
            chunk: list[tuple[Any, ...]] = []
            for index, event in enumerate(events):
                chunk.append(_event_from_mapping(index, event, now))
                if len(chunk) == _CHUNK:
                    self._insert_events(chunk)
                    count += len(chunk)
                    chunk = []
            if chunk:
                self._insert_events(chunk)
                count += len(chunk)
        return count

    def _insert_events(self, rows: list[tuple[Any, ...]]) -> None:
        if self.backend == "sqlite" and (len(rows) < _CHUNK or not _SQLITE_MULTI_ROW):
            self._x.executemany(self._q.insert_event.sql, rows)
            return
        # Multi-row INSERTs: on a server a round trip per row would dominate, and on
        # SQLite one statement per full chunk beats executemany by about a fifth.
        start = 0
        for size in _split(len(rows)):
            statement = self._q.insert_events(size)
            self._x.execute(statement.sql, [v for row in rows[start:start + size] for v in row])
            start += size

    # -- retention ----------------------------------------------------------------------

    def prune_events(self, *, older_than: int, dry_run: bool = False) -> int:
        """Delete events older than ``older_than`` (Unix seconds) of batches that are
        not running; return how many (counted only, with ``dry_run``).

        Deletes in chunks of short transactions, so writers are never held up long.
        """
        check_int("older_than", older_than, minimum=0)
        check_bool("dry_run", dry_run)
        q = self._q
        if dry_run:
            return int(self._x.fetchall(q.count_prunable_events.sql, ("running", older_than))[0][0])
        total = 0
        while True:
            def chunk() -> int:
                with self._x.transaction():
                    ids = [r[0] for r in self._x.fetchall(
                        q.prunable_events.sql, ("running", older_than, _CHUNK))]
                    self._delete_events(ids)
                    return len(ids)
            deleted = self._x.retrying(chunk)
            total += deleted
            if deleted < _CHUNK:
                break
        if total:
            logger.info("pruned %d events older than %d from %s", total, older_than, self.location)
        return total

    def prune_batches(self, *, older_than: int, dry_run: bool = False) -> dict[str, int]:
        """Delete finished batches that ended before ``older_than`` (Unix seconds),
        with their stories, commands, events and background tasks; return counts per
        table (counted only, with ``dry_run``). A running batch is never touched.

        A finished batch without ``ended_at`` counts from its ``started_at``. A batch
        whose stories or commands are referenced by an event of a batch that is kept
        is kept too: no event is ever deleted with a batch other than its own.
        """
        check_int("older_than", older_than, minimum=0)
        check_bool("dry_run", dry_run)
        return self._prune_batches(older_than, dry_run)[0]

    def prune(self, *, older_than: int, events_only: bool = False,
              dry_run: bool = False) -> dict[str, int]:
        """Apply the retention policy; return the rows deleted per table.

        Finished batches that ended before ``older_than`` go with everything in
        them (skipped with ``events_only``), then the older events of batches that
        are not running. A dry run counts each row once, as a real run deletes it.
        """
        check_int("older_than", older_than, minimum=0)
        check_bool("events_only", events_only)
        check_bool("dry_run", dry_run)
        pruned: list[int] = []
        if events_only:
            counts = {m._meta.table_name: 0 for m in MODELS}
        else:
            counts, pruned = self._prune_batches(older_than, dry_run)
        if dry_run:
            # The old events of the batches counted above are already in counts.
            with self._x.snapshot():
                old = self._x.fetchall(self._q.count_prunable_events.sql,
                                       ("running", older_than))[0][0]
                for batch_id in pruned:
                    old -= self._x.fetchall(self._q.count_old_batch_events.sql,
                                            (batch_id, older_than))[0][0]
            counts["events"] += int(old)
        else:
            counts["events"] += self.prune_events(older_than=older_than)
        return counts

    def _prune_batches(self, older_than: int, dry_run: bool) -> tuple[dict[str, int], list[int]]:
        counts = {m._meta.table_name: 0 for m in MODELS}
        batch_ids = self._prunable_batches(older_than)
        if dry_run:
            with self._x.snapshot():
                for batch_id in batch_ids:
                    for table, n in self._batch_tree_counts(batch_id).items():
                        counts[table] += n
            return counts, batch_ids
        # Every pruned batch's own events go first, so that one pruned batch's events
        # that point into another pruned batch are gone before that batch is deleted.
        for batch_id in batch_ids:
            counts["events"] += self._delete_own_events(batch_id)
        for batch_id in batch_ids:
            deleted = self._x.retrying(functools.partial(self._delete_batch, batch_id))
            for table, n in deleted.items():
                counts[table] += n
        if batch_ids:
            logger.info("pruned %d batches older than %d from %s", counts["batches"],
                        older_than, self.location)
        return counts, batch_ids

    def _prunable_batches(self, older_than: int) -> list[int]:
        """Finished batches ended before the cutoff, less those still referenced by
        events of batches that stay (repeated until no kept batch references one)."""
        q = self._q
        with self._x.snapshot():
            candidates = [r[0] for r in self._x.fetchall(q.prunable_batches.sql,
                                                         ("running", "running", older_than))]
            referenced_by = {
                batch_id: {r[0] for _, statement in q.referencing_batches
                           for r in self._x.fetchall(statement.sql,
                                                     statement.bind({"batch_id": batch_id}))}
                for batch_id in candidates}
        pruned = set(candidates)
        while True:
            kept = {b for b in pruned if not referenced_by[b] <= pruned}
            if not kept:
                return sorted(pruned)
            pruned -= kept

    def _delete_events(self, ids: list[int]) -> int:
        deleted, start = 0, 0
        for size in _split(len(ids)):
            deleted += self._x.execute(self._q.delete_events(size).sql, ids[start:start + size])
            start += size
        return deleted

    def _batch_tree_counts(self, batch_id: int) -> dict[str, int]:
        q = self._q
        ids = {"batch_id": batch_id}
        counts = {m._meta.table_name: 0 for m in MODELS}
        for table, statement in q.count_batch_tree:
            counts[table] += int(self._x.fetchall(statement.sql, statement.bind(ids))[0][0])
        return counts

    def _delete_own_events(self, batch_id: int) -> int:
        """Delete the batch's own events in short transactions; return how many."""
        def chunk() -> int:
            with self._x.transaction():
                ids = [r[0] for r in self._x.fetchall(self._q.batch_event_ids.sql,
                                                      (batch_id, _CHUNK))]
                return self._delete_events(ids)
        total = 0
        while True:
            deleted = self._x.retrying(chunk)
            total += deleted
            if deleted < _CHUNK:
                return total

    def _delete_batch(self, batch_id: int) -> dict[str, int]:
        q = self._q
        ids = {"batch_id": batch_id}
        counts = {m._meta.table_name: 0 for m in MODELS}
        with self._x.transaction():
            still = self._x.fetchall(q.batch.sql, (batch_id,))
            if not still or still[0][BATCH_COLUMNS.index("status")] == "running":
                return counts
            # An event of another batch written since the batch was chosen keeps it.
            if any(self._x.fetchall(s.sql, s.bind(ids))[0][0] for _, s in q.count_references):
                logger.warning("kept batch %d: events of another batch reference it", batch_id)
                return counts
            for table, statement in q.delete_batch_tree:
                counts[table] += self._x.execute(statement.sql, statement.bind(ids))
        return counts

    # -- operations --------------------------------------------------------------------

    def backup(self, dest: str | os.PathLike[str]) -> None:
        """Write a consistent copy of the whole database to the SQLite file ``dest``.

        On SQLite it is an online copy through the backup API, safe while other
        processes write; on a server it is a logical copy from one snapshot. ``dest``
        must not exist yet (nothing is ever overwritten) and must not be the database
        or one of its files; the copy is written privately beside it, then linked
        into place (see :mod:`sprint_runner.files`), readable by its owner only.
        """
        target = os.fspath(dest) if isinstance(dest, os.PathLike) else dest
        check_text("dest", target)
        if self.backend == "sqlite":
            source = str(self.database.database)

            def fill(path: str) -> None:
                copy_sqlite_file(source, path, busy_timeout=self._x.busy_timeout)
        else:
            fill = self._copy_to_sqlite
        files.create_file(target, fill, protect=files.files_of(self.database),
                          beside=files.SQLITE_REPLAYED, what="backup destination")
        logger.info("backed up %s to %s", self.location, target)

    def _copy_to_sqlite(self, path: str) -> None:
        copy = Store(path, self.clock, synchronous="OFF")
        try:
            with self._x.snapshot(), copy._x.transaction():
                for model in MODELS:
                    statement = self._q.select_all(model)
                    insert = copy._q.insert_all(model)
                    after = 0
                    while True:
                        rows = self._x.fetchall(statement.sql, (after, _CHUNK))
                        if not rows:
                            break
                        copy._x.executemany(insert.sql, rows)
                        after = rows[-1][0]
            copy.database.execute_sql("PRAGMA journal_mode = DELETE")
        finally:
            copy.close()

    def list_batches(self, limit: int = 20) -> list[Row]:
        """Return the most recent batches, newest first."""
        check_int("limit", limit, minimum=1)
        return [dict(zip(BATCH_COLUMNS, r))
                for r in self._x.fetchall(self._q.recent_batches.sql, (INT64_MAX, limit))]

    def get_background_tasks_by_batch(self, batch_id: int) -> list[Row]:
        """Return all of the batch's background tasks, ordered by id."""
        check_int("batch_id", batch_id)
        return [dict(zip(TASK_COLUMNS, r))
                for r in self._x.fetchall(self._q.tasks_by_batch.sql, (batch_id,))]

    def get_commands_by_batch(self, batch_id: int, status: str | None = None) -> list[Row]:
        """Return the commands of the batch's stories (only ``status`` ones if given), by id."""
        check_int("batch_id", batch_id)
        if status is None:
            rows = self._x.fetchall(self._q.commands_by_batch.sql, (batch_id,))
        else:
            check_choice("status", status, COMMAND_STATUSES)
            rows = self._x.fetchall(self._q.commands_by_batch_status.sql, (batch_id, status))
        return [dict(zip(COMMAND_COLUMNS, r)) for r in rows]

    @staticmethod
    def last_seen(batch: Mapping[str, Any]) -> int:
        """Return when a batch (a dict from this store) was last known alive: its
        heartbeat, else its start, in Unix seconds."""
        return _last_seen(batch)

    def find_stale_batches(self, stale_after: int) -> list[Row]:
        """Return the running batches ``recover_stale_batches`` would stop now."""
        check_int("stale_after", stale_after, minimum=0)
        return [dict(zip(BATCH_COLUMNS, r)) for r in self._x.fetchall(
            self._q.stale_batches.sql, ("running", self._now() - stale_after))]

    def batch_summary(self, batch_id: int, *, events: int = 10) -> Row | None:
        """Return a batch with its stories by status, running commands, pending
        background tasks and last ``events`` events (newest first), or None."""
        check_int("events", events, minimum=0)
        with self._x.snapshot():
            batch = self.get_batch(batch_id)
            if batch is None:
                return None
            by_status: dict[str, int] = {}
            for story in self.get_stories_by_batch(batch_id):
                by_status[story["status"]] = by_status.get(story["status"], 0) + 1
            running = batch["status"] == "running"
            return {
                "batch": batch,
                "heartbeat_age": self._now() - _last_seen(batch) if running else None,
                "stories_by_status": by_status,
                "running_commands": self.get_commands_by_batch(batch_id, "running"),
                "pending_background_tasks": self.get_pending_background_tasks(batch_id),
                "last_events": self.page_events(limit=events, batch_id=batch_id)["events"]
                if events else [],
            }

    def table_counts(self) -> dict[str, int]:
        """Return the number of rows in each table."""
        return {model._meta.table_name: int(self._x.fetchall(statement.sql)[0][0])
                for model, statement in self._q.count_tables}

    def pending_migrations(self) -> list[tuple[int, str]]:
        """Return the (version, name) of every migration the database still needs."""
        state = migrations.read_state(self.database, self.location)
        return [(m.version, m.name) for m in migrations.pending_migrations(state)]

    def integrity_check(self) -> list[str]:
        """Return the problems the database reports about itself (empty when healthy).

        SQLite runs ``PRAGMA integrity_check`` and ``PRAGMA foreign_key_check``;
        servers enforce both themselves, so only the schema version is checked.
        """
        problems: list[str] = []
        if self.backend == "sqlite":
            problems += migrations.sqlite_integrity_problems(self._x.fetchall)
        return problems + migrations.schema_problems(
            migrations.read_state(self.database, self.location))

    def storage_info(self) -> dict[str, Any]:
        """Return where the data lives and, for SQLite, the file and WAL sizes in bytes."""
        if self.backend == "sqlite":
            return sqlite_storage_info(str(self.database.database))
        return {"backend": self.backend, "location": self.location}

    # -- shared ------------------------------------------------------------------------

    def _update(self, model: type[BaseModel], id_name: str, row_id: object,
                fields: Mapping[str, Any]) -> int:
        check_int(id_name, row_id)
        values = check_update(model, fields, _IMMUTABLE[model])
        if not values:
            return 0
        # Table order: one cached statement per set of columns, whatever the kwargs order.
        columns = tuple(c for c in columns_of(model) if c in values)
        statement = self._q.update(model, columns)
        return self._x.execute(statement.sql, tuple(values[c] for c in columns) + (row_id,))


def sqlite_storage_info(path: str) -> dict[str, Any]:
    """Return :meth:`Store.storage_info` for the SQLite file ``path``, read from the
    filesystem alone (no connection: the file is not touched)."""
    info: dict[str, Any] = {"backend": "sqlite", "location": path}
    for key, name in (("file_bytes", path), ("wal_bytes", path + "-wal")):
        info[key] = os.path.getsize(name) if os.path.exists(name) else 0
    return info


def _event_row(batch_id: object, story_id: object, command_id: object, epic_id: object,
               story_key: object, command: object, task_id: object, status: object,
               message: object, timestamp: int) -> tuple[Any, ...]:
    # The common case, decided in one expression: a bulk insert pays this per event.
    # Anything it does not accept goes through the checks below, which name the culprit.
    if (type(batch_id) is int and INT64_MIN <= batch_id <= INT64_MAX
            and (story_id is None or (type(story_id) is int and INT64_MIN <= story_id <= INT64_MAX))
            and (command_id is None
                 or (type(command_id) is int and INT64_MIN <= command_id <= INT64_MAX))
            and type(epic_id) is str and 0 < len(epic_id) <= KEY_LENGTH
            and type(story_key) is str and 0 < len(story_key) <= KEY_LENGTH
            and type(command) is str and 0 < len(command) <= KEY_LENGTH
            and type(task_id) is str and 0 < len(task_id) <= KEY_LENGTH
            and type(status) is str and 0 < len(status) <= KEY_LENGTH
            and (message is None or type(message) is str)
            and "\x00" not in epic_id and "\x00" not in story_key and "\x00" not in command
            and "\x00" not in task_id and "\x00" not in status
            and (message is None or "\x00" not in message)
            and epic_id.isascii() and story_key.isascii() and command.isascii()
            and task_id.isascii() and status.isascii()
            and (message is None or message.isascii() or not SURROGATE.search(message))):
        return (batch_id, story_id, command_id, timestamp, epic_id, story_key, command,
                task_id, status, message)
    check_int("batch_id", batch_id)
    check_optional_int("story_id", story_id)
    check_optional_int("command_id", command_id)
    check_text("epic_id", epic_id, max_length=KEY_LENGTH)
    check_text("story_key", story_key, max_length=KEY_LENGTH)
    check_text("command", command, max_length=KEY_LENGTH)
    check_text("task_id", task_id, max_length=KEY_LENGTH)
    check_text("status", status, max_length=KEY_LENGTH)
    check_optional_text("message", message)
    return (batch_id, story_id, command_id, timestamp, epic_id, story_key, command, task_id,
            status, message)


def _split(n: int) -> list[int]:
    """Split ``n`` rows into full chunks and powers of two, so that a handful of
    cached statements (not one per remainder size) serve every count."""
    sizes = [_CHUNK] * (n // _CHUNK)
    rest = n % _CHUNK
    while rest:
        size = 1 << (rest.bit_length() - 1)
        sizes.append(size)
        rest -= size
    return sizes


def _last_seen(batch: Mapping[str, Any]) -> int:
    """Return when the batch was last known alive: its heartbeat, else its start."""
    seen = batch["heartbeat_at"] if batch["heartbeat_at"] is not None else batch["started_at"]
    return int(seen)


def _event_filters(batch_id: object, story_key: object, command: object, status: object,
                   since: object, until: object) -> dict[str, Any]:
    """Validate event filters; return the given ones by name, in a fixed order."""
    filters: dict[str, Any] = {}
    if batch_id is not None:
        filters["batch_id"] = check_int("batch_id", batch_id)
    for name, value in (("story_key", story_key), ("command", command), ("status", status)):
        if value is not None:
            filters[name] = check_text(name, value, max_length=KEY_LENGTH)
    if since is not None:
        filters["since"] = check_int("since", since, minimum=0)
    if until is not None:
        filters["until"] = check_int("until", until, minimum=0)
    return filters


def _encode_cursor(last_id: int, newest_first: bool) -> str:
    raw = f"{_CURSOR_PREFIX}:{'d' if newest_first else 'a'}:{last_id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(cursor: object, newest_first: bool) -> int:
    if not isinstance(cursor, str):
        raise TypeError(f"cursor must be a str from a previous page's next_cursor, not {cursor!r}")
    invalid = ValueError(f"invalid cursor {cursor!r}: pass a next_cursor value unchanged")
    if not cursor or len(cursor) > 64 or not cursor.isascii():
        raise invalid
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        prefix, direction, last = raw.split(":")
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise invalid from None
    # Plain ASCII digits of an id the tables can hold: int() alone takes "+1", " 1",
    # other scripts' digits and ids no backend stores.
    if (prefix != _CURSOR_PREFIX or not last.isascii() or not last.isdigit()
            or len(last) > 19 or int(last) > INT64_MAX):
        raise invalid
    last_id = int(last)
    if direction != ("d" if newest_first else "a"):
        raise ValueError(f"cursor {cursor!r} was made with newest_first={not newest_first}")
    return last_id


_REQUIRED_EVENT_KEYS = ("batch_id", "epic_id", "story_key", "command", "task_id", "status")
_REQUIRED_EVENT_KEY_SET = frozenset(_REQUIRED_EVENT_KEYS)
# SQLite 3.32 raised the bound parameters per statement from 999 to 32766: enough for
# a chunk of events (10 columns x 1000 rows) in one INSERT.
_SQLITE_MULTI_ROW = sqlite3.sqlite_version_info >= (3, 32, 0)
_EVENT_KEYS = frozenset(EVENT_FIELDS) | {"timestamp"}


def _event_from_mapping(index: int, event: object, now: int) -> tuple[Any, ...]:
    if type(event) is not dict and not isinstance(event, Mapping):
        raise TypeError(f"events[{index}] must be a mapping, not {type(event).__name__}")
    keys = event.keys()
    # Set comparisons first: the lists that name the culprits are built only on failure.
    if not keys <= _EVENT_KEYS:
        unknown = sorted(str(k) for k in keys if k not in _EVENT_KEYS)
        raise ValueError(f"Invalid fields in events[{index}]: {', '.join(unknown)}")
    if not _REQUIRED_EVENT_KEY_SET <= keys:
        missing = [k for k in _REQUIRED_EVENT_KEYS if k not in keys]
        raise ValueError(f"events[{index}] lacks {', '.join(missing)}")
    timestamp = event.get("timestamp", now)
    try:
        check_int("timestamp", timestamp, minimum=0)
        return _event_row(event["batch_id"], event.get("story_id"), event.get("command_id"),
                          event["epic_id"], event["story_key"], event["command"],
                          event["task_id"], event["status"], event.get("message"), timestamp)
    except (TypeError, ValueError) as exc:
        raise type(exc)(f"events[{index}]: {exc}") from None
