#!/usr/bin/env python3
"""Concurrency proofs for the store: many processes and threads on one database.

Each proof starts its workers together, counts every error they raise, then checks
the database through a fresh store:

- ``first-open``: N processes open a store on an empty database at the same moment
  (each may be the one that creates the schema) and write through it.
- ``writers``: N writer processes x M ``create_event`` calls while a reader process
  pages the same events (``page_events`` cursors in both directions, ``get_events``):
  every event present exactly once, no page pass repeats a row or skips one that
  was committed before it began, the database passes its integrity check.
- ``rmw``: N processes x M read-modify-write transactions on one counter
  (``get_batch`` then ``update_batch(cycles_completed=value + 1)`` inside
  ``store.transaction()``): the final counter is exact.
- ``kill``: a writer process is killed with SIGKILL at a random moment, again and
  again, while another writer keeps going: every event whose call had returned is
  present, ``create_events`` is all-or-nothing, the file passes
  ``PRAGMA integrity_check``. Always on a SQLite file: it proves the file survives.
- ``threads``: N threads sharing one store write events and increment the counter.

    python benchmarks/stress.py --quick        # a few seconds per proof (CI)
    python benchmarks/stress.py                # the issue's full counts
    python benchmarks/stress.py --db postgresql://user@host:5432/scratch

``--db`` must name a scratch database: the proofs add batches and events and delete
nothing. Without it every proof gets its own temporary SQLite file. The exit status
is 1 if any proof fails. ``tests/test_concurrency.py`` runs the same functions.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib.util
import itertools
import multiprocessing
import os
import platform
import queue
import random
import signal
import sqlite3
import statistics
import sys
import tempfile
import threading
import time
import traceback
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if importlib.util.find_spec("sprint_runner") is None:  # a checkout, not installed
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from sprint_runner import Store
from sprint_runner.connect import backend_of, mask_url, open_database

SPAWN = multiprocessing.get_context("spawn")
START_TIMEOUT = 120.0
"""Seconds a worker may take to start (spawn, import, open its store)."""
SHOWN_ERRORS = 5
"""Error messages kept per worker; every error is counted."""
PAGE = 250
VICTIM_BATCH_EVERY = 10
VICTIM_BATCH_SIZE = 20

Report = dict[str, Any]


@dataclass(frozen=True)
class Sizes:
    """How much work each proof does."""

    writers: int
    server_writers: int
    events: int
    rmw_processes: int
    rmw_transactions: int
    kills: int
    threads: int
    thread_events: int
    thread_increments: int


QUICK = Sizes(writers=4, server_writers=8, events=500, rmw_processes=4, rmw_transactions=100,
              kills=5, threads=8, thread_events=250, thread_increments=25)
LONG = Sizes(writers=4, server_writers=8, events=2000, rmw_processes=4, rmw_transactions=500,
             kills=20, threads=8, thread_events=1000, thread_increments=100)


@dataclass
class Result:
    """What a proof measured, and every way it failed."""

    proof: str
    backend: str
    size: str
    seconds: float = 0.0
    errors: int = 0
    problems: list[str] = field(default_factory=list)
    figures: dict[str, float] = field(default_factory=dict)
    summary: str = ""

    @property
    def ok(self) -> bool:
        """True when no worker raised and every check held."""
        return self.errors == 0 and not self.problems

    def describe(self) -> str:
        """Return the result, its figures and its problems as text."""
        lines = [(f"{self.proof} on {self.backend} ({self.size}): "
                  f"{'ok' if self.ok else 'FAILED'}, {self.errors} errors, "
                  f"{self.seconds:.1f}s; {self.summary}")]
        lines += [f"  - {p}" for p in self.problems]
        return "\n".join(lines)


# -- in the workers ----------------------------------------------------------------------


def _report(worker: str) -> Report:
    return {"worker": worker, "errors": 0, "messages": [], "ids": [], "latencies": [],
            "start": None, "end": None}


def _note(report: Report, exc: BaseException) -> None:
    report["errors"] += 1
    if len(report["messages"]) < SHOWN_ERRORS:
        where = traceback.extract_tb(exc.__traceback__)
        at = f" at {Path(where[-1].filename).name}:{where[-1].lineno}" if where else ""
        text = "".join(traceback.format_exception_only(type(exc), exc)).strip()
        report["messages"].append(f"{report['worker']}: {text}{at}")


def _event_args(batch_id: int, who: str, seq: int) -> tuple[Any, ...]:
    return (batch_id, None, None, "stress", who, "create_event", str(seq), "progress",
            f"{who}-{seq}")


def _close(store: Store | None, report: Report) -> None:
    if store is None:
        return
    try:
        store.close()
    except Exception as exc:  # noqa: BLE001 - counted and surfaced like any other
        _note(report, exc)


class _Working:
    """A worker's frame: it counts the error that ends the worker, closes the
    worker's store and sends the report, so the parent sees every failure."""

    def __init__(self, report: Report, send: Callable[[Report], object],
                 store: Store | None = None) -> None:
        self.report, self.send, self.store = report, send, store

    def open(self, target: str) -> Store:
        self.store = Store(target)
        return self.store

    def __enter__(self) -> _Working:
        return self

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> bool:
        if exc is not None:
            _note(self.report, exc)
        _close(self.store, self.report)
        self.send(self.report)
        return True  # the error travels in the report, surfaced by the parent


def _writer(target: str, who: str, batch_id: int, count: int | None, barrier: Any,
            stop: Any, reports: Any) -> None:
    """Call create_event ``count`` times (or until ``stop``); report ids and latencies."""
    report = _report(who)
    with _Working(report, reports.put) as working:
        store = working.open(target)
        if barrier is not None:
            barrier.wait(START_TIMEOUT)
        report["start"] = time.monotonic()
        ids, latencies = report["ids"], report["latencies"]
        for seq in itertools.count():
            if seq == count or (stop is not None and stop.is_set()):
                break
            began = time.perf_counter()
            try:
                ids.append(store.create_event(*_event_args(batch_id, who, seq)))
            except Exception as exc:  # noqa: BLE001 - every error is counted
                _note(report, exc)
            latencies.append(time.perf_counter() - began)
        report["end"] = time.monotonic()


def _page_through(store: Store, batch_id: int, newest_first: bool) -> tuple[list[int], int]:
    ids: list[int] = []
    cursor = None
    pages = 0
    while True:
        page = store.page_events(limit=PAGE, cursor=cursor, batch_id=batch_id,
                                 newest_first=newest_first)
        pages += 1
        ids.extend(e["id"] for e in page["events"])
        cursor = page["next_cursor"]
        if cursor is None:
            return ids, pages


def _reader(target: str, batch_id: int, barrier: Any, stop: Any, reports: Any) -> None:
    """Page the batch's events until ``stop``, then once more; report what was wrong."""
    report = _report("reader")
    report.update(passes=0, pages=0, rows=0, final=0, anomalies=0)

    def anomaly(text: str) -> None:
        report["anomalies"] += 1
        if len(report["messages"]) < SHOWN_ERRORS:
            report["messages"].append(f"reader: {text}")

    with _Working(report, reports.put) as working:
        store = working.open(target)
        barrier.wait(START_TIMEOUT)
        previous: set[int] = set()
        newest_first = True
        while True:
            last = stop.is_set()  # the pass after the writers finish sees every event
            ids, pages = _page_through(store, batch_id, newest_first)
            pairs = itertools.pairwise(ids)
            if not all((a > b) if newest_first else (a < b) for a, b in pairs):
                anomaly(f"pass {report['passes']} (newest_first={newest_first}) is not in "
                        "strict id order: a row repeated or pages overlapped")
            seen = set(ids)
            skipped = previous - seen
            if skipped:
                anomaly(f"pass {report['passes']} skipped {len(skipped)} events an earlier "
                        f"pass had seen, e.g. id {min(skipped)}")
            recent = [(e["timestamp"], e["id"]) for e in store.get_events(limit=100)]
            if not all(a > b for a, b in itertools.pairwise(recent)):
                anomaly("get_events is not ordered newest first (timestamp, id)")
            previous = seen
            report["passes"] += 1
            report["pages"] += pages
            report["rows"] += len(ids)
            newest_first = not newest_first
            if last:
                report["final"] = len(ids)
                break


def _incrementer(target: str, who: str, batch_id: int, count: int, locked: bool,
                 barrier: Any, reports: Any) -> None:
    """Add one to the batch's cycles_completed ``count`` times, read-modify-write
    (without a transaction unless ``locked``: the control that must lose updates)."""
    report = _report(who)
    report["read"] = []
    with _Working(report, reports.put) as working:
        store = working.open(target)
        barrier.wait(START_TIMEOUT)
        report["start"] = time.monotonic()
        for _ in range(count):
            began = time.perf_counter()
            try:
                report["read"].append(_increment(store, batch_id, locked))
            except Exception as exc:  # noqa: BLE001 - every error is counted
                _note(report, exc)
            report["latencies"].append(time.perf_counter() - began)
        report["end"] = time.monotonic()


def _increment(store: Store, batch_id: int, locked: bool = True) -> int:
    """Add one to the batch's cycles_completed in a transaction; return the value read."""
    with store.transaction() if locked else contextlib.nullcontext():
        batch = store.get_batch(batch_id)
        if batch is None:
            raise LookupError(f"batch {batch_id} vanished")
        value: int = batch["cycles_completed"]
        store.update_batch(batch_id, cycles_completed=value + 1)
    return value


def _opener(target: str, who: str, barrier: Any, reports: Any) -> None:
    """Open a store (creating the schema if nobody has yet) and write one event."""
    report = _report(who)
    with _Working(report, reports.put) as working:
        barrier.wait(START_TIMEOUT)
        report["start"] = time.monotonic()
        store = working.open(target)
        batch_id = store.create_batch(1)
        report["ids"].append(store.create_event(*_event_args(batch_id, who, 0)))
        report["batch"] = batch_id
        report["end"] = time.monotonic()


def _victim(path: str, batch_id: int, sender: Any) -> None:
    """Write events until killed, sending each call's result as soon as it returns.

    Every tenth call is a ``create_events`` of twenty events, so kills also land
    inside multi-row transactions.
    """
    try:
        store = Store(path)
        seq = 0
        for op in itertools.count():
            if op % VICTIM_BATCH_EVERY == VICTIM_BATCH_EVERY - 1:
                store.create_events(
                    {"batch_id": batch_id, "epic_id": "stress", "story_key": "victim",
                     "command": "create_events", "task_id": str(s), "status": "progress",
                     "message": f"victim-{s}"}
                    for s in range(seq, seq + VICTIM_BATCH_SIZE))
                sender.send(("many", seq, VICTIM_BATCH_SIZE))
                seq += VICTIM_BATCH_SIZE
            else:
                event_id = store.create_event(*_event_args(batch_id, "victim", seq))
                sender.send(("one", seq, event_id))
                seq += 1
    except BaseException as exc:
        report = _report("victim")
        _note(report, exc)
        sender.send(("error", report["messages"][0], None))
        raise


# -- in the parent -----------------------------------------------------------------------


def _start(processes: Sequence[Any], barrier: Any, result: Result) -> None:
    for process in processes:
        process.start()
    try:
        barrier.wait(START_TIMEOUT)
    except threading.BrokenBarrierError:
        result.problems.append("the workers did not all start (barrier broken)")


def _collect(reports: Any, pending: dict[str, Any], deadline: float,
             result: Result) -> list[Report]:
    """Return the reports of the ``pending`` processes (by worker name), noting the
    ones that died without reporting or missed the deadline."""
    got: list[Report] = []
    pending = dict(pending)
    dead_since: dict[str, float] = {}
    while pending:
        try:
            report = reports.get(timeout=0.1)
        except queue.Empty:
            now = time.monotonic()
            for name, process in list(pending.items()):
                # A dead process's queue is flushed before it exits; allow a grace period.
                if not process.is_alive() and now - dead_since.setdefault(name, now) > 2.0:
                    result.problems.append(
                        f"{name} exited with code {process.exitcode} without reporting")
                    del pending[name]
            if pending and now > deadline:
                result.problems.append(f"timed out waiting for {', '.join(sorted(pending))}")
                for process in pending.values():
                    process.kill()
                break
            continue
        pending.pop(report["worker"], None)
        got.append(report)
        result.errors += report["errors"]
        result.problems.extend(report["messages"])
    return got


def _join(processes: Iterable[Any], result: Result) -> None:
    for process in processes:
        process.join(30)
        if process.is_alive():
            process.kill()
            process.join()
            result.problems.append(f"{process.name} did not exit; killed")
        elif process.exitcode != 0:
            result.problems.append(f"{process.name} exited with code {process.exitcode}")


def _span(reports: Iterable[Report]) -> float:
    runs = [(r["start"], r["end"]) for r in reports if r["start"] is not None and r["end"]]
    if not runs:
        return 0.0
    return float(max(end for _, end in runs) - min(start for start, _ in runs))


def _latency_figures(latencies: Sequence[float]) -> dict[str, float]:
    if len(latencies) < 2:
        return {}
    cuts = statistics.quantiles(latencies, n=100, method="inclusive")
    return {"p50_ms": cuts[49] * 1000, "p99_ms": cuts[98] * 1000,
            "max_ms": max(latencies) * 1000}


def _latency_text(figures: dict[str, float]) -> str:
    if "p50_ms" not in figures:
        return "no latencies"
    return (f"p50 {figures['p50_ms']:.2f} ms, p99 {figures['p99_ms']:.2f} ms, "
            f"max {figures['max_ms']:.1f} ms")


def _check_events(rows: Sequence[dict[str, Any]], expected: set[str],
                  reported: Sequence[int], result: Result) -> None:
    """Note every expected message missing or repeated, and every reported id absent."""
    ids = Counter(r["id"] for r in rows)
    messages = Counter(r["message"] for r in rows)
    checks = [
        ("events missing", sorted(expected - messages.keys())),
        ("events not written by the proof", sorted(messages.keys() - expected)),
        ("events present more than once", sorted(m for m, n in messages.items() if n > 1)),
        ("ids present more than once", sorted(i for i, n in ids.items() if n > 1)),
        ("ids returned by create_event but absent", sorted(set(reported) - ids.keys())),
        ("ids present but never returned", sorted(ids.keys() - set(reported))),
        ("ids returned twice", sorted(i for i, n in Counter(reported).items() if n > 1)),
    ]
    for what, found in checks:
        if found:
            result.problems.append(f"{len(found)} {what}, e.g. {found[:3]}")


def _integrity(target: str, result: Result) -> None:
    """Note what the store's integrity check and, on SQLite, a raw sqlite3 one report."""
    store = Store(target)
    try:
        result.problems.extend(f"integrity: {p}" for p in store.integrity_check())
        path = str(store.database.database) if store.backend == "sqlite" else None
    finally:
        store.close()
    if path is not None:
        conn = sqlite3.connect(path)
        try:
            rows = conn.execute("PRAGMA integrity_check").fetchall()
        finally:
            conn.close()
        if rows != [("ok",)]:
            result.problems.append(f"PRAGMA integrity_check: {rows[:5]}")


def _events_of(target: str, batch_id: int) -> list[dict[str, Any]]:
    store = Store(target)
    try:
        return list(store.iter_events(batch_id=batch_id))
    finally:
        store.close()


def prove_first_open(target: str, processes: int, *, timeout: float = 900.0) -> Result:
    """Open ``processes`` stores on ``target`` at the same moment (creating the schema
    if the database is empty) and write through each; every open must succeed."""
    database = open_database(target)
    if is_server(target):
        try:
            fresh = not database.get_tables()
        finally:
            database.close()
    else:
        fresh = not os.path.exists(target)  # without connecting: that would create it
    result = Result("first-open", backend_of(database),
                    f"{processes} opens" + (" of an empty database" if fresh else ""))
    began = time.monotonic()
    reports = SPAWN.Queue()
    barrier = SPAWN.Barrier(processes + 1)
    procs = {f"o{i}": SPAWN.Process(target=_opener, name=f"opener o{i}", args=(
        target, f"o{i}", barrier, reports)) for i in range(processes)}
    _start(list(procs.values()), barrier, result)
    done = _collect(reports, procs, time.monotonic() + timeout, result)
    _join(procs.values(), result)

    store = Store(target)
    try:
        result.backend = store.backend
        pending = store.pending_migrations()
        if pending:
            result.problems.append(f"migrations still pending: {pending}")
        for report in done:
            if "batch" in report:
                rows = list(store.iter_events(batch_id=report["batch"]))
                _check_events(rows, {f"{report['worker']}-0"}, report["ids"], result)
        version = store.schema_version()
    finally:
        store.close()
    _integrity(target, result)
    opened = sum(1 for r in done if "batch" in r)
    result.figures = {"opened": opened, "schema_version": version}
    result.summary = (f"{opened} of {processes} opened and wrote; schema version {version}; "
                      f"slowest open {_span(done):.2f}s")
    result.seconds = time.monotonic() - began
    return result


def prove_writers(target: str, writers: int, events: int, *, reader: bool = True,
                  timeout: float = 900.0) -> Result:
    """Run ``writers`` processes x ``events`` create_event calls (and a paging reader)
    on ``target``; return the result with throughput and latency figures."""
    store = Store(target)
    try:
        backend = store.backend
        batch_id = store.create_batch(1)
    finally:
        store.close()
    result = Result("writers", backend, f"{writers}x{events}" + (" + reader" if reader else ""))
    began = time.monotonic()
    reports, stop = SPAWN.Queue(), SPAWN.Event()
    barrier = SPAWN.Barrier(writers + int(reader) + 1)
    procs = {f"w{i}": SPAWN.Process(target=_writer, name=f"writer w{i}", args=(
        target, f"w{i}", batch_id, events, barrier, None, reports)) for i in range(writers)}
    readers = {"reader": SPAWN.Process(target=_reader, name="reader", args=(
        target, batch_id, barrier, stop, reports))} if reader else {}
    _start([*procs.values(), *readers.values()], barrier, result)
    deadline = time.monotonic() + timeout
    done = _collect(reports, procs, deadline, result)
    stop.set()
    read = _collect(reports, readers, deadline, result)
    _join([*procs.values(), *readers.values()], result)

    rows = _events_of(target, batch_id)
    expected = {f"w{i}-{s}" for i in range(writers) for s in range(events)}
    _check_events(rows, expected, [i for r in done for i in r["ids"]], result)
    _integrity(target, result)

    span = _span(done)
    latencies = [x for r in done for x in r["latencies"]]
    result.figures = {"events": len(rows), "events_per_s": len(latencies) / span if span else 0,
                      **_latency_figures(latencies)}
    result.summary = (f"{result.figures['events_per_s']:,.0f} events/s; create_event "
                      f"{_latency_text(result.figures)}")
    for r in read:
        result.figures.update(reader_passes=r["passes"], reader_pages=r["pages"],
                              reader_final=r["final"])
        result.summary += f"; reader {r['passes']} passes, {r['pages']} pages"
        result.errors += r["anomalies"]
        if r["final"] != writers * events:
            result.problems.append(f"the reader's last pass saw {r['final']} events, "
                                   f"expected {writers * events}")
    result.seconds = time.monotonic() - began
    return result


def prove_rmw(target: str, processes: int, transactions: int, *, locked: bool = True,
              timeout: float = 900.0) -> Result:
    """Run ``processes`` x ``transactions`` read-modify-write increments of one counter.

    ``locked=False`` leaves out ``store.transaction()``: a control that shows the
    proof detects lost updates.
    """
    store = Store(target)
    try:
        backend = store.backend
        batch_id = store.create_batch(1)
    finally:
        store.close()
    result = Result("rmw", backend, f"{processes}x{transactions}"
                    + ("" if locked else " unlocked"))
    began = time.monotonic()
    reports = SPAWN.Queue()
    barrier = SPAWN.Barrier(processes + 1)
    procs = {f"p{i}": SPAWN.Process(target=_incrementer, name=f"incrementer p{i}", args=(
        target, f"p{i}", batch_id, transactions, locked, barrier, reports))
        for i in range(processes)}
    _start(list(procs.values()), barrier, result)
    done = _collect(reports, procs, time.monotonic() + timeout, result)
    _join(procs.values(), result)

    store = Store(target)
    try:
        batch = store.get_batch(batch_id)
    finally:
        store.close()
    expected = processes * transactions
    final = batch["cycles_completed"] if batch else None
    if final != expected:
        result.problems.append(f"the counter is {final}, expected {expected}")
    # Serialised increments read every value from 0 to expected - 1 exactly once.
    owner = {v: r["worker"] for r in done for v in r["read"]}
    reads = Counter(v for r in done for v in r["read"])
    twice = sorted(v for v, n in reads.items() if n > 1)
    if twice:
        result.problems.append(f"{len(twice)} values read by two transactions (lost "
                               f"updates), e.g. {twice[:3]}")
    if sorted(reads) != list(range(expected)) and not twice:
        result.problems.append(f"the values read are not 0..{expected - 1}")
    # How often the lock passed from one process to another: proof the runs overlapped.
    handovers = sum(owner.get(v) != owner.get(v - 1) for v in range(1, expected))
    _integrity(target, result)

    span = _span(done)
    latencies = [x for r in done for x in r["latencies"]]
    result.figures = {"counter": final or 0, "handovers": handovers,
                      "transactions_per_s": len(latencies) / span if span else 0,
                      **_latency_figures(latencies)}
    result.summary = (f"{result.figures['transactions_per_s']:,.0f} transactions/s; "
                      f"{_latency_text(result.figures)}; counter {final}, "
                      f"{handovers} handovers between processes")
    result.seconds = time.monotonic() - began
    return result


def _kill_victim(path: str, batch_id: int, delay: float, result: Result) -> list[tuple[Any, ...]]:
    """Start a victim, let it write for ``delay`` seconds after its first event, kill
    it with SIGKILL and return everything it reported."""
    receiver, sender = SPAWN.Pipe(duplex=False)
    victim = SPAWN.Process(target=_victim, name="victim", args=(path, batch_id, sender))
    victim.start()
    sender.close()  # the victim holds the only writing end: its death ends the stream
    messages: list[tuple[Any, ...]] = []
    try:
        if receiver.poll(START_TIMEOUT):
            deadline = time.monotonic() + delay
            while (left := deadline - time.monotonic()) > 0:
                if receiver.poll(left):  # keep reading, or a full pipe would stall it
                    messages.append(receiver.recv())
        else:
            result.problems.append(f"a victim wrote nothing within {START_TIMEOUT:.0f}s")
    except EOFError:
        pass
    assert victim.pid is not None
    os.kill(victim.pid, signal.SIGKILL)
    victim.join()
    while True:
        try:
            messages.append(receiver.recv())
        except EOFError:
            break
    receiver.close()
    errors = [m for m in messages if m[0] == "error"]
    result.errors += len(errors)
    result.problems.extend(str(m[1]) for m in errors[:SHOWN_ERRORS])
    if victim.exitcode != -signal.SIGKILL and not errors:
        result.problems.append(f"a victim exited with {victim.exitcode} before the kill")
    return [m for m in messages if m[0] != "error"]


def _check_victim(path: str, batch_id: int, messages: Sequence[tuple[Any, ...]],
                  round_: int, result: Result) -> tuple[int, int]:
    """Check a killed victim's batch; return (events reported, events committed unreported)."""
    reported: set[int] = set()
    ids: dict[int, int] = {}
    for kind, seq, value in messages:
        if kind == "one":
            reported.add(seq)
            ids[seq] = value
        else:
            reported.update(range(seq, seq + value))
    rows = _events_of(path, batch_id)
    present = Counter(int(r["task_id"]) for r in rows)
    by_seq = {int(r["task_id"]): r["id"] for r in rows}
    where = f"kill {round_ + 1}"
    missing = sorted(reported - present.keys())
    if missing:
        result.problems.append(f"{where}: {len(missing)} reported events lost, e.g. seq "
                               f"{missing[:3]}")
    wrong = sorted(s for s, i in ids.items() if s in by_seq and by_seq[s] != i)
    if wrong:
        result.problems.append(f"{where}: ids differ from the ones returned, seq {wrong[:3]}")
    repeated = sorted(s for s, n in present.items() if n > 1)
    if repeated:
        result.problems.append(f"{where}: events present twice, seq {repeated[:3]}")
    if sorted(present) != list(range(len(present))):
        result.problems.append(f"{where}: the events present are not a prefix of the "
                               "victim's calls (a gap: a returned call's event lost)")
    # Past the reported calls, at most the next call's events may be there, all or none.
    following = len(messages)
    size = VICTIM_BATCH_SIZE if following % VICTIM_BATCH_EVERY == VICTIM_BATCH_EVERY - 1 else 1
    unreported = len(present) - len(reported)
    if unreported not in (0, size):
        result.problems.append(f"{where}: {unreported} events committed beyond the reported "
                               f"ones; the call in flight writes {size} (all or nothing)")
    _integrity(path, result)
    return len(reported), max(unreported, 0)


def prove_kill(path: str, kills: int, *, seed: int | None = None, max_delay: float = 0.25,
               timeout: float = 900.0) -> Result:
    """Kill -9 a writer ``kills`` times at random moments while another writer keeps
    going on the SQLite file ``path``; check every returned event survives each kill."""
    store = Store(path)
    try:
        if store.backend != "sqlite":
            raise ValueError("the kill proof needs a SQLite file")
        survivor_batch = store.create_batch(1)
        victim_batches = [store.create_batch(1) for _ in range(kills)]
    finally:
        store.close()
    if seed is None:
        seed = random.randrange(2**32)
    rng = random.Random(seed)
    result = Result("kill", "sqlite", f"{kills} kills + 1 writer (--seed {seed})")
    began = time.monotonic()
    reports, stop = SPAWN.Queue(), SPAWN.Event()
    survivor = SPAWN.Process(target=_writer, name="survivor", args=(
        path, "survivor", survivor_batch, None, None, stop, reports))
    survivor.start()
    checked = unreported = 0
    for round_, batch_id in enumerate(victim_batches):
        messages = _kill_victim(path, batch_id, rng.uniform(0, max_delay), result)
        got, extra = _check_victim(path, batch_id, messages, round_, result)
        checked += got
        unreported += extra
    stop.set()
    done = _collect(reports, {"survivor": survivor}, time.monotonic() + timeout, result)
    _join([survivor], result)
    reported = [i for r in done for i in r["ids"]]
    calls = sum(len(r["latencies"]) for r in done)
    rows = _events_of(path, survivor_batch)
    _check_events(rows, {f"survivor-{s}" for s in range(calls)}, reported, result)
    _integrity(path, result)
    result.figures = {"kills": kills, "seed": seed, "reported_events": checked,
                      "committed_unreported": unreported, "survivor_events": len(rows)}
    result.summary = (f"{kills} kills: all {checked:,} reported events present, "
                      f"{unreported} committed but unreported; survivor wrote "
                      f"{len(rows):,} events; integrity ok after each kill"
                      if result.ok else f"{kills} kills")
    result.seconds = time.monotonic() - began
    return result


def prove_threads(target: str, threads: int, events: int, increments: int, *,
                  timeout: float = 900.0) -> Result:
    """Run ``threads`` threads sharing one store, each writing ``events`` events and
    making ``increments`` read-modify-write increments."""
    store = Store(target)
    batch_id = store.create_batch(1)
    result = Result("threads", store.backend, f"{threads}x({events} events + {increments} rmw)")
    began = time.monotonic()
    barrier = threading.Barrier(threads)
    reports: list[Report] = []

    def work(who: str) -> None:
        report = _report(who)
        with _Working(report, reports.append, store):
            barrier.wait(START_TIMEOUT)
            report["start"] = time.monotonic()
            for seq in range(events):
                started = time.perf_counter()
                try:
                    report["ids"].append(store.create_event(*_event_args(batch_id, who, seq)))
                except Exception as exc:  # noqa: BLE001 - every error is counted
                    _note(report, exc)
                report["latencies"].append(time.perf_counter() - started)
            report["end"] = time.monotonic()
            for _ in range(increments):
                try:
                    _increment(store, batch_id)
                except Exception as exc:  # noqa: BLE001 - every error is counted
                    _note(report, exc)

    workers = [threading.Thread(target=work, args=(f"t{i}",), name=f"t{i}")
               for i in range(threads)]
    for worker in workers:
        worker.start()
    deadline = time.monotonic() + timeout
    for worker in workers:
        worker.join(max(0.0, deadline - time.monotonic()))
        if worker.is_alive():
            result.problems.append(f"thread {worker.name} did not finish in {timeout:.0f}s")
    for report in reports:
        result.errors += report["errors"]
        result.problems.extend(report["messages"])

    rows = list(store.iter_events(batch_id=batch_id))
    expected = {f"t{i}-{s}" for i in range(threads) for s in range(events)}
    _check_events(rows, expected, [i for r in reports for i in r["ids"]], result)
    batch = store.get_batch(batch_id)
    final = batch["cycles_completed"] if batch else None
    if final != threads * increments:
        result.problems.append(f"the counter is {final}, expected {threads * increments}")
    store.close()
    _integrity(target, result)

    span = _span(reports)
    latencies = [x for r in reports for x in r["latencies"]]
    result.figures = {"events": len(rows), "events_per_s": len(latencies) / span if span else 0,
                      "counter": final or 0, **_latency_figures(latencies)}
    result.summary = (f"{result.figures['events_per_s']:,.0f} events/s; create_event "
                      f"{_latency_text(result.figures)}; counter {final}")
    result.seconds = time.monotonic() - began
    return result


# -- the script ----------------------------------------------------------------------------

PROOFS = ("first-open", "writers", "rmw", "kill", "threads")


def is_server(target: str | None) -> bool:
    """Return True if ``target`` is a PostgreSQL or MySQL/MariaDB URL."""
    return bool(target) and "://" in str(target) and not str(target).startswith("sqlite")


def run(sizes: Sizes, target: str | None = None, proofs: Sequence[str] = PROOFS,
        seed: int | None = None) -> list[Result]:
    """Run the chosen proofs at ``sizes`` on ``target`` (temporary SQLite files if None)."""
    results = []
    with tempfile.TemporaryDirectory(prefix="sprint-runner-stress-") as tmp:
        def where(name: str) -> str:
            return target if target else os.path.join(tmp, f"{name}.db")

        writers = sizes.server_writers if is_server(target) else sizes.writers
        for proof in proofs:
            if proof == "first-open":
                results.append(prove_first_open(where(proof), writers))
            elif proof == "writers":
                results.append(prove_writers(where(proof), writers, sizes.events))
            elif proof == "rmw":
                results.append(prove_rmw(where(proof), sizes.rmw_processes,
                                         sizes.rmw_transactions))
            elif proof == "kill":
                path = os.path.join(tmp, "kill.db") if is_server(target) else where(proof)
                results.append(prove_kill(path, sizes.kills, seed=seed))
            elif proof == "threads":
                results.append(prove_threads(where(proof), sizes.threads, sizes.thread_events,
                                             sizes.thread_increments))
            else:
                raise ValueError(f"unknown proof {proof!r}; choose from {', '.join(PROOFS)}")
    return results


def table(results: Sequence[Result]) -> str:
    """Return the results as a fixed-width table, then every failed proof's problems."""
    head = ("proof", "backend", "size", "time", "result", "figures")
    rows = [(r.proof, r.backend, r.size, f"{r.seconds:.1f}s", "ok" if r.ok else
             f"FAIL ({r.errors} errors)", r.summary) for r in results]
    widths = [max(len(row[i]) for row in [head, *rows]) for i in range(len(head) - 1)]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)) + "  " + row[-1]
             for row in [head, *rows]]
    lines.insert(1, "-" * max(len(line) for line in lines))
    for r in results:
        if not r.ok:
            lines.append("")
            lines.append(r.describe())
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="smaller counts, a few seconds per proof (what CI runs)")
    parser.add_argument("--db", metavar="TARGET",
                        help="a scratch SQLite path or server URL for the writers, rmw and "
                             "threads proofs (default: temporary SQLite files)")
    parser.add_argument("--only", action="append", choices=PROOFS, metavar="PROOF",
                        help=f"run only this proof (repeatable): {', '.join(PROOFS)}")
    parser.add_argument("--seed", type=int, help="seed for the kill proof's random delays")
    args = parser.parse_args(argv)
    sizes = QUICK if args.quick else LONG
    print(f"sprint-runner stress ({'quick' if args.quick else 'long'}): "
          f"{mask_url(args.db) if args.db else 'temporary SQLite files'}; "
          f"Python {platform.python_version()}, SQLite {sqlite3.sqlite_version}, "
          f"{os.cpu_count()} cores", flush=True)
    results = run(sizes, args.db, args.only or PROOFS, args.seed)
    print(table(results))
    return 0 if all(r.ok for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
