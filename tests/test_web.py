"""The web dashboard (issue 14): API shapes, filters, paging, errors, the safety rules,
the live stream, the pages' escaping, and a real browser on SQLite."""
from __future__ import annotations

import asyncio
import json
import os
import re
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

aiohttp = pytest.importorskip("aiohttp")

from aiohttp import web  # noqa: E402
from aiohttp.test_utils import TestClient, TestServer  # noqa: E402
from conftest import (  # noqa: E402
    BACKEND,
    IN_CI,
    ROOT,
    FakeClock,
    ServerSession,
    log_event,
    run_cli,
    subprocess_env,
)

from sprint_runner import Store  # noqa: E402
from sprint_runner.demo import simulate_sprint  # noqa: E402
from sprint_runner.web import create_app, is_loopback  # noqa: E402

XSS = ('<img src=x onerror="document.title=\'pwned\'">',
       "</script><script>document.title='pwned'</script>")


def fill(store: Store) -> dict[str, Any]:
    """A simulated (completed) sprint plus a running batch with two stories, a running
    and a finished command, a pending background task and three events."""
    old = simulate_sprint(store)
    batch = store.create_batch(4)
    s1 = store.create_story(batch, "3a-1", "3a")
    s2 = store.create_story(batch, "3a-2", "3a")
    done = store.create_command(s1, "create-story", "draft")
    store.update_command(done, status="completed", ended_at=store.clock(),
                         output_summary="story <file> written")
    running = store.create_command(s2, "dev-story", "implement")
    task = store.create_background_task(batch, "3a-1", "docs")
    events = [log_event(store, batch, f"event {n}", story_id=s1, story_key="3a-1",
                        command_id=done, command="create-story",
                        status="completed" if n == 2 else "progress") for n in range(3)]
    store.heartbeat(batch)
    return {"old": old, "batch": batch, "stories": [s1, s2], "commands": [done, running],
            "task": task, "events": events}


@pytest.fixture
def sprint(store: Store) -> dict[str, Any]:
    return fill(store)


@pytest_asyncio.fixture
async def make_client(db_target: str, clock: FakeClock) -> AsyncIterator[Any]:
    """A factory of test clients on dashboards over this test's database."""
    clients: list[TestClient[Any, Any]] = []

    async def make(**options: Any) -> TestClient[Any, Any]:
        options.setdefault("clock", clock)
        options.setdefault("poll_interval", 0.05)
        client: TestClient[Any, Any] = TestClient(TestServer(create_app(db_target, **options)))
        await client.start_server()
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.close()


@pytest_asyncio.fixture
async def client(make_client: Any, store: Store) -> Any:
    return await make_client()


async def get_json(client: Any, url: str, status: int = 200, **kwargs: Any) -> Any:
    response = await client.get(url, **kwargs)
    text = await response.text()
    assert response.status == status, text
    assert response.headers["Content-Type"].startswith("application/json")
    return json.loads(text)


# -- the package -----------------------------------------------------------------------------

def test_import_sprint_runner_does_not_load_the_dashboard() -> None:
    code = "import sys, sprint_runner; print('sprint_runner.web' in sys.modules, " \
           "'aiohttp' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=60, env=subprocess_env())
    assert result.stdout.split() == ["False", "False"], result.stderr


def test_static_files_ship_in_the_package() -> None:
    static = ROOT / "sprint_runner" / "web" / "static"
    assert sorted(p.name for p in static.iterdir()) == ["dashboard.css", "dashboard.js"]
    assert "innerHTML" not in (static / "dashboard.js").read_text().replace(
        "(never innerHTML)", "")
    setup = (ROOT / "setup.cfg").read_text()
    assert "web/static/*" in setup and "sprint_runner.web" in setup


@pytest.mark.parametrize("host, loopback", [
    ("127.0.0.1", True), ("127.8.9.1", True), ("::1", True), ("[::1]", True),
    ("localhost", True), ("app.localhost", True), ("LOCALHOST.", True),
    ("0.0.0.0", False), ("192.168.1.5", False), ("example.com", False), ("", False)])
def test_is_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


# -- opening: read-only ------------------------------------------------------------------------

@pytest.mark.sqlite_only
def test_a_missing_file_is_refused_and_not_created(tmp_path: Path) -> None:
    path = tmp_path / "absent.db"
    with pytest.raises(FileNotFoundError, match="no such database file"):
        create_app(str(path))
    assert not path.exists()


@pytest.mark.sqlite_only
def test_a_file_needing_migrations_is_refused_untouched(tmp_path: Path) -> None:
    path = tmp_path / "other.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE unrelated (x)")
    conn.commit()
    conn.close()
    before = path.read_bytes()
    with pytest.raises(Exception, match="migration"):
        create_app(str(path))
    assert path.read_bytes() == before
    assert not Path(str(path) + "-wal").exists()


def test_a_store_is_taken_for_sqlite_and_refused_for_a_server(store: Store,
                                                              db_target: str) -> None:
    if BACKEND == "sqlite":
        assert isinstance(create_app(store), web.Application)
    else:
        with pytest.raises(ValueError, match="URL"):
            create_app(store)
        assert isinstance(create_app(db_target), web.Application)


@pytest.mark.asyncio
async def test_the_dashboard_writes_nothing(make_client: Any, store: Store,
                                            sprint: dict[str, Any]) -> None:
    before = store.table_counts()
    client = await make_client()
    for url in ("/", "/batches", f"/batches/{sprint['batch']}", "/events", "/api/now",
                "/api/batches", "/api/events", "/metrics", "/healthz"):
        assert (await client.get(url)).status == 200, url
    assert store.table_counts() == before


# -- the JSON API --------------------------------------------------------------------------------

@pytest.mark.asyncio
async def test_api_now_shows_the_running_batch(client: Any, sprint: dict[str, Any]) -> None:
    now = await get_json(client, "/api/now")
    assert now["batch"]["id"] == sprint["batch"] and now["batch"]["status"] == "running"
    assert now["stories_by_status"] == {"in-progress": 2}
    assert [c["id"] for c in now["running_commands"]] == [sprint["commands"][1]]
    assert [t["id"] for t in now["pending_background_tasks"]] == [sprint["task"]]
    assert [e["id"] for e in now["last_events"]] == sprint["events"][::-1]
    assert now["heartbeat_age"] == 0 and now["time_unit"] == "s"
    assert len((await get_json(client, "/api/now?events=1"))["last_events"]) == 1


@pytest.mark.asyncio
async def test_api_now_without_a_running_batch(client: Any, store: Store) -> None:
    empty = await get_json(client, "/api/now")
    assert empty["batch"] is None and empty["last_events"] == []
    old = simulate_sprint(store)
    last = await get_json(client, "/api/now")
    assert last["batch"]["id"] == old and last["batch"]["status"] == "completed"
    assert last["heartbeat_age"] is None


@pytest.mark.asyncio
async def test_api_batches_pages(client: Any, sprint: dict[str, Any]) -> None:
    first = await get_json(client, "/api/batches?limit=1")
    assert first["total"] == 2 and first["limit"] == 1 and first["offset"] == 0
    assert [b["id"] for b in first["batches"]] == [sprint["batch"]]
    assert first["batches"][0]["story_count"] == 2
    second = await get_json(client, "/api/batches?limit=1&offset=1")
    assert [b["id"] for b in second["batches"]] == [sprint["old"]]
    assert second["batches"][0]["story_count"] == 4
    assert (await get_json(client, "/api/batches?offset=5"))["batches"] == []


@pytest.mark.asyncio
async def test_api_batch(client: Any, sprint: dict[str, Any]) -> None:
    detail = await get_json(client, f"/api/batches/{sprint['batch']}")
    assert set(detail) == {"batch", "stories", "commands", "background_tasks", "time_unit"}
    assert [s["id"] for s in detail["stories"]] == sprint["stories"]
    assert [c["id"] for c in detail["commands"]] == sprint["commands"]
    assert [t["id"] for t in detail["background_tasks"]] == [sprint["task"]]
    for url in ("/api/batches/999", "/api/batches/abc", "/api/batches/" + "9" * 40):
        response = await client.get(url)
        assert response.status == 404, url


@pytest.mark.asyncio
async def test_api_events_filters(client: Any, store: Store, clock: FakeClock,
                                  sprint: dict[str, Any]) -> None:
    batch = sprint["batch"]
    clock.advance(7200)
    late = log_event(store, batch, "late", story_key="3a-2", command="code-review",
                     status="failed")
    store.create_event(batch_id=batch, story_id=None, command_id=None, epic_id="",
                       story_key="", command="", task_id="", status="info", message="typed",
                       event_type="batch:note", payload={"a": [1, 2]})

    async def ids(query: str) -> list[int]:
        page = await get_json(client, "/api/events?" + query)
        assert set(page) == {"events", "next_cursor", "time_unit"}
        return [e["id"] for e in page["events"]]

    assert await ids(f"batch={batch}&story=3a-1") == sprint["events"][::-1]
    assert await ids(f"batch={batch}&command=code-review") == [late]
    assert await ids(f"batch={batch}&status=completed") == [sprint["events"][2]]
    typed = await get_json(client, "/api/events?event_type=batch:note")
    assert json.loads(typed["events"][0]["payload_json"]) == {"a": [1, 2]}
    assert await ids(f"batch={batch}&since=1h&story=3a-2") == [late]
    assert await ids(f"batch={batch}&until=1h&story=3a-1") == sprint["events"][::-1]
    assert await ids(f"batch={batch}&since={clock.now - 10}&story=3a-2") == [late]
    iso = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(clock.now - 10))
    assert await ids(f"batch={batch}&since={iso}&story=3a-2") == [late]
    assert await ids("story=no-such") == []


@pytest.mark.asyncio
async def test_api_events_pages_never_skip_or_repeat(client: Any, store: Store) -> None:
    batch = store.create_batch(1)
    written = [log_event(store, batch, f"m{n}") for n in range(7)]
    seen: list[int] = []
    cursor = None
    while True:
        query = f"batch={batch}&limit=3" + (f"&cursor={cursor}" if cursor else "")
        page = await get_json(client, "/api/events?" + query)
        seen += [e["id"] for e in page["events"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
        log_event(store, batch, "newer")  # arriving while paging: not on the older pages
    assert seen == written[::-1]


@pytest.mark.asyncio
@pytest.mark.parametrize("query", [
    "limit=0", "limit=x", "limit=10001", "limit=-1", "batch=-1", "batch=0", "batch=1.5",
    "since=yesterday", "until=2024-13-45", "since=99999999999999", "cursor=garbage",
    "cursor=", "batch=" + "9" * 30, "story=" + "k" * 300, "limit=" + "1" * 25])
async def test_api_events_bad_parameters_are_400(client: Any, query: str) -> None:
    response = await client.get("/api/events?" + query)
    body = await response.text()
    if query == "cursor=":  # empty: no cursor
        assert response.status == 200
        return
    assert response.status == 400, body
    error = json.loads(body)["error"]
    assert error and "\n" not in error and len(error) <= 300


@pytest.mark.asyncio
async def test_bad_parameters_of_pages_are_400(client: Any) -> None:
    for url in ("/events?since=soon", "/batches?limit=0", "/api/batches?offset=x",
                "/api/now?events=x", "/api/stream?batch=x"):
        response = await client.get(url)
        assert response.status == 400, url


@pytest.mark.asyncio
async def test_healthz_and_metrics(client: Any, store: Store, clock: FakeClock,
                                   sprint: dict[str, Any]) -> None:
    health = await get_json(client, "/healthz")
    assert health["status"] == "ok" and health["backend"] == BACKEND
    blocked_story = store.create_story(sprint["batch"], "3a-3", "3a")
    for _ in range(3):
        command = store.create_command(blocked_story, "dev-story", "fix")
        store.update_command(command, status="failed")
    clock.advance(42)
    response = await client.get("/metrics")
    assert response.status == 200 and response.headers["Content-Type"].startswith("text/plain")
    text = await response.text()
    values = dict(line.rsplit(" ", 1) for line in text.splitlines() if not line.startswith("#"))
    assert values["sprint_runner_events"] == str(store.count_events())
    assert values["sprint_runner_running_batches"] == "1"
    assert values["sprint_runner_blocked_stories"] == "1"
    assert values[f'sprint_runner_heartbeat_age_seconds{{batch="{sprint["batch"]}"}}'] == "42"


@pytest.mark.asyncio
async def test_metrics_events_last_minute_and_database_size(client: Any, store: Store,
                                                            clock: FakeClock) -> None:
    async def values() -> dict[str, str]:
        text = await (await client.get("/metrics")).text()
        return dict(line.rsplit(" ", 1) for line in text.splitlines()
                    if not line.startswith("#"))

    batch = store.create_batch(1)
    log_event(store, batch, "old")
    clock.advance(61)
    for n in range(3):
        log_event(store, batch, f"recent {n}")
    clock.advance(59)
    got = await values()
    assert got["sprint_runner_events"] == "4" and got["sprint_runner_events_last_minute"] == "3"
    if BACKEND == "sqlite":
        info = store.storage_info()
        assert int(got["sprint_runner_database_bytes"]) == info["file_bytes"] + info["wal_bytes"]
        assert int(got["sprint_runner_database_bytes"]) > 0
    else:  # the store reports no size for a server database
        assert "sprint_runner_database_bytes" not in got
    clock.advance(2)
    assert (await values())["sprint_runner_events_last_minute"] == "0"


@pytest.mark.asyncio
@pytest.mark.parametrize("host, status", [
    ("dash.lan", 200), ("DASH.LAN:8765", 200), ("other.lan:1", 200), ("box", 200),
    ("evil.example", 403), ("dash.lan.evil.example", 403)])
async def test_allow_hosts(make_client: Any, store: Store, host: str, status: int) -> None:
    client = await make_client(allow_hosts=["dash.lan", "other.lan:8765", "[box]"])
    response = await client.get("/api/now", headers={"Host": host})
    assert response.status == status


def test_allow_hosts_is_a_list(db_target: str, store: Store) -> None:
    with pytest.raises(TypeError, match="allow_hosts"):
        create_app(db_target, allow_hosts="dash.lan")


# -- methods, hosts, tokens, headers ----------------------------------------------------------------

@pytest.mark.asyncio
@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH", "OPTIONS"])
async def test_only_get_and_head(client: Any, method: str) -> None:
    for url in ("/", "/api/now", "/api/events", "/nowhere", "/static/dashboard.js"):
        response = await client.request(method, url)
        assert response.status == 405, (method, url)
        assert set(response.headers["Allow"].split(",")) == {"GET", "HEAD"}


@pytest.mark.asyncio
async def test_head_and_headers(client: Any) -> None:
    for url in ("/", "/api/now", "/static/dashboard.js", "/static/dashboard.css"):
        response = await client.head(url)
        assert response.status == 200, url
    response = await client.get("/")
    assert response.headers["Content-Security-Policy"].startswith("default-src 'self'")
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    page = await response.text()
    assert "<script src=\"/static/dashboard.js\"" in page
    assert re.search(r"<script(?![^>]*\ssrc=)", page) is None  # no inline script
    assert " style=" not in page and "<style" not in page


@pytest.mark.asyncio
@pytest.mark.parametrize("host, status", [
    ("evil.example", 403), ("evil.example:8765", 403), ("127.0.0.1.evil.example", 403),
    ("localhost", 200), ("localhost:8765", 200), ("127.0.0.1:1", 200), ("[::1]:8765", 200),
    ("dash.lan:8765", 200)])
async def test_host_header_rules(make_client: Any, store: Store, host: str,
                                 status: int) -> None:
    client = await make_client(host="dash.lan")
    response = await client.get("/api/now", headers={"Host": host})
    assert response.status == status


@pytest.mark.asyncio
async def test_token(make_client: Any, store: Store) -> None:
    client = await make_client(token="s3cret")
    for url in ("/", "/api/now", "/api/stream", "/static/dashboard.js", "/healthz"):
        assert (await client.get(url)).status == 401, url
    bad = await client.get("/api/now", headers={"Authorization": "Bearer nope"})
    assert bad.status == 401 and bad.headers["WWW-Authenticate"] == "Bearer"
    assert (await client.get("/api/now?token=nope", allow_redirects=False)).status == 401
    good = await client.get("/api/now", headers={"Authorization": "Bearer s3cret"})
    assert good.status == 200
    assert not client.session.cookie_jar.filter_cookies(client.make_url("/"))
    once = await client.get("/events?batch=1&token=s3cret", allow_redirects=False)
    assert once.status == 303 and once.headers["Location"] == "/events?batch=1"
    cookie = once.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "s3cret" not in cookie
    assert (await client.get("/api/now")).status == 200  # the cookie from now on
    client.session.cookie_jar.clear()
    assert (await client.get("/api/now")).status == 401


# -- the live stream ------------------------------------------------------------------------------

class SSE:
    """A minimal Server-Sent Events reader over an aiohttp response."""

    def __init__(self, response: Any) -> None:
        self.response = response
        self.comments: list[str] = []
        self.named: list[dict[str, str]] = []

    async def next(self, timeout: float = 5.0) -> dict[str, str]:
        fields: dict[str, str] = {}
        while True:
            line = (await asyncio.wait_for(self.response.content.readline(), timeout)).decode()
            if line in ("\n", ""):
                if line == "":
                    raise EOFError("stream ended")
                if "data" in fields:
                    return fields
                fields = {}
                continue
            line = line.rstrip("\n")
            if line.startswith(":"):
                self.comments.append(line)
                continue
            name, _, value = line.partition(":")
            fields[name] = value[1:] if value.startswith(" ") else value

    async def events(self, n: int) -> list[dict[str, Any]]:
        """The next ``n`` unnamed messages (events); named ones go to ``self.named``."""
        messages: list[dict[str, str]] = []
        while len(messages) < n:
            m = await self.next()
            if "event" in m:
                self.named.append(m)
                continue
            messages.append(m)
        for m in messages:
            assert set(m) == {"id", "data"}  # unnamed messages
            assert json.loads(m["data"])["id"] == int(m["id"])
        return [json.loads(m["data"]) for m in messages]

    async def named_message(self, name: str, timeout: float = 5.0) -> dict[str, Any]:
        """The data of the next named message ``name`` (events and others skipped)."""
        deadline = time.monotonic() + timeout
        while True:
            m = await self.next(max(deadline - time.monotonic(), 0.01))
            if m.get("event") == name:
                assert set(m) == {"event", "data"}  # no id: line
                return json.loads(m["data"])  # type: ignore[no-any-return]


@pytest.mark.asyncio
async def test_stream_sends_new_events_then_resumes_after_last_event_id(
        client: Any, store: Store, sprint: dict[str, Any]) -> None:
    batch = sprint["batch"]
    other = store.create_batch(1)
    async with client.get(f"/api/stream?batch={batch}") as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/event-stream")
        stream = SSE(response)
        await asyncio.sleep(0.2)  # connected: starts after the newest event
        log_event(store, other, "elsewhere")
        new = [log_event(store, batch, f"live {n}\nsecond line") for n in range(3)]
        got = await stream.events(3)
        assert [e["id"] for e in got] == new
        assert got[0]["message"] == "live 0\nsecond line"
    later = [log_event(store, batch, f"while away {n}") for n in range(2)]
    async with client.get(f"/api/stream?batch={batch}",
                          headers={"Last-Event-ID": str(new[0])}) as response:
        got = await SSE(response).events(4)
        assert [e["id"] for e in got] == new[1:] + later  # no gap, no duplicate
    async with client.get("/api/stream?after=0") as response:
        got = await SSE(response).events(3)
        assert [e["id"] for e in got] == [1, 2, 3]


@pytest.mark.asyncio
async def test_stream_heartbeat(make_client: Any, store: Store) -> None:
    client = await make_client(heartbeat=0.1)
    async with client.get("/api/stream") as response:
        stream = SSE(response)
        deadline = time.monotonic() + 5
        while not stream.comments:
            assert time.monotonic() < deadline
            line = await asyncio.wait_for(response.content.readline(), 5)
            if line.startswith(b":"):
                stream.comments.append(line.decode())
        assert stream.comments[0].startswith(": heartbeat")
    assert (await client.head("/api/stream")).status == 200


@pytest.mark.asyncio
async def test_stream_sends_batch_changes_as_named_messages(
        make_client: Any, store: Store, clock: FakeClock, sprint: dict[str, Any]) -> None:
    batch, (s1, s2) = sprint["batch"], sprint["stories"]
    client = await make_client(update_interval=0.1)
    async with client.get(f"/api/stream?batch={batch}") as response:
        stream = SSE(response)
        first = await stream.named_message("batch")  # every part once at connect
        assert first["id"] == batch and first["cycles_completed"] == 0
        assert first["running"] is True and first["stale"] is False
        assert (await stream.named_message("stories"))["by_status"] == [["in-progress", 2]]
        commands = await stream.named_message("commands")
        assert [c["id"] for c in commands["running"]] == [sprint["commands"][1]]
        assert commands["running"][0]["story_key"] == "3a-2"
        await stream.named_message("tasks")
        clock.advance(5)
        store.update_batch(batch, cycles_completed=1)
        store.update_story(s1, status="done")
        changed = await stream.named_message("batch", timeout=2)
        assert changed["cycles_completed"] == 1 and changed["id"] == batch
        stories = await stream.named_message("stories", timeout=2)
        assert stories["by_status"] == [["done", 1], ["in-progress", 1]]
        for _ in range(3):  # a failing story shows as blocked
            store.update_command(store.create_command(s2, "dev-story", "t"), status="failed")
        blocked = await stream.named_message("stories", timeout=2)
        assert blocked["blocked"] == ["3a-2"]
        event = log_event(store, batch, "still an event")
        assert [e["id"] for e in await stream.events(1)] == [event]  # unnamed, with id:


@pytest.mark.asyncio
async def test_stream_named_messages_only_on_change(make_client: Any, store: Store,
                                                    clock: FakeClock,
                                                    sprint: dict[str, Any]) -> None:
    client = await make_client(update_interval=0.05)
    async with client.get(f"/api/stream?batch={sprint['batch']}") as response:
        stream = SSE(response)
        for name in ("batch", "stories", "commands", "tasks"):
            await stream.named_message(name)
        clock.advance(30)  # ages grow, nothing else changes: no message
        with pytest.raises(asyncio.TimeoutError):
            await stream.next(timeout=0.5)
        store.heartbeat(sprint["batch"])
        assert (await stream.named_message("batch", timeout=2))["heartbeat_at"] == clock.now


@pytest.mark.asyncio
async def test_stream_without_a_batch_watches_the_running_one(make_client: Any,
                                                              store: Store) -> None:
    client = await make_client(update_interval=0.05)
    old = simulate_sprint(store)
    async with client.get("/api/stream") as response:
        stream = SSE(response)
        assert (await stream.named_message("batch"))["id"] == old
        new = store.create_batch(2)
        assert (await stream.named_message("batch", timeout=2))["id"] == new


@pytest.mark.asyncio
@pytest.mark.parametrize("present", [3, 130])
async def test_a_bare_connect_sends_only_events_committed_after_it(
        client: Any, store: Store, present: int) -> None:
    batch = store.create_batch(1)
    store.create_events([{"batch_id": batch, "story_id": None, "command_id": None,
                          "epic_id": "", "story_key": "", "command": "", "task_id": "",
                          "status": "info", "message": f"old {n}"} for n in range(present)])
    async with client.get("/api/stream") as response:
        stream = SSE(response)
        await stream.named_message("batch")  # connected and past its first poll
        await asyncio.sleep(0.2)
        new = [log_event(store, batch, f"new {n}") for n in range(2)]
        assert [e["id"] for e in await stream.events(2)] == new
        with pytest.raises(asyncio.TimeoutError):
            await stream.next(timeout=0.3)


def _insert_held(session: ServerSession, batch: int) -> int:
    """BEGIN and insert an event on ``session``, leaving it uncommitted; return its id."""
    session.execute("BEGIN")
    sql = ("INSERT INTO events (batch_id, timestamp, epic_id, story_key, command, task_id, "
           "status, message) VALUES (%s, 0, 'e', 'k', 'dev-story', 't', 'progress', 'held')")
    if BACKEND == "postgresql":
        return int(session.execute(sql + " RETURNING id", (batch,))[0][0])
    session.execute(sql, (batch,))
    return int(session.execute("SELECT LAST_INSERT_ID()")[0][0])


@pytest.mark.asyncio
async def test_a_bare_connect_waits_for_a_lower_id_still_to_commit(
        client: Any, store: Store, server_session: Any, db_target: str) -> None:
    """A server hands out ids before commit: an event with an id below the newest at
    connect time that commits later is still sent (starting after the newest would
    skip it for good)."""
    batch = store.create_batch(1)
    before = log_event(store, batch, "before")
    holder = ServerSession(db_target)
    try:
        held = _insert_held(holder, batch)
        newest = log_event(store, batch, "newest, committed before the held one")
        assert before < held < newest
        async with client.get("/api/stream") as response:
            stream = SSE(response)
            await stream.named_message("batch")
            await asyncio.sleep(0.3)
            holder.execute("COMMIT")
            assert [e["id"] for e in await stream.events(1)] == [held]
            with pytest.raises(asyncio.TimeoutError):
                await stream.next(timeout=0.3)  # before and newest: not again
    finally:
        holder.close()


# -- the pages ------------------------------------------------------------------------------------

@pytest.mark.asyncio
async def test_pages_escape_everything(client: Any, store: Store,
                                       sprint: dict[str, Any]) -> None:
    batch = sprint["batch"]
    for message in XSS:
        log_event(store, batch, message, story_key="<b>k</b>")
    store.create_event(batch_id=batch, story_id=None, command_id=None, epic_id="",
                       story_key="", command="", task_id="", status="info", message="p",
                       event_type="x", payload={"html": "</pre><script>x()</script>",
                                                "bidi": "\u202e"})
    now_page = await (await client.get("/")).text()
    events_page = await (await client.get(f"/events?batch={batch}")).text()
    batch_page = await (await client.get(f"/batches/{batch}")).text()
    for page in (now_page, events_page):
        assert "<img" not in page and "</script><script>" not in page
        assert "&lt;img src=x onerror=&quot;document.title=&#x27;pwned&#x27;&quot;&gt;" in page
        assert "&lt;b&gt;k&lt;/b&gt;" in page
    assert "&lt;/pre&gt;&lt;script&gt;x()&lt;/script&gt;" in events_page
    assert "\u202e" not in events_page and "\\u202e" in events_page
    assert "<pre>{\n  &quot;html&quot;" in events_page  # pretty-printed
    assert "story &lt;file&gt; written" in batch_page


@pytest.mark.asyncio
async def test_now_page(client: Any, sprint: dict[str, Any]) -> None:
    page = await (await client.get("/")).text()
    assert f'data-batch-id="{sprint["batch"]}"' in page and "Running batch" in page
    assert f'data-stream="/api/stream?batch={sprint["batch"]}&amp;after=' \
           f'{sprint["events"][-1]}"' in page
    for event in sprint["events"]:
        assert f'data-event-id="{event}"' in page
    assert "dev-story" in page and "docs" in page


@pytest.mark.asyncio
async def test_batches_and_events_pages(client: Any, store: Store,
                                        sprint: dict[str, Any]) -> None:
    page = await (await client.get("/batches?limit=1")).text()
    assert f'href="/batches/{sprint["batch"]}"' in page and "older" in page
    page = await (await client.get("/batches?limit=1&offset=1")).text()
    assert f'href="/batches/{sprint["old"]}"' in page and "newer" in page
    events = await (await client.get(f"/events?batch={sprint['batch']}&limit=2")).text()
    assert events.count("<tr data-event-id=") == 2
    cursor = re.search(r'id="next" href="([^"]+)"', events)
    assert cursor is not None
    more = await (await client.get(cursor.group(1).replace("&amp;", "&"))).text()
    assert more.count("<tr data-event-id=") == 1
    assert (await client.get("/batches/12345")).status == 404


@pytest.mark.asyncio
async def test_batch_timeline(client: Any, store: Store, sprint: dict[str, Any]) -> None:
    for batch in (sprint["old"], sprint["batch"]):
        page = await (await client.get(f"/batches/{batch}")).text()
        rects = re.findall(r'<rect data-command-id="(\d+)"', page)
        assert sorted(map(int, rects)) == [c["id"] for c in store.get_commands_by_batch(batch)]
        assert page.count('class="lane"') == len(store.get_stories_by_batch(batch))
    assert 'fill="#d64545"' in (await (await client.get(f"/batches/{sprint['old']}")).text())


@pytest.mark.asyncio
async def test_times_are_time_elements_with_a_utc_fallback(client: Any,
                                                           sprint: dict[str, Any]) -> None:
    iso = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(1_700_000_000))
    fallback = time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(1_700_000_000))
    tag = f'<time datetime="{iso}" data-ts="1700000000" data-unit="s">{fallback}</time>'
    for url in ("/", "/batches", f"/batches/{sprint['batch']}", "/events"):
        page = await (await client.get(url)).text()
        assert tag in page, url


@pytest.mark.asyncio
async def test_now_page_ages_stale_and_blocked(client: Any, store: Store, clock: FakeClock,
                                               sprint: dict[str, Any]) -> None:
    s2 = sprint["stories"][1]
    page = await (await client.get("/")).text()
    assert '<p id="heartbeat-age" data-stale-after="600">heartbeat <span class="age" ' \
           'data-age="0">0 s ago</span>' in page
    assert '<ul id="blocked-stories"></ul>' in page
    for _ in range(3):
        store.update_command(store.create_command(s2, "dev-story", "t"), status="failed")
    clock.advance(185)
    page = await (await client.get("/")).text()
    assert 'data-age="185">3 min ago</span>' in page  # heartbeat and running command
    assert re.search(r'id="running-commands".*<td><span class="age" data-age="185">3 min ago',
                     page)
    assert '<li class="blocked">3a-2</li>' in page
    assert 'class="stale"' not in page
    clock.advance(600)
    page = await (await client.get("/")).text()
    assert '<p id="heartbeat-age" class="stale" data-stale-after="600">' in page
    assert "13 min ago" in page and "stale: silent for 10 min or more" in page


@pytest.mark.asyncio
async def test_stale_after_is_configurable(make_client: Any, store: Store, clock: FakeClock,
                                           db_target: str, sprint: dict[str, Any]) -> None:
    client = await make_client(stale_after=30)
    clock.advance(31)
    page = await (await client.get("/")).text()
    assert '<p id="heartbeat-age" class="stale" data-stale-after="30">' in page
    with pytest.raises(ValueError, match="stale_after"):
        create_app(db_target, stale_after=0)


def test_ago() -> None:
    from sprint_runner.web.pages import ago

    assert [ago(s) for s in (0, 12, 59, 60, 185, 3599, 3600, 7300, 2 * 86400, -5)] == [
        "0 s ago", "12 s ago", "59 s ago", "1 min ago", "3 min ago", "59 min ago",
        "1 h ago", "2 h ago", "2 d ago", "0 s ago"]


@pytest.mark.asyncio
async def test_batch_page_marks_failures_and_running_bars(client: Any, store: Store,
                                                          sprint: dict[str, Any]) -> None:
    page = await (await client.get(f"/batches/{sprint['old']}")).text()
    failed = [c["id"] for c in store.get_commands_by_batch(sprint["old"], "failed")]
    assert failed
    assert sorted(map(int, re.findall(r'<rect data-command-id="(\d+)" data-status="failed" '
                                      r'class="command failed"', page))) == failed
    assert sorted(map(int, re.findall(r'<text class="failed-mark" data-command-id="(\d+)"',
                                      page))) == failed
    assert "data-running" not in page  # a finished batch: nothing grows
    page = await (await client.get(f"/batches/{sprint['batch']}")).text()
    running = re.findall(r'<rect data-command-id="(\d+)"[^>]* data-running="1" '
                         r'data-width="[\d.]+"', page)
    assert running == [str(sprint["commands"][1])]
    assert re.search(r'<svg id="timeline"[^>]* data-scale="[\d.e-]+" data-unit="s"', page)


@pytest.mark.asyncio
async def test_batch_page_events_per_minute(client: Any, store: Store, clock: FakeClock,
                                            sprint: dict[str, Any]) -> None:
    batch = sprint["batch"]
    clock.advance(120)
    for n in range(4):
        log_event(store, batch, f"later {n}")
    page = await (await client.get(f"/batches/{batch}")).text()
    chart = page[page.index('<svg id="events-per-minute"'):]
    chart = chart[:chart.index("</svg>")]
    bars = [(int(m), int(c)) for m, c in
            re.findall(r'<rect class="minute" data-minute="(\d+)" data-count="(\d+)"', chart)]
    assert bars == store.events_per_minute(batch)
    assert [c for _, c in bars] == [3, 4]
    assert "4 events in the minute from" in chart
    assert page.index('id="events-per-minute"') < page.index("<h2>Background tasks</h2>")
    empty = store.create_batch(1)
    page = await (await client.get(f"/batches/{empty}")).text()
    assert '<p class="empty" id="events-per-minute">No events.</p>' in page


def test_minute_chart_merges_minutes_of_a_long_batch() -> None:
    from sprint_runner.web.pages import minute_chart

    per_minute = [(60 * n, 1) for n in range(1000)]
    chart = minute_chart(per_minute, "s")
    counts = [int(c) for c in re.findall(r'data-count="(\d+)"', chart)]
    assert len(counts) <= 240 and sum(counts) == 1000
    assert 'data-minutes-per-bar="5"' in chart and "per 5 minutes" in chart
    ms = minute_chart([(60_000 * n, 2) for n in range(3)], "ms")
    assert [int(c) for c in re.findall(r'data-count="(\d+)"', ms)] == [2, 2, 2]


# -- the command line ------------------------------------------------------------------------------

def test_serve_refuses_a_public_host_without_a_token(capsys: pytest.CaptureFixture[str],
                                                     store: Store, db_target: str,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SPRINT_RUNNER_TOKEN", raising=False)
    code, out, err = run_cli(capsys, "--db", db_target, "serve", "--host", "0.0.0.0")
    assert code == 2 and out == ""
    assert len(err.splitlines()) == 1 and "--token" in err


def _serve_options(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
                   *argv: str) -> tuple[web.Application, dict[str, Any], list[str], str]:
    """Run ``serve argv`` with aiohttp's run_app replaced: the app, run_app's keywords,
    the URLs ``webbrowser.open`` got from the app's start-up, and stdout."""
    import webbrowser

    ran: list[tuple[web.Application, dict[str, Any]]] = []
    opened: list[str] = []
    monkeypatch.setattr(web, "run_app", lambda app, **kw: ran.append((app, kw)))
    monkeypatch.setattr(webbrowser, "open", lambda url, *a, **k: opened.append(url) or True)
    code, out, err = run_cli(capsys, *argv)
    assert code == 0, err
    app, kwargs = ran[0]

    async def start_up() -> None:
        for callback in app.on_startup:
            await callback(app)

    asyncio.run(start_up())
    return app, kwargs, opened, out


def test_serve_options(capsys: pytest.CaptureFixture[str], store: Store, db_target: str,
                       monkeypatch: pytest.MonkeyPatch) -> None:
    from sprint_runner.web.app import CONFIG

    monkeypatch.delenv("SPRINT_RUNNER_TOKEN", raising=False)
    app, kwargs, opened, out = _serve_options(
        capsys, monkeypatch, "--db", db_target, "serve", "--host", "127.0.0.2", "--port",
        "9123", "--allow-host", "dash.lan", "--allow-host", "box.lan:9123",
        "--stale-after", "5m")
    assert kwargs["host"] == "127.0.0.2" and kwargs["port"] == 9123
    config = app[CONFIG]
    assert config["hosts"] == {"127.0.0.2", "dash.lan", "box.lan"}
    assert config["token"] is None and config["stale_after"] == 300
    assert opened == [] and "http://127.0.0.2:9123/" in out


def test_serve_open_and_token_from_the_environment(
        capsys: pytest.CaptureFixture[str], store: Store, db_target: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    from sprint_runner.web.app import CONFIG

    monkeypatch.setenv("SPRINT_RUNNER_TOKEN", "env-s3cret")
    app, _, opened, _ = _serve_options(capsys, monkeypatch, "--db", db_target, "serve",
                                       "--open")
    assert app[CONFIG]["token"] == "env-s3cret"
    assert opened == ["http://127.0.0.1:8765/?token=env-s3cret"]
    app, _, opened, _ = _serve_options(capsys, monkeypatch, "--db", db_target, "serve",
                                       "--open", "--token", "given", "--port", "1")
    assert app[CONFIG]["token"] == "given" and opened == ["http://127.0.0.1:1/?token=given"]
    monkeypatch.delenv("SPRINT_RUNNER_TOKEN")
    _, _, opened, _ = _serve_options(capsys, monkeypatch, "--db", db_target, "serve", "--open")
    assert opened == ["http://127.0.0.1:8765/"]


def test_serve_without_aiohttp(capsys: pytest.CaptureFixture[str], store: Store,
                               db_target: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "aiohttp", None)  # as if not installed
    monkeypatch.setitem(sys.modules, "sprint_runner.web", None)
    code, _, err = run_cli(capsys, "--db", db_target, "serve")
    assert code == 1 and err.splitlines() == [
        "sprint-runner-db: error: the dashboard needs aiohttp: "
        "pip install 'sprint-runner[web]'"]


@pytest.mark.sqlite_only
def test_serve_never_creates_a_file(capsys: pytest.CaptureFixture[str],
                                    tmp_path: Path) -> None:
    path = tmp_path / "absent.db"
    code, _, err = run_cli(capsys, "--db", str(path), "serve")
    assert code == 1 and "no such database file" in err and not path.exists()


def test_serve_serves(store: Store, db_target: str, unused_tcp_port: int) -> None:
    sprint = fill(store)
    child = subprocess.Popen(
        [sys.executable, "-m", "sprint_runner", "--db", db_target, "serve", "--port",
         str(unused_tcp_port)], env=subprocess_env(), stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True)
    try:
        import urllib.request

        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(
                        f"http://127.0.0.1:{unused_tcp_port}/api/now", timeout=5) as answer:
                    assert json.load(answer)["batch"]["id"] == sprint["batch"]
                    break
            except OSError:
                assert child.poll() is None, child.communicate()
                assert time.monotonic() < deadline
                time.sleep(0.1)
    finally:
        child.terminate()
        out, err = child.communicate(timeout=30)
    assert "read-only on http://127.0.0.1:" in out


# -- a real browser ---------------------------------------------------------------------------------

ARTIFACTS = ROOT / ".ci" / "artifacts"
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
BROWSER_TZ = "Asia/Kathmandu"


def local_text(timestamp: int) -> str:
    """``timestamp`` (seconds) as the browser should show it, in ``BROWSER_TZ``."""
    import datetime
    import zoneinfo

    return datetime.datetime.fromtimestamp(timestamp, zoneinfo.ZoneInfo(BROWSER_TZ)).strftime(
        "%Y-%m-%d %H:%M:%S")


class ServerThread:
    """The dashboard on a real port (``port``, else any free one), in its own event loop
    on a background thread."""

    def __init__(self, app: web.Application, port: int = 0) -> None:
        self.loop = asyncio.new_event_loop()
        self.runner = web.AppRunner(app)
        self.port = port
        ready = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(ready,), daemon=True)
        self.thread.start()
        assert ready.wait(30), "the server did not start"

    def _run(self, ready: threading.Event) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_until_complete(self.runner.setup())
        site = web.TCPSite(self.runner, "127.0.0.1", self.port)
        self.loop.run_until_complete(site.start())
        self.port = self.runner.addresses[0][1]
        ready.set()
        self.loop.run_forever()

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(30)
        self.loop.close()


@pytest.fixture
def browser() -> Iterator[Any]:
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not os.path.exists(p)]
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        missing.append("the selenium package")
    if missing:
        message = f"no browser to test with: {', '.join(missing)} missing"
        if IN_CI:
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                     "--disable-gpu", "--window-size=1280,1000"):
        options.add_argument(argument)
    # A zone far from UTC and from this machine's, at a quarter-hour offset: local times
    # must be the browser's own, whatever the server's zone.
    service = Service(CHROMEDRIVER, env={**os.environ, "TZ": BROWSER_TZ})
    driver = webdriver.Chrome(service=service, options=options)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.mark.heavy
@pytest.mark.slow
@pytest.mark.sqlite_only
def test_in_a_real_browser(browser: Any, store: Store, db_target: str,
                           clock: FakeClock) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    def wait(condition: Any, timeout: float = 2.0) -> None:
        WebDriverWait(browser, timeout, poll_frequency=0.05).until(lambda d: condition())

    def css(selector: str) -> Any:
        return browser.find_element(By.CSS_SELECTOR, selector)

    def feed_ids() -> list[str]:
        return [r.get_attribute("data-event-id") for r in
                browser.find_elements(By.CSS_SELECTOR, "#feed tbody tr")]

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    sprint = fill(store)
    s1 = sprint["stories"][0]
    servers = [ServerThread(create_app(db_target, clock=clock))]
    try:
        base = f"http://127.0.0.1:{servers[0].port}"
        browser.get(base + "/")
        title = browser.title
        batch = browser.find_element(By.ID, "batch")
        assert batch.get_attribute("data-batch-id") == str(sprint["batch"])
        assert "running" in batch.text
        wait(lambda: css("#feed-status").text == "live", 10)

        # Times in the browser's zone, not UTC, not the server's.
        started = css("#batch dd.started time")
        assert started.get_attribute("datetime") == time.strftime(
            "%Y-%m-%dT%H:%M:%SZ", time.gmtime(clock.now))
        assert started.text == local_text(clock.now)
        assert started.get_attribute("title") == time.strftime(
            "%Y-%m-%d %H:%M:%SZ", time.gmtime(clock.now))

        def rows() -> dict[str, str]:
            return {r.get_attribute("data-event-id"): r.text for r in
                    browser.find_elements(By.CSS_SELECTOR, "#feed tbody tr")}

        clock.advance(3600)
        new = [log_event(store, sprint["batch"], f"from the test {n}") for n in range(3)]
        started_at = time.monotonic()
        wait(lambda: all(str(i) in rows() for i in new))
        arrived = time.monotonic() - started_at
        assert arrived < 2
        live_time = css(f'#feed tr[data-event-id="{new[-1]}"] time')
        assert live_time.text == local_text(clock.now)  # rows from the stream too

        # Batch and story changes reach the open page (named messages), no reload.
        marker = browser.execute_script("window.notReloaded = 1; return window.notReloaded;")
        changed_at = time.monotonic()
        store.update_batch(sprint["batch"], cycles_completed=2)
        store.update_story(s1, status="done")
        later = store.create_command(s1, "code-review", "review")
        wait(lambda: css("#batch dd.cycles").text == "2 of 4")
        wait(lambda: "done" in css("#stories-by-status").text)
        wait(lambda: str(later) in css("#running-commands").text)
        updated = time.monotonic() - changed_at
        assert updated < 2
        assert browser.execute_script("return window.notReloaded;") == marker
        for _ in range(3):
            store.update_command(store.create_command(s1, "dev-story", "t"), status="failed")
        wait(lambda: css("#blocked-stories li.blocked").text == "3a-1")

        # The heartbeat's age counts on in the browser; past stale_after it warns.
        store.heartbeat(sprint["batch"])  # fresh (the clock moved an hour above)
        wait(lambda: css("#heartbeat-age .age").text in ("0 s ago", "1 s ago"), 3)
        assert "stale" not in (css("#heartbeat-age").get_attribute("class") or "")
        assert not css("#heartbeat-age .warning").is_displayed()
        first = css("#heartbeat-age .age").text
        wait(lambda: css("#heartbeat-age .age").text != first, 3)
        clock.advance(700)
        store.update_batch(sprint["batch"], cycles_completed=3)  # a message: age 700 s
        wait(lambda: "stale" in (css("#heartbeat-age").get_attribute("class") or ""), 3)
        assert "11 min ago" in css("#heartbeat-age").text
        assert css("#heartbeat-age .warning").is_displayed()

        hostile = [log_event(store, sprint["batch"], message) for message in XSS]
        wait(lambda: all(str(i) in rows() for i in hostile))
        shown = rows()
        for event, message in zip(hostile, XSS):
            assert message in shown[str(event)]  # as text
        assert browser.find_elements(By.CSS_SELECTOR, "#feed img") == []
        assert browser.find_elements(By.CSS_SELECTOR, "#feed script") == []
        time.sleep(0.3)
        assert browser.title == title and "pwned" not in browser.title
        assert list(shown)[:5] == [str(i) for i in (hostile[::-1] + new[::-1])]
        browser.save_screenshot(str(ARTIFACTS / "dashboard-now.png"))

        # The server goes away and comes back on the same port: the EventSource resumes
        # after its Last-Event-ID, no gap, no duplicate.
        before = feed_ids()
        port = servers[0].port
        servers.pop().stop()
        wait(lambda: css("#feed-status").text == "reconnecting", 5)
        while_down = [log_event(store, sprint["batch"], f"while down {n}") for n in range(3)]
        servers.append(ServerThread(create_app(db_target, clock=clock), port=port))
        after_restart = [log_event(store, sprint["batch"], f"after restart {n}")
                         for n in range(2)]
        written = {str(i) for i in while_down + after_restart}
        wait(lambda: written <= set(feed_ids()), 15)
        time.sleep(0.5)
        ids = feed_ids()
        assert len(ids) == len(set(ids))  # each once
        assert set(ids) == set(before) | written
        assert ids[:5] == [str(i) for i in (while_down + after_restart)[::-1]]
        assert css("#feed-status").text == "live"

        for batch_id in (sprint["old"], sprint["batch"]):
            browser.get(f"{base}/batches/{batch_id}")
            rects = browser.find_elements(By.CSS_SELECTOR, "svg#timeline rect[data-command-id]")
            assert sorted(int(r.get_attribute("data-command-id")) for r in rects) == \
                [c["id"] for c in store.get_commands_by_batch(batch_id)]
            failed = browser.find_elements(By.CSS_SELECTOR, "svg#timeline rect.failed")
            assert len(failed) == len(store.get_commands_by_batch(batch_id, "failed"))
            assert browser.find_elements(By.CSS_SELECTOR, "svg#events-per-minute rect.minute")
            axis = css("svg#events-per-minute text.axis")
            assert axis.text == local_text(int(axis.get_attribute("data-ts")))
            browser.save_screenshot(str(ARTIFACTS / f"dashboard-batch-{batch_id}.png"))
        bar = css("svg#timeline rect[data-running]")
        width = float(bar.get_attribute("width"))
        wait(lambda: float(bar.get_attribute("width")) > width, 3)  # it grows
        browser.get(f"{base}/events?batch={sprint['batch']}")
        assert browser.find_elements(By.CSS_SELECTOR, "#events img") == []
        assert browser.title == "Events - sprint-runner"
        browser.save_screenshot(str(ARTIFACTS / "dashboard-events.png"))
        logs = [entry for entry in browser.get_log("browser")
                if entry.get("level") == "SEVERE" and "favicon" not in entry.get("message", "")
                and "/api/stream" not in entry.get("message", "")]  # the restart's refusals
        assert logs == []  # no CSP violation, no script error
    finally:
        for server in servers:
            server.stop()
    (ARTIFACTS / "browser-timing.txt").write_text(
        f"three events written to shown on the Now page: {arrived:.3f} s\n"
        f"a batch and a story change to shown on the Now page: {updated:.3f} s\n")
