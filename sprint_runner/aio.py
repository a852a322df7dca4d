"""An asyncio face of :class:`~sprint_runner.store.Store` that never blocks the event loop.

``AsyncStore(target, **options)`` takes what ``Store`` takes, plus ``max_batch``,
``max_delay`` and ``readers``. Every public ``Store`` method is a coroutine of the
same name, parameters, results and errors, except ``close`` (``aclose``),
``transaction`` and ``get_connection`` (``run_in_transaction``, or ``.store`` from a
thread), the properties and the static ``last_seen``; ``iter_events`` is an async
iterator.

No database work runs on the loop. Reads run on a few daemon reader threads (each with
its own connection through ``Store``'s per-thread connections: SQLite WAL lets them
read while a write is in progress). Writes go to one daemon writer thread, in arrival
order. The single-row writes (:data:`GROUP_WRITES`) that queue up while the writer is
busy are committed together in one ``transaction()`` of at most ``max_batch`` writes;
each caller's ``await`` returns once the transaction holding its write has committed.
Their arguments are checked on the loop with ``Store``'s own checks before anything is
queued. A write that fails on its own (an ``IntegrityError`` for a missing parent) fails
only its caller: the group is run again with a savepoint around each write. An error of
the whole group (``LockTimeout``, ``ConnectionLost``, a full disk) is raised in every
caller of the group, and nothing of it is committed. A write the writer has taken is
committed even if its caller was cancelled; one cancelled before is dropped: never
twice. Everything else that writes (``create_events``, ``prune*``,
``recover_stale_batches``, ``backup``, ``migrate``, ``run_in_transaction``) runs on the
writer alone, in order with the groups.

This module is imported only by its users: ``import sprint_runner`` does not load it.
"""
from __future__ import annotations

import asyncio
import functools
import inspect
import itertools
import os
import queue
import threading
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Any, Concatenate, ParamSpec, TypeVar

import peewee

from . import db as _db
from .clock import Clock
from .events import CHUNK
from .models import KEY_LENGTH
from .store import PreparedWrites, Store
from .validation import check_int, check_text

__all__ = ["DEFAULT_MAX_BATCH", "DEFAULT_MAX_DELAY", "DEFAULT_READERS", "EXCLUDED",
           "GROUP_WRITES", "READS", "AsyncStore", "connect"]

P = ParamSpec("P")
T = TypeVar("T")

DEFAULT_MAX_BATCH = 500
DEFAULT_MAX_DELAY = 0.002
DEFAULT_READERS = 4
_WAIT_STEPS = 8
"""An idle writer waits for a group in steps of ``max_delay / _WAIT_STEPS``."""

GROUP_WRITES = ("create_event", "create_batch", "create_story", "create_command",
                "create_background_task", "update_batch", "update_story", "update_command",
                "update_background_task", "heartbeat")
"""The single-row writes committed in groups."""
READS = ("schema_version", "pending_migrations", "get_batch", "get_active_batch",
         "get_current_batch_status", "count_completed_cycles", "list_batches",
         "count_batches", "batch_summary", "get_story", "get_story_by_key",
         "get_stories_by_batch", "check_story_blocked", "get_commands_by_story",
         "get_commands_by_batch", "get_events", "get_events_by_batch", "page_events",
         "tail_events", "count_events", "events_per_minute", "get_pending_background_tasks",
         "get_background_tasks_by_batch", "find_stale_batches", "table_counts",
         "integrity_check", "storage_info")
"""The methods run on the reader threads. Any other public method of ``Store`` (a
method added later included) runs on the writer thread alone: slower, never wrong."""
EXCLUDED = ("close", "transaction", "get_connection", "last_seen", "iter_events")
"""Public methods of ``Store`` that are not generated coroutines (``iter_events`` is an
async iterator, written by hand; ``last_seen`` stays a plain static method)."""

# Errors of one write alone (its own arguments or rows), not of the group's transaction.
_OWN_ERRORS = (peewee.IntegrityError, peewee.DataError, ValueError, TypeError)
_prepare_event = PreparedWrites.event
_check_update = PreparedWrites.check_update


class _Retry(Exception):
    """Raised inside a group's transaction to roll it back and run it with savepoints."""


class _Job:
    """One call for a worker thread: ``fn()``, its future and the future's loop."""

    __slots__ = ("fn", "future", "loop")

    def __init__(self, fn: Callable[[], Any], future: asyncio.Future[Any],
                 loop: asyncio.AbstractEventLoop) -> None:
        self.fn, self.future, self.loop = fn, future, loop


class _GroupJob(_Job):
    """A single-row write that may share a transaction with others."""

    __slots__ = ()


class _EventJob(_GroupJob):
    """A ``create_event`` as its checked row (the timestamp is set when it is written)."""

    __slots__ = ("row",)

    def __init__(self, row: tuple[Any, ...], future: asyncio.Future[Any],
                 loop: asyncio.AbstractEventLoop) -> None:
        self.future, self.loop, self.row = future, loop, row


_STOP = object()
_MARK = object()
"""Queued by a loop once it has run the callers a group's commit woke (see _gather)."""

_Outcome = tuple[asyncio.Future[Any], bool, Any]


def _settle(outcomes: list[_Outcome], loop: asyncio.AbstractEventLoop,
            mark: Callable[[], None] | None) -> None:
    """On the loop: resolve futures (``ok`` -> result, else exception), skipping
    those already done (a cancelled caller); then, if ``mark``, schedule it behind the
    callers just woken (it runs once each has taken its next step)."""
    for future, ok, value in outcomes:
        if future.done():
            continue
        if ok:
            future.set_result(value)
        else:
            future.set_exception(value)
    if mark is not None:
        loop.call_soon(mark)


def _post(outcomes: list[_Outcome], loop: asyncio.AbstractEventLoop,
          mark: Callable[[], None] | None = None) -> None:
    """From a worker thread: hand ``outcomes`` to their loop (one wake-up for all)."""
    try:
        loop.call_soon_threadsafe(_settle, outcomes, loop, mark)
    except RuntimeError:
        pass  # the loop is closed: nobody is waiting any more


def _post_grouped(outcomes: list[tuple[_Job, bool, Any]], mark: Callable[[], None]) -> None:
    """Hand a group's outcomes to their loops: one wake-up per loop, one ``mark`` each."""
    loop = outcomes[0][0].loop
    items = [(job.future, ok, value) for job, ok, value in outcomes]
    if all(job.loop is loop for job, _, _ in outcomes):
        _post(items, loop, mark)
        return
    by_loop: dict[int, tuple[asyncio.AbstractEventLoop, list[_Outcome]]] = {}
    for (job, _, _), item in zip(outcomes, items):
        by_loop.setdefault(id(job.loop), (job.loop, []))[1].append(item)
    for other, mine in by_loop.values():
        _post(mine, other, mark)


class AsyncStore:
    """The sprint-runner store for asyncio code (see the module's documentation).

    ``AsyncStore(target, **options)``: ``target`` and ``options`` as :class:`Store`
    takes them (``clock``, ``time_unit``, ``busy_timeout``, ...), plus ``max_batch``
    (the most writes one transaction commits, default 500), ``max_delay`` (the longest,
    in seconds, an idle writer waits for more writes to join a group, default 0.002; it
    waits in steps of an eighth and stops at a step in which none came; 0 never waits)
    and ``readers`` (reader threads, default 4). Open it with ``async with`` or
    ``await store.open()``; ``await store.aclose()`` commits every write already
    accepted, then stops the threads.
    """

    def __init__(self, target: str | os.PathLike[str] | peewee.Database,
                 clock: Clock | None = None, *, max_batch: int = DEFAULT_MAX_BATCH,
                 max_delay: float = DEFAULT_MAX_DELAY, readers: int = DEFAULT_READERS,
                 **options: Any) -> None:
        check_int("max_batch", max_batch, minimum=1)
        check_int("readers", readers, minimum=1)
        if isinstance(max_delay, bool) or not isinstance(max_delay, (int, float)) \
                or not 0 <= max_delay < 60:
            raise ValueError(f"max_delay must be a number of seconds in [0, 60), "
                             f"not {max_delay!r}")
        self._target = target
        self._clock = clock
        self._options = options
        self.max_batch = max_batch
        self.max_delay = float(max_delay)
        self._reader_count = readers
        self._store: Store | None = None
        self._prepared: PreparedWrites | None = None
        self._writes: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._reads: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._closing = False
        self._closed = False
        self.stats = {"transactions": 0, "groups": 0, "grouped_writes": 0, "retried_groups": 0,
                      "largest_group": 0, "exclusive": 0}
        """Counters of the writer: transactions begun, groups committed or failed and
        the writes in them, groups run again with savepoints, the largest group, and
        writes run alone."""

    # -- lifecycle ------------------------------------------------------------------

    async def open(self) -> AsyncStore:
        """Start the threads and open the ``Store`` (on the writer: migrations too)."""
        if self._store is not None:
            return self
        if self._closing:
            raise RuntimeError("this AsyncStore was closed; make a new one")
        writer = threading.Thread(target=self._writer, name="sprint-runner-aio-writer",
                                  daemon=True)
        writer.start()
        self._threads = [writer]
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Store] = loop.create_future()
        target, clock, options = self._target, self._clock, self._options
        self._writes.put(_Job(lambda: Store(target, clock, **options), future, loop))
        try:
            self._store = await future
            self._prepared = self._store.prepared
        except BaseException:
            self._writes.put(_STOP)
            self._closing = self._closed = True
            raise
        for n in range(self._reader_count):
            thread = threading.Thread(target=self._reader, name=f"sprint-runner-aio-reader-{n}",
                                      daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    async def aclose(self) -> None:
        """Commit every write already accepted, close the threads' connections, stop them."""
        if self._closing:
            return
        self._closing = True
        if self._store is None:
            return
        loop = asyncio.get_running_loop()
        done: list[asyncio.Future[Any]] = []
        for _ in range(self._reader_count):
            future: asyncio.Future[Any] = loop.create_future()
            self._reads.put((_STOP, future, loop))
            done.append(future)
        future = loop.create_future()
        self._writes.put((_STOP, future, loop))
        done.append(future)
        await asyncio.gather(*done)
        self._closed = True

    async def __aenter__(self) -> AsyncStore:
        return await self.open()

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.aclose()

    @property
    def store(self) -> Store:
        """The underlying synchronous ``Store`` (thread-safe; not for the loop thread)."""
        if self._store is None:
            raise RuntimeError("the AsyncStore is not open: use 'async with' or 'await open()'")
        return self._store

    @property
    def location(self) -> str:
        return self.store.location

    @property
    def backend(self) -> str:
        return self.store.backend

    @property
    def time_unit(self) -> str:
        return self.store.time_unit

    @property
    def clock(self) -> Clock:
        return self.store.clock

    @property
    def database(self) -> peewee.Database:
        return self.store.database

    @property
    def applied_migrations(self) -> list[int]:
        return self.store.applied_migrations

    last_seen = staticmethod(Store.last_seen)

    def __repr__(self) -> str:
        where = self._store.location if self._store is not None else self._target
        return f"AsyncStore({where!r})"

    # -- the threads --------------------------------------------------------------------

    def _reader(self) -> None:
        reads = self._reads
        while True:
            fn, future, loop = reads.get()
            if fn is _STOP:
                _post([(future, *self._close_connection())], loop)
                return
            outcome: tuple[bool, Any]
            try:
                outcome = (True, fn())
            except BaseException as exc:  # noqa: BLE001 - handed to the caller
                outcome = (False, exc)
            _post([(future, *outcome)], loop)

    def _close_connection(self) -> tuple[bool, Any]:
        try:
            if self._store is not None:
                self._store.close()
            return (True, None)
        except BaseException as exc:  # noqa: BLE001
            return (False, exc)

    def _writer(self) -> None:
        writes = self._writes
        carry: Any = None
        while True:
            if carry is not None:
                item, carry, idle = carry, None, False
            else:
                try:
                    item, idle = writes.get_nowait(), False
                except queue.Empty:
                    item, idle = writes.get(), True
            if isinstance(item, _GroupJob):
                group = [item]
                carry = self._gather(group, idle)
                self._commit_group(group)
            elif isinstance(item, _Job):
                self._run_alone(item)
            elif item is _MARK:  # a mark no group wait needed
                continue
            elif item is _STOP:  # open() failed
                return
            else:  # (_STOP, future, loop): everything before it is committed
                _, future, loop = item
                _post([(future, *self._close_connection())], loop)
                return

    def _gather(self, group: list[_GroupJob], idle: bool) -> Any:
        """Add the group writes waiting (up to ``max_batch``) to ``group``; when the
        writer was idle, wait up to ``max_delay`` for more, but no longer once a loop's
        mark says the callers the last commit woke have all taken their next step (what
        they were to write is queued: waiting on would only add latency). Return the
        first item that is not a group write (run after the group), or None."""
        writes, limit = self._writes, self.max_batch
        wait = idle and self.max_delay > 0
        deadline = time.monotonic() + self.max_delay if wait else 0.0
        step = self.max_delay / _WAIT_STEPS
        while len(group) < limit:
            try:
                item = writes.get_nowait()
            except queue.Empty:
                if not wait:
                    return None
                # Wait in short sleeps while writes keep coming, up to max_delay: a
                # step with none new ends the wait (polling the queue instead would
                # hand the GIL back and forth with the loop's thread at every write).
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                time.sleep(min(step, remaining))
                try:
                    item = writes.get_nowait()
                except queue.Empty:
                    return None
            if not isinstance(item, _GroupJob):
                if item is _MARK:
                    if wait:
                        return None
                    continue
                return item
            group.append(item)
        return None

    def _run_alone(self, job: _Job) -> None:
        self.stats["exclusive"] += 1
        try:
            outcome: tuple[bool, Any] = (True, job.fn())
        except BaseException as exc:  # noqa: BLE001 - handed to the caller
            outcome = (False, exc)
        _post([(job.future, *outcome)], job.loop)

    def _commit_group(self, group: list[_GroupJob]) -> None:
        # A caller cancelled before the writer took its write: drop it (never committed).
        live = [job for job in group if not job.future.cancelled()]
        stats = self.stats
        stats["groups"] += 1
        stats["grouped_writes"] += len(live)
        if len(live) > stats["largest_group"]:
            stats["largest_group"] = len(live)
        if not live:
            return
        store = self.store
        insert_events = self._prepared.insert_events  # type: ignore[union-attr]
        outcomes: list[tuple[_Job, bool, Any]]
        try:
            try:
                stats["transactions"] += 1
                with store.transaction():
                    outcomes = []
                    start, count = 0, len(live)
                    while start < count:
                        job = live[start]
                        if type(job) is _EventJob:
                            # A run of create_event: one call (multi-row INSERTs on SQLite).
                            end = start + 1
                            while end < count and type(live[end]) is _EventJob:
                                end += 1
                            run = live[start:end]
                            try:
                                ids = insert_events(
                                    [e.row for e in run])  # type: ignore[attr-defined]
                            except _OWN_ERRORS as exc:
                                if count == 1:
                                    outcomes.append((job, False, exc))
                                    raise _Retry from None  # roll back; nothing to run again
                                raise _Retry from exc
                            outcomes += zip(run, itertools.repeat(True), ids)
                            start = end
                            continue
                        try:
                            outcomes.append((job, True, job.fn()))
                        except _OWN_ERRORS as exc:
                            if count == 1:
                                outcomes.append((job, False, exc))
                                raise _Retry from None  # roll back; nothing to run again
                            raise _Retry from exc
                        start += 1
            except _Retry:
                if len(live) > 1:
                    # One write failed on its own: run the group again, each write in a
                    # savepoint, so that only the failing ones fail.
                    stats["retried_groups"] += 1
                    stats["transactions"] += 1
                    with store.transaction():
                        outcomes = []
                        for job in live:
                            try:
                                with store.transaction():
                                    if type(job) is _EventJob:
                                        value = insert_events([job.row])[0]
                                    else:
                                        value = job.fn()
                                outcomes.append((job, True, value))
                            except _OWN_ERRORS as exc:
                                outcomes.append((job, False, exc))
        except BaseException as exc:  # noqa: BLE001 - the whole group failed
            outcomes = [(job, False, exc) for job in live]
        _post_grouped(outcomes, self._mark)

    def _mark(self) -> None:
        self._writes.put(_MARK)

    # -- submitting -------------------------------------------------------------------

    def _check_open(self) -> asyncio.AbstractEventLoop:
        if self._closing:
            raise RuntimeError("the AsyncStore is closed")
        if self._store is None:
            raise RuntimeError("the AsyncStore is not open: use 'async with' or 'await open()'")
        return asyncio.get_running_loop()

    async def _group_write(self, fn: Callable[[], T]) -> T:
        loop = self._check_open()
        future: asyncio.Future[T] = loop.create_future()
        self._writes.put(_GroupJob(fn, future, loop))
        return await future

    async def _alone(self, fn: Callable[[], T]) -> T:
        loop = self._check_open()
        future: asyncio.Future[T] = loop.create_future()
        self._writes.put(_Job(fn, future, loop))
        return await future

    async def _read(self, fn: Callable[[], T]) -> T:
        loop = self._check_open()
        future: asyncio.Future[T] = loop.create_future()
        self._reads.put((fn, future, loop))
        return await future

    # -- group writes: Store's checks on the loop, then queued -------------------------

    async def create_batch(self, max_cycles: int) -> int:
        check_int("max_cycles", max_cycles, minimum=1)
        return await self._group_write(functools.partial(self.store.create_batch, max_cycles))

    async def update_batch(self, batch_id: int, **fields: Any) -> int:
        return await self._update("update_batch", batch_id, fields)

    async def heartbeat(self, batch_id: int) -> int:
        check_int("batch_id", batch_id)
        return await self._group_write(functools.partial(self.store.heartbeat, batch_id))

    async def create_story(self, batch_id: int, story_key: str, epic_id: str) -> int:
        check_int("batch_id", batch_id)
        check_text("story_key", story_key, max_length=KEY_LENGTH)
        check_text("epic_id", epic_id, max_length=KEY_LENGTH)
        return await self._group_write(
            functools.partial(self.store.create_story, batch_id, story_key, epic_id))

    async def update_story(self, story_id: int, **fields: Any) -> int:
        return await self._update("update_story", story_id, fields)

    async def create_command(self, story_id: int, command: str, task_id: str) -> int:
        check_int("story_id", story_id)
        check_text("command", command, max_length=KEY_LENGTH)
        check_text("task_id", task_id, max_length=KEY_LENGTH)
        return await self._group_write(
            functools.partial(self.store.create_command, story_id, command, task_id))

    async def update_command(self, command_id: int, **fields: Any) -> int:
        return await self._update("update_command", command_id, fields)

    async def create_event(self, *args: Any, **kwargs: Any) -> int:
        # The row checked here is the row written (a payload the caller changes after
        # the call is not read again).
        row = _prepare_event(*args, **kwargs)
        if self._closing or self._store is None:
            self._check_open()
        loop = asyncio.get_running_loop()
        future: asyncio.Future[int] = loop.create_future()
        self._writes.put(_EventJob(row, future, loop))
        return await future

    async def create_background_task(self, batch_id: int, story_key: str,
                                     task_type: str) -> int:
        check_int("batch_id", batch_id)
        check_text("story_key", story_key, max_length=KEY_LENGTH, allow_empty=True)
        check_text("task_type", task_type, max_length=KEY_LENGTH)
        return await self._group_write(
            functools.partial(self.store.create_background_task, batch_id, story_key,
                              task_type))

    async def update_background_task(self, task_id: int, **fields: Any) -> int:
        return await self._update("update_background_task", task_id, fields)

    async def _update(self, name: str, row_id: int, fields: Mapping[str, Any]) -> int:
        _check_update(name, row_id, fields)
        method: Callable[..., int] = getattr(self.store, name)
        return await self._group_write(functools.partial(method, row_id, **fields))

    # -- the rest ---------------------------------------------------------------------

    def iter_events(self, *args: Any, **kwargs: Any) -> AsyncIterator[dict[str, Any]]:
        """Stream matching events as ``Store.iter_events`` does, a chunk per reader call.

        The arguments are checked here, at the call, before the first row is read.
        """
        rows = self.store.iter_events(*args, **kwargs)  # checks only: a lazy generator
        chunk_size = inspect.signature(Store.iter_events).bind(
            self.store, *args, **kwargs).arguments.get("chunk_size", CHUNK)
        return self._stream(rows, chunk_size)

    async def _stream(self, rows: Any, chunk_size: int) -> AsyncIterator[dict[str, Any]]:
        while True:
            chunk: list[dict[str, Any]] = await self._read(
                lambda: list(itertools.islice(rows, chunk_size)))
            for row in chunk:
                yield row
            if len(chunk) < chunk_size:
                return

    async def run_in_transaction(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(store, *args)`` inside ``store.transaction()`` on the writer thread
        (in order with the other writes); return its result."""
        store = self.store

        def call() -> T:
            with store.transaction():
                return fn(store, *args)
        return await self._alone(call)

    if TYPE_CHECKING:
        # The generated coroutines (every other public method of Store), for the checker.
        def __getattr__(self, name: str) -> Callable[..., Coroutine[Any, Any, Any]]: ...


def _reader_method(method: Callable[Concatenate[Store, P], T]
                   ) -> Callable[Concatenate[AsyncStore, P], Coroutine[Any, Any, T]]:
    @functools.wraps(method)
    async def wrapper(self: AsyncStore, /, *args: P.args, **kwargs: P.kwargs) -> T:
        return await self._read(functools.partial(method, self.store, *args, **kwargs))
    return wrapper


def _writer_method(method: Callable[Concatenate[Store, P], T]
                   ) -> Callable[Concatenate[AsyncStore, P], Coroutine[Any, Any, T]]:
    @functools.wraps(method)
    async def wrapper(self: AsyncStore, /, *args: P.args, **kwargs: P.kwargs) -> T:
        return await self._alone(functools.partial(method, self.store, *args, **kwargs))
    return wrapper


def public_methods() -> list[str]:
    """The public methods of ``Store`` (properties excluded), by name."""
    return sorted(name for name, value in vars(Store).items()
                  if not name.startswith("_")
                  and (inspect.isfunction(value) or isinstance(value, staticmethod)))


def wrapped_methods() -> list[str]:
    """The public methods of ``Store`` that ``AsyncStore`` offers as coroutines."""
    return sorted(name for name in public_methods()
                  if name not in EXCLUDED or name == "iter_events")


def _generate() -> None:
    for name in public_methods():
        method = getattr(Store, name)
        if name in GROUP_WRITES:
            functools.update_wrapper(vars(AsyncStore)[name], method)
        elif name == "iter_events":
            functools.update_wrapper(AsyncStore.iter_events, method)
        elif name in EXCLUDED:
            continue
        elif name in READS:
            setattr(AsyncStore, name, _reader_method(method))
        else:
            setattr(AsyncStore, name, _writer_method(method))


_generate()


def connect(target: str | os.PathLike[str] | peewee.Database | None = None,
            **options: Any) -> AsyncStore:
    """Return an unopened :class:`AsyncStore` on ``target`` (default ``db.DB_PATH``,
    new databases in ``db.TIME_UNIT``): ``async with aio.connect() as store: ...``."""
    options.setdefault("default_time_unit", _db.TIME_UNIT)
    return AsyncStore(_db.DB_PATH if target is None else target, **options)
