"""A server connection that dies (kill, restart, idle timeout, oversized message).

Each test kills only connections it opened itself: the store's own, found by asking
the server through that connection, ended from a second session.
"""
from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import peewee
import pytest

from sprint_runner import Store

pytestmark = pytest.mark.usefixtures("server_url")


def _lock_stories(session: Any) -> Callable[[], None]:
    """Lock the stories table from ``session`` so the store's next statement on it waits;
    return the function that releases it."""
    if session.conn.__class__.__module__.startswith("psycopg2"):
        session.execute("BEGIN")
        session.execute("LOCK TABLE stories IN ACCESS EXCLUSIVE MODE")
        return lambda: session.execute("ROLLBACK")
    session.execute("LOCK TABLES stories WRITE")
    return lambda: session.execute("UNLOCK TABLES")


@contextmanager
def _killed_while_waiting(store: Store, server_session: Any, db_target: str) -> Iterator[None]:
    """Run the block's statement on stories while another session locks the table; kill the
    store's connection while the statement waits (after it was sent), then unlock."""
    locker = type(server_session)(db_target)
    conn_id = server_session.connection_id(store)
    release = _lock_stories(locker)
    failures: list[BaseException] = []

    def kill_when_waiting() -> None:
        try:
            server_session.wait_until(lambda: server_session.waits_for_lock(conn_id),
                                      "the store's statement to wait for the lock")
            server_session.kill(conn_id)
        except BaseException as exc:  # noqa: BLE001 - reported by the test below
            failures.append(exc)
        finally:
            release()

    killer = threading.Thread(target=kill_when_waiting)
    killer.start()
    try:
        yield
    finally:
        killer.join(30)
        locker.close()
    assert not failures, failures


def _count(store: Store, table: str) -> int:
    return int(store._executor.fetchall(f"SELECT COUNT(*) FROM {table}")[0][0])


def test_every_call_after_a_kill_succeeds(store: Store, server_session: Any) -> None:
    batch = store.create_batch(3)
    story = store.create_story(batch, "k0", "e")
    first = server_session.connection_id(store)
    server_session.kill(first)
    made = 0
    for i in range(20):
        step = i % 5
        if step == 0:
            store.create_story(batch, f"k{i + 1}", "e")
            made += 1
        elif step == 1:
            assert store.get_story(story)["story_key"] == "k0"
        elif step == 2:
            store.create_event(batch, story, None, "e", "k0", "c", "t", "s", f"m{i}")
        elif step == 3:
            with store.transaction():
                store.update_batch(batch, cycles_completed=i)
                store.heartbeat(batch)
        else:
            assert store.get_batch(batch)["cycles_completed"] == i - 1
    assert len(store.get_stories_by_batch(batch)) == made + 1
    assert len(store.get_events_by_batch(batch)) == 4
    assert server_session.connection_id(store) != first


def test_first_call_after_a_kill_may_be_a_write(store: Store, server_session: Any) -> None:
    batch = store.create_batch(1)
    server_session.kill(server_session.connection_id(store))
    story = store.create_story(batch, "after", "e")
    assert [s["id"] for s in store.get_stories_by_batch(batch)] == [story]


def test_a_transaction_right_after_a_kill_succeeds(store: Store, server_session: Any) -> None:
    batch = store.create_batch(1)
    server_session.kill(server_session.connection_id(store))
    with store.transaction():
        store.create_story(batch, "a", "e")
        store.create_story(batch, "b", "e")
    assert len(store.get_stories_by_batch(batch)) == 2


def test_pool_never_hands_out_a_dead_idle_connection(make_store: Any,
                                                     server_session: Any) -> None:
    store = make_store()
    batch = store.create_batch(1)
    results: list[Any] = []

    def worker() -> None:
        # A thread holds no connection between calls: each call checks one out of the pool.
        conn_id = server_session.connection_id(store)
        server_session.kill(conn_id)  # now idle in the pool, and dead
        results.append(store.create_story(batch, "w", "e"))
        results.append(server_session.connection_id(store) != conn_id)

    thread = threading.Thread(target=worker)
    thread.start()
    thread.join(30)
    assert results[1] is True
    assert [s["id"] for s in store.get_stories_by_batch(batch)] == [results[0]]


def test_kill_inside_transaction_fails_it_clearly(store: Store, server_session: Any) -> None:
    batch = store.create_batch(1)
    with pytest.raises(peewee.OperationalError) as info, store.transaction():
        store.create_story(batch, "lost", "e")
        server_session.kill(server_session.connection_id(store))
        store.create_story(batch, "never", "e")
    message = str(info.value)
    assert "lost the connection" in message and store.location in message
    assert "rolled back" in message
    assert store.get_stories_by_batch(batch) == []
    with store.transaction():  # the write lock of the dead session is gone with it
        kept = store.create_story(batch, "next", "e")
    assert [s["id"] for s in store.get_stories_by_batch(batch)] == [kept]


def test_a_swallowed_loss_still_fails_the_block(store: Store, server_session: Any) -> None:
    batch = store.create_batch(1)
    seen: list[str] = []
    with pytest.raises(peewee.OperationalError, match="lost the connection"), store.transaction():
        store.create_story(batch, "lost", "e")
        server_session.kill(server_session.connection_id(store))
        for key in ("x", "y"):  # never written one by one outside the transaction
            try:
                store.create_story(batch, key, "e")
            except peewee.OperationalError as exc:
                seen.append(str(exc))
    assert len(seen) == 2 and all("lost the connection" in s for s in seen)
    assert store.get_stories_by_batch(batch) == []
    assert store.create_story(batch, "next", "e")


def test_kill_inside_nested_block_fails_the_transaction(store: Store,
                                                        server_session: Any) -> None:
    batch = store.create_batch(1)
    with pytest.raises(peewee.OperationalError, match="lost the connection"), store.transaction():
        store.create_story(batch, "outer", "e")
        with store.transaction():
            server_session.kill(server_session.connection_id(store))
            store.create_story(batch, "inner", "e")
    assert store.get_stories_by_batch(batch) == []
    assert store.create_story(batch, "next", "e")


def test_write_lost_in_flight_raises_and_is_not_resent(store: Store, server_session: Any,
                                                       db_target: str) -> None:
    batch = store.create_batch(1)
    with (pytest.raises(peewee.OperationalError) as info,
          _killed_while_waiting(store, server_session, db_target)):
        store.create_story(batch, "in-flight", "e")
    message = str(info.value)
    assert "lost the connection" in message and store.location in message
    assert "not re-sent" in message
    # The server killed the statement before it ran; a blind re-send would have written it.
    assert _count(store, "stories") == 0
    assert store.create_story(batch, "next", "e")
    assert _count(store, "stories") == 1


def test_read_lost_in_flight_is_retried_once(store: Store, server_session: Any,
                                             db_target: str) -> None:
    batch = store.create_batch(1)
    story = store.create_story(batch, "k", "e")
    with _killed_while_waiting(store, server_session, db_target):
        row = store.get_story(story)
    assert row is not None and row["story_key"] == "k"


def test_password_never_in_the_lost_connection_error(server_session: Any, db_target: str,
                                                     clock: Any) -> None:
    parts = urlsplit(db_target)
    if parts.password:
        pytest.skip("the test server URL already has a password")
    user = parts.username
    if server_session.conn.__class__.__module__.startswith("pymysql"):
        # MariaDB checks passwords: a throwaway user of this test's database alone.
        user = f"sr_{uuid.uuid4().hex[:12]}"
        server_session.execute(f"CREATE USER '{user}'@'%' IDENTIFIED BY 'S3cretPw'")
        server_session.execute(f"GRANT ALL ON `{parts.path.lstrip('/')}`.* TO '{user}'@'%'")
    # On PostgreSQL the test server trusts local connections and ignores the password.
    netloc = f"{user}:S3cretPw@{parts.hostname}:{parts.port}"
    try:
        store = Store(urlunsplit((parts.scheme, netloc, parts.path, parts.query, "")),
                      clock=clock)
        try:
            batch = store.create_batch(1)
            with pytest.raises(peewee.OperationalError) as info, store.transaction():
                store.create_story(batch, "lost", "e")
                server_session.kill(server_session.connection_id(store))
                store.create_story(batch, "never", "e")
            assert "S3cretPw" not in str(info.value)
            assert f"{user}:***@" in str(info.value)
        finally:
            store.close()
    finally:
        if user != parts.username:
            server_session.execute(f"DROP USER '{user}'@'%'")


def test_message_over_max_allowed_packet(store: Store, server_session: Any) -> None:
    if store.backend != "mysql":
        pytest.skip("max_allowed_packet is MySQL's")
    limit = int(server_session.execute("SELECT @@max_allowed_packet")[0][0])
    batch = store.create_batch(1)
    # An event's message is bounded below the packet limit (4 MiB), refused before sending;
    # a command's summary is not, and reaches the server.
    with pytest.raises(ValueError, match="message is larger than 4 MiB"):
        store.create_event(batch, None, None, "e", "k", "c", "t", "s", "x" * (limit + 1))
    command = store.create_command(store.create_story(batch, "k", "e"), "c", "t")
    with pytest.raises(peewee.OperationalError, match="max_allowed_packet"):
        store.update_command(command, output_summary="x" * (limit + 1))
    for i in range(5):  # the server closed that connection; later calls get a fresh one
        store.create_event(batch, None, None, "e", "k", "c", "t", "s", f"m{i}")
    assert len(store.get_events_by_batch(batch)) == 5
