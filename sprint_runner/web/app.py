"""The dashboard's aiohttp application: a read-only JSON API, a live event stream and
server-rendered pages over one :class:`~sprint_runner.aio.AsyncStore`."""
from __future__ import annotations

import argparse
import asyncio
import hashlib
import hmac
import ipaddress
import math
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from typing import Any
from urllib.parse import urlencode

import peewee
from aiohttp import web

from .. import migrations
from ..aio import AsyncStore
from ..clock import PER_SECOND, Clock
from ..connect import open_database
from ..errors import SchemaError
from ..events import MAX_PAGE
from ..store import Store
from ..untrusted import json_text
from . import pages

__all__ = ["DEFAULT_HEARTBEAT", "DEFAULT_POLL_INTERVAL", "DEFAULT_STALE_AFTER",
           "DEFAULT_UPDATE_INTERVAL", "STATIC", "BadRequest", "create_app", "is_loopback"]

STATIC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "static")
"""The CSS and JavaScript files the pages load (shipped in the package)."""
DEFAULT_POLL_INTERVAL = 0.3
"""Seconds between two ``tail_events`` polls of one ``/api/stream``."""
DEFAULT_HEARTBEAT = 15.0
"""Seconds between two comment lines of an idle ``/api/stream``."""
DEFAULT_UPDATE_INTERVAL = 1.0
"""Seconds between two looks of one ``/api/stream`` at its batch (named messages)."""
DEFAULT_STALE_AFTER = 600
"""Seconds without a heartbeat after which a running batch shows as stale (the CLI's
``recover`` and ``doctor`` default, ``--stale-after 10m``)."""
COOKIE = "sprint_runner_token"
_TAIL_LIMIT = 500
_START_WINDOW = 100
"""A bare ``/api/stream`` connect starts below the newest this many events (see there)."""
_LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost",
                             "ip6-loopback"})
_CSP = "default-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"

STORE = web.AppKey("store", AsyncStore)
CONFIG = web.AppKey("config", dict)
STOPPING = web.AppKey("stopping", asyncio.Event)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class BadRequest(Exception):
    """A query parameter that cannot be used: answered 400 with this one-line reason."""


def is_loopback(host: str) -> bool:
    """Return whether ``host`` (a name or address, no port) names this machine only."""
    name = host.strip().strip("[]").rstrip(".").lower()
    if name in _LOOPBACK_NAMES or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def _host_name(header: str) -> str:
    """The host name of a Host header (``name:port``, ``[v6]:port``), lowercased."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[1:header.find("]")] if "]" in header else header
    if header.count(":") == 1:
        header = header.split(":", 1)[0]
    return header.rstrip(".")


# -- opening the store -----------------------------------------------------------------

def _resolve_target(target: str | os.PathLike[str] | Store) -> str:
    """The path or URL to open; refuses a server ``Store`` (its location is masked)."""
    if isinstance(target, Store):
        if isinstance(target.database, peewee.SqliteDatabase):
            return str(target.database.database)
        raise ValueError("create_app() needs the URL of a server database as a string "
                         "(a Store's location hides its password)")
    return os.fspath(target)


def _check_sqlite(target: str) -> None:
    """Refuse a SQLite file that does not exist or needs migrations (never touched)."""
    database = open_database(target)
    if not isinstance(database, peewee.SqliteDatabase):
        return
    path = str(database.database)
    if path == ":memory:" or not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such database file (the dashboard never "
                                "creates one: run `sprint-runner-db init` first)")
    _refuse_pending(path, migrations.pending_migrations(migrations.inspect_sqlite_file(path)))


def _refuse_pending(location: str, pending: list[Any]) -> None:
    if pending:
        raise SchemaError(
            f"{location} needs {len(pending)} schema migration(s); the dashboard only "
            "reads: run `sprint-runner-db migrate` first")


# -- the application ---------------------------------------------------------------------

def create_app(target: str | os.PathLike[str] | Store, *, token: str | None = None,
               host: str | None = None, allow_hosts: Iterable[str] = (),
               clock: Clock | None = None, poll_interval: float = DEFAULT_POLL_INTERVAL,
               heartbeat: float = DEFAULT_HEARTBEAT,
               update_interval: float = DEFAULT_UPDATE_INTERVAL,
               stale_after: int = DEFAULT_STALE_AFTER, readers: int = 2) -> web.Application:
    """Return the dashboard over ``target``: a SQLite path, a URL, or a SQLite ``Store``
    (a server database must be given by its URL string).

    The database is opened read-only when the application starts (``Store(read_only=
    True)``: SQLite ``mode=ro``, a read-only session on the servers), so the database
    itself refuses any write; a SQLite file must exist and be up to date (checked here
    and again at start-up), and no migration is ever run. Only GET and HEAD are served
    (405 otherwise). Requests whose Host header names neither a loopback host, nor
    ``host``, nor one of ``allow_hosts`` (names, or Host header values such as
    ``dash.lan:8765``) get 403 (DNS rebinding). With
    ``token``, every request needs ``Authorization: Bearer <token>`` or the HttpOnly
    cookie that ``?token=<token>`` sets once. ``update_interval``: seconds between two
    looks of a stream at its batch; ``stale_after``: seconds without a heartbeat that
    make a running batch stale.
    """
    if isinstance(allow_hosts, str):
        raise TypeError("allow_hosts must be a list of names, not one string")
    if isinstance(stale_after, bool) or not isinstance(stale_after, int) or stale_after < 1:
        raise ValueError(f"stale_after must be a whole number of seconds >= 1, "
                         f"not {stale_after!r}")
    where = _resolve_target(target)
    _check_sqlite(where)
    if token is not None and not token:
        raise ValueError("token must not be empty")
    app = web.Application(middlewares=[_guard, _errors])
    hosts = {_host_name(h) for h in allow_hosts} | ({_host_name(host)} if host else set())
    hosts.discard("")
    app[CONFIG] = {"token": token, "hosts": frozenset(hosts),
                   "poll": float(poll_interval), "heartbeat": float(heartbeat),
                   "updates": float(update_interval), "stale_after": stale_after}
    app[STOPPING] = asyncio.Event()

    async def store_context(app: web.Application) -> AsyncIterator[None]:
        _check_sqlite(where)
        # read_only: the database refuses every write on the app's connections, and a
        # database that needs migrations is refused (SchemaError) instead of migrated.
        store = AsyncStore(where, clock, read_only=True, readers=readers)
        await store.open()
        try:
            app[STORE] = store
            yield
        finally:
            app[STOPPING].set()
            await store.aclose()

    async def stopping(app: web.Application) -> None:
        app[STOPPING].set()

    app.cleanup_ctx.append(store_context)
    app.on_shutdown.append(stopping)
    app.on_response_prepare.append(_headers)
    r = app.router
    r.add_get("/", pages.now_page)
    r.add_get("/batches", pages.batches_page)
    r.add_get("/batches/{batch_id}", pages.batch_page)
    r.add_get("/events", pages.events_page)
    r.add_get("/api/now", api_now)
    r.add_get("/api/batches", api_batches)
    r.add_get("/api/batches/{batch_id}", api_batch)
    r.add_get("/api/events", api_events)
    r.add_get("/api/stream", api_stream)
    r.add_get("/healthz", healthz)
    r.add_get("/metrics", metrics)
    r.add_static("/static", STATIC, append_version=False)
    return app


async def _headers(request: web.Request, response: web.StreamResponse) -> None:
    response.headers["Content-Security-Policy"] = _CSP
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["Referrer-Policy"] = "no-referrer"
    response.headers.setdefault("Cache-Control", "no-store")


def _cookie_value(token: str) -> str:
    return hmac.new(token.encode(), b"sprint-runner dashboard cookie", hashlib.sha256).hexdigest()


@web.middleware
async def _guard(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Methods, Host header and token, in that order, before any handler runs."""
    if request.method not in ("GET", "HEAD"):
        raise web.HTTPMethodNotAllowed(request.method, ["GET", "HEAD"],
                                       text="405: the dashboard only reads (GET, HEAD)\n")
    config = request.app[CONFIG]
    name = _host_name(request.host)
    if not (is_loopback(name) or name in config["hosts"]):
        raise web.HTTPForbidden(text=f"403: Host {name[:80]!r} is not this dashboard's\n")
    token: str | None = config["token"]
    if token is None:
        return await handler(request)
    given = request.query.get("token")
    if given is not None:
        if not hmac.compare_digest(given.encode(), token.encode()):
            raise web.HTTPUnauthorized(text="401: wrong token\n",
                                       headers={"WWW-Authenticate": "Bearer"})
        query = [(k, v) for k, v in request.query.items() if k != "token"]
        location = request.path + ("?" + urlencode(query) if query else "")
        response = web.HTTPSeeOther(location)
        response.set_cookie(COOKIE, _cookie_value(token), httponly=True, samesite="Strict",
                            path="/")
        raise response
    auth = request.headers.get("Authorization", "")
    bearer = auth[7:].strip() if auth[:7].lower() == "bearer " else ""
    cookie = request.cookies.get(COOKIE, "")
    if (bearer and hmac.compare_digest(bearer.encode(), token.encode())) or \
            (cookie and hmac.compare_digest(cookie.encode(), _cookie_value(token).encode())):
        return await handler(request)
    raise web.HTTPUnauthorized(text="401: this dashboard needs its token "
                                    "(Authorization: Bearer, or ?token= once)\n",
                               headers={"WWW-Authenticate": "Bearer"})


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    line = text[0] if text else type(exc).__name__
    return line if len(line) <= 300 else line[:297] + "..."


@web.middleware
async def _errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """A bad parameter (ours, or one the store's checks refuse) is a 400, never a 500."""
    try:
        return await handler(request)
    except (BadRequest, ValueError, TypeError, argparse.ArgumentTypeError) as exc:
        reason = _one_line(exc)
        if request.path.startswith("/api/"):
            return _json({"error": reason}, status=400)
        return pages.error_page(400, reason)


def _json(value: Any, status: int = 200) -> web.Response:
    return web.Response(text=json_text(value), status=status,
                        content_type="application/json", charset="utf-8")


# -- parameters ---------------------------------------------------------------------------

def int_param(query: Mapping[str, str], name: str, default: int | None = None, *,
              minimum: int = 0, maximum: int = 2**63 - 1) -> int | None:
    """The integer query parameter ``name`` (``default`` if absent or empty)."""
    text = query.get(name, "").strip()
    if not text:
        return default
    if not (text.isascii() and text.isdigit()) or len(text) > 19:
        raise BadRequest(f"{name} must be a whole number, not {text[:40]!r}")
    value = int(text)
    if not minimum <= value <= maximum:
        raise BadRequest(f"{name} must be between {minimum} and {maximum}, not {value}")
    return value


def text_param(query: Mapping[str, str], name: str) -> str | None:
    value = query.get(name)
    return None if value is None or value == "" else value


def event_query(query: Mapping[str, str], store: AsyncStore) -> dict[str, Any]:
    """``page_events``' arguments from query parameters named like the CLI's options."""
    from ..cli import parse_moment  # the CLI's own rules for times

    scale = PER_SECOND[store.time_unit]
    now = store.clock() // scale
    times: dict[str, int | None] = {}
    for name in ("since", "until"):
        text = text_param(query, name)
        if text is None:
            times[name] = None
            continue
        try:
            times[name] = parse_moment(text).resolve(now) * scale
        except argparse.ArgumentTypeError as exc:
            raise BadRequest(f"{name}: {exc}") from None
    return {"limit": int_param(query, "limit", 50, minimum=1, maximum=MAX_PAGE),
            "cursor": text_param(query, "cursor"),
            "batch_id": int_param(query, "batch", minimum=1),
            "story_key": text_param(query, "story"), "command": text_param(query, "command"),
            "status": text_param(query, "status"), "event_type": text_param(query, "event_type"),
            **times}


def path_id(request: web.Request, name: str = "batch_id") -> int:
    text = request.match_info[name]
    if not (text.isascii() and text.isdigit()) or len(text) > 18:
        raise web.HTTPNotFound(text=f"404: no batch {text[:40]!r}\n")
    return int(text)


# -- reads shared by the API and the pages ------------------------------------------------

async def now_summary(store: AsyncStore, events: int = 20) -> dict[str, Any]:
    """The running batch, else the last one: ``batch_summary`` (``batch`` None if none)."""
    batch = await store.get_active_batch()
    if batch is None:
        latest = await store.list_batches(limit=1)
        batch = latest[0] if latest else None
    summary = None if batch is None else await store.batch_summary(batch["id"], events=events)
    if summary is None:
        summary = {"batch": None, "heartbeat_age": None, "stories_by_status": {},
                   "running_commands": [], "pending_background_tasks": [], "last_events": []}
    return {**summary, "time_unit": store.time_unit}


async def batch_detail(store: AsyncStore, batch_id: int) -> dict[str, Any]:
    batch = await store.get_batch(batch_id)
    if batch is None:
        raise web.HTTPNotFound(text=f"404: no batch {batch_id}\n")
    return {"batch": batch, "stories": await store.get_stories_by_batch(batch_id),
            "commands": await store.get_commands_by_batch(batch_id),
            "background_tasks": await store.get_background_tasks_by_batch(batch_id),
            "time_unit": store.time_unit}


async def batches_page_data(store: AsyncStore, query: Mapping[str, str]) -> dict[str, Any]:
    limit = int_param(query, "limit", 20, minimum=1, maximum=MAX_PAGE)
    offset = int_param(query, "offset", 0)
    assert limit is not None and offset is not None
    return {"batches": await store.list_batches(limit=limit, offset=offset),
            "total": await store.count_batches(), "limit": limit, "offset": offset,
            "time_unit": store.time_unit}


async def batch_state(store: AsyncStore, batch_id: int,
                      stale_after: int) -> dict[str, dict[str, Any]] | None:
    """What the Now page shows of a batch and ``/api/stream`` sends as named messages:
    ``batch`` (its row, ``running``, ``heartbeat_age`` in seconds, ``stale``),
    ``stories`` (counts by status, blocked story keys), ``commands`` (running, with
    their ages) and ``tasks`` (pending background tasks, with their ages); None if the
    batch is gone."""
    summary = await store.batch_summary(batch_id, events=0)
    if summary is None:
        return None
    unit = store.time_unit
    scale = PER_SECOND[unit]
    now = store.clock()
    batch = summary["batch"]
    stories = await store.get_stories_by_batch(batch_id)
    keys = {s["id"]: s["story_key"] for s in stories}
    blocked = [s["story_key"] for s in stories if await store.check_story_blocked(s["id"])]
    age = summary["heartbeat_age"]
    base = {"batch_id": batch_id, "time_unit": unit}
    return {
        "batch": {**base, **batch, "running": batch["status"] == "running",
                  "heartbeat_age": age, "stale_after": stale_after,
                  "stale": age is not None and age >= stale_after},
        "stories": {**base, "by_status": sorted(summary["stories_by_status"].items(),
                                                key=lambda kv: (-kv[1], kv[0])),
                    "blocked": blocked},
        "commands": {**base, "running": [
            {"id": c["id"], "story_key": keys.get(c["story_id"], "?"),
             "command": c["command"], "task_id": c["task_id"], "started_at": c["started_at"],
             "age": max(now - c["started_at"], 0) // scale}
            for c in summary["running_commands"]]},
        "tasks": {**base, "pending": [
            {"id": t["id"], "story_key": t["story_key"], "task_type": t["task_type"],
             "spawned_at": t["spawned_at"], "age": max(now - t["spawned_at"], 0) // scale}
            for t in summary["pending_background_tasks"]]},
    }


# -- the JSON API ---------------------------------------------------------------------------

async def api_now(request: web.Request) -> web.Response:
    events = int_param(request.query, "events", 10, maximum=MAX_PAGE)
    assert events is not None
    return _json(await now_summary(request.app[STORE], events))


async def api_batches(request: web.Request) -> web.Response:
    return _json(await batches_page_data(request.app[STORE], request.query))


async def api_batch(request: web.Request) -> web.Response:
    return _json(await batch_detail(request.app[STORE], path_id(request)))


async def api_events(request: web.Request) -> web.Response:
    store = request.app[STORE]
    page = await store.page_events(**event_query(request.query, store))
    return _json({**page, "time_unit": store.time_unit})


async def healthz(request: web.Request) -> web.Response:
    store = request.app[STORE]
    try:
        version = await store.schema_version()
    except Exception as exc:  # noqa: BLE001 - any failure means "not healthy"
        return _json({"status": "error", "error": _one_line(exc)}, status=503)
    return _json({"status": "ok", "backend": store.backend, "schema_version": version,
                  "time_unit": store.time_unit})


async def metrics(request: web.Request) -> web.Response:
    """Prometheus text: events stored, events in the last minute, the database's size
    (SQLite: file plus WAL), running batches (among the newest ``MAX_PAGE``), blocked
    stories of running batches, seconds since each running batch's heartbeat."""
    store = request.app[STORE]
    events = await store.count_events()
    scale = PER_SECOND[store.time_unit]
    now = store.clock()
    last_minute = await store.count_events(since=now - 60 * scale)
    storage = await store.storage_info()
    running = [b for b in await store.list_batches(limit=MAX_PAGE) if b["status"] == "running"]
    blocked = 0
    ages = []
    for batch in running:
        for story in await store.get_stories_by_batch(batch["id"]):
            if await store.check_story_blocked(story["id"]):
                blocked += 1
        ages.append((batch["id"], max(now - Store.last_seen(batch), 0) // scale))
    lines = [
        *_gauge("events", "Events stored.", events),
        *_gauge("events_last_minute", "Events whose timestamp is within the last 60 s.",
                last_minute),
    ]
    if "file_bytes" in storage:  # servers report no size (the store gives none)
        lines += _gauge("database_bytes", "Bytes of the database file plus its WAL.",
                        int(storage["file_bytes"]) + int(storage.get("wal_bytes", 0)))
    lines += [
        *_gauge("running_batches", "Batches whose status is running.", len(running)),
        *_gauge("blocked_stories", "Stories of running batches whose last three commands "
                "failed.", blocked),
        "# HELP sprint_runner_heartbeat_age_seconds Seconds since a running batch's last "
        "heartbeat (or start).",
        "# TYPE sprint_runner_heartbeat_age_seconds gauge",
        *(f'sprint_runner_heartbeat_age_seconds{{batch="{i}"}} {age}' for i, age in ages),
    ]
    return web.Response(text="\n".join(lines) + "\n", charset="utf-8",
                        content_type="text/plain", headers={"X-Prometheus-Format": "0.0.4"})


def _gauge(name: str, help_text: str, value: int) -> list[str]:
    """The three lines of one unlabelled Prometheus gauge."""
    return [f"# HELP sprint_runner_{name} {help_text}", f"# TYPE sprint_runner_{name} gauge",
            f"sprint_runner_{name} {value}"]


# -- the live stream -----------------------------------------------------------------------

def sse_message(event: Mapping[str, Any]) -> bytes:
    """One unnamed Server-Sent Event: ``id:`` the event's id, ``data:`` its JSON (one line:
    ``json_text`` escapes every line break)."""
    return f"id: {event['id']}\ndata: {json_text(dict(event))}\n\n".encode()


def sse_named(name: str, value: Mapping[str, Any]) -> bytes:
    """One named Server-Sent Event without ``id:`` (so the browser's Last-Event-ID stays
    the last event's)."""
    return f"event: {name}\ndata: {json_text(dict(value))}\n\n".encode()


_VOLATILE = frozenset({"heartbeat_age", "stale", "age"})
"""Keys that change with the clock alone: not a change worth a message (the page counts
ages on by itself)."""


def _stable(value: Any) -> Any:
    """``value`` without its clock-driven keys, to tell whether a part changed."""
    if isinstance(value, Mapping):
        return {k: _stable(v) for k, v in value.items() if k not in _VOLATILE}
    if isinstance(value, (list, tuple)):
        return [_stable(v) for v in value]
    return value


class BatchWatch:
    """One stream's look at its batch (``batch_id``, else the running or last one): the
    named messages of the parts that changed since the last look (all of them first)."""

    def __init__(self, batch_id: int | None, stale_after: int) -> None:
        self.batch_id = batch_id
        self.stale_after = stale_after
        self.sent: dict[str, str] = {}

    async def _watched(self, store: AsyncStore) -> int | None:
        if self.batch_id is not None:
            return self.batch_id
        batch = await store.get_active_batch()
        if batch is None:
            latest = await store.list_batches(limit=1)
            batch = latest[0] if latest else None
        return None if batch is None else int(batch["id"])

    async def changes(self, store: AsyncStore) -> bytes:
        """The ``batch``, ``stories``, ``commands`` and ``tasks`` messages now due."""
        batch_id = await self._watched(store)
        state = None if batch_id is None else await batch_state(store, batch_id,
                                                                self.stale_after)
        if state is None:
            return b""
        out = []
        for name, value in state.items():
            key = json_text(_stable(value))
            if self.sent.get(name) != key:
                self.sent[name] = key
                out.append(sse_named(name, value))
        return b"".join(out)


async def start_position(store: AsyncStore) -> tuple[int, frozenset[int]]:
    """Where a stream given no position starts: ``(after, already)``.

    A server hands out ids before commit, so at connect time an event with an id below
    the newest may still be about to commit; starting after the newest would skip it
    for good. So the stream starts below the newest ``_START_WINDOW`` events (from 0 if
    there are fewer), where the tail's gap rules wait for any such id, and does not
    send the events that were already committed at connect time (``already``)."""
    window = [e["id"] for e in (await store.page_events(limit=_START_WINDOW))["events"]]
    if len(window) < _START_WINDOW:
        return 0, frozenset(window)
    return min(window), frozenset(window)


async def api_stream(request: web.Request) -> web.StreamResponse:
    """Server-Sent Events: every event committed after ``Last-Event-ID`` (else ``?after=``,
    else the events present now, see :func:`start_position`), in id order, exactly once,
    polled with ``tail_events``, as unnamed messages with ``id:``; and, every
    ``update_interval`` seconds, named messages (no ``id:``) for the parts of the
    watched batch that changed (:class:`BatchWatch`)."""
    store = request.app[STORE]
    config = request.app[CONFIG]
    batch = int_param(request.query, "batch", minimum=1)
    resume = request.headers.get("Last-Event-ID", "").strip()
    after = int_param({"Last-Event-ID": resume}, "Last-Event-ID") if resume \
        else int_param(request.query, "after")
    headers = {"Content-Type": "text/event-stream; charset=utf-8", "Cache-Control": "no-store",
               "X-Accel-Buffering": "no"}
    if request.method == "HEAD":
        return web.Response(headers=headers)
    already: frozenset[int] = frozenset()
    if after is None:
        after, already = await start_position(store)
    response = web.StreamResponse(headers=headers)
    await response.prepare(request)
    stopping = request.app[STOPPING]
    watch = BatchWatch(batch, config["stale_after"])
    beat = time.monotonic()
    looked = -math.inf
    try:
        await response.write(b"retry: 2000\n\n")
        while not stopping.is_set():
            transport = request.transport
            if transport is None or transport.is_closing():
                break
            events = await store.tail_events(after, batch_id=batch, limit=_TAIL_LIMIT)
            if events:
                fresh = [e for e in events if e["id"] not in already]
                if fresh:
                    await response.write(b"".join(sse_message(e) for e in fresh))
                after = events[-1]["id"]
                if already and after >= max(already):
                    already = frozenset()
                if len(events) == _TAIL_LIMIT:
                    continue
            if time.monotonic() - looked >= config["updates"]:
                looked = time.monotonic()
                changes = await watch.changes(store)
                if changes:
                    await response.write(changes)
            if time.monotonic() - beat >= config["heartbeat"]:
                await response.write(b": heartbeat\n\n")
                beat = time.monotonic()
            try:
                await asyncio.wait_for(stopping.wait(), config["poll"])
            except asyncio.TimeoutError:
                pass
    except ConnectionError:
        pass  # the client went away
    return response
