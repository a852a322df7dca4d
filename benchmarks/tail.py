#!/usr/bin/env python
"""Time a ``tail_events`` poll, before-style (the plain id query) and as it is now.

    python benchmarks/tail.py                  # 1,000,000 events (SQLite file cached in /tmp)
    python benchmarks/tail.py --quick          # 50,000 events, a few seconds
    python benchmarks/tail.py --db postgresql://postgres@127.0.0.1:5432/postgres
    python benchmarks/tail.py --db mysql://root@127.0.0.1:3306/mysql

The table is the one ``filters.py`` builds (50 batches one after another). Polls:
idle (nothing after the cursor), unfiltered and by batch; a catch-up of 1,000
consecutive new events; and a catch-up of one batch's 1,000 events interleaved
with another batch's (its ids are not consecutive, so a server reads the gaps of
the id range). "before" is the query the tail ran before it learnt to hold back
(``Store._event_chunk``); "tail" is ``tail_events``. On a server it also times
the delay a held gap adds: a second connection inserts and holds its transaction
open while the store commits a later event; a poller polling every ``--interval``
seconds records when the tail returns the held event after the holder commits, and
when it goes past a held insert that rolls back.

``--db`` takes a server URL whose database is only used to create (and finally
drop) the throwaway database ``sprint_runner_bench_tail``. The script always exits 0.
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parent))
import filters  # noqa: E402 - the same table, its build and its server database

from sprint_runner import Store  # noqa: E402

BENCH_DB = "sprint_runner_bench_tail"
FULL_EVENTS, QUICK_EVENTS = 1_000_000, 50_000


def median_time(call: Callable[[], Any], runs: int) -> float:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def fmt(seconds: float) -> str:
    return f"{seconds * 1e6:.0f} µs" if seconds < 1e-3 else f"{seconds * 1e3:.2f} ms"


def before(store: Store, after: int, batch_id: int | None, limit: int) -> list[Any]:
    filters_ = {} if batch_id is None else {"batch_id": batch_id}
    return store._event_chunk(filters_, False, after, limit)


def polls(store: Store, runs: int) -> list[tuple[str, float, float]]:
    # Two batches' events interleaved at the end of the table, for the filtered catch-up.
    mine, other = store.create_batch(1), store.create_batch(1)
    start = store.page_events(limit=1)["events"][0]["id"]
    store.create_events([{"batch_id": mine if i % 2 == 0 else other, "epic_id": "e",
                          "story_key": "k", "command": "dev-story", "task_id": "t",
                          "status": "progress", "message": f"i{i}", "timestamp": 0}
                         for i in range(2000)])
    store.database.execute_sql("ANALYZE TABLE events" if store.backend == "mysql"
                               else "ANALYZE events")  # fresh statistics, stable plans
    last = store.page_events(limit=1)["events"][0]["id"]
    cases: list[tuple[str, int, int | None, int]] = [
        ("idle poll (nothing new)", last, None, 1000),
        ("idle poll, batch_id", last, mine, 1000),
        ("catch-up, 1,000 consecutive events", last - 1000, None, 1000),
        ("catch-up, 1,000 events of a batch interleaved with another's", start, mine, 1000),
    ]
    results = []
    for name, after, batch_id, limit in cases:
        expected = before(store, after, batch_id, limit)
        assert store.tail_events(after, batch_id=batch_id, limit=limit) == expected, name
        old = median_time(lambda: before(store, after, batch_id, limit), runs)
        new = median_time(lambda: store.tail_events(after, batch_id=batch_id, limit=limit),
                          runs)
        results.append((name, old, new))
    return results


def _session(url: str) -> Any:
    parts = urlsplit(url)
    if parts.scheme.startswith("postgres"):
        import psycopg2

        conn = psycopg2.connect(dbname=parts.path.lstrip("/"), user=parts.username,
                                password=parts.password, host=parts.hostname,
                                port=parts.port or 5432)
        conn.autocommit = True
        return conn
    import pymysql

    return pymysql.connect(database=parts.path.lstrip("/"), user=parts.username or "root",
                           password=parts.password or "", host=parts.hostname,
                           port=parts.port or 3306, autocommit=True)


def held_gap_delays(store: Store, url: str, interval: float, rounds: int) -> dict[str, float]:
    """Median seconds from the holder's COMMIT (ROLLBACK) to the tail returning the events."""
    holder = _session(url)
    batch = store.create_batch(1)
    sql = ("INSERT INTO events (batch_id, timestamp, epic_id, story_key, command, task_id, "
           "status, message) VALUES (%s, 0, 'e', 'k', 'dev-story', 't', 'progress', 'held')")
    delays: dict[str, list[float]] = {"COMMIT": [], "ROLLBACK": []}
    try:
        for r in range(rounds):
            end = "COMMIT" if r % 2 == 0 else "ROLLBACK"
            after = store.page_events(limit=1)["events"][0]["id"]
            with holder.cursor() as cur:
                cur.execute("BEGIN")
                cur.execute(sql, (batch,))
            later = store.create_event(batch, None, None, "e", "k", "dev-story", "t",
                                       "progress", "later")
            got: list[float] = []

            def poll(after: int = after, later: int = later, got: list[float] = got) -> None:
                while True:
                    rows = store.tail_events(after)
                    if rows and rows[-1]["id"] >= later:
                        got.append(time.perf_counter())
                        return
                    time.sleep(interval)

            poller = threading.Thread(target=poll)
            poller.start()
            time.sleep(max(3 * interval, 0.2))  # the poller sees the gap and holds
            assert not got, "the tail went past an open transaction"
            with holder.cursor() as cur:
                ended = time.perf_counter()
                cur.execute(end)
            poller.join(store._tail.gap_timeout + 10)
            delays[end].append(got[0] - ended)
    finally:
        holder.close()
    return {k: statistics.median(v) for k, v in delays.items() if v}


def report(target: str, events: int, results: list[tuple[str, float, float]],
           delays: dict[str, float] | None, interval: float) -> None:
    print(f"\n{filters.machine_line()}")
    print(f"{target}, {events:,} events\n")
    print("| poll | before (plain id query) | tail_events | ratio |")
    print("|---|---|---|---|")
    for name, old, new in results:
        print(f"| {name} | {fmt(old)} | {fmt(new)} | {new / old:.2f}x |")
    if delays:
        print(f"\nheld gap, poller every {interval * 1e3:.0f} ms: the tail returns the held "
              f"event {fmt(delays.get('COMMIT', float('nan')))} after its COMMIT and goes "
              f"past a rolled-back one {fmt(delays.get('ROLLBACK', float('nan')))} after "
              "its ROLLBACK (medians)")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_EVENTS:,} events")
    parser.add_argument("--events", type=int, help="events in the database")
    parser.add_argument("--runs", type=int, help="calls per figure (default 51, 11 quick)")
    parser.add_argument("--db", metavar="URL", help="a PostgreSQL or MySQL/MariaDB server")
    parser.add_argument("--interval", type=float, default=0.15,
                        help="the held-gap poller's interval in seconds (default 0.15: "
                             "InnoDB refreshes INNODB_TRX only after 0.1 s unread)")
    parser.add_argument("--cache-dir", default=tempfile.gettempdir(),
                        help="where the SQLite file is cached (full mode)")
    args = parser.parse_args(argv)
    events = args.events or (QUICK_EVENTS if args.quick else FULL_EVENTS)
    runs = args.runs or (11 if args.quick else 51)
    rounds = 4 if args.quick else 10
    if events < filters.BATCHES * 1000:
        parser.error(f"--events must be at least {filters.BATCHES * 1000}")
    if args.db:
        with filters.server_database(args.db, BENCH_DB) as url:
            filters.timed_build(url, events)
            store = Store(url, gap_timeout=5.0)
            try:
                target = f"{store.backend} {filters.server_version(store)}"
                results = polls(store, runs)
                delays = held_gap_delays(store, url, args.interval, rounds)
            finally:
                store.close()
        report(target, events, results, delays, args.interval)
        return 0
    with tempfile.TemporaryDirectory(prefix="sprint_runner_tail_") as tmp:
        cached = filters.sqlite_file(events, tmp if args.quick else args.cache_dir)
        path = os.path.join(tmp, "tail.db")  # a copy: the benchmark writes
        shutil.copyfile(cached, path)
        store = Store(path)
        try:
            results = polls(store, runs)
        finally:
            store.close()
    report("SQLite file", events, results, None, args.interval)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
