"""The old ``db.py`` API, unchanged, over one default :class:`~sprint_runner.Store`.

``from sprint_runner import db`` works for code written against the old module:
same function names, parameter names and positional order. Importing this module
touches nothing; the default store opens on ``init_db()`` or on the first call.
"""
from __future__ import annotations

import os
import threading
from collections.abc import Iterable, Iterator, Mapping
from contextlib import AbstractContextManager
from typing import Any, overload

from .clock import Clock
from .events import create_event_signature
from .store import Row, Store

DB_PATH: str = os.environ.get("SPRINT_RUNNER_DB") or "sprint-runner.db"
"""The default database: ``$SPRINT_RUNNER_DB`` (a path or URL) or ``sprint-runner.db``
in the current directory. ``init_db()`` reads it at call time, so patching works."""

TIME_UNIT: str = os.environ.get("SPRINT_RUNNER_TIME_UNIT") or "s"
"""The unit a new database takes: ``"s"`` (Unix seconds) or ``"ms"`` (milliseconds), from
``$SPRINT_RUNNER_TIME_UNIT``. ``init_db()`` reads it at call time, like ``DB_PATH``."""

_default: Store | None = None
_lock = threading.Lock()


def init_db(path: str | os.PathLike[str] | None = None, *, clock: Clock | None = None,
            time_unit: str | None = None) -> None:
    """Open (creating or upgrading) the database and make it the default store.

    ``path`` is a file path or URL; None means ``DB_PATH``. Calling it again with
    another path switches every thread to that database at its next call. A new
    database records ``time_unit``, else ``TIME_UNIT``; an existing one keeps its own
    (only an explicit ``time_unit`` that disagrees is refused).
    """
    global _default
    store = Store(DB_PATH if path is None else path, clock, time_unit=time_unit,
                  default_time_unit=TIME_UNIT)
    with _lock:
        previous, _default = _default, store
    if previous is not None and previous is not store:
        # Other threads' connections to the previous database close when its
        # store is garbage-collected; each thread's next call uses the new one.
        previous.close()


def get_store() -> Store:
    """Return the default store, opening ``DB_PATH`` on first use."""
    global _default
    store = _default
    if store is None:
        with _lock:
            if _default is None:
                _default = Store(DB_PATH, default_time_unit=TIME_UNIT)
            store = _default
    return store


def get_connection() -> AbstractContextManager[Any]:
    """Context manager: this thread's DB-API connection inside a transaction (rows by name)."""
    return get_store().get_connection()


def transaction() -> AbstractContextManager[None]:
    """Context manager grouping calls into one atomic unit; nested blocks are savepoints."""
    return get_store().transaction()


def schema_version() -> int:
    """Return the default database's schema version."""
    return get_store().schema_version()


def migrate() -> list[int]:
    """Apply pending migrations to the default database; return the versions applied."""
    return get_store().migrate()


# -- batches ------------------------------------------------------------------------------

def create_batch(max_cycles: int) -> int:
    """Start a batch; return its id."""
    return get_store().create_batch(max_cycles)


def update_batch(batch_id: int, **fields: Any) -> int:
    """Update a batch; return the rows changed."""
    return get_store().update_batch(batch_id, **fields)


def get_batch(batch_id: int) -> Row | None:
    """Return a batch, or None."""
    return get_store().get_batch(batch_id)


def get_active_batch() -> Row | None:
    """Return the most recent running batch, or None."""
    return get_store().get_active_batch()


# -- stories ------------------------------------------------------------------------------

def create_story(batch_id: int, story_key: str, epic_id: str) -> int:
    """Start a story; return its id."""
    return get_store().create_story(batch_id, story_key, epic_id)


def update_story(story_id: int, **fields: Any) -> int:
    """Update a story; return the rows changed."""
    return get_store().update_story(story_id, **fields)


def get_story(story_id: int) -> Row | None:
    """Return a story, or None."""
    return get_store().get_story(story_id)


def get_story_by_key(story_key: str, batch_id: int) -> Row | None:
    """Return the batch's most recent story with this key, or None."""
    return get_store().get_story_by_key(story_key, batch_id)


def get_stories_by_batch(batch_id: int) -> list[Row]:
    """Return the batch's stories by id."""
    return get_store().get_stories_by_batch(batch_id)


# -- commands -----------------------------------------------------------------------------

def create_command(story_id: int, command: str, task_id: str) -> int:
    """Start a command; return its id."""
    return get_store().create_command(story_id, command, task_id)


def update_command(command_id: int, **fields: Any) -> int:
    """Update a command; return the rows changed."""
    return get_store().update_command(command_id, **fields)


def get_commands_by_story(story_id: int) -> list[Row]:
    """Return the story's commands by id."""
    return get_store().get_commands_by_story(story_id)


# -- events -------------------------------------------------------------------------------

@overload
def create_event(batch_id: int, story_id: int | None, command_id: int | None, epic_id: str,
                 story_key: str, command: str, task_id: str, status: str,
                 message: str | None, *, event_type: str = "",
                 payload: Mapping[str, Any] | None = None) -> int: ...


@overload
def create_event(batch_id: int, story_id: int | None, command_id: int | None, event_type: str,
                 epic_id: str, story_key: str, command: str, task_id: str, status: str,
                 message: str | None, payload: Mapping[str, Any] | None = None) -> int: ...


def create_event(*args: Any, **kwargs: Any) -> int:
    """Log an event; return its id (the old module's arguments, or the later module's
    with ``event_type`` fourth)."""
    return get_store().create_event(*args, **kwargs)


setattr(create_event, "__signature__", create_event_signature(method=False))


def get_events(limit: int = 100, offset: int = 0) -> list[Row]:
    """Return events newest first (timestamp, then id)."""
    return get_store().get_events(limit, offset)


def get_events_by_batch(batch_id: int) -> list[Row]:
    """Return the batch's events oldest first (timestamp, then id)."""
    return get_store().get_events_by_batch(batch_id)


def create_events(events: Iterable[Mapping[str, Any]]) -> int:
    """Insert many events in one transaction; return how many."""
    return get_store().create_events(events)


def page_events(*, limit: int = 100, cursor: str | None = None, batch_id: int | None = None,
                story_key: str | None = None, command: str | None = None,
                status: str | None = None, since: int | None = None, until: int | None = None,
                newest_first: bool = True, event_type: str | None = None) -> dict[str, Any]:
    """Return one keyset page of events and the next page's cursor."""
    return get_store().page_events(limit=limit, cursor=cursor, batch_id=batch_id,
                                   story_key=story_key, command=command, status=status,
                                   since=since, until=until, newest_first=newest_first,
                                   event_type=event_type)


def tail_events(after_id: int = 0, *, batch_id: int | None = None,
                limit: int = 1000) -> list[Row]:
    """Return events after ``after_id``, oldest first."""
    return get_store().tail_events(after_id, batch_id=batch_id, limit=limit)


def iter_events(*, batch_id: int | None = None, story_key: str | None = None,
                command: str | None = None, status: str | None = None,
                since: int | None = None, until: int | None = None,
                newest_first: bool = False, event_type: str | None = None) -> Iterator[Row]:
    """Stream matching events in bounded memory."""
    return get_store().iter_events(batch_id=batch_id, story_key=story_key, command=command,
                                   status=status, since=since, until=until,
                                   newest_first=newest_first, event_type=event_type)


def prune_events(*, older_than: int, dry_run: bool = False) -> int:
    """Delete old events of batches that are not running; return how many."""
    return get_store().prune_events(older_than=older_than, dry_run=dry_run)


def prune_batches(*, older_than: int, dry_run: bool = False) -> dict[str, int]:
    """Delete old finished batches with everything in them; return counts per table."""
    return get_store().prune_batches(older_than=older_than, dry_run=dry_run)


# -- background tasks ---------------------------------------------------------------------

def create_background_task(batch_id: int, story_key: str, task_type: str) -> int:
    """Record a spawned background task; return its id."""
    return get_store().create_background_task(batch_id, story_key, task_type)


def update_background_task(task_id: int, **fields: Any) -> int:
    """Update a background task; return the rows changed."""
    return get_store().update_background_task(task_id, **fields)


def get_pending_background_tasks(batch_id: int) -> list[Row]:
    """Return the batch's running background tasks by spawned_at, then id."""
    return get_store().get_pending_background_tasks(batch_id)


# -- helpers and recovery ------------------------------------------------------------------

def get_current_batch_status() -> Row | None:
    """Return the running batch row, or None."""
    return get_store().get_current_batch_status()


def count_completed_cycles(batch_id: int) -> int:
    """Return the batch's completed cycles (0 for an unknown batch)."""
    return get_store().count_completed_cycles(batch_id)


def check_story_blocked(story_id: int) -> bool:
    """Return True when the story's three most recent commands all failed."""
    return get_store().check_story_blocked(story_id)


def heartbeat(batch_id: int) -> int:
    """Mark the batch alive now; return rows changed (0 for an unknown batch)."""
    return get_store().heartbeat(batch_id)


def recover_stale_batches(stale_after: int) -> list[int]:
    """Stop running batches whose heartbeat is older than ``stale_after`` seconds."""
    return get_store().recover_stale_batches(stale_after)


def backup(dest: str | os.PathLike[str]) -> None:
    """Write a consistent copy of the default database to the new SQLite file ``dest``."""
    get_store().backup(dest)


def list_batches(limit: int = 20, offset: int = 0) -> list[Row]:
    """Return the most recent batches, newest first, each with its ``story_count``."""
    return get_store().list_batches(limit, offset)


def count_batches() -> int:
    """Return how many batches the database holds."""
    return get_store().count_batches()


def batch_summary(batch_id: int) -> Row | None:
    """Return the batch with its stories by status, running commands, pending background
    tasks and last events (as ``Store.batch_summary``), or None."""
    return get_store().batch_summary(batch_id)


def get_commands_by_batch(batch_id: int) -> list[Row]:
    """Return every command of the batch's stories, by id (one query)."""
    return get_store().get_commands_by_batch(batch_id)
