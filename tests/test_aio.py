"""sprint_runner.aio: the asyncio store (pytest-asyncio, strict mode)."""
from __future__ import annotations

import asyncio
import inspect
import os
import random
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import FakeClock, subprocess_env

from sprint_runner import IntegrityError, LockTimeout, Store, aio, db
from sprint_runner.demo import simulate_sprint

EVENT = ("2a", "2a-1", "dev-story", "setup", "progress")


def event(store: aio.AsyncStore, batch: int, message: str, **kwargs: Any) -> Any:
    return store.create_event(batch, None, None, *EVENT[:4], EVENT[4], message, **kwargs)


def messages(store: Store) -> list[str]:
    return [r["message"] for r in store.iter_events()]


# -- the surface ----------------------------------------------------------------------------

def test_wrapped_names_are_stores_public_methods_less_the_documented_ones() -> None:
    public = {name for name, value in vars(Store).items() if not name.startswith("_")
              and (inspect.isfunction(value) or isinstance(value, staticmethod))}
    assert set(aio.wrapped_methods()) == public - {"close", "transaction", "get_connection",
                                                   "last_seen"}
    for name in aio.wrapped_methods():
        wrapper = getattr(aio.AsyncStore, name)
        assert inspect.signature(wrapper) == inspect.signature(getattr(Store, name)), name
        if name == "iter_events":
            continue
        assert inspect.iscoroutinefunction(wrapper), name
    assert set(aio.GROUP_WRITES) | set(aio.READS) | set(aio.EXCLUDED) <= public
    assert aio.AsyncStore.last_seen({"heartbeat_at": None, "started_at": 5}) == 5


def test_import_sprint_runner_does_not_import_aio() -> None:
    code = "import sprint_runner, sys; assert 'sprint_runner.aio' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, env=subprocess_env(), timeout=60)


def _read_calls(batch: int, story: int, blocked: int, command_status: str) -> dict[str, Any]:
    return {
        "schema_version": ((), {}), "pending_migrations": ((), {}),
        "get_batch": ((batch,), {}), "get_active_batch": ((), {}),
        "get_current_batch_status": ((), {}), "count_completed_cycles": ((batch,), {}),
        "list_batches": ((), {"limit": 5}), "count_batches": ((), {}),
        "batch_summary": ((batch,), {"events": 3}), "get_story": ((story,), {}),
        "get_story_by_key": (("2a-1", batch), {}), "get_stories_by_batch": ((batch,), {}),
        "check_story_blocked": ((blocked,), {}), "get_commands_by_story": ((story,), {}),
        "get_commands_by_batch": ((batch, command_status), {}),
        "get_events": ((7, 2), {}), "get_events_by_batch": ((batch,), {}),
        "page_events": ((), {"limit": 4, "batch_id": batch, "newest_first": False}),
        "tail_events": ((3,), {"limit": 5}), "count_events": ((), {"status": "failed"}),
        "events_per_minute": ((batch,), {}),
        "get_pending_background_tasks": ((batch,), {}),
        "get_background_tasks_by_batch": ((batch,), {}),
        "find_stale_batches": ((0,), {}), "table_counts": ((), {}),
        "integrity_check": ((), {}), "storage_info": ((), {}),
    }


@pytest.mark.asyncio
async def test_every_method_gives_stores_results(db_target: str, clock: FakeClock,
                                                 tmp_path: Path) -> None:
    sync = Store(db_target, clock=clock)
    batch = simulate_sprint(sync)
    stories = sync.get_stories_by_batch(batch)
    blocked = next(s["id"] for s in stories if sync.check_story_blocked(s["id"]))
    story = stories[0]["id"]
    async with aio.AsyncStore(db_target, clock=clock) as store:
        assert store.store.time_unit == store.time_unit == sync.time_unit
        assert (store.location, store.backend) == (sync.location, sync.backend)
        calls = _read_calls(batch, story, blocked, "completed")
        assert set(calls) == set(aio.READS)
        for name, (args, kwargs) in calls.items():
            assert await getattr(store, name)(*args, **kwargs) == \
                getattr(sync, name)(*args, **kwargs), name
        # The same bad arguments raise the same errors, from the caller.
        for name, args, kwargs in [("get_batch", ("1",), {}), ("list_batches", (0,), {}),
                                   ("page_events", (), {"cursor": "nope"}),
                                   ("create_batch", (0,), {}),
                                   ("update_story", (story,), {"id": 3}),
                                   ("create_story", (batch, "", "2a"), {}),
                                   ("create_event", (batch,), {}),
                                   ("create_events", ([{"batch_id": batch}],), {}),
                                   ("prune", (), {"older_than": -1})]:
            with pytest.raises((TypeError, ValueError)) as expected:
                getattr(sync, name)(*args, **kwargs)
            with pytest.raises(type(expected.value)) as got:
                await getattr(store, name)(*args, **kwargs)
            assert str(got.value) == str(expected.value), name
        with pytest.raises(TypeError):
            store.iter_events(batch_id="1")  # at the call, before any row
        assert [r async for r in store.iter_events(batch_id=batch, chunk_size=3)] == \
            list(sync.iter_events(batch_id=batch, chunk_size=3))
        assert [r async for r in store.iter_events(newest_first=True)] == \
            list(sync.iter_events(newest_first=True))

        # Writes: each result, then the rows, as Store gives them.
        new = await store.create_batch(2)
        assert new == sync.get_active_batch()["id"]  # type: ignore[index]
        assert await store.heartbeat(new) == sync.heartbeat(new) == 1
        assert await store.update_batch(new, cycles_completed=1) == 1
        assert await store.update_batch(10**6, cycles_completed=1) == \
            sync.update_batch(10**6, cycles_completed=1) == 0
        s = await store.create_story(new, "9z-1", "9z")
        assert (await store.get_story(s))["story_key"] == "9z-1"  # type: ignore[index]
        assert await store.update_story(s, status="done") == 1
        c = await store.create_command(s, "dev-story", "impl")
        assert await store.update_command(c, status="failed") == 1
        t = await store.create_background_task(new, "9z-1", "review")
        assert await store.update_background_task(t, status="completed") == 1
        e1 = await store.create_event(new, s, c, "9z", "9z-1", "dev-story", "impl", "failed",
                                      "old form", event_type="command:end", payload={"n": 1})
        e2 = await store.create_event(new, s, c, "command:end", "9z", "9z-1", "dev-story",
                                      "impl", "failed", "later form", {"n": 2})
        rows = {r["id"]: r for r in sync.get_events_by_batch(new)}
        assert rows[e1]["payload_json"] == '{"n":1}' and rows[e2]["event_type"] == "command:end"
        assert await store.create_events([{"batch_id": new, "epic_id": "9z", "story_key": "9z-1",
                                           "command": "x", "task_id": "y", "status": "ok"}]) == 1
        assert await store.migrate() == []
        assert await store.recover_stale_batches(10**6) == sync.recover_stale_batches(10**6)
        assert await store.prune(older_than=0, dry_run=True) == \
            sync.prune(older_than=0, dry_run=True)
        assert await store.prune_events(older_than=0) == 0
        assert await store.prune_batches(older_than=0) == sync.prune_batches(older_than=0)
        await store.backup(str(tmp_path / "copy.db"))
        copy = Store(str(tmp_path / "copy.db"))
        assert copy.count_events() == sync.count_events()
        copy.close()
        assert await store.run_in_transaction(lambda st, n: st.count_events() + n, 1) == \
            sync.count_events() + 1
    sync.close()


@pytest.mark.asyncio
async def test_connect_defaults_to_db_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                           ) -> None:
    monkeypatch.setattr(db, "DB_PATH", str(tmp_path / "default.db"))
    monkeypatch.setattr(db, "TIME_UNIT", "ms")
    store = aio.connect()
    assert isinstance(store, aio.AsyncStore)
    async with store:
        assert store.time_unit == "ms"
        assert store.location == str(tmp_path / "default.db")
    with pytest.raises(RuntimeError):
        await store.create_batch(1)


# -- Store.prepared: the surface the group commit uses ------------------------------------

def test_prepared_inserts_tell_each_row_its_own_id_under_concurrent_writers(
        db_target: str, clock: FakeClock) -> None:
    """Four threads insert runs of rows at once (on a server their statements' ids can
    interleave): every id returned names the row its caller wrote there."""
    import threading

    sync = Store(db_target, clock=clock)
    try:
        batch = sync.create_batch(1)
        results: dict[str, list[int]] = {}
        errors: list[BaseException] = []

        def writer(name: str) -> None:
            try:
                mine: list[int] = []
                for run in range(15):
                    rows = [sync.prepared.event(batch, None, None, *EVENT, f"{name}-{run}-{i}")
                            for i in range(1 + (run * 7) % 40)]
                    mine += sync.prepared.insert_events(rows)
                results[name] = mine
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)
            finally:
                sync.close()

        threads = [threading.Thread(target=writer, args=(f"w{n}",)) for n in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert not errors, errors
        got = {r["id"]: r["message"] for r in sync.get_events_by_batch(batch)}
        for name, ids in results.items():
            expected = [f"{name}-{run}-{i}" for run in range(15)
                        for i in range(1 + (run * 7) % 40)]
            assert [got[i] for i in ids] == expected
        assert sum(len(ids) for ids in results.values()) == len(got)
    finally:
        sync.close()


def test_prepared_writes_check_as_store_does_and_insert_in_order(db_target: str,
                                                                 clock: FakeClock) -> None:
    sync = Store(db_target, clock=clock)
    try:
        batch = sync.create_batch(1)
        prepared = sync.prepared
        calls: list[tuple[tuple[Any, ...], dict[str, Any]]] = [
            ((batch, None, None, *EVENT, "old form"), {}),
            ((batch, None, None, *EVENT, "keywords"), {"event_type": "a:b", "payload": {"n": 1}}),
            ((batch, None, None, "c:d", *EVENT, "later form", {"n": 2}), {}),
            ((batch, None, None, *EVENT), {"message": None})]
        rows = [prepared.event(*args, **kwargs) for args, kwargs in calls]
        clock.advance(5)
        ids = prepared.insert_events(rows)  # outside a transaction: one of its own
        assert ids == sorted(ids) and len(set(ids)) == 4
        with sync.transaction():
            ids += prepared.insert_events(rows[:1])
            ids += prepared.insert_events(rows * 3)
        assert prepared.insert_events([]) == []
        expected = [sync.create_event(*args, **kwargs) for args, kwargs in calls]
        got = {r["id"]: r for r in sync.get_events_by_batch(batch)}
        assert ids == sorted(ids) and len(got) == len(ids) + 4
        which = [0, 1, 2, 3, 0] + [0, 1, 2, 3] * 3  # the call each inserted row came from
        for row_id, call in zip(ids, which, strict=True):  # each id is its own row
            mine, same = got[row_id], got[expected[call]]
            assert mine["timestamp"] == clock.now
            assert {k: v for k, v in mine.items() if k != "id"} == \
                {k: v for k, v in same.items() if k != "id"}
        # The same errors as the methods, before anything is written.
        for args, kwargs in [((batch,), {}), (("1", None, None, *EVENT, "m"), {}),
                             ((batch, None, None, *EVENT, "m"), {"payload": {1j}}),
                             ((batch, None, None, *EVENT, "m"), {"nope": 1})]:
            with pytest.raises((TypeError, ValueError)) as expected_error:
                sync.create_event(*args, **kwargs)
            with pytest.raises(type(expected_error.value)) as got_error:
                type(prepared).event(*args, **kwargs)
            assert str(got_error.value) == str(expected_error.value)
        for name, row_id, fields in [("update_batch", batch, {"id": 2}),
                                     ("update_story", "1", {"status": "done"}),
                                     ("update_background_task", 1, {"story_key": "x"}),
                                     ("update_command", 1, {"status": 3})]:
            with pytest.raises((TypeError, ValueError)) as expected_error:
                getattr(sync, name)(row_id, **fields)
            with pytest.raises(type(expected_error.value)) as got_error:
                prepared.check_update(name, row_id, fields)
            assert str(got_error.value) == str(expected_error.value)
        prepared.check_update("update_batch", batch, {"cycles_completed": 1})
        # A missing parent fails the whole call.
        count = sync.count_events()
        with pytest.raises(IntegrityError):
            prepared.insert_events([rows[0], prepared.event(batch + 99, None, None, *EVENT, "x")])
        assert sync.count_events() == count
    finally:
        sync.close()


def test_aio_reads_no_private_attribute_of_store() -> None:
    source = Path(aio.__file__).read_text()
    for private in ("._executor", "._statements", "_IMMUTABLE", "._now", "._tail"):
        assert private not in source, private


# -- group commit ----------------------------------------------------------------------------

@pytest.mark.asyncio
async def test_concurrent_writers_form_groups(db_target: str, clock: FakeClock) -> None:
    async with aio.AsyncStore(db_target, clock=clock) as store:
        batch = await store.create_batch(1)
        before = dict(store.stats)

        async def writer(n: int) -> list[int]:
            return [await event(store, batch, f"{n}:{i}") for i in range(1000)]

        ids = [i for chunk in await asyncio.gather(*(writer(n) for n in range(16)))
               for i in chunk]
        assert len(ids) == len(set(ids)) == 16_000
        transactions = store.stats["transactions"] - before["transactions"]
        assert transactions < 16_000 // 4  # groups formed: about 16 writes per transaction
        assert store.stats["largest_group"] > 1
        found = messages(store.store)
        assert sorted(found) == sorted(f"{n}:{i}" for n in range(16) for i in range(1000))
        rows = {r["id"]: r["message"] for r in store.store.iter_events()}
        assert set(rows) == set(ids)
        for n in range(16):  # each writer's events in its order
            mine = [i for i in sorted(rows) if rows[i].startswith(f"{n}:")]
            assert [rows[i] for i in mine] == [f"{n}:{i}" for i in range(1000)]


@pytest.mark.asyncio
async def test_a_lone_caller_does_not_wait_out_max_delay(db_target: str, clock: FakeClock
                                                          ) -> None:
    # Once the loop has run the callers a commit woke, the writer stops waiting: a lone
    # coroutine writing in turn pays the database, not max_delay, per write.
    async with aio.AsyncStore(db_target, clock=clock, max_delay=1.0) as store:
        batch = await store.create_batch(1)
        started = time.monotonic()
        for i in range(20):
            await event(store, batch, f"m{i}")
        assert time.monotonic() - started < 1.5  # max_delay / 8 per write would be 2.5 s
        assert messages(store.store) == [f"m{i}" for i in range(20)]


@pytest.mark.asyncio
async def test_a_mixed_group_commits_in_arrival_order(db_target: str, clock: FakeClock) -> None:
    async with aio.AsyncStore(db_target, clock=clock, max_delay=0.2) as store:
        batch = await store.create_batch(3)
        story = await store.create_story(batch, "2a-1", "2a")
        before = dict(store.stats)
        clock.advance(7)
        results = await asyncio.gather(
            event(store, batch, "first", payload={"k": [1, "ü"]}, event_type="a:b"),
            store.heartbeat(batch),
            event(store, batch, "second"),
            store.update_batch(batch, cycles_completed=2),
            store.create_events([{"batch_id": batch, "epic_id": "2a", "story_key": "2a-1",
                                  "command": "c", "task_id": "t", "status": "bulk"}]),
            store.create_command(story, "dev-story", "impl"),
            store.create_event(batch, story, None, "c:d", "2a", "2a-1", "dev-story", "t",
                               "progress", "third", {"n": 3}),
            event(store, batch, "fourth"),
            store.update_story(story, status="done"),
            store.update_story(10**9, status="done"))
        assert results[1] == results[3] == results[4] == results[8] == 1
        assert results[9] == 0
        assert store.stats["groups"] - before["groups"] == 2  # split by create_events
        rows = store.store.get_events_by_batch(batch)
        by_id = {r["id"]: r for r in rows}
        first, second, third, fourth = (by_id[results[i]] for i in (0, 2, 6, 7))
        assert [first["message"], second["message"], third["message"], fourth["message"]] == \
            ["first", "second", "third", "fourth"]
        assert results[0] < results[2] < results[6] < results[7]
        assert first["payload_json"] == '{"k":[1,"ü"]}' and first["event_type"] == "a:b"
        assert third["payload_json"] == '{"n":3}' and third["story_id"] == story
        assert {r["timestamp"] for r in rows} == {clock.now}
        bulk = next(r for r in rows if r["status"] == "bulk")
        assert results[2] < bulk["id"] < results[6]
        got = await store.get_batch(batch)
        assert got is not None and got["heartbeat_at"] == clock.now
        assert got["cycles_completed"] == 2
        assert (await store.get_commands_by_story(story))[0]["id"] == results[5]


@pytest.mark.asyncio
async def test_a_missing_parent_fails_its_caller_only(db_target: str, clock: FakeClock) -> None:
    # max_delay long enough that the whole burst lands in one group.
    async with aio.AsyncStore(db_target, clock=clock, max_delay=0.2) as store:
        batch = await store.create_batch(1)
        before = dict(store.stats)
        calls = [event(store, batch, f"ok {i}") for i in range(20)]
        calls.insert(7, event(store, batch + 1000, "orphan"))
        results = await asyncio.gather(*calls, return_exceptions=True)
        assert isinstance(results[7], IntegrityError)
        assert all(isinstance(r, int) for i, r in enumerate(results) if i != 7)
        assert store.stats["groups"] - before["groups"] == 1
        assert store.stats["retried_groups"] - before["retried_groups"] == 1
        assert sorted(messages(store.store)) == sorted(f"ok {i}" for i in range(20))
        # Bad input raises in the caller before anything is queued.
        queued = dict(store.stats)
        with pytest.raises(TypeError):
            await event(store, "1", "bad")  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="Invalid fields"):
            await store.update_batch(batch, nope=1)
        assert store.stats == queued


@pytest.mark.sqlite_only
@pytest.mark.asyncio
async def test_a_group_error_fails_every_caller_and_commits_nothing(tmp_path: Path) -> None:
    path = str(tmp_path / "locked.db")
    async with aio.AsyncStore(path, busy_timeout=0.05, lock_retries=1,
                              max_delay=0.2) as store:
        batch = await store.create_batch(1)
        holder = sqlite3.connect(path, isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")
        try:
            results = await asyncio.gather(*(event(store, batch, f"m{i}") for i in range(10)),
                                           return_exceptions=True)
        finally:
            holder.execute("ROLLBACK")
            holder.close()
        assert all(isinstance(r, LockTimeout) for r in results), results
        assert await store.count_events() == 0
        assert isinstance(await event(store, batch, "after"), int)


@pytest.mark.asyncio
async def test_cancelled_writes_commit_at_most_once_and_others_exactly_once(
        db_target: str, clock: FakeClock) -> None:
    rng = random.Random(13)
    async with aio.AsyncStore(db_target, clock=clock, max_batch=16) as store:
        batch = await store.create_batch(1)
        tasks = []
        for i in range(200):
            tasks.append(asyncio.create_task(event(store, batch, f"w{i}")))
            if rng.random() < 0.3:
                await asyncio.sleep(rng.choice((0, 0, 0.0005, 0.002)))
            if rng.random() < 0.5:
                rng.choice(tasks).cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        cancelled = {f"w{i}" for i, t in enumerate(tasks) if t.cancelled()}
        done = {f"w{i}" for i, t in enumerate(tasks) if not t.cancelled()}
        assert cancelled and done
        for t in tasks:
            if not t.cancelled():
                assert isinstance(t.result(), int)
        found = await store.run_in_transaction(messages)
        assert len(found) == len(set(found))
        assert done <= set(found) <= done | cancelled


@pytest.mark.asyncio
async def test_aclose_commits_the_queued_writes(db_target: str, clock: FakeClock) -> None:
    store = aio.AsyncStore(db_target, clock=clock, max_batch=7)
    await store.open()
    batch = await store.create_batch(1)
    tasks = [asyncio.create_task(event(store, batch, f"q{i}")) for i in range(500)]
    await asyncio.sleep(0)  # every write queued, few committed yet
    await store.aclose()
    assert all(t.done() and isinstance(t.result(), int) for t in tasks)
    check = Store(db_target, clock=clock)
    assert check.count_events(batch_id=batch) == 500
    check.close()
    await store.aclose()  # twice is fine


# -- the loop is never blocked -----------------------------------------------------------------

_HOLD_LOCK = """
import sqlite3, sys, time
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("BEGIN IMMEDIATE")
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
conn.execute("ROLLBACK")
"""


@pytest.mark.sqlite_only
@pytest.mark.asyncio
async def test_the_loop_ticks_while_another_process_holds_the_write_lock(
        tmp_path: Path) -> None:
    path = str(tmp_path / "lag.db")
    async with aio.AsyncStore(path) as store:
        batch = await store.create_batch(1)
        holder = subprocess.Popen([sys.executable, "-c", _HOLD_LOCK, path, "2"],
                                  stdout=subprocess.PIPE, env=subprocess_env(), text=True)
        try:
            assert holder.stdout is not None
            loop = asyncio.get_running_loop()
            assert await loop.run_in_executor(None, holder.stdout.readline) == "locked\n"
            write = asyncio.create_task(event(store, batch, "waits for the lock"))
            worst, started = 0.0, time.monotonic()
            last = started
            while not write.done():
                await asyncio.sleep(0.001)
                now = time.monotonic()
                worst, last = max(worst, now - last), now
            assert isinstance(write.result(), int)
            assert time.monotonic() - started > 1.0  # it did wait for the other process
            assert worst < 0.05, f"the loop stalled {worst * 1000:.1f} ms"
        finally:
            holder.wait(timeout=30)


# -- processes ------------------------------------------------------------------------------

_WRITER = """
import asyncio, sys
from sprint_runner import aio

async def main():
    store = aio.AsyncStore(sys.argv[1])
    await store.open()
    batch = await store.create_batch(1)

    async def writer(n):
        i = 0
        while True:
            new = await store.create_event(batch, None, None, "2a", "2a-1", "dev-story",
                                           "setup", "progress", f"{n}:{i}")
            print(new, flush=True)
            i += 1
    if sys.argv[2] == "forever":
        await asyncio.gather(*(writer(n) for n in range(8)))
    # Leave without closing, writes still queued: the process must still end.
    for i in range(200):
        asyncio.ensure_future(store.create_event(batch, None, None, "2a", "2a-1", "dev-story",
                                                 "setup", "progress", f"x{i}"))
    await asyncio.sleep(0)
    print("leaving", flush=True)

asyncio.run(main())
"""


@pytest.mark.asyncio
async def test_leaving_without_aclose_does_not_hang(db_target: str) -> None:
    done = subprocess.run([sys.executable, "-c", _WRITER, db_target, "leave"],
                          capture_output=True, text=True, env=subprocess_env(), timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().endswith("leaving")


@pytest.mark.slow
@pytest.mark.heavy
@pytest.mark.sqlite_only
def test_kill_9_loses_no_acknowledged_write(tmp_path: Path) -> None:
    path = str(tmp_path / "killed.db")
    for _ in range(3):
        proc = subprocess.Popen([sys.executable, "-c", textwrap.dedent(_WRITER), path,
                                 "forever"], stdout=subprocess.PIPE, env=subprocess_env(),
                                text=True)
        assert proc.stdout is not None
        acknowledged = []
        limit = random.randint(2000, 6000)
        while len(acknowledged) < limit:
            line = proc.stdout.readline()
            assert line, "the writer ended early"
            acknowledged.append(int(line))
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        rest = proc.stdout.read().split("\n")
        acknowledged += [int(line) for line in rest[:-1] if line]  # whole lines only
        proc.stdout.close()
        conn = sqlite3.connect(path)
        present = {row[0] for row in conn.execute("SELECT id FROM events")}
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        conn.close()
        assert set(acknowledged) <= present
        assert len(acknowledged) == len(set(acknowledged))
    assert Store(path).integrity_check() == []

