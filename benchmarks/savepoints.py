#!/usr/bin/env python
"""Time PostgreSQL's per-statement savepoint inside ``transaction()``: with and without.

    PYTHONPATH=$PWD python benchmarks/savepoints.py [ADMIN_URL] [--calls N] [--rounds R]

ADMIN_URL defaults to $SPRINT_RUNNER_TEST_PG or postgresql://postgres@127.0.0.1:5432/postgres;
a throwaway database is created there and dropped afterwards. Each round runs, back to
back in rotating order, N ``create_event`` calls inside one ``transaction()`` with the
statement savepoint (what the store does: in the statement's own round trip), with it
in a round trip of its own (what psycopg 3 gets, and what releasing each savepoint
right after its statement would cost), and without it (PostgreSQL's own behaviour,
where a failed statement aborts the transaction), plus N calls outside any transaction
for contrast. Prints the median time per call over the rounds and the ratio.
"""
from __future__ import annotations

import argparse
import os
import statistics
import time
import uuid
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from sprint_runner import Store


def _admin(url: str) -> Any:
    import psycopg2

    parts = urlsplit(url)
    conn = psycopg2.connect(dbname=parts.path.lstrip("/") or "postgres", user=parts.username,
                            password=parts.password, host=parts.hostname,
                            port=parts.port or 5432)
    conn.autocommit = True
    return conn


def _in_transaction(store: Store, batch: int, calls: int, isolate: bool,
                    one_trip: bool = True) -> float:
    store._executor._isolate_statements = isolate
    store._executor._savepoint_in_statement = one_trip
    start = time.perf_counter()
    with store.transaction():
        for i in range(calls):
            store.create_event(batch, None, None, "e", "k", "c", "t", "s", str(i))
    return (time.perf_counter() - start) / calls


def _outside(store: Store, batch: int, calls: int) -> float:
    start = time.perf_counter()
    for i in range(calls):
        store.create_event(batch, None, None, "e", "k", "c", "t", "s", str(i))
    return (time.perf_counter() - start) / calls


def main(argv: list[str] | None = None) -> int:
    """Run the comparison and print it."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url", nargs="?", default=os.environ.get(
        "SPRINT_RUNNER_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres"))
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=9)
    args = parser.parse_args(argv)
    admin = _admin(args.url)
    name = f"sprint_runner_bench_{uuid.uuid4().hex[:8]}"
    admin.cursor().execute(f'CREATE DATABASE "{name}"')
    parts = urlsplit(args.url)
    try:
        store = Store(urlunsplit((parts.scheme, parts.netloc, "/" + name, "", "")))
        batch = store.create_batch(1)
        modes = {
            "in transaction(), savepoint per statement": lambda: _in_transaction(
                store, batch, args.calls, True),
            "in transaction(), savepoint in its own trip": lambda: _in_transaction(
                store, batch, args.calls, True, False),
            "in transaction(), no savepoint": lambda: _in_transaction(
                store, batch, args.calls, False),
            "outside a transaction (contrast)": lambda: _outside(store, batch, args.calls),
        }
        times: dict[str, list[float]] = {mode: [] for mode in modes}
        names = list(modes)
        for round_ in range(args.rounds):
            for mode in names[round_ % len(names):] + names[:round_ % len(names)]:
                times[mode].append(modes[mode]())
        store.close()
        base = statistics.median(times["in transaction(), no savepoint"])
        print(f"create_event on PostgreSQL, {args.calls} calls x {args.rounds} rounds "
              "(median per call)")
        for mode, values in times.items():
            median = statistics.median(values)
            print(f"  {mode:45s} {median * 1e6:8.1f} us  {median / base:5.2f}x")
    finally:
        admin.cursor().execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
