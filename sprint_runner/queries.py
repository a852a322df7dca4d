"""Every statement the store runs, as peewee queries over the models, compiled once.

The sections follow :class:`~sprint_runner.store.Store`'s. Constants of a query are
:class:`~sprint_runner.statements.Fixed` (bound with the statement), so callers pass
only the slots, in the order each ``expect`` pins.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import replace
from typing import Any

import peewee

from .events import EVENT_FILTERS, TIME_FILTERS
from .models import MODELS, BackgroundTask, BaseModel, Batch, Command, Event, Story
from .statements import Fixed, Slot, Statement, columns_of, compile_query, fields_of

BATCH_COLUMNS = columns_of(Batch)
STORY_COLUMNS = columns_of(Story)
COMMAND_COLUMNS = columns_of(Command)
EVENT_COLUMNS = columns_of(Event)
TASK_COLUMNS = columns_of(BackgroundTask)

_EVENT_INSERT_FIELDS = (Event.batch, Event.story, Event.command, Event.timestamp,
                        Event.epic_id, Event.story_key, Event.command_name, Event.task_id,
                        Event.status, Event.message, Event.event_type, Event.payload_json)
"""The columns of ``insert_event``, in the order :func:`~sprint_runner.events.event_row`
returns them."""


def _select(model: type[BaseModel]) -> Any:
    return model.select(*fields_of(model))


class Statements:
    """The store's statements, rendered once for its database."""

    def __init__(self, database: peewee.Database,
                 index_hint: Callable[[str], str] = lambda index: "") -> None:
        self.database = database
        self._index_hint = index_hint
        self._cache: dict[tuple[Any, ...], Statement] = {}
        self._time_pages: dict[tuple[tuple[str, ...], bool], tuple[Statement, Statement]] = {}
        c = self._compile
        running = Fixed("running")

        # -- batches -------------------------------------------------------------------
        self.insert_batch = self._insert(Batch.insert({
            Batch.started_at: Slot("started_at"), Batch.max_cycles: Slot("max_cycles"),
            Batch.cycles_completed: Fixed(0), Batch.status: running,
            Batch.owner: Slot("owner"), Batch.heartbeat_at: Slot("heartbeat_at")}),
            expect=("started_at", "max_cycles", "owner", "heartbeat_at"))
        self.batch = c(_select(Batch).where(Batch.id == Slot("id")), BATCH_COLUMNS)
        self.active_batch = c(
            _select(Batch).where(Batch.status == running).order_by(Batch.id.desc())
            .limit(Fixed(1)), BATCH_COLUMNS, expect=())
        self.cycles = c(Batch.select(Batch.cycles_completed).where(Batch.id == Slot("id")))

        # -- stories -------------------------------------------------------------------
        self.insert_story = self._insert(Story.insert({
            Story.batch: Slot("batch_id"), Story.story_key: Slot("story_key"),
            Story.epic_id: Slot("epic_id"), Story.status: Fixed("in-progress"),
            Story.started_at: Slot("started_at")}),
            expect=("batch_id", "story_key", "epic_id", "started_at"))
        self.story = c(_select(Story).where(Story.id == Slot("id")), STORY_COLUMNS)
        self.story_by_key = c(
            _select(Story).where((Story.batch == Slot("batch_id"))
                                 & (Story.story_key == Slot("story_key")))
            .order_by(Story.id.desc()).limit(Fixed(1)), STORY_COLUMNS,
            expect=("batch_id", "story_key"))
        self.stories_by_batch = c(
            _select(Story).where(Story.batch == Slot("batch_id")).order_by(Story.id),
            STORY_COLUMNS)

        # -- commands ------------------------------------------------------------------
        self.insert_command = self._insert(Command.insert({
            Command.story: Slot("story_id"), Command.command: Slot("command"),
            Command.task_id: Slot("task_id"), Command.started_at: Slot("started_at"),
            Command.status: running}),
            expect=("story_id", "command", "task_id", "started_at"))
        self.commands_by_story = c(
            _select(Command).where(Command.story == Slot("story_id")).order_by(Command.id),
            COMMAND_COLUMNS)
        self.last_command_statuses = c(
            Command.select(Command.status).where(Command.story == Slot("story_id"))
            .order_by(Command.id.desc()).limit(Slot("limit")), expect=("story_id", "limit"))
        batch_stories = Story.select(Story.id).where(Story.batch == Slot("batch_id"))
        self.commands_by_batch = c(
            _select(Command).where(Command.story.in_(batch_stories)).order_by(Command.id),
            COMMAND_COLUMNS)
        self.commands_by_batch_status = c(
            _select(Command).where(Command.story.in_(batch_stories)
                                   & (Command.status == Slot("status"))).order_by(Command.id),
            COMMAND_COLUMNS, expect=("batch_id", "status"))

        # -- events --------------------------------------------------------------------
        self.insert_event = self._insert(Event.insert(
            {f: Slot(f.column_name) for f in _EVENT_INSERT_FIELDS}),
            expect=tuple(f.column_name for f in _EVENT_INSERT_FIELDS))
        self.events_newest = c(
            _select(Event).order_by(Event.timestamp.desc(), Event.id.desc())
            .limit(Slot("limit")).offset(Slot("offset")), EVENT_COLUMNS,
            expect=("limit", "offset"))
        self.events_by_batch = c(
            _select(Event).where(Event.batch == Slot("batch_id"))
            .order_by(Event.timestamp, Event.id), EVENT_COLUMNS)
        # The tail's gaps: the ranges of ids in (after, top] that no visible row holds,
        # lowest first, read on the primary key alone and unfiltered (another batch's
        # event is not a gap). A row whose predecessor is missing ends a gap; the gap
        # starts after the highest row below it (or after ``after``).
        edge, below, before = Event.alias("edge"), Event.alias("below"), Event.alias("before")
        previous = (below.select(peewee.fn.MAX(below.id))
                    .where((below.id > Slot("after")) & (below.id < edge.id)))
        self.tail_gaps = c(
            edge.select((peewee.fn.COALESCE(previous, Slot("after")) + Fixed(1)).alias("first"),
                        (edge.id - Fixed(1)).alias("last"))
            .where((edge.id > Slot("after") + Fixed(1)) & (edge.id <= Slot("top"))
                   & ~peewee.fn.EXISTS(before.select(peewee.SQL("1"))
                                       .where(before.id == edge.id - Fixed(1))))
            .order_by(edge.id).limit(Slot("limit")), ("first", "last"),
            expect=("after", "after", "after", "top", "limit"))
        # Events per minute of one batch: each timestamp floored to its minute (``width``
        # is a minute in the store's unit), counted per minute, on the (batch, timestamp)
        # index alone. Peewee's ``%`` means LIKE, hence the operator spelled out (doubled
        # where the driver's paramstyle is ``%s``); the subquery keeps the expression's
        # parameter out of GROUP BY (PostgreSQL would not match two bound copies).
        modulo = "%%" if database.param == "%s" else "%"
        floored = (Event.timestamp
                   - peewee.Expression(Event.timestamp, modulo, Slot("width"))).alias("minute")
        minutes = (Event.select(floored).where(Event.batch == Slot("batch_id"))
                   .alias("minutes"))
        self.events_per_minute = c(
            peewee.Select([minutes], [minutes.c.minute, peewee.fn.COUNT(peewee.SQL("*"))
                                      .alias("events")])
            .group_by(minutes.c.minute).order_by(minutes.c.minute), ("minute", "events"),
            expect=("width", "batch_id"))
        # The rows of one gap now committed (a server's executor makes it a locking read).
        self.tail_gap_rows = c(
            Event.select(Event.id).where((Event.id >= Slot("first")) & (Event.id <= Slot("last")))
            .order_by(Event.id), expect=("first", "last"))

        # -- background tasks ----------------------------------------------------------
        self.insert_task = self._insert(BackgroundTask.insert({
            BackgroundTask.batch: Slot("batch_id"), BackgroundTask.story_key: Slot("story_key"),
            BackgroundTask.task_type: Slot("task_type"),
            BackgroundTask.spawned_at: Slot("spawned_at"),
            BackgroundTask.status: running}),
            expect=("batch_id", "story_key", "task_type", "spawned_at"))
        self.pending_tasks = c(
            _select(BackgroundTask).where((BackgroundTask.batch == Slot("batch_id"))
                                          & (BackgroundTask.status == running))
            .order_by(BackgroundTask.spawned_at, BackgroundTask.id), TASK_COLUMNS)
        self.tasks_by_batch = c(
            _select(BackgroundTask).where(BackgroundTask.batch == Slot("batch_id"))
            .order_by(BackgroundTask.id), TASK_COLUMNS)

        # -- crash recovery ------------------------------------------------------------
        stale_since = peewee.fn.COALESCE(Batch.heartbeat_at, Batch.started_at)
        self.stale_batches = c(
            _select(Batch).where((Batch.status == running) & (stale_since < Slot("cutoff")))
            .order_by(Batch.id), BATCH_COLUMNS)
        self.stop_batch = c(
            Batch.update({Batch.status: Fixed("stopped"), Batch.ended_at: Slot("ended_at")})
            .where((Batch.id == Slot("id")) & (Batch.status == running)),
            expect=("ended_at", "id"))
        failed = Fixed("failed")
        self.fail_commands = c(
            Command.update({Command.status: failed, Command.ended_at: Slot("ended_at")})
            .where((Command.status == running) & Command.story.in_(batch_stories)),
            expect=("ended_at", "batch_id"))
        self.fail_tasks = c(
            BackgroundTask.update({BackgroundTask.status: failed,
                                   BackgroundTask.completed_at: Slot("completed_at")})
            .where((BackgroundTask.batch == Slot("batch_id"))
                   & (BackgroundTask.status == running)),
            expect=("completed_at", "batch_id"))

        # -- retention -----------------------------------------------------------------
        prunable = (Batch.status != running) & (Event.timestamp < Slot("cutoff"))
        self.prunable_events = c(
            Event.select(Event.id).join(Batch, on=(Batch.id == Event.batch))
            .where(prunable).limit(Slot("limit")), expect=("cutoff", "limit"))
        self.count_prunable_events = c(
            Event.select(peewee.fn.COUNT(Event.id)).join(Batch, on=(Batch.id == Event.batch))
            .where(prunable), expect=("cutoff",))
        # "< running OR > running" is "<> running" in a form idx_batches_status serves.
        not_running = (Batch.status < running) | (Batch.status > running)
        self.prunable_batches = c(
            Batch.select(Batch.id).where(
                not_running
                & (peewee.fn.COALESCE(Batch.ended_at, Batch.started_at) < Slot("cutoff"))),
            expect=("cutoff",))
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

        # -- operations ----------------------------------------------------------------
        story_count = (Story.select(peewee.fn.COUNT(Story.id)).where(Story.batch == Batch.id))
        self.recent_batches = c(
            Batch.select(*fields_of(Batch), story_count.alias("story_count"))
            .where(Batch.id < Slot("before")).order_by(Batch.id.desc())
            .limit(Slot("limit")).offset(Slot("offset")),
            BATCH_COLUMNS + ("story_count",), expect=("before", "limit", "offset"))
        self.count_batches = c(Batch.select(peewee.fn.COUNT(Batch.id)))
        self.count_tables = [(m, c(m.select(peewee.fn.COUNT(peewee.SQL("*"))))) for m in MODELS]

    def _compile(self, query: Any, columns: tuple[str, ...] = (),
                 expect: tuple[str, ...] | None = None) -> Statement:
        return compile_query(self.database, query, columns, expect)

    def _insert(self, query: Any, expect: tuple[str, ...]) -> Statement:
        # Servers with RETURNING (PostgreSQL) hand back the new id that way.
        if self.database.returning_clause:
            query = query.returning(query.model.id)
        return compile_query(self.database, query, (), expect)

    def _cached(self, key: tuple[Any, ...], build: Callable[[], Statement]) -> Statement:
        statement = self._cache.get(key)
        if statement is None:
            statement = self._cache[key] = build()
        return statement

    # -- statements made per call shape, cached ---------------------------------------

    def update(self, model: type[BaseModel], columns: tuple[str, ...]) -> Statement:
        """Return ``UPDATE model SET <columns> WHERE id = ?``."""
        def build() -> Statement:
            fields = {f.column_name: f for f in model._meta.sorted_fields}
            query = model.update({fields[col]: Slot(col) for col in columns}).where(
                model._meta.primary_key == Slot("id"))
            return compile_query(self.database, query, expect=columns + ("id",))
        return self._cached(("update", model, columns), build)

    def event_page(self, filters: tuple[str, ...], newest_first: bool) -> Statement:
        """Return the keyset page statement for this combination of filters.

        The id bound is always present (the first page binds the far end), so
        every page is a range search on the primary key or a filter's index.
        """
        def build() -> Statement:
            conditions = [EVENT_FILTERS[name]() for name in filters]
            conditions.append(Event.id < Slot("after") if newest_first
                              else Event.id > Slot("after"))
            query = _select(Event)
            for condition in conditions:
                query = query.where(condition)
            query = query.order_by(Event.id.desc() if newest_first else Event.id)
            return compile_query(self.database, query.limit(Slot("limit")), EVENT_COLUMNS,
                                 expect=(*filters, "after", "limit"))
        return self._cached(("event_page", filters, newest_first), build)

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
        walk is the faster whenever matches are dense, and both statements return
        exactly the rows, in the order, the id walk would.
        """
        if not any(name in TIME_FILTERS for name in filters):
            return None

        def build() -> tuple[Statement, Statement]:
            by_time = Event.alias("by_time")
            index = ("idx_events_batch_timestamp" if "batch_id" in filters
                     else "idx_events_timestamp")
            served = ("batch_id",) + TIME_FILTERS
            bound = (by_time.id < Slot("after") if newest_first
                     else by_time.id > Slot("after"))

            def where(query: Any, names: Iterable[str]) -> Any:
                for name in names:
                    query = query.where(EVENT_FILTERS[name](by_time))
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
        # rows, which is the walk this statement exists to avoid: name the index, in
        # the backend's words (the executor's index_hint; PostgreSQL has none).
        q = self.database.quote
        table = f"{q[0]}events{q[1]} AS {q[0]}by_time{q[1]}"
        assert statement.sql.count(table) == 1, statement.sql
        return replace(statement, sql=statement.sql.replace(
            table, table + self._index_hint(index)))

    def event_count(self, filters: tuple[str, ...]) -> Statement:
        """Return ``SELECT COUNT(*)`` of the events matching this combination of filters."""
        def build() -> Statement:
            query = Event.select(peewee.fn.COUNT(Event.id))
            for name in filters:
                query = query.where(EVENT_FILTERS[name]())
            return compile_query(self.database, query, expect=filters)
        return self._cached(("event_count", filters), build)

    def delete_events(self, n: int) -> Statement:
        """Return ``DELETE FROM events WHERE id IN (<n parameters>)``."""
        return self._in_list("delete_events", n, lambda slots: Event.delete().where(
            Event.id.in_(slots)))

    def insert_events(self, n: int) -> Statement:
        """Return a multi-row INSERT of ``n`` events (columns as ``insert_event``)."""
        width = len(_EVENT_INSERT_FIELDS)
        return self._in_list("insert_events", n, lambda slots: Event.insert_many(
            [slots[i * width:(i + 1) * width] for i in range(n)],
            fields=list(_EVENT_INSERT_FIELDS)), width=width)

    def insert_events_returning(self, n: int) -> Statement:
        """Return ``insert_events(n)`` with ``RETURNING id`` where the database has it
        (PostgreSQL), so that one statement tells every new row's id."""
        width = len(_EVENT_INSERT_FIELDS)
        returning = self.database.returning_clause

        def build(slots: list[Slot]) -> Any:
            query = Event.insert_many([slots[i * width:(i + 1) * width] for i in range(n)],
                                      fields=list(_EVENT_INSERT_FIELDS))
            return query.returning(Event.id) if returning else query
        return self._in_list("insert_events_returning", n, build, width=width)

    def _in_list(self, name: str, n: int, build: Callable[[list[Slot]], Any],
                 width: int = 1) -> Statement:
        def compile_list() -> Statement:
            slots = [Slot(f"p{i}") for i in range(n * width)]
            return compile_query(self.database, build(slots),
                                 expect=tuple(s.name for s in slots))
        return self._cached((name, n), compile_list)

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

