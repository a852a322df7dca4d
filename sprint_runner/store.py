"""The store: every operation on the sprint state, taking checked arguments and
returning plain dicts.

One facade over three helpers: :mod:`~sprint_runner.queries` holds the statements
(compiled once per store from the models), the backend's
:class:`~sprint_runner.executor.Executor` runs them and hands back rows as dicts,
and :mod:`~sprint_runner.events` holds the stateless rules of the event log.
"""
from __future__ import annotations

import functools
import logging
import os
import socket
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, overload

import peewee

from . import files, migrations
from .clock import PER_SECOND, Clock, check_time_unit, clock_for
from .connect import DEFAULT_BUSY_TIMEOUT, DEFAULT_POOL_SIZE, open_database
from .errors import SchemaError
from .events import (
    CHUNK,
    EVENT_FIELDS,
    MAX_PAGE,
    TIME_RANGE_PAGES,
    create_event_row,
    create_event_signature,
    decode_cursor,
    encode_cursor,
    event_filters,
    event_from_mapping,
    split,
)
from .executor import DEFAULT_LOCK_RETRIES, Row, executor_for
from .models import (
    COMMAND_STATUSES,
    KEY_LENGTH,
    MODELS,
    BackgroundTask,
    BaseModel,
    Batch,
    Command,
    Story,
)
from .queries import (
    BATCH_COLUMNS,
    COMMAND_COLUMNS,
    EVENT_COLUMNS,
    STORY_COLUMNS,
    TASK_COLUMNS,
    Statements,
)
from .sqlite_executor import sqlite_storage_info
from .statements import columns_of
from .tail import DEFAULT_GAP_TIMEOUT, Tail, check_gap_timeout
from .validation import (
    INT64_MAX,
    INT64_MIN,
    check_bool,
    check_choice,
    check_int,
    check_text,
    check_update,
)

__all__ = ["BATCH_COLUMNS", "COMMAND_COLUMNS", "EVENT_COLUMNS", "EVENT_FIELDS", "MAX_PAGE",
           "STORY_COLUMNS", "TASK_COLUMNS", "PreparedWrites", "Row", "Store",
           "sqlite_storage_info"]

logger = logging.getLogger("sprint_runner")

_UNIT_NAMES = {"s": "seconds", "ms": "milliseconds"}

_IMMUTABLE = {
    Batch: frozenset({"id"}),
    Story: frozenset({"id"}),
    Command: frozenset({"id"}),
    BackgroundTask: frozenset({"id", "batch_id", "story_key"}),
}
_UPDATES: dict[str, tuple[type[BaseModel], str]] = {
    "update_batch": (Batch, "batch_id"), "update_story": (Story, "story_id"),
    "update_command": (Command, "command_id"),
    "update_background_task": (BackgroundTask, "task_id")}
"""Each ``update_*`` method's model and the name of its id parameter."""
_BLOCKED_AFTER = 3
_ALL_FAILED = ["failed"] * _BLOCKED_AFTER  # what column() returns for a blocked story


def _owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _last_seen(batch: Mapping[str, Any]) -> int:
    """Return when the batch was last known alive: its heartbeat, else its start."""
    seen = batch["heartbeat_at"] if batch["heartbeat_at"] is not None else batch["started_at"]
    return int(seen)


@dataclass(init=False, repr=False, eq=False)
class Store:
    """The sprint-runner state store over one database.

    ``Store(target)`` takes a file path, a URL (``sqlite:///``, ``postgresql://``,
    ``mysql://``) or a peewee ``Database``, creates or upgrades its schema, and
    offers every operation as a method returning plain dicts. Every timestamp is a
    whole number in the database's unit, ``time_unit``: Unix seconds (``"s"``) or
    milliseconds (``"ms"``), recorded by the database. A new database takes
    ``time_unit`` if given, else ``default_time_unit``; an existing one keeps its own,
    and an explicit ``time_unit`` that disagrees raises :class:`SchemaError`. ``clock``
    returns the current time in that unit (default: :func:`system_clock` or
    :func:`system_clock_ms`, read at call time). ``gap_timeout`` bounds, in seconds,
    how long ``tail_events`` waits at an id that may never commit (see there). A SQLite
    file named by path or URL that holds another program's tables (none of ours) is
    refused with :class:`SchemaError` unless ``adopt_foreign``. With ``read_only``, the
    database itself refuses every write (SQLite ``mode=ro``, a read-only session on the
    servers): nothing is created or migrated, a missing file is ``FileNotFoundError``
    and one that needs migrations is :class:`SchemaError`. Safe to
    share between threads: SQLite gets one connection per thread, server backends a
    bounded pool.
    """

    database: peewee.Database
    clock: Clock
    time_unit: str
    read_only: bool

    def __init__(self, database: str | os.PathLike[str] | peewee.Database,
                 clock: Clock | None = None, *, busy_timeout: float = DEFAULT_BUSY_TIMEOUT,
                 synchronous: str = "NORMAL", pool_size: int = DEFAULT_POOL_SIZE,
                 lock_retries: int = DEFAULT_LOCK_RETRIES, migrate: bool = True,
                 time_unit: str | None = None, default_time_unit: str = "s",
                 gap_timeout: float = DEFAULT_GAP_TIMEOUT, adopt_foreign: bool = False,
                 read_only: bool = False) -> None:
        gap_timeout = check_gap_timeout(gap_timeout)
        if clock is not None and not callable(clock):
            raise TypeError(f"clock must be a callable returning the time, not {clock!r}")
        requested = None if time_unit is None else check_time_unit("time_unit", time_unit)
        self._new_time_unit = requested or check_time_unit("default_time_unit",
                                                           default_time_unit)
        db = open_database(database, busy_timeout=busy_timeout, synchronous=synchronous,
                           pool_size=pool_size, read_only=read_only)
        self.read_only = read_only
        look = None
        if isinstance(db, peewee.SqliteDatabase):
            # Before the first connection applies any pragma: a refused file stays untouched.
            # A file named by path or URL that is another program's database is refused
            # unless adopted on purpose; a Database passed in is the caller's own choice.
            look = migrations.inspect_sqlite_file(
                str(db.database), busy_timeout,
                adopt_foreign=adopt_foreign or isinstance(database, peewee.Database))
        self.database = db
        self._executor = executor_for(db, busy_timeout=busy_timeout, lock_retries=lock_retries)
        self._statements = Statements(db, self._executor.index_hint)
        self._tail = Tail(self._executor, self._statements, gap_timeout)
        if look is None:
            look = migrations.read_state(db, self.location)
        self._use_time_unit(look.time_unit, requested, clock)
        if read_only:
            migrate = False
            pending = self.pending_migrations()
            if pending:
                raise SchemaError(
                    f"{self.location} needs {len(pending)} schema migration(s) "
                    f"({', '.join(str(v) for v, _ in pending)}); a read-only store never "
                    "migrates: run `sprint-runner-db migrate` first")
        # The migration versions this store applied when it opened (for messages).
        self.applied_migrations: list[int] = self.migrate() if migrate else []
        if migrate:
            # Another process may have created the database first, in its unit.
            self._use_time_unit(migrations.read_state(db, self.location).time_unit,
                                requested, clock)

    def _use_time_unit(self, found: str | None, requested: str | None,
                       clock: Clock | None) -> None:
        if requested is not None and found is not None and found != requested:
            raise SchemaError(
                f"{self.location} records its timestamps in {_UNIT_NAMES[found]} ({found!r}), "
                f"but time_unit={requested!r} ({_UNIT_NAMES[requested]}) was asked for; "
                "nothing was written")
        self.time_unit = found or self._new_time_unit
        self._per_second = PER_SECOND[self.time_unit]
        self.clock = clock if clock is not None else clock_for(self.time_unit)

    @property
    def location(self) -> str:
        """Where the store keeps its data (a path, or a URL with the password masked)."""
        return self._executor.location

    @property
    def backend(self) -> str:
        """``"sqlite"``, ``"postgresql"`` or ``"mysql"``."""
        return self._executor.backend

    @property
    def prepared(self) -> PreparedWrites:
        """The checks of some writes apart from the writes, for callers that check
        arguments in one place and write later in batches (:mod:`sprint_runner.aio`)."""
        return PreparedWrites(self)

    def __repr__(self) -> str:
        return f"Store({self.location!r}, clock={getattr(self.clock, '__name__', self.clock)!r})"

    def close(self) -> None:
        """Close the calling thread's connection (and a server pool's idle ones)."""
        self._executor.close()

    def _now(self) -> int:
        return check_int("clock()", self.clock(), minimum=0)

    # -- schema ------------------------------------------------------------------------

    def migrate(self) -> list[int]:
        """Apply pending schema migrations; return the versions applied (may be empty)."""
        if self.read_only:
            raise SchemaError(f"{self.location} is open read-only: a read-only store never "
                              "migrates")
        return migrations.migrate(self._executor, self._now, self._new_time_unit)

    def schema_version(self) -> int:
        """Return the database's schema version (0 for an unversioned legacy file)."""
        return migrations.schema_version(self._executor)

    def pending_migrations(self) -> list[tuple[int, str]]:
        """Return the (version, name) of every migration the database still needs."""
        state = migrations.read_state(self.database, self.location)
        return [(m.version, m.name) for m in migrations.pending_migrations(state)]

    # -- transactions ------------------------------------------------------------------

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """Group calls into one atomic unit; nested blocks are savepoints.

        An exception leaving the outermost block rolls back everything in it; an
        inner block whose exception the caller catches rolls back only that block.
        The outermost block takes the write lock when it starts (``BEGIN IMMEDIATE``
        on SQLite), so read-modify-write blocks never interleave.
        """
        with self._executor.transaction():
            yield

    @contextmanager
    def get_connection(self) -> Iterator[Any]:
        """Yield this thread's DB-API connection inside a transaction, for ad-hoc SQL.

        Rows from it are addressable by column name (``row["name"]``) for the block
        only; it commits on success and rolls back on an exception.
        """
        executor = self._executor
        with executor.transaction(), executor.session() as conn, \
                executor.named_rows(conn) as named:
            yield named

    # -- batches ----------------------------------------------------------------------

    def create_batch(self, max_cycles: int) -> int:
        """Start a batch (status running, started now, owned by this host:pid); return its id."""
        check_int("max_cycles", max_cycles, minimum=1)
        now = self._now()
        return self._executor.insert(self._statements.insert_batch,
                                     (now, max_cycles, _owner(), now))

    def update_batch(self, batch_id: int, **fields: Any) -> int:
        """Update a batch's fields; return the rows changed (0 if it does not exist)."""
        return self._update(Batch, "batch_id", batch_id, fields)

    def get_batch(self, batch_id: int) -> Row | None:
        """Return the batch as a dict, or None."""
        check_int("batch_id", batch_id)
        return self._executor.one(self._statements.batch, (batch_id,))

    def get_active_batch(self) -> Row | None:
        """Return the most recent running batch, or None."""
        return self._executor.one(self._statements.active_batch)

    def get_current_batch_status(self) -> Row | None:
        """Return the running batch row (with max_cycles and cycles_completed), or None."""
        return self.get_active_batch()

    def count_completed_cycles(self, batch_id: int) -> int:
        """Return the batch's completed cycles (0 for an unknown batch)."""
        check_int("batch_id", batch_id)
        cycles = self._executor.column(self._statements.cycles, (batch_id,))
        return int(cycles[0] or 0) if cycles else 0

    def heartbeat(self, batch_id: int) -> int:
        """Set the batch's heartbeat to now; return rows changed (0 for an unknown batch)."""
        check_int("batch_id", batch_id)
        return self._executor.rowcount(self._statements.update(Batch, ("heartbeat_at",)),
                                       (self._now(), batch_id))

    def list_batches(self, limit: int = 20, offset: int = 0) -> list[Row]:
        """Return the most recent batches, newest first, each with its ``story_count``."""
        check_int("limit", limit, minimum=1)
        check_int("offset", offset, minimum=0)
        if limit > MAX_PAGE:
            raise ValueError(f"limit must be <= {MAX_PAGE}, got {limit}")
        return self._executor.all(self._statements.recent_batches, (INT64_MAX, limit, offset))

    def count_batches(self) -> int:
        """Return how many batches the database holds."""
        return self._executor.scalar(self._statements.count_batches)

    @staticmethod
    def last_seen(batch: Mapping[str, Any]) -> int:
        """Return when a batch (a dict from this store) was last known alive: its
        heartbeat, else its start, in Unix seconds."""
        return _last_seen(batch)

    def batch_summary(self, batch_id: int, *, events: int = 10) -> Row | None:
        """Return a batch with its stories by status, running commands, pending
        background tasks and last ``events`` events (newest first), or None."""
        check_int("events", events, minimum=0)
        with self._executor.snapshot():
            batch = self.get_batch(batch_id)
            if batch is None:
                return None
            by_status: dict[str, int] = {}
            for story in self.get_stories_by_batch(batch_id):
                by_status[story["status"]] = by_status.get(story["status"], 0) + 1
            running = batch["status"] == "running"
            return {
                "batch": batch,
                # Seconds whatever the unit: an age for people, not a stored value.
                "heartbeat_age": (self._now() - _last_seen(batch)) // self._per_second
                if running else None,
                "stories_by_status": by_status,
                "running_commands": self.get_commands_by_batch(batch_id, "running"),
                "pending_background_tasks": self.get_pending_background_tasks(batch_id),
                "last_events": self.page_events(limit=events, batch_id=batch_id)["events"]
                if events else [],
            }

    # -- stories ------------------------------------------------------------------------

    def create_story(self, batch_id: int, story_key: str, epic_id: str) -> int:
        """Start a story in a batch (status in-progress, started now); return its id."""
        check_int("batch_id", batch_id)
        check_text("story_key", story_key, max_length=KEY_LENGTH)
        check_text("epic_id", epic_id, max_length=KEY_LENGTH)
        return self._executor.insert(self._statements.insert_story,
                                     (batch_id, story_key, epic_id, self._now()))

    def update_story(self, story_id: int, **fields: Any) -> int:
        """Update a story's fields; return the rows changed (0 if it does not exist)."""
        return self._update(Story, "story_id", story_id, fields)

    def get_story(self, story_id: int) -> Row | None:
        """Return the story as a dict, or None."""
        check_int("story_id", story_id)
        return self._executor.one(self._statements.story, (story_id,))

    def get_story_by_key(self, story_key: str, batch_id: int) -> Row | None:
        """Return the batch's most recent story (highest id) with this key, or None."""
        check_text("story_key", story_key, max_length=KEY_LENGTH)
        check_int("batch_id", batch_id)
        return self._executor.one(self._statements.story_by_key, (batch_id, story_key))

    def get_stories_by_batch(self, batch_id: int) -> list[Row]:
        """Return the batch's stories, ordered by id."""
        check_int("batch_id", batch_id)
        return self._executor.all(self._statements.stories_by_batch, (batch_id,))

    def check_story_blocked(self, story_id: int) -> bool:
        """Return True when the story's three most recent commands (by id) all failed."""
        check_int("story_id", story_id)
        statuses = self._executor.column(self._statements.last_command_statuses,
                                         (story_id, _BLOCKED_AFTER))
        return statuses == _ALL_FAILED

    # -- commands -------------------------------------------------------------------------

    def create_command(self, story_id: int, command: str, task_id: str) -> int:
        """Start a command for a story (status running, started now); return its id."""
        check_int("story_id", story_id)
        check_text("command", command, max_length=KEY_LENGTH)
        check_text("task_id", task_id, max_length=KEY_LENGTH)
        return self._executor.insert(self._statements.insert_command,
                                     (story_id, command, task_id, self._now()))

    def update_command(self, command_id: int, **fields: Any) -> int:
        """Update a command's fields; return the rows changed (0 if it does not exist)."""
        return self._update(Command, "command_id", command_id, fields)

    def get_commands_by_story(self, story_id: int) -> list[Row]:
        """Return the story's commands, ordered by id."""
        check_int("story_id", story_id)
        return self._executor.all(self._statements.commands_by_story, (story_id,))

    def get_commands_by_batch(self, batch_id: int, status: str | None = None) -> list[Row]:
        """Return the commands of the batch's stories (only ``status`` ones if given), by id."""
        check_int("batch_id", batch_id)
        if status is None:
            return self._executor.all(self._statements.commands_by_batch, (batch_id,))
        check_choice("status", status, COMMAND_STATUSES)
        return self._executor.all(self._statements.commands_by_batch_status, (batch_id, status))

    # -- events ---------------------------------------------------------------------------

    @overload
    def create_event(self, batch_id: int, story_id: int | None, command_id: int | None,
                     epic_id: str, story_key: str, command: str, task_id: str, status: str,
                     message: str | None, *, event_type: str = "",
                     payload: Mapping[str, Any] | None = None) -> int: ...

    @overload
    def create_event(self, batch_id: int, story_id: int | None, command_id: int | None,
                     event_type: str, epic_id: str, story_key: str, command: str, task_id: str,
                     status: str, message: str | None,
                     payload: Mapping[str, Any] | None = None) -> int: ...

    def create_event(self, *args: Any, **kwargs: Any) -> int:
        """Log an event (timestamp now); return its id.

        Takes the old module's arguments, with ``event_type`` (default ``""``) and
        ``payload`` (a JSON-serialisable mapping, stored as ``payload_json``) by
        keyword, or the later module's: ``event_type`` fourth and ``payload``
        eleventh (see :func:`~sprint_runner.events.create_event_arguments`).
        """
        row = create_event_row(args, kwargs, self._now)
        return self._executor.insert(self._statements.insert_event, row)

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
        with self._executor.transaction():
            now = self._now()
            chunk: list[tuple[Any, ...]] = []
            for index, event in enumerate(events):
                chunk.append(event_from_mapping(index, event, now))
                if len(chunk) == CHUNK:
                    self._insert_events(chunk)
                    count += len(chunk)
                    chunk = []
            if chunk:
                self._insert_events(chunk)
                count += len(chunk)
        return count

    def _insert_events(self, rows: list[tuple[Any, ...]]) -> None:
        if self._executor.prefers_executemany(len(rows)):
            self._executor.many(self._statements.insert_event, rows)
            return
        # Multi-row INSERTs: on a server a round trip per row would dominate, and on
        # SQLite one statement per full chunk beats executemany by about a fifth.
        start = 0
        for size in split(len(rows)):
            self._executor.rowcount(self._statements.insert_events(size),
                                    [v for row in rows[start:start + size] for v in row])
            start += size

    def get_events(self, limit: int = 100, offset: int = 0) -> list[Row]:
        """Return events newest first (timestamp, then id, descending)."""
        check_int("limit", limit, minimum=0)
        check_int("offset", offset, minimum=0)
        if limit > MAX_PAGE:
            raise ValueError(f"limit must be <= {MAX_PAGE}, got {limit}; "
                             "page_events or iter_events read more")
        return self._executor.all(self._statements.events_newest, (limit, offset))

    def get_events_by_batch(self, batch_id: int) -> list[Row]:
        """Return all the batch's events oldest first (timestamp, then id, ascending).

        Unbounded by contract (the old module's); ``iter_events(batch_id=...)``
        streams a long batch in bounded memory.
        """
        check_int("batch_id", batch_id)
        return self._executor.all(self._statements.events_by_batch, (batch_id,))

    def page_events(self, *, limit: int = 100, cursor: str | None = None,
                    batch_id: int | None = None, story_key: str | None = None,
                    command: str | None = None, status: str | None = None,
                    since: int | None = None, until: int | None = None,
                    newest_first: bool = True, event_type: str | None = None) -> dict[str, Any]:
        """Return one page of events by id and the opaque cursor of the next page.

        ``{"events": [...], "next_cursor": str | None}``; ``newest_first`` orders by id
        descending. Filters combine with AND; ``since`` is inclusive and ``until``
        exclusive (Unix seconds). Pages never skip or repeat a row, even while new
        events arrive; ``next_cursor`` is None on the last page.
        """
        check_int("limit", limit, minimum=1)
        if limit > MAX_PAGE:
            raise ValueError(f"limit must be <= {MAX_PAGE}, got {limit}")
        filters = event_filters(batch_id, story_key, command, status, since, until, event_type)
        check_bool("newest_first", newest_first)
        after = None if cursor is None else decode_cursor(cursor, newest_first)
        events = self._event_chunk(filters, newest_first, after, limit + 1)
        more = len(events) > limit
        del events[limit:]
        return {"events": events,
                "next_cursor": encode_cursor(events[-1]["id"], newest_first) if more else None}

    def tail_events(self, after_id: int = 0, *, batch_id: int | None = None,
                    limit: int = 1000) -> list[Row]:
        """Return events with id greater than ``after_id``, oldest first (for polling).

        Fed the last id it returned, repeated calls return every committed event exactly
        once, in id order, even when writers commit out of id order (servers hand out
        ids before commit): the tail stops below an id that is missing while the
        transaction that may still commit it is open, or, for an id that never commits
        (a rolled-back insert), for at most the store's ``gap_timeout`` seconds from
        when the gap was first seen.
        """
        check_int("after_id", after_id)
        check_int("limit", limit, minimum=1)
        if limit > MAX_PAGE:
            raise ValueError(f"limit must be <= {MAX_PAGE}, got {limit}")
        filters = event_filters(batch_id, None, None, None, None, None)

        def read() -> list[Row]:
            return self._event_chunk(filters, False, after_id, limit)

        return self._tail.settle(read(), after_id, read)

    def events_per_minute(self, batch_id: int) -> list[tuple[int, int]]:
        """Return ``(minute_start, count)`` for each minute holding events of the batch,
        oldest first (``minute_start`` in the store's unit, a multiple of one minute)."""
        check_int("batch_id", batch_id)
        rows = self._executor.all(self._statements.events_per_minute,
                                  (60 * self._per_second, batch_id))
        return [(int(r["minute"]), int(r["events"])) for r in rows]

    def count_events(self, *, batch_id: int | None = None, story_key: str | None = None,
                     command: str | None = None, status: str | None = None,
                     since: int | None = None, until: int | None = None,
                     event_type: str | None = None) -> int:
        """Return how many events match the filters (as ``page_events`` takes them)."""
        filters = event_filters(batch_id, story_key, command, status, since, until, event_type)
        statement = self._statements.event_count(tuple(filters))
        return self._executor.scalar(statement, tuple(filters.values()))

    def iter_events(self, *, batch_id: int | None = None, story_key: str | None = None,
                    command: str | None = None, status: str | None = None,
                    since: int | None = None, until: int | None = None,
                    newest_first: bool = False, event_type: str | None = None,
                    chunk_size: int = CHUNK) -> Iterator[Row]:
        """Stream every matching event (oldest first by default) in bounded memory.

        Reads chunks of ``chunk_size`` rows by keyset; no transaction stays open
        between chunks, so writers are never held up by a slow consumer.
        """
        filters = event_filters(batch_id, story_key, command, status, since, until, event_type)
        check_int("chunk_size", chunk_size, minimum=1)
        if chunk_size > MAX_PAGE:
            raise ValueError(f"chunk_size must be <= {MAX_PAGE}, got {chunk_size}")
        check_bool("newest_first", newest_first)
        return self._iter_events(filters, newest_first, chunk_size)

    def _iter_events(self, filters: dict[str, Any], newest_first: bool,
                     chunk_size: int) -> Iterator[Row]:
        after: int | None = None
        while True:
            events = self._event_chunk(filters, newest_first, after, chunk_size)
            yield from events
            if len(events) < chunk_size:
                return
            after = events[-1]["id"]

    def _event_chunk(self, filters: dict[str, Any], newest_first: bool, after: int | None,
                     limit: int) -> list[Row]:
        if after is None:
            after = INT64_MAX if newest_first else INT64_MIN
        names = tuple(filters)
        by_time = self._statements.event_time_page(names, newest_first)
        if by_time is not None:
            probe, page = by_time
            values = {**filters, "after": after, "limit": limit,
                      "cap": limit * TIME_RANGE_PAGES}
            # Each statement alone returns the exact page, so new rows landing
            # between the two cannot make it skip or repeat one.
            if self._executor.scalar(probe, probe.bind(values)) < values["cap"]:
                return self._executor.all(page, page.bind(values))
        statement = self._statements.event_page(names, newest_first)
        return self._executor.all(statement, (*filters.values(), after, limit))

    # -- background tasks ------------------------------------------------------------------

    def create_background_task(self, batch_id: int, story_key: str, task_type: str) -> int:
        """Record a spawned background task (status running, spawned now); return its id."""
        check_int("batch_id", batch_id)
        # "" when the later module joins an empty list of keys.
        check_text("story_key", story_key, max_length=KEY_LENGTH, allow_empty=True)
        check_text("task_type", task_type, max_length=KEY_LENGTH)
        return self._executor.insert(self._statements.insert_task,
                                     (batch_id, story_key, task_type, self._now()))

    def update_background_task(self, task_id: int, **fields: Any) -> int:
        """Update a background task's fields; return the rows changed (0 if none)."""
        return self._update(BackgroundTask, "task_id", task_id, fields)

    def get_pending_background_tasks(self, batch_id: int) -> list[Row]:
        """Return the batch's running background tasks, by spawned_at then id."""
        check_int("batch_id", batch_id)
        return self._executor.all(self._statements.pending_tasks, (batch_id,))

    def get_background_tasks_by_batch(self, batch_id: int) -> list[Row]:
        """Return all of the batch's background tasks, ordered by id."""
        check_int("batch_id", batch_id)
        return self._executor.all(self._statements.tasks_by_batch, (batch_id,))

    # -- crash recovery ----------------------------------------------------------------

    def find_stale_batches(self, stale_after: int) -> list[Row]:
        """Return the running batches ``recover_stale_batches`` would stop now."""
        check_int("stale_after", stale_after, minimum=0)
        return self._executor.all(self._statements.stale_batches,
                                  (self._now() - stale_after * self._per_second,))

    def recover_stale_batches(self, stale_after: int) -> list[int]:
        """Stop every running batch whose heartbeat (or start) is older than
        ``stale_after`` seconds; return their ids.

        In one transaction, each such batch becomes ``stopped`` with ``ended_at``
        now, its running commands and background tasks ``failed``, and one event
        records the recovery, naming the batch's owner and the heartbeat's age.
        """
        check_int("stale_after", stale_after, minimum=0)
        return self._executor.retrying(lambda: self._recover(stale_after))

    def _recover(self, stale_after: int) -> list[int]:
        executor, statements = self._executor, self._statements
        recovered = []
        with executor.transaction():
            now = self._now()
            cutoff = now - stale_after * self._per_second
            for batch in executor.all(statements.stale_batches, (cutoff,)):
                if not executor.rowcount(statements.stop_batch, (now, batch["id"])):
                    continue
                executor.rowcount(statements.fail_commands, (now, batch["id"]))
                executor.rowcount(statements.fail_tasks, (now, batch["id"]))
                message = (f"batch {batch['id']} recovered as stale: owner "
                           f"{batch['owner'] or 'unknown'}, last heartbeat "
                           f"{(now - _last_seen(batch)) // self._per_second}s ago "
                           f"(stale after {stale_after}s)")
                executor.insert(statements.insert_event, (
                    batch["id"], None, None, now, "system", "recovery", "recover-stale-batches",
                    "recovery", "stopped", message, "batch:end", None))
                logger.warning("%s", message)
                recovered.append(batch["id"])
        return recovered

    # -- retention ----------------------------------------------------------------------

    def prune_events(self, *, older_than: int, dry_run: bool = False) -> int:
        """Delete events older than ``older_than`` (Unix seconds) of batches that are
        not running; return how many (counted only, with ``dry_run``).

        Deletes in chunks of short transactions, so writers are never held up long.
        """
        check_int("older_than", older_than, minimum=0)
        check_bool("dry_run", dry_run)
        executor, statements = self._executor, self._statements
        if dry_run:
            return executor.scalar(statements.count_prunable_events, (older_than,))

        def chunk() -> int:
            with executor.transaction():
                ids = executor.column(statements.prunable_events, (older_than, CHUNK))
                self._delete_events(ids)
                return len(ids)
        total = 0
        while True:
            deleted = executor.retrying(chunk)
            total += deleted
            if deleted < CHUNK:
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
            executor, statements = self._executor, self._statements
            # The old events of the batches counted above are already in counts.
            with executor.snapshot():
                old = executor.scalar(statements.count_prunable_events, (older_than,))
                for batch_id in pruned:
                    old -= executor.scalar(statements.count_old_batch_events,
                                           (batch_id, older_than))
            counts["events"] += old
        else:
            counts["events"] += self.prune_events(older_than=older_than)
        return counts

    def _prune_batches(self, older_than: int, dry_run: bool) -> tuple[dict[str, int], list[int]]:
        counts = {m._meta.table_name: 0 for m in MODELS}
        batch_ids = self._prunable_batches(older_than)
        if dry_run:
            with self._executor.snapshot():
                for batch_id in batch_ids:
                    for table, statement in self._statements.count_batch_tree:
                        counts[table] += self._executor.scalar(
                            statement, statement.bind({"batch_id": batch_id}))
            return counts, batch_ids
        # Every pruned batch's own events go first, so that one pruned batch's events
        # that point into another pruned batch are gone before that batch is deleted.
        for batch_id in batch_ids:
            counts["events"] += self._delete_own_events(batch_id)
        for batch_id in batch_ids:
            deleted = self._executor.retrying(functools.partial(self._delete_batch, batch_id))
            for table, n in deleted.items():
                counts[table] += n
        if batch_ids:
            logger.info("pruned %d batches older than %d from %s", counts["batches"],
                        older_than, self.location)
        return counts, batch_ids

    def _prunable_batches(self, older_than: int) -> list[int]:
        """Finished batches ended before the cutoff, less those still referenced by
        events of batches that stay (repeated until no kept batch references one)."""
        executor, statements = self._executor, self._statements
        with executor.snapshot():
            candidates = executor.column(statements.prunable_batches, (older_than,))
            referenced_by = {
                batch_id: {b for _, statement in statements.referencing_batches
                           for b in executor.column(statement, statement.bind(
                               {"batch_id": batch_id}))}
                for batch_id in candidates}
        pruned = set(candidates)
        while True:
            kept = {b for b in pruned if not referenced_by[b] <= pruned}
            if not kept:
                return sorted(pruned)
            pruned -= kept

    def _delete_events(self, ids: list[int]) -> int:
        deleted, start = 0, 0
        for size in split(len(ids)):
            deleted += self._executor.rowcount(self._statements.delete_events(size),
                                               ids[start:start + size])
            start += size
        return deleted

    def _delete_own_events(self, batch_id: int) -> int:
        """Delete the batch's own events in short transactions; return how many."""
        executor, statements = self._executor, self._statements

        def chunk() -> int:
            with executor.transaction():
                return self._delete_events(
                    executor.column(statements.batch_event_ids, (batch_id, CHUNK)))
        total = 0
        while True:
            deleted = executor.retrying(chunk)
            total += deleted
            if deleted < CHUNK:
                return total

    def _delete_batch(self, batch_id: int) -> dict[str, int]:
        executor, statements = self._executor, self._statements
        ids = {"batch_id": batch_id}
        counts = {m._meta.table_name: 0 for m in MODELS}
        with executor.transaction():
            batch = executor.one(statements.batch, (batch_id,))
            if batch is None or batch["status"] == "running":
                return counts
            # An event of another batch written since the batch was chosen keeps it.
            if any(executor.scalar(s, s.bind(ids)) for _, s in statements.count_references):
                logger.warning("kept batch %d: events of another batch reference it", batch_id)
                return counts
            for table, statement in statements.delete_batch_tree:
                counts[table] += executor.rowcount(statement, statement.bind(ids))
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
        fill = self._executor.file_copier() or self._copy_to_sqlite
        files.create_file(target, fill, protect=files.files_of(self.database),
                          beside=files.SQLITE_REPLAYED, what="backup destination")
        logger.info("backed up %s to %s", self.location, target)

    def _copy_to_sqlite(self, path: str) -> None:
        copy = Store(path, self.clock, synchronous="OFF", time_unit=self.time_unit)
        try:
            with self._executor.snapshot(), copy._executor.transaction():
                for model in MODELS:
                    select = self._statements.select_all(model)
                    insert = copy._statements.insert_all(model)
                    after = 0
                    while True:
                        rows = self._executor.fetchall(select.sql, (after, CHUNK))
                        if not rows:
                            break
                        copy._executor.many(insert, rows)
                        after = rows[-1][0]
            copy.database.execute_sql("PRAGMA journal_mode = DELETE")
        finally:
            copy.close()

    def table_counts(self) -> dict[str, int]:
        """Return the number of rows in each table."""
        return {model._meta.table_name: self._executor.scalar(statement)
                for model, statement in self._statements.count_tables}

    def integrity_check(self) -> list[str]:
        """Return the problems the database reports about itself (empty when healthy).

        SQLite runs ``PRAGMA integrity_check`` and ``PRAGMA foreign_key_check``;
        servers enforce both themselves, so only the schema version is checked.
        """
        return self._executor.integrity_problems() + migrations.schema_problems(
            migrations.read_state(self.database, self.location))

    def storage_info(self) -> dict[str, Any]:
        """Return where the data lives and, for SQLite, the file and WAL sizes in bytes."""
        return self._executor.storage_info()

    # -- shared ------------------------------------------------------------------------

    def _update(self, model: type[BaseModel], id_name: str, row_id: object,
                fields: Mapping[str, Any]) -> int:
        check_int(id_name, row_id)
        values = check_update(model, fields, _IMMUTABLE[model])
        if not values:
            return 0
        # Table order: one cached statement per set of columns, whatever the kwargs order.
        columns = tuple(c for c in columns_of(model) if c in values)
        return self._executor.rowcount(self._statements.update(model, columns),
                                       tuple(values[c] for c in columns) + (row_id,))


def _unstamped() -> int:
    return 0  # PreparedWrites.insert_events sets the timestamp when it writes


class PreparedWrites:
    """``Store.prepared``: a write's checks now, the write itself later, many in one go.

    The surface :mod:`sprint_runner.aio` group-commits with (semi-public: kept as stable
    as ``Store``'s methods). ``event(...)`` checks ``create_event``'s arguments as it
    does and returns the row; ``insert_events(rows)`` writes such rows, stamped now, and
    returns their ids; ``check_update(method, row_id, fields)`` raises what that
    ``update_*`` method would before writing. The two checks need no store (static
    methods: ``PreparedWrites.event(...)`` works too).
    """

    __slots__ = ("_store",)

    def __init__(self, store: Store) -> None:
        self._store = store

    @staticmethod
    def event(*args: Any, **kwargs: Any) -> tuple[Any, ...]:
        """Check ``create_event``'s arguments as it does (the same errors) and return the
        row it would insert, writing nothing; its timestamp is set when
        :meth:`insert_events` writes it. The row is a plain tuple the caller must not
        change (a payload changed after this call is not read again)."""
        return create_event_row(args, kwargs, _unstamped)

    def insert_events(self, rows: Sequence[tuple[Any, ...]]) -> list[int]:
        """Insert rows from :meth:`event`, in order, all stamped with one reading of the
        clock; return their ids, in order (``create_event`` for many rows at once).

        Inside ``Store.transaction()`` the rows are part of it; outside, they are one
        transaction of their own. They go in as few INSERTs as the backend can tell the
        ids of (``Executor.insert_rows``): multi-row on SQLite and PostgreSQL, one per row
        on MariaDB/MySQL.
        """
        store = self._store
        executor, statements = store._executor, store._statements
        if not rows:
            return []
        if not store.database.in_transaction():
            with executor.transaction():
                return self.insert_events(rows)
        now = store._now()
        stamped = [(*row[:3], now, *row[4:]) for row in rows]
        return executor.insert_rows(statements.insert_event,
                                    statements.insert_events_returning, stamped)

    @staticmethod
    def check_update(method: str, row_id: object, fields: Mapping[str, Any]) -> None:
        """Raise what the ``update_*`` method named ``method`` raises for these arguments
        before it writes (a bad id, an unknown or immutable field, a bad value); write
        nothing."""
        model, id_name = _UPDATES[method]
        check_int(id_name, row_id)
        check_update(model, fields, _IMMUTABLE[model])


setattr(Store.create_event, "__signature__", create_event_signature(method=True))
