#!/usr/bin/env python
"""Time ``page_events`` for every event filter alone and every pair of them, at scale.

    python benchmarks/filters.py                 # 1,000,000 events (file cached under /tmp)
    python benchmarks/filters.py --quick         # 100,000 events, a few seconds, no verdicts
    python benchmarks/filters.py --events 300000
    python benchmarks/filters.py --db postgresql://postgres@127.0.0.1:5432/postgres
    python benchmarks/filters.py --db mysql://root@127.0.0.1:3306/mysql

The database holds ``--events`` events over 50 batches that ran one after another
(so a batch's events are a contiguous run of ids and of time), 20 stories per batch,
commands and statuses with common and rare values, two events a second. Every
filter alone and every pair of filters is timed in up to three cases, from values
anchored on the middle batch: ``many`` (both values common), ``few`` (one value
rare: ``retro``, ``failed``, the batch's first or last minutes) and ``none`` (one
value matches nothing: ``since`` in the future, a story of another batch, ...).
Each case times a first page (limit 100, newest first) and a page half-way down the
result (its cursor made from the id there); a figure is the median of several calls.

The pairs a dashboard uses (``batch_id`` with ``since``, ``until``, ``story_key`` or
``status``) carry a bound of 10 ms a page, first and deep; the full SQLite run exits
1 if one misses it. ``--quick`` and ``--db`` runs report verdicts without failing.

``--db`` takes a server URL whose database is only used to create (and finally
drop) the throwaway database ``sprint_runner_bench_filters``.
"""
from __future__ import annotations

import argparse
import importlib.util
import itertools
import os
import platform
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

if importlib.util.find_spec("sprint_runner") is None:  # a checkout, not installed
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import peewee
from bench import schema_signature  # the cache key of bench.py's files too

import sprint_runner
from sprint_runner import Store
from sprint_runner.connect import mask_url
from sprint_runner.events import EVENT_FILTERS, encode_cursor
from sprint_runner.models import Event
from sprint_runner.statements import Slot, compile_query

FILTERS = ("batch_id", "story_key", "command", "status", "since", "until")
DASHBOARD = {("batch_id", "since"), ("batch_id", "until"), ("batch_id", "story_key"),
             ("batch_id", "status")}
BOUND = 0.010  # seconds a page, for the dashboard pairs
PAGE = 100
BATCHES = 50
STORIES = 20
BASE = 1_700_000_000
CHUNK = 10_000
COMMANDS = ("create-story", "dev-story", "code-review", "dev-story")
STATUSES = ("start", "progress", "progress", "end")
BENCH_DB = "sprint_runner_bench_filters"


@dataclass(frozen=True)
class Sizes:
    events: int
    runs: int


FULL = Sizes(events=1_000_000, runs=7)
QUICK = Sizes(events=100_000, runs=3)


# -- the data ------------------------------------------------------------------------------

def batch_range(events: int, b: int) -> tuple[int, int]:
    """Return the event positions ``[first, last]`` of the ``b``-th batch (0-based)."""
    first = (b * events + BATCHES - 1) // BATCHES
    return first, ((b + 1) * events + BATCHES - 1) // BATCHES - 1


def timestamp(i: int) -> int:
    return BASE + i // 2


def event(i: int, b: int, j: int, size: int, batch_id: int) -> dict[str, Any]:
    """The ``i``-th event, the ``j``-th of its batch (of ``size``)."""
    story = j * STORIES // size
    return {"batch_id": batch_id, "epic_id": f"epic-{b}",
            "story_key": f"{b + 1}-{story + 1}-story",
            "command": "retro" if j % 1000 == 999 else COMMANDS[j % len(COMMANDS)],
            "task_id": f"task-{j // 4}",
            "status": "failed" if j % 500 == 250 else STATUSES[j % len(STATUSES)],
            "message": f"event {i}: a short progress message", "timestamp": timestamp(i)}


def populate(store: Store, events: int) -> None:
    """Write the events through ``Store.create_events``, ``CHUNK`` at a time."""
    batch_ids = [store.create_batch(10) for _ in range(BATCHES)]

    def generate() -> Iterator[dict[str, Any]]:
        for b, batch_id in enumerate(batch_ids):
            first, last = batch_range(events, b)
            size = last - first + 1
            for j in range(size):
                yield event(first + j, b, j, size, batch_id)

    stream = generate()
    while True:
        chunk = list(itertools.islice(stream, CHUNK))
        if not chunk:
            break
        store.create_events(chunk)


def sqlite_file(events: int, cache_dir: str) -> str:
    path = os.path.join(cache_dir, f"sprint_runner_filters_{events}_{schema_signature()}.db")
    if not os.path.exists(path):
        part = path + ".part"
        for leftover in (part, part + "-wal", part + "-shm"):
            if os.path.exists(leftover):
                os.unlink(leftover)
        timed_build(part, events)
        os.replace(part, path)
    return path


def timed_build(target: str, events: int) -> None:
    print(f"building {mask_url(target)} ({events:,} events)...", file=sys.stderr, flush=True)
    started = time.perf_counter()
    store = Store(target)
    try:
        populate(store, events)
    finally:
        store.close()
    print(f"  built in {time.perf_counter() - started:.1f} s", file=sys.stderr, flush=True)


@contextmanager
def server_database(url: str, name: str = BENCH_DB) -> Iterator[str]:
    """Create the throwaway benchmark database ``name`` on the server at ``url``; drop it
    after (the other benchmarks reuse this with their own name)."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme.startswith("postgres"):
        import psycopg2

        admin = psycopg2.connect(dbname=parts.path.lstrip("/") or "postgres",
                                 user=parts.username, password=parts.password,
                                 host=parts.hostname, port=parts.port or 5432)
        admin.autocommit = True
        create, drop = f'CREATE DATABASE "{name}"', f'DROP DATABASE IF EXISTS "{name}"'
    else:
        import pymysql

        admin = pymysql.connect(database=parts.path.lstrip("/") or "mysql",
                                user=parts.username or "root", password=parts.password or "",
                                host=parts.hostname, port=parts.port or 3306, autocommit=True)
        create = f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_bin"
        drop = f"DROP DATABASE IF EXISTS `{name}`"
    try:
        with admin.cursor() as cur:
            cur.execute(drop)
            cur.execute(create)
        yield urlunsplit((parts.scheme, parts.netloc, "/" + name, parts.query, ""))
    finally:
        with admin.cursor() as cur:
            cur.execute(drop)
        admin.close()


# -- the cases -----------------------------------------------------------------------------

def values(events: int) -> dict[str, tuple[Any, Any, Any]]:
    """Each filter's (many, few, none) values, anchored on the middle batch."""
    b = BATCHES // 2
    first, last = batch_range(events, b)
    return {
        "batch_id": (b + 1, None, 10**9),
        "story_key": (f"{b + 1}-{STORIES // 2}-story", None, f"{b + 2}-{STORIES // 2}-story"),
        "command": ("dev-story", "retro", "no-such-command"),
        "status": ("progress", "failed", "no-such-status"),
        "since": (timestamp(first), timestamp(last - 60), timestamp(events) + 10**6),
        "until": (timestamp(last) + 1, timestamp(first + 60), BASE),
    }


def cases(events: int) -> Iterator[tuple[tuple[str, ...], str, dict[str, Any]]]:
    """Yield (filters, case, page_events keywords) for every filter and pair of filters."""
    v = values(events)
    for size in (1, 2):
        for combo in itertools.combinations(FILTERS, size):
            yield combo, "many", {name: v[name][0] for name in combo}
            for kind, index in (("few", 1), ("none", 2)):
                # The last filter takes the rare value when it has one, else the first.
                for odd in reversed(combo):
                    if v[odd][index] is not None:
                        yield combo, kind, {name: v[name][index if name == odd else 0]
                                            for name in combo}
                        break


def matching(store: Store, kwargs: dict[str, Any]) -> tuple[int, int | None]:
    """Return how many events match and the id half-way down them (newest first)."""
    count = store.count_events(**kwargs)
    if count < 2 * PAGE:
        return count, None
    query = Event.select(Event.id)
    for name in kwargs:
        query = query.where(EVENT_FILTERS[name]())
    query = query.order_by(Event.id.desc()).limit(Slot("limit")).offset(Slot("offset"))
    statement = compile_query(store.database, query)
    row = store.database.execute_sql(
        statement.sql, statement.bind({**kwargs, "limit": 1, "offset": count // 2})).fetchone()
    return count, int(row[0])


def time_page(store: Store, kwargs: dict[str, Any], cursor: str | None, runs: int) -> float:
    store.page_events(limit=PAGE, cursor=cursor, **kwargs)  # warm the statement and cache
    samples = []
    for _ in range(runs):
        started = time.perf_counter()
        store.page_events(limit=PAGE, cursor=cursor, **kwargs)
        samples.append(time.perf_counter() - started)
    return statistics.median(samples)


@dataclass
class Result:
    combo: tuple[str, ...]
    case: str
    kwargs: dict[str, Any]
    matches: int
    first: float
    deep: float | None

    @property
    def dashboard(self) -> bool:
        return self.combo in DASHBOARD

    @property
    def passed(self) -> bool:
        return max(self.first, self.deep or 0.0) < BOUND


def measure(store: Store, events: int, runs: int, only: str | None) -> list[Result]:
    results = []
    for combo, case, kwargs in cases(events):
        label = "+".join(combo)
        if only and only not in label:
            continue
        count, middle = matching(store, kwargs)
        first = time_page(store, kwargs, None, runs)
        deep = (None if middle is None
                else time_page(store, kwargs, encode_cursor(middle, True), runs))
        results.append(Result(combo, case, kwargs, count, first, deep))
        print(f"  {label} {case}: {count:,} rows, {fmt(first)} / {fmt(deep)}",
              file=sys.stderr, flush=True)
    return results


# -- the report ----------------------------------------------------------------------------

def fmt(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    ms = seconds * 1e3
    return f"{ms:.2f} ms" if ms < 10 else f"{ms:.1f} ms" if ms < 100 else f"{ms:.0f} ms"


def describe(kwargs: dict[str, Any], events: int) -> str:
    v = values(events)
    parts = []
    for name, value in kwargs.items():
        if name in ("since", "until"):
            kind = ("batch start", "batch end")[name == "until"] if value == v[name][0] else \
                ("last minute", "first minute")[name == "until"] if value == v[name][1] else \
                ("future", "past")[name == "until"]
            parts.append(f"{name}={kind}")
        elif name == "batch_id" and value == v[name][2]:
            parts.append("batch_id=missing")
        elif name == "story_key" and value == v[name][2]:
            parts.append("story_key=other batch's")
        else:
            parts.append(f"{name}={value}")
    return ", ".join(parts)


def report(results: list[Result], events: int, runs: int, target: str) -> list[Result]:
    print(f"{machine_line()}; {target}")
    print(f"({events:,} events, {BATCHES} batches; ms per page of {PAGE}, newest first, "
          f"median of {runs} calls; deep = half-way down the result)\n")
    print("| filters | case | values | matches | first page | deep page | bound | |")
    print("|---|---|---|---|---|---|---|---|")
    missed = []
    for r in results:
        verdict = ""
        if r.dashboard:
            verdict = "PASS" if r.passed else "FAIL"
            if not r.passed:
                missed.append(r)
        print(f"| {' + '.join(r.combo)} | {r.case} | {describe(r.kwargs, events)} | "
              f"{r.matches:,} | {fmt(r.first)} | {fmt(r.deep)} | "
              f"{'< 10 ms' if r.dashboard else '—'} | {verdict} |")
    slowest = max(results, key=lambda r: max(r.first, r.deep or 0.0), default=None)
    if slowest is not None:
        print(f"\nslowest: {' + '.join(slowest.combo)} ({slowest.case}): "
              f"{fmt(max(slowest.first, slowest.deep or 0.0))}")
    print("dashboard pairs: " + ("all under 10 ms a page" if not missed else
                                 "missed by " + ", ".join(f"{'+'.join(r.combo)} ({r.case})"
                                                          for r in missed)))
    return missed


def machine_line() -> str:
    return (f"{platform.machine()}, {os.cpu_count()} cores, {platform.system()} "
            f"{platform.release()}; Python {platform.python_version()}, SQLite "
            f"{sqlite3.sqlite_version}, peewee {getattr(peewee, '__version__', '?')}; "
            f"sprint_runner {getattr(sprint_runner, '__version__', '?')}")


def server_version(store: Store) -> str:
    (version,) = store.database.execute_sql("SELECT VERSION()").fetchone()
    return str(version).split(" on ")[0].split(",")[0]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="100,000 events, no verdicts")
    parser.add_argument("--events", type=int, help="events in the database")
    parser.add_argument("--runs", type=int, help="calls per figure (default 7, 3 with --quick)")
    parser.add_argument("--db", metavar="URL", help="a PostgreSQL or MySQL/MariaDB server")
    parser.add_argument("--cache-dir", default=tempfile.gettempdir(),
                        help="where the SQLite file is cached (full mode)")
    parser.add_argument("--only", metavar="TEXT", help="only filter sets containing TEXT")
    args = parser.parse_args(argv)
    sizes = QUICK if args.quick else FULL
    events, runs = args.events or sizes.events, args.runs or sizes.runs
    if events < BATCHES * 1000:
        parser.error(f"--events must be at least {BATCHES * 1000}")
    if args.db:
        with server_database(args.db) as url:
            timed_build(url, events)
            store = Store(url)
            try:
                target = f"{store.backend} {server_version(store)}"
                missed = report(measure(store, events, runs, args.only), events, runs, target)
            finally:
                store.close()
        return 0
    with tempfile.TemporaryDirectory(prefix="sprint_runner_filters_") as tmp:
        path = sqlite_file(events, tmp if args.quick else args.cache_dir)
        store = Store(path)
        try:
            missed = report(measure(store, events, runs, args.only), events, runs,
                            "SQLite file")
        finally:
            store.close()
    return 1 if missed and not args.quick else 0


if __name__ == "__main__":
    raise SystemExit(main())
