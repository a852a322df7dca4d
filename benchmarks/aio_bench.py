#!/usr/bin/env python
"""Log events from asyncio code five ways, in one run on one file, and print the table.

    python benchmarks/aio_bench.py              # 10,000 events per cell, the README table
    python benchmarks/aio_bench.py --quick      # a few seconds, tiny sizes
    python benchmarks/aio_bench.py --db URL     # (a)-(c) on a PostgreSQL/MySQL server
                                                # (a throwaway database, dropped after)

Contenders, each with 1, 8 and 64 coroutines sharing the events (each coroutine awaits
its writes one after the other):

- (a) ``AsyncStore.create_event``: group commit on the writer thread;
- (b) ``Store.create_event`` called on the loop (blocks it for every write);
- (c) ``Store.create_event`` through ``asyncio.to_thread`` (the default executor);
- (d) aiosqlite, one connection, one transaction (INSERT + COMMIT) per event, an
  ``asyncio.Lock`` keeping each event's transaction its own;
- (0) no writes at all: the ticker's lag on this machine, the floor of the others;
- (e) raw ``sqlite3`` ``executemany`` of all the events in one transaction, on the
  loop: the limit, not a way to log from many coroutines.

Per cell: events/s over the whole cell, each call's latency (p50, p99), and the lag of
a 1 ms ticker on the same loop (its worst and p99 lateness). It measures; it does not
judge (the exit status is 0 whenever it ran).
"""
from __future__ import annotations

import argparse
import asyncio
import os
import sqlite3
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractContextManager
from typing import Any
from urllib.parse import urlsplit

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from sprint_runner import Store, aio  # noqa: E402
from sprint_runner.connect import DEFAULT_BUSY_TIMEOUT, sqlite_pragmas  # noqa: E402

BENCH_DB = "sprint_runner_bench_aio"
EVENT = ("2a", "2a-1", "dev-story", "setup", "progress")
INSERT = ("INSERT INTO events (batch_id, story_id, command_id, timestamp, epic_id, story_key, "
          "command, task_id, status, message, event_type, payload_json) "
          "VALUES (?, NULL, NULL, ?, ?, ?, ?, ?, ?, ?, '', NULL)")


def pct(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else 0.0


class Ticker:
    """A 1 ms ticker on the loop: how late each tick woke up."""

    def __init__(self) -> None:
        self.late: list[float] = []
        self._task: asyncio.Task[None] | None = None
        self._since = time.perf_counter()

    async def _run(self) -> None:
        while True:
            self._since = time.perf_counter()
            await asyncio.sleep(0.001)
            self.late.append(max(0.0, time.perf_counter() - self._since - 0.001))

    def __enter__(self) -> Ticker:
        self._task = asyncio.ensure_future(self._run())
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        # The tick still waiting counts too (a loop blocked to the end never ran it).
        self.late.append(max(0.0, time.perf_counter() - self._since - 0.001))


async def cell(write: Callable[[int, int], Awaitable[object]], coroutines: int,
               events: int) -> dict[str, float]:
    """Run ``events`` writes from ``coroutines`` coroutines; return the cell's figures."""
    latencies: list[float] = []
    each = events // coroutines

    async def worker(n: int) -> None:
        for i in range(each):
            start = time.perf_counter()
            await write(n, i)
            latencies.append(time.perf_counter() - start)

    await asyncio.sleep(0.01)
    with Ticker() as ticker:
        await asyncio.sleep(0.005)
        start = time.perf_counter()
        await asyncio.gather(*(worker(n) for n in range(coroutines)))
        wall = time.perf_counter() - start
    return {"rate": each * coroutines / wall, "p50": pct(latencies, 0.5) * 1e3,
            "p99": pct(latencies, 0.99) * 1e3, "lag_max": max(ticker.late, default=0) * 1e3,
            "lag_p99": pct(ticker.late, 0.99) * 1e3}


async def run(target: str, events: int, levels: Sequence[int], sqlite: bool
              ) -> list[tuple[str, int, dict[str, float]]]:
    rows: list[tuple[str, int, dict[str, float]]] = []
    sync = Store(target)
    batch = sync.create_batch(1)

    def args(n: int, i: int) -> tuple[Any, ...]:
        return (batch, None, None, *EVENT, f"{n}:{i}")

    with Ticker() as idle:  # the machine's own floor: the ticker on an idle loop
        await asyncio.sleep(0.5)
    rows.append(("(0) idle loop, no writes", 0, {
        "rate": 0.0, "p50": float("nan"), "p99": float("nan"),
        "lag_max": max(idle.late, default=0) * 1e3, "lag_p99": pct(idle.late, 0.99) * 1e3}))
    async with aio.AsyncStore(target) as store:
        for level in levels:
            rows.append(("(a) AsyncStore", level,
                         await cell(lambda n, i: store.create_event(*args(n, i)), level, events)))

    async def on_loop(n: int, i: int) -> int:
        return sync.create_event(*args(n, i))

    for level in levels:
        rows.append(("(b) Store on the loop", level, await cell(on_loop, level, events)))
    for level in levels:
        rows.append(("(c) Store via to_thread", level, await cell(
            lambda n, i: asyncio.to_thread(sync.create_event, *args(n, i)), level, events)))
    sync.close()
    if not sqlite:
        return rows

    import aiosqlite

    conn = await aiosqlite.connect(target, isolation_level=None)
    for name, value in sqlite_pragmas(DEFAULT_BUSY_TIMEOUT, "NORMAL"):
        await conn.execute(f"PRAGMA {name} = {value}")
    lock = asyncio.Lock()

    async def one_transaction(n: int, i: int) -> None:
        async with lock:
            await conn.execute("BEGIN IMMEDIATE")
            await conn.execute(INSERT, (batch, int(time.time()), *EVENT, f"{n}:{i}"))
            await conn.execute("COMMIT")

    for level in levels:
        rows.append(("(d) aiosqlite, a transaction per event", level,
                     await cell(one_transaction, level, events)))
    await conn.close()

    raw = sqlite3.connect(target, isolation_level=None)
    for name, value in sqlite_pragmas(DEFAULT_BUSY_TIMEOUT, "NORMAL"):
        raw.execute(f"PRAGMA {name} = {value}")
    data = [(batch, int(time.time()), *EVENT, f"raw:{i}") for i in range(events)]
    with Ticker() as ticker:
        await asyncio.sleep(0.005)
        start = time.perf_counter()
        raw.execute("BEGIN IMMEDIATE")
        raw.executemany(INSERT, data)
        raw.execute("COMMIT")
        wall = time.perf_counter() - start
        await asyncio.sleep(0.005)
    raw.close()
    rows.append(("(e) sqlite3 executemany, one transaction", 1, {
        "rate": events / wall, "p50": float("nan"), "p99": float("nan"),
        "lag_max": max(ticker.late, default=0) * 1e3, "lag_p99": pct(ticker.late, 0.99) * 1e3}))
    return rows


def server_database(url: str) -> AbstractContextManager[str]:
    """Create the throwaway benchmark database on the server at ``url``; drop it after."""
    import filters  # the benchmarks' one helper for throwaway server databases

    return filters.server_database(url, BENCH_DB)


def table(rows: list[tuple[str, int, dict[str, float]]]) -> str:
    def ms(x: float) -> str:
        return "-" if x != x else f"{x:.2f}"
    lines = ["| contender | coroutines | events/s | p50 ms | p99 ms | loop lag max ms "
             "| loop lag p99 ms |", "|---|---:|---:|---:|---:|---:|---:|"]
    for name, level, f in rows:
        lines.append(f"| {name} | {level} | {f['rate']:,.0f} | {ms(f['p50'])} | "
                     f"{ms(f['p99'])} | {ms(f['lag_max'])} | {ms(f['lag_p99'])} |")
    return "\n".join(lines)


def verdicts(rows: list[tuple[str, int, dict[str, float]]], top: int) -> list[str]:
    rate = {(name[:3], level): f["rate"] for name, level, f in rows}
    out = []
    a = rate.get(("(a)", top))
    if a is None:
        return out
    for other, target in (("(b)", 5.0), ("(d)", 5.0), ("(c)", None)):
        if (other, top) in rate:
            ratio = a / rate[(other, top)]
            goal = f" (target >= {target:g}x)" if target else ""
            out.append(f"(a)/{other} at {top} coroutines: {ratio:.1f}x{goal}")
    if ("(e)", 1) in rate:
        out.append(f"(a)/(e) at {top} coroutines: {a / rate[('(e)', 1)]:.2f}x (target >= 0.5x)")
    lag = max(f["lag_p99"] for name, _, f in rows if name.startswith("(a)"))
    floor = next(f["lag_p99"] for name, _, f in rows if name.startswith("(0)"))
    out.append(f"(a) loop lag p99, worst cell: {lag:.2f} ms (target <= 2 ms; "
               f"an idle loop's: {floor:.2f} ms)")
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes, a few seconds")
    parser.add_argument("--events", type=int, help="events per cell (default 10,000; 640 quick)")
    parser.add_argument("--db", metavar="URL", help="a PostgreSQL or MySQL/MariaDB server")
    parser.add_argument("--dir", default=tempfile.gettempdir(), help="where the SQLite file goes")
    options = parser.parse_args(argv)
    events = options.events or (640 if options.quick else 10_000)
    levels = (1, 8, 64)
    events -= events % 64
    if options.db:
        with server_database(options.db) as url:
            rows = asyncio.run(run(url, events, levels, sqlite=False))
    else:
        with tempfile.TemporaryDirectory(dir=options.dir) as folder:
            rows = asyncio.run(run(os.path.join(folder, "bench.db"), events, levels,
                                   sqlite=True))
    print(f"{events:,} events per cell; Python {sys.version.split()[0]}, "
          f"{os.cpu_count()} CPUs, {options.db and urlsplit(options.db).scheme or 'sqlite'}")
    print(table(rows))
    for line in verdicts(rows, levels[-1]):
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
