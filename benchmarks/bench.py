#!/usr/bin/env python
"""Time every hot store operation against raw sqlite3 in one run, and print the ratios.

    python benchmarks/bench.py            # full run: 1,000,000 events, prints the README table
    python benchmarks/bench.py --quick    # CI smoke test: tiny sizes, a few seconds, no verdicts
    python benchmarks/bench.py --profile  # also cProfile the store and raw calls of every miss

Contenders, each on its own copy of the same seeded database:

- ``store``: a :class:`sprint_runner.Store` (peewee-generated statements, per-thread connection);
- ``raw``: ``sqlite3.connect(path, isolation_level=None)`` kept open, with the store's
  pragmas (:func:`sprint_runner.connect.sqlite_pragmas`), hand-written SQL, rows turned
  into dicts with ``dict(zip(names, row))``: the fastest plain way, and the yardstick;
- ``old``: the old module's style: a new connection per call, ``PRAGMA foreign_keys=ON``,
  the default rollback journal (DELETE) and ``synchronous`` (FULL), ``sqlite3.Row``,
  a commit per call;
- ``sqlalchemy``: SQLAlchemy Core if installed: an engine with the same pragmas, Core
  statements built once, a pooled connection checked out per call, ``.mappings()`` to dicts.

Each round runs every operation for every contender back to back (the order rotates
between rounds), many calls each, with the garbage collector paused; a round's figure
is the mean time per call. Tables show the median over rounds; a ratio is the median
over rounds of that round's contender/raw ratio, which cancels the drift of a shared
machine. Exit status is 0 whenever the benchmark ran: it measures, it does not judge.
"""
from __future__ import annotations

import argparse
import cProfile
import gc
import hashlib
import os
import platform
import pstats
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import peewee

import sprint_runner
from sprint_runner import Store
from sprint_runner.connect import DEFAULT_BUSY_TIMEOUT, sqlite_pragmas
from sprint_runner.store import MAX_PAGE

try:
    import sqlalchemy as sa
except ImportError:  # pragma: no cover - optional contender
    sa = None  # type: ignore[assignment]

Row = dict[str, Any]
Call = Callable[[], object]

CONTENDERS = ("store", "raw", "old", "sqlalchemy")
PRAGMAS = sqlite_pragmas(DEFAULT_BUSY_TIMEOUT, "NORMAL")
PAGE = 100
MIN_CALLS = 3  # per sample: a WAL checkpoint lands in every other 10,000-row commit

BATCH_COLUMNS = ("id", "started_at", "ended_at", "max_cycles", "cycles_completed", "status",
                 "owner", "heartbeat_at")
STORY_COLUMNS = ("id", "batch_id", "story_key", "epic_id", "status", "started_at", "ended_at")
EVENT_COLUMNS = ("id", "batch_id", "story_id", "command_id", "timestamp", "epic_id",
                 "story_key", "command", "task_id", "status", "message", "event_type",
                 "payload_json")
"""What an event row holds, as the store returns it."""
INSERTED_COLUMNS = EVENT_COLUMNS[1:11]
"""What the old module's create_event writes (event_type and payload_json take defaults)."""

_EV = ", ".join(EVENT_COLUMNS)
SQL_BATCH = f"SELECT {', '.join(BATCH_COLUMNS)} FROM batches WHERE id = ?"
SQL_STORY = f"SELECT {', '.join(STORY_COLUMNS)} FROM stories WHERE id = ?"
SQL_BLOCKED = "SELECT status FROM commands WHERE story_id = ? ORDER BY id DESC LIMIT 3"
SQL_NEWEST = f"SELECT {_EV} FROM events ORDER BY timestamp DESC, id DESC LIMIT ? OFFSET ?"
SQL_BY_BATCH = f"SELECT {_EV} FROM events WHERE batch_id = ? ORDER BY timestamp, id"
SQL_FIRST_PAGE = f"SELECT {_EV} FROM events ORDER BY id DESC LIMIT ?"
SQL_NEXT_PAGE = f"SELECT {_EV} FROM events WHERE id < ? ORDER BY id DESC LIMIT ?"
SQL_INSERT_EVENT = (f"INSERT INTO events ({', '.join(INSERTED_COLUMNS)}) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)")


@dataclass(frozen=True)
class Sizes:
    """How big a run is."""

    events: int          # events in the paging database
    batch_events: int    # rows of get_events_by_batch and of one create_events call
    other_events: int    # background events in the operations database
    rounds: int
    budget: float        # seconds per contender per operation per round


FULL = Sizes(events=1_000_000, batch_events=10_000, other_events=40_000, rounds=9, budget=0.12)
QUICK = Sizes(events=20_000, batch_events=1_000, other_events=2_000, rounds=3, budget=0.01)


@dataclass
class Op:
    """One operation: a zero-argument call per contender and its per-round timings."""

    name: str
    target: str = ""
    max_ratio: float | None = None
    calls: dict[str, Call] = field(default_factory=dict)
    check: bool = False  # the contenders must return equal results
    n: dict[str, int] = field(default_factory=dict)
    samples: dict[str, list[float]] = field(default_factory=dict)

    def median(self, who: str) -> float | None:
        s = self.samples.get(who)
        return statistics.median(s) if s else None

    def ratio(self, who: str, base: str = "raw") -> float | None:
        a, b = self.samples.get(who), self.samples.get(base)
        if not a or not b:
            return None
        return statistics.median(x / y for x, y in zip(a, b))


# -- the contenders ----------------------------------------------------------------------

def raw_connect(path: str) -> sqlite3.Connection:
    """Return a persistent autocommit connection with the store's pragmas."""
    conn = sqlite3.connect(path, timeout=DEFAULT_BUSY_TIMEOUT, isolation_level=None)
    for name, value in PRAGMAS:
        conn.execute(f"PRAGMA {name} = {value}")
    return conn


def max_variables(conn: sqlite3.Connection) -> int:
    """Return how many ? parameters one statement may have on ``conn``."""
    if hasattr(conn, "getlimit"):  # Python 3.11+
        return int(conn.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER))
    return 32766 if sqlite3.sqlite_version_info >= (3, 32) else 999


class Raw:
    """The fastest plain sqlite3 way, on one persistent connection."""

    def __init__(self, path: str) -> None:
        self.conn = raw_connect(path)

    def one(self, sql: str, columns: tuple[str, ...], key: int) -> Row | None:
        row = self.conn.execute(sql, (key,)).fetchone()
        return dict(zip(columns, row)) if row else None

    def check_story_blocked(self, story_id: int) -> bool:
        rows = self.conn.execute(SQL_BLOCKED, (story_id,)).fetchall()
        return len(rows) == 3 and all(r[0] == "failed" for r in rows)

    def events(self, sql: str, params: tuple[Any, ...]) -> list[Row]:
        return [dict(zip(EVENT_COLUMNS, r)) for r in self.conn.execute(sql, params).fetchall()]

    def page(self, after: int | None) -> tuple[list[Row], int | None]:
        rows = (self.conn.execute(SQL_FIRST_PAGE, (PAGE + 1,)) if after is None else
                self.conn.execute(SQL_NEXT_PAGE, (after, PAGE + 1))).fetchall()
        events = [dict(zip(EVENT_COLUMNS, r)) for r in rows[:PAGE]]
        return events, events[-1]["id"] if len(rows) > PAGE else None

    def create_event(self, *a: Any) -> int:
        row = (*a[:3], int(time.time()), *a[3:])
        return self.conn.execute(SQL_INSERT_EVENT, row).lastrowid  # type: ignore[return-value]

    def create_events(self, events: Sequence[Row]) -> int:
        now = int(time.time())
        rows = [(e["batch_id"], e.get("story_id"), e.get("command_id"), e.get("timestamp", now),
                 e["epic_id"], e["story_key"], e["command"], e["task_id"], e["status"],
                 e.get("message")) for e in events]
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            self.conn.executemany(SQL_INSERT_EVENT, rows)
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        self.conn.execute("COMMIT")
        return len(rows)

    def create_events_multirow(self, events: Sequence[Row]) -> int:
        """create_events with one multi-row INSERT per 1000 rows (executemany for the rest)."""
        now = int(time.time())
        width = len(INSERTED_COLUMNS)
        size = min(1000, max_variables(self.conn) // width)
        sql = SQL_INSERT_EVENT + ", (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)" * (size - 1)
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            for start in range(0, len(events), size):
                chunk = events[start:start + size]
                rows = [(e["batch_id"], e.get("story_id"), e.get("command_id"),
                         e.get("timestamp", now), e["epic_id"], e["story_key"], e["command"],
                         e["task_id"], e["status"], e.get("message")) for e in chunk]
                if len(rows) == size:
                    self.conn.execute(sql, [v for row in rows for v in row])
                else:
                    self.conn.executemany(SQL_INSERT_EVENT, rows)
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        self.conn.execute("COMMIT")
        return len(events)


class Old:
    """The old module's style: a new connection per call, full fsync, sqlite3.Row."""

    def __init__(self, path: str) -> None:
        self.path = path

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path)
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA foreign_keys = ON")
        return conn

    def rows(self, sql: str, params: tuple[Any, ...]) -> list[Row]:
        conn = self._connect()
        try:
            return [dict(r) for r in conn.execute(sql, params).fetchall()]
        finally:
            conn.close()

    def one(self, sql: str, key: int) -> Row | None:
        rows = self.rows(sql, (key,))
        return rows[0] if rows else None

    def check_story_blocked(self, story_id: int) -> bool:
        rows = self.rows(SQL_BLOCKED, (story_id,))
        return len(rows) == 3 and all(r["status"] == "failed" for r in rows)

    def page(self, after: int | None) -> tuple[list[Row], int | None]:
        rows = (self.rows(SQL_FIRST_PAGE, (PAGE + 1,)) if after is None
                else self.rows(SQL_NEXT_PAGE, (after, PAGE + 1)))
        return rows[:PAGE], rows[PAGE - 1]["id"] if len(rows) > PAGE else None

    def create_event(self, *a: Any) -> int:
        conn = self._connect()
        try:
            cursor = conn.execute(SQL_INSERT_EVENT, (*a[:3], int(time.time()), *a[3:]))
            conn.commit()
            return cursor.lastrowid  # type: ignore[return-value]
        finally:
            conn.close()

    def create_events(self, events: Sequence[Row]) -> int:
        now = int(time.time())
        conn = self._connect()
        try:
            conn.executemany(SQL_INSERT_EVENT, [
                (e["batch_id"], e.get("story_id"), e.get("command_id"), e.get("timestamp", now),
                 e["epic_id"], e["story_key"], e["command"], e["task_id"], e["status"],
                 e.get("message")) for e in events])
            conn.commit()
            return len(events)
        finally:
            conn.close()


class Alchemy:
    """SQLAlchemy Core: statements built once, a pooled connection per call."""

    def __init__(self, path: str) -> None:
        assert sa is not None
        self.engine = sa.create_engine(f"sqlite:///{path}")

        @sa.event.listens_for(self.engine, "connect")
        def _pragmas(dbapi_conn: Any, _record: Any) -> None:
            cursor = dbapi_conn.cursor()
            for name, value in PRAGMAS:
                cursor.execute(f"PRAGMA {name} = {value}")
            cursor.close()

        md = sa.MetaData()
        md.reflect(self.engine, only=["batches", "stories", "commands", "events"])
        b, s, c, e = (md.tables[t] for t in ("batches", "stories", "commands", "events"))
        p = sa.bindparam
        self.batch = sa.select(*(b.c[n] for n in BATCH_COLUMNS)).where(b.c.id == p("id"))
        self.story = sa.select(*(s.c[n] for n in STORY_COLUMNS)).where(s.c.id == p("id"))
        self.blocked = (sa.select(c.c.status).where(c.c.story_id == p("id"))
                        .order_by(c.c.id.desc()).limit(3))
        ev = [e.c[n] for n in EVENT_COLUMNS]
        self.newest = (sa.select(*ev).order_by(e.c.timestamp.desc(), e.c.id.desc())
                       .limit(p("limit")).offset(p("offset")))
        self.by_batch = (sa.select(*ev).where(e.c.batch_id == p("id"))
                         .order_by(e.c.timestamp, e.c.id))
        self.first_page = sa.select(*ev).order_by(e.c.id.desc()).limit(PAGE + 1)
        self.next_page = (sa.select(*ev).where(e.c.id < p("after")).order_by(e.c.id.desc())
                          .limit(PAGE + 1))
        self.insert = sa.insert(e)

    def rows(self, statement: Any, params: dict[str, Any]) -> list[Row]:
        with self.engine.connect() as conn:
            return [dict(m) for m in conn.execute(statement, params).mappings()]

    def one(self, statement: Any, key: int) -> Row | None:
        with self.engine.connect() as conn:
            m = conn.execute(statement, {"id": key}).mappings().first()
            return dict(m) if m is not None else None

    def check_story_blocked(self, story_id: int) -> bool:
        with self.engine.connect() as conn:
            statuses = conn.execute(self.blocked, {"id": story_id}).scalars().all()
        return len(statuses) == 3 and all(s == "failed" for s in statuses)

    def page(self, after: int | None) -> tuple[list[Row], int | None]:
        rows = (self.rows(self.first_page, {}) if after is None
                else self.rows(self.next_page, {"after": after}))
        return rows[:PAGE], rows[PAGE - 1]["id"] if len(rows) > PAGE else None

    def create_event(self, *a: Any) -> int:
        values = dict(zip(INSERTED_COLUMNS, (*a[:3], int(time.time()), *a[3:])))
        with self.engine.begin() as conn:
            key = conn.execute(self.insert, values).inserted_primary_key
        assert key is not None
        return int(key[0])

    def create_events(self, events: Sequence[Row]) -> int:
        now = int(time.time())
        rows = [{"story_id": None, "command_id": None, "message": None, "timestamp": now, **e}
                for e in events]
        with self.engine.begin() as conn:
            conn.execute(self.insert, rows)
        return len(rows)


# -- the databases -------------------------------------------------------------------------

def schema_signature() -> str:
    """Return a short hash of the schema a fresh Store creates (keys the cached file)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "schema.db")
        Store(path).close()
        conn = sqlite3.connect(path)
        try:
            ddl = sorted(r[0] for r in conn.execute(
                "SELECT sql FROM sqlite_master WHERE sql IS NOT NULL"))
            versions = [r[0] for r in conn.execute("SELECT version FROM schema_migrations")]
        finally:
            conn.close()
    return hashlib.sha1(repr((ddl, versions)).encode()).hexdigest()[:10]


def event_dict(batch_id: int, i: int, timestamp: int | None = None) -> Row:
    event: Row = {"batch_id": batch_id, "story_id": None, "command_id": None,
                  "epic_id": f"epic-{i % 7}", "story_key": f"{i % 7}-{i % 13}-story",
                  "command": ("create-story", "dev-story", "code-review")[i % 3],
                  "task_id": f"task-{i}", "status": ("started", "completed", "failed")[i % 3],
                  "message": f"event {i}: a short progress message"}
    if timestamp is not None:
        event["timestamp"] = timestamp
    return event


def build_paging_db(path: str, n: int) -> None:
    """Write ``n`` events into a Store-created file (indexes rebuilt afterwards: fast)."""
    part = path + ".part"
    for leftover in (part, part + "-wal", part + "-shm"):
        if os.path.exists(leftover):
            os.unlink(leftover)
    Store(part).close()
    conn = sqlite3.connect(part, isolation_level=None)
    conn.execute("PRAGMA synchronous = OFF")
    conn.execute("PRAGMA cache_size = -262144")
    indexes = conn.execute("SELECT name, sql FROM sqlite_master WHERE type = 'index' "
                           "AND tbl_name = 'events' AND sql IS NOT NULL").fetchall()
    batches = max(1, n // 1000)
    base = 1_700_000_000
    conn.execute("BEGIN")
    for name, _ in indexes:
        conn.execute(f'DROP INDEX "{name}"')
    conn.executemany(
        "INSERT INTO batches (id, started_at, ended_at, max_cycles, cycles_completed, status, "
        "owner, heartbeat_at) VALUES (?, ?, ?, 10, 10, 'completed', 'bench:1', ?)",
        ((b, base, base + 1, base + 1) for b in range(1, batches + 1)))
    conn.executemany(SQL_INSERT_EVENT, (
        (1 + i * batches // n, None, None, base + i // 10, f"epic-{i % 7}",
         f"{i % 7}-{i % 13}-story",
         ("create-story", "dev-story", "code-review")[i % 3], f"task-{i}",
         ("started", "completed", "failed")[i % 3], f"event {i}: a short progress message")
        for i in range(n)))
    for _, sql in indexes:
        conn.execute(sql)
    conn.execute("COMMIT")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    os.replace(part, path)


def paging_db(sizes: Sizes, cache_dir: str | None, tmp: str) -> str:
    """Return the paging database, built once and cached in ``cache_dir`` when given."""
    if cache_dir is None:
        path = os.path.join(tmp, "paging.db")
        build_paging_db(path, sizes.events)
        return path
    path = os.path.join(cache_dir, f"sprint_runner_bench_{sizes.events}_{schema_signature()}.db")
    if not os.path.exists(path):
        print(f"building {path} ({sizes.events:,} events, once)...", file=sys.stderr, flush=True)
        started = time.perf_counter()
        build_paging_db(path, sizes.events)
        print(f"  built in {time.perf_counter() - started:.1f} s", file=sys.stderr, flush=True)
    return path


@dataclass
class Seed:
    """Ids in the seeded operations database."""

    batch: int         # the batch with ``batch_events`` events (get_events_by_batch)
    write_batch: int   # create_event / create_events write here
    story: int         # a story whose last three commands failed (blocked)
    command: int


def seed_ops_db(path: str, sizes: Sizes) -> Seed:
    """Create the operations database through the store's public API."""
    store = Store(path)
    try:
        batches = [store.create_batch(10) for _ in range(10)]
        stories = [store.create_story(b, f"{b}-{k}-story", f"epic-{b}")
                   for b in batches for k in range(20)]
        commands = []
        for story in stories:
            for k in range(5):
                cid = store.create_command(story, "dev-story", f"task-{story}-{k}")
                store.update_command(cid, status="failed" if k >= 2 else "completed")
                commands.append(cid)
        store.create_events(event_dict(batches[0], i) for i in range(sizes.batch_events))
        store.create_events(event_dict(batches[3 + i % 7], i) for i in range(sizes.other_events))
    finally:
        store.close()
    return Seed(batch=batches[0], write_batch=batches[1], story=stories[0], command=commands[0])


# -- the operations --------------------------------------------------------------------------

def build_ops(sizes: Sizes, tmp: str, big: str,
              with_sqlalchemy: bool) -> tuple[list[Op], dict[str, Any]]:
    """Seed one copy of the operations database per contender; return the operations."""
    seed_path = os.path.join(tmp, "seed.db")
    seed = seed_ops_db(seed_path, sizes)
    files = {}
    for who in CONTENDERS:
        files[who] = os.path.join(tmp, f"{who}.db")
        shutil.copyfile(seed_path, files[who])
    conn = sqlite3.connect(files["old"])
    mode = conn.execute("PRAGMA journal_mode = DELETE").fetchone()[0]
    sync = conn.execute("PRAGMA synchronous").fetchone()[0]
    conn.close()
    assert mode == "delete", mode

    store, raw, old = Store(files["store"]), Raw(files["raw"]), Old(files["old"])
    big_store, big_raw, big_old = Store(big), Raw(big), Old(big)
    alchemy = big_alchemy = None
    if with_sqlalchemy:
        alchemy, big_alchemy = Alchemy(files["sqlalchemy"]), Alchemy(big)

    # A cursor at depth events/2, reached through the public API.
    depth = sizes.events // 2
    cursor, seen = None, 0
    while seen < depth:
        page = big_store.page_events(limit=min(MAX_PAGE, depth - seen), cursor=cursor)
        seen += len(page["events"])
        cursor = page["next_cursor"]
    after = big_raw.conn.execute("SELECT id FROM events ORDER BY id DESC LIMIT 1 OFFSET ?",
                                 (depth - 1,)).fetchone()[0]
    assert big_store.page_events(limit=1, cursor=cursor)["events"] == big_raw.page(after)[0][:1]

    args = (seed.write_batch, seed.story, seed.command, "epic-1", "1-1-story", "dev-story",
            "task-1", "started", "a benchmark event")
    many = [event_dict(seed.write_batch, i) for i in range(sizes.batch_events)]
    b, s = seed.batch, seed.story
    n_be, n_ev, d = f"{sizes.batch_events:,}", f"{sizes.events:,}", f"{depth:,}"

    def op(name: str, target: str, max_ratio: float | None, check: bool,
           **calls: Call | None) -> Op:
        return Op(name, target, max_ratio, {k: v for k, v in calls.items() if v is not None}, check)

    A, G = cast(Alchemy, alchemy), cast(Alchemy, big_alchemy)

    def maybe(call: Call) -> Call | None:
        return call if with_sqlalchemy else None

    ops = [
        op("create_event (one transaction each)", "<= 1.5x", 1.5, False,
           store=lambda: store.create_event(*args), raw=lambda: raw.create_event(*args),
           old=lambda: old.create_event(*args), sqlalchemy=maybe(lambda: A.create_event(*args))),
        op("get_batch (point read to dict)", "<= 1.5x", 1.5, True,
           store=lambda: store.get_batch(b), raw=lambda: raw.one(SQL_BATCH, BATCH_COLUMNS, b),
           old=lambda: old.one(SQL_BATCH, b), sqlalchemy=maybe(lambda: A.one(A.batch, b))),
        op("get_story (point read to dict)", "<= 1.5x", 1.5, True,
           store=lambda: store.get_story(s), raw=lambda: raw.one(SQL_STORY, STORY_COLUMNS, s),
           old=lambda: old.one(SQL_STORY, s), sqlalchemy=maybe(lambda: A.one(A.story, s))),
        op("check_story_blocked", "<= 1.5x", 1.5, True,
           store=lambda: store.check_story_blocked(s), raw=lambda: raw.check_story_blocked(s),
           old=lambda: old.check_story_blocked(s),
           sqlalchemy=maybe(lambda: A.check_story_blocked(s))),
        op("get_events(limit=100)", "<= 1.2x", 1.2, True,
           store=lambda: store.get_events(limit=100), raw=lambda: raw.events(SQL_NEWEST, (100, 0)),
           old=lambda: old.rows(SQL_NEWEST, (100, 0)),
           sqlalchemy=maybe(lambda: A.rows(A.newest, {"limit": 100, "offset": 0}))),
        op(f"get_events_by_batch, {n_be} rows", "<= 1.2x", 1.2, True,
           store=lambda: store.get_events_by_batch(b), raw=lambda: raw.events(SQL_BY_BATCH, (b,)),
           old=lambda: old.rows(SQL_BY_BATCH, (b,)),
           sqlalchemy=maybe(lambda: A.rows(A.by_batch, {"id": b}))),
        # Raw is the fastest plain way: one multi-row INSERT per 1000 rows, which beats
        # executemany on this SQLite (the contrast row measures against executemany).
        op(f"create_events, {n_be} rows", "<= 1.2x", 1.2, False,
           store=lambda: store.create_events(many), raw=lambda: raw.create_events_multirow(many),
           old=lambda: old.create_events(many), sqlalchemy=maybe(lambda: A.create_events(many))),
        op(f"create_events, {n_be} rows, raw as executemany (contrast)", "",
           None, False, store=lambda: store.create_events(many),
           raw=lambda: raw.create_events(many)),
        op(f"page_events, first page of {n_ev}", "", None, False,
           store=lambda: big_store.page_events(limit=PAGE), raw=lambda: big_raw.page(None),
           old=lambda: big_old.page(None), sqlalchemy=maybe(lambda: G.page(None))),
        op(f"page_events at depth {d} of {n_ev}", "<= 1 ms, <= 2x first page", None, False,
           store=lambda: big_store.page_events(limit=PAGE, cursor=cursor),
           raw=lambda: big_raw.page(after), old=lambda: big_old.page(after),
           sqlalchemy=maybe(lambda: G.page(after))),
        op(f"get_events(limit=100, offset={d}) (contrast)", "", None, False,
           store=lambda: big_store.get_events(limit=100, offset=depth),
           raw=lambda: big_raw.events(SQL_NEWEST, (100, depth))),
    ]
    context = {"big_store": big_store, "big_raw": big_raw, "old_synchronous": sync,
               "stores": (store, big_store)}
    return ops, context


# -- measuring ----------------------------------------------------------------------------

def timed(call: Call, n: int) -> float:
    """Return the mean seconds per call over ``n`` calls (garbage collector paused)."""
    gc.collect()
    gc.disable()
    try:
        started = time.perf_counter()
        for _ in range(n):
            call()
        return (time.perf_counter() - started) / n
    finally:
        gc.enable()


def comparable(value: object) -> object:
    if isinstance(value, dict) and "events" in value:
        return value["events"]
    if isinstance(value, tuple):
        return value[0]
    return value


def calibrate(ops: list[Op], budget: float) -> None:
    """Warm every call, check read results agree, and pick calls per round."""
    for op in ops:  # before any write: every contender's copy still holds the same rows
        if op.check:
            expected = comparable(op.calls["raw"]())
            for who, call in op.calls.items():
                result = comparable(call())
                if result != expected:
                    raise AssertionError(f"{op.name}: {who} returned {result!r:.200}, "
                                         f"raw {expected!r:.200}")
    for op in ops:
        for call in op.calls.values():
            call()
        once = {who: min(timed(call, 1) for _ in range(3)) for who, call in op.calls.items()}
        # store and raw make the same number of calls (equal growth of written files).
        pair = max(once["store"], once["raw"])
        for who in op.calls:
            t = pair if who in ("store", "raw") else once[who]
            op.n[who] = max(MIN_CALLS, min(20_000, int(budget / t)))


def measure(ops: list[Op], rounds: int) -> None:
    for r in range(rounds):
        for op in ops:
            order = list(op.calls)
            order = order[r % len(order):] + order[:r % len(order)]
            for who in order:
                op.samples.setdefault(who, []).append(timed(op.calls[who], op.n[who]))
        print(f"  round {r + 1}/{rounds} done", file=sys.stderr, flush=True)


def iter_events_peak(store: Store) -> tuple[int, float]:
    """Return (events seen, peak MB of Python allocations added) for a full iter_events."""
    gc.collect()
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        count = 0
        for _ in store.iter_events():
            count += 1
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    return count, peak / 1e6


# -- reporting ----------------------------------------------------------------------------

def fmt_time(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    if seconds < 1e-3:
        return f"{seconds * 1e6:.1f} µs"
    return f"{seconds * 1e3:.2f} ms"


def fmt_ratio(ratio: float | None) -> str:
    return "—" if ratio is None else f"{ratio:.2f}x"


def verdicts(ops: list[Op]) -> dict[str, list[str]]:
    """Return each operation's missed targets (empty list: all met)."""
    misses: dict[str, list[str]] = {}
    first = next((o for o in ops if o.name.startswith("page_events, first page")), None)
    for op in ops:
        if "(contrast)" in op.name:
            continue
        m: list[str] = []
        ratio = op.ratio("store")
        if op.max_ratio is not None and ratio is not None and ratio > op.max_ratio:
            m.append(f"{ratio:.2f}x raw > {op.max_ratio}x")
        if op.name.startswith("page_events at depth") and first is not None:
            t = op.median("store") or 0.0
            if t > 1e-3:
                m.append(f"{fmt_time(t)} > 1 ms")
            vs_first = statistics.median(
                x / y for x, y in zip(op.samples["store"], first.samples["store"]))
            if vs_first > 2:
                m.append(f"{vs_first:.2f}x the first page > 2x")
        for other in ("old", "sqlalchemy"):
            r = op.ratio("store", other)
            if r is not None and r >= 1:
                m.append(f"not faster than {other} ({r:.2f}x)")
        misses[op.name] = m
    return misses


def report(ops: list[Op], misses: dict[str, list[str]], iter_peak: tuple[int, float],
           context: dict[str, Any], quick: bool) -> list[str]:
    lines = [
        "| operation | store | raw | ratio | target | old module | ratio | SQLAlchemy | ratio | |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for op in ops:
        verdict = ("" if quick or op.name not in misses
                   else "PASS" if not misses[op.name] else "MISS")
        lines.append(" | ".join([
            f"| {op.name}", fmt_time(op.median("store")), fmt_time(op.median("raw")),
            fmt_ratio(op.ratio("store")), op.target or "—",
            fmt_time(op.median("old")), fmt_ratio(op.ratio("old")),
            fmt_time(op.median("sqlalchemy")), fmt_ratio(op.ratio("sqlalchemy")),
            f"{verdict} |"]))
    count, peak = iter_peak
    lines.append(f"| iter_events over {count:,} events: added peak (tracemalloc) | {peak:.1f} MB "
                 f"| | | <= 50 MB | | | | | {'' if quick else 'PASS' if peak <= 50 else 'MISS'} |")
    if peak > 50:
        misses["iter_events"] = [f"{peak:.1f} MB > 50 MB"]
    print("\n".join(lines))
    print()
    print(f"Ratios are contender/raw (median over rounds of the per-round ratio); times are "
          f"medians. old module: DELETE journal, synchronous={context['old_synchronous']} "
          f"(2 = FULL), connection per call.")
    missed = {k: v for k, v in misses.items() if v}
    if quick:
        print("quick mode: smoke test only, no verdicts")
    elif missed:
        print("MISSES: " + "; ".join(f"{k}: {', '.join(v)}" for k, v in missed.items()))
    else:
        print("all targets met")
    sys.stdout.flush()
    return sorted(missed)


def profile_misses(ops: list[Op], missed: list[str]) -> None:
    """Print cProfile's top functions for the store and raw calls of each missed operation."""
    for op in ops:
        if op.name not in missed:
            continue
        for who in ("store", "raw"):
            n = op.n[who] * 3
            profiler = cProfile.Profile()
            profiler.enable()
            for _ in range(n):
                op.calls[who]()
            profiler.disable()
            print(f"\n### {op.name} — {who}, {n} calls (cProfile, by own time)")
            pstats.Stats(profiler, stream=sys.stdout).sort_stats("tottime").print_stats(14)


def machine_line() -> str:
    alchemy = (f", SQLAlchemy {getattr(sa, '__version__', '?')}" if sa is not None
               else ", SQLAlchemy not installed")
    return (f"{platform.machine()}, {os.cpu_count()} cores, {platform.system()} "
            f"{platform.release()}; Python {platform.python_version()}, SQLite "
            f"{sqlite3.sqlite_version}, peewee {getattr(peewee, '__version__', '?')}{alchemy}; "
            f"sprint_runner {getattr(sprint_runner, '__version__', '?')}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes, for CI (< 30 s)")
    parser.add_argument("--rounds", type=int, help="rounds (default: 9, or 3 with --quick)")
    parser.add_argument("--events", type=int, help="events in the paging database")
    parser.add_argument("--cache-dir", default=tempfile.gettempdir(),
                        help="where the paging database is cached (full mode)")
    parser.add_argument("--no-sqlalchemy", action="store_true", help="skip SQLAlchemy Core")
    parser.add_argument("--profile", action="store_true", help="cProfile every miss")
    parser.add_argument("--only", metavar="TEXT",
                        help="measure only the operations whose name contains TEXT")
    args = parser.parse_args(argv)
    sizes = QUICK if args.quick else FULL
    if args.rounds or args.events:
        sizes = Sizes(args.events or sizes.events, sizes.batch_events, sizes.other_events,
                      args.rounds or sizes.rounds, sizes.budget)
    with tempfile.TemporaryDirectory(prefix="sprint_runner_bench_") as tmp:
        big = paging_db(sizes, None if args.quick else args.cache_dir, tmp)
        ops, context = build_ops(sizes, tmp, big, sa is not None and not args.no_sqlalchemy)
        if args.only:
            ops = [op for op in ops if args.only in op.name]
        print(machine_line())
        print(f"({sizes.rounds} rounds, {sizes.budget * 1e3:.0f} ms per contender per "
              f"operation per round)\n", flush=True)
        calibrate(ops, sizes.budget)
        measure(ops, sizes.rounds)
        peak = iter_events_peak(context["big_store"])
        missed = report(ops, verdicts(ops), peak, context, args.quick)
        if args.profile and missed:
            profile_misses(ops, missed)
        for store in context["stores"]:
            store.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
