"""``sprint-runner-db``: look into and look after a sprint-runner database.

Every command is a thin layer over :class:`~sprint_runner.Store`: it parses the
arguments (times included), calls the store and formats what comes back, for
people (local time, aligned columns) or with ``--json`` for machines (epoch
seconds). Exit status: 0 ok, 1 a problem found, 2 a usage error.
"""
from __future__ import annotations

import argparse
import csv
import datetime
import functools
import logging
import os
import re
import shlex
import sqlite3
import sys
import time
import urllib.parse
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import IO, Any, NamedTuple, NoReturn

import peewee

from . import __version__, db, demo, files, migrations, untrusted
from .clock import PER_SECOND as _PER_SECOND
from .clock import system_clock
from .connect import (
    DriverMissing,
    backend_of,
    describe,
    mask_secrets,
    mask_url,
    open_database,
)
from .migrations import SchemaState
from .store import EVENT_COLUMNS, MAX_PAGE, Row, Store, sqlite_storage_info
from .untrusted import for_terminal, json_text
from .validation import INT64_MAX

PROG = "sprint-runner-db"

_UNITS = {"w": 7 * 86400, "d": 86400, "h": 3600, "m": 60, "s": 1}
_AGE_RE = re.compile(r"(?:\s*\d+\s*[wdhms])+\s*")
_AGE_PART_RE = re.compile(r"(\d+)\s*([wdhms])")
_EPOCH_RE = re.compile(r"\d+(?:\.\d*)?")
_TAIL_CHUNK = 1000
_MIN_INTERVAL = 0.1
_LATEST_MOMENT = 253402300799
"""9999-12-31 23:59:59 UTC: the last second ``datetime`` can show."""
_PROGRESS_EVERY = 5000

_UNIT_WORDS = {"s": "seconds", "ms": "milliseconds"}
_TIMESTAMP_KEYS = frozenset({"timestamp", "started_at", "ended_at", "heartbeat_at",
                             "spawned_at", "completed_at"})

_sleep: Callable[[float], None] = time.sleep
"""How ``tail`` waits between polls (tests replace it)."""


class CommandError(Exception):
    """A problem reported as one line on stderr, with exit status 1."""

    status = 1


class UsageError(CommandError):
    """An argument that is wrong whatever is on the disk (the database itself as the file
    to write to): one line on stderr, like a problem, but exit status 2."""

    status = 2


# -- parsing times ------------------------------------------------------------------------

class Moment(NamedTuple):
    """A point in time as given: an absolute epoch second, or an age before now."""

    seconds: int
    relative: bool

    def resolve(self, now: int) -> int:
        """Return the epoch second this moment names, ``now`` being the current time."""
        return max(now - self.seconds, 0) if self.relative else self.seconds


def _age_seconds(text: str) -> int | None:
    if not _AGE_RE.fullmatch(text):
        return None
    seconds = sum(int(n) * _UNITS[unit] for n, unit in _AGE_PART_RE.findall(text))
    if seconds > INT64_MAX:
        raise argparse.ArgumentTypeError(f"{text!r} is out of range: too long a time")
    return seconds


def parse_moment(text: str) -> Moment:
    """Parse epoch seconds, ISO-8601 (naive means local time) or an age like ``30d``, ``2h``."""
    text = text.strip()
    age = _age_seconds(text)
    if age is not None:
        return Moment(age, relative=True)
    if _EPOCH_RE.fullmatch(text):
        # int() of the whole part: float() turns 400 digits into inf, then OverflowError.
        seconds = int(text.partition(".")[0])
        if seconds > _LATEST_MOMENT:
            raise argparse.ArgumentTypeError(
                f"invalid time {text[:40]!r}{'...' if len(text) > 40 else ''}: after 9999")
        return Moment(seconds, relative=False)
    iso = text[:-1] + "+00:00" if text.endswith(("Z", "z")) else text  # 3.10 lacks "Z"
    try:
        seconds = int(datetime.datetime.fromisoformat(iso).timestamp())
    except (ValueError, OverflowError, OSError):
        raise argparse.ArgumentTypeError(
            f"invalid time {text!r}: use epoch seconds, ISO-8601 (2024-05-01T12:00) "
            "or an age (30d, 2h, 10m, 45s, 1w)") from None
    if seconds < 0:
        raise argparse.ArgumentTypeError(f"invalid time {text!r}: before 1970")
    return Moment(seconds, relative=False)


def parse_duration(text: str) -> int:
    """Parse a length of time in seconds: ``600``, ``10m``, ``2h``, ``1d12h``."""
    text = text.strip()
    age = _age_seconds(text)
    if age is not None:
        return age
    if text.isascii() and text.isdigit():
        if int(text) > INT64_MAX:
            raise argparse.ArgumentTypeError(f"{text!r} is out of range: too long a time")
        return int(text)
    raise argparse.ArgumentTypeError(
        f"invalid duration {text!r}: use seconds or a length like 45s, 10m, 2h, 30d, 1w")


def _count(minimum: int, maximum: int = INT64_MAX) -> Callable[[str], int]:
    def parse(text: str) -> int:
        digits = text.strip()
        if not digits.isascii() or not digits.lstrip("-").isdigit() or len(digits) > 40:
            raise argparse.ArgumentTypeError(f"invalid number {text[:40]!r}")
        value = int(digits)
        if not minimum <= value <= maximum:
            bound = f">= {minimum}" if maximum == INT64_MAX else f"between {minimum} and {maximum}"
            raise argparse.ArgumentTypeError(f"{digits} is out of range: must be {bound}")
        return value
    parse.__name__ = "number"
    return parse


def _interval(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"invalid interval {text!r}: use seconds, e.g. 1 or 0.5") from None
    # A shorter interval polls the database thousands of times a second; also refuses nan.
    if not _MIN_INTERVAL <= value <= 3600:
        raise argparse.ArgumentTypeError(
            f"interval must be between {_MIN_INTERVAL} and 3600 seconds, got {text}")
    return value


# -- formatting ----------------------------------------------------------------------------

def local_time(ts: int | None) -> str:
    """Return an epoch second as local ``YYYY-MM-DD HH:MM:SS`` (``-`` for None)."""
    if ts is None:
        return "-"
    return datetime.datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S")


def _clock_time(ts: int, now: int) -> str:
    """Local ``HH:MM:SS`` when ``ts`` is today, else the full date and time."""
    when = datetime.datetime.fromtimestamp(ts)
    if when.date() == datetime.datetime.fromtimestamp(now).date():
        return when.strftime("%H:%M:%S")
    return when.strftime("%Y-%m-%d %H:%M")


def span(seconds: int) -> str:
    """Return a length of time for people: ``45s``, ``12m 5s``, ``2h 5m``, ``3d 4h``."""
    seconds = max(int(seconds), 0)
    units = (("d", 86400), ("h", 3600), ("m", 60), ("s", 1))
    for (unit, size), (next_unit, next_size) in zip(units, units[1:], strict=False):
        if seconds >= size:
            whole, rest = f"{seconds // size}{unit}", seconds % size // next_size
            return f"{whole} {rest}{next_unit}" if rest else whole
    return f"{seconds}s"


def _ago(ts: int | None, now: int) -> str:
    if ts is None:
        return "-"
    return f"{span(now - ts)} ago" if ts <= now else f"in {span(ts - now)}"


def _took(start: int | None, end: int | None, now: int) -> str:
    if start is None:
        return ""
    if end is None:
        return f"running for {span(now - start)}"
    return f"took {span(end - start)}"


def _bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def _one_line(text: object) -> str:
    return " ".join(str(text).split())


def _plural(n: int, word: str, many: str | None = None) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {many or word + 's'}"


def _table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> list[str]:
    # Escaped before the widths are taken, so the columns line up as printed.
    cells = [[str(h) for h in headers]] + [[for_terminal(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    return ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
            for row in cells]


def _say(*lines: str) -> None:
    """Print lines for people; every value in them may be agent output, so each line is
    shown with its control characters escaped (a value can neither add a line nor send
    the terminal a command)."""
    for line in lines:
        print(for_terminal(line))


def _print_json(value: object) -> None:
    print(json_text(value, indent=2))


def _event_line(event: Row, now: int | None) -> str:
    """One event for people; the time is short when ``now`` is given and it is today."""
    when = local_time(event["timestamp"]) if now is None else _clock_time(event["timestamp"], now)
    key, command, status = (for_terminal(event[k]) for k in ("story_key", "command", "status"))
    return (f"{when}  {key:<10} {command:<14} {status:<8} "
            f"{for_terminal(event['message'] or '')}").rstrip()


# -- opening the database ------------------------------------------------------------------

def _target(args: argparse.Namespace) -> str:
    target: str = args.db if args.db is not None else db.DB_PATH
    return target


def _scrub(text: str, target: str) -> str:
    """Mask the passwords in ``text``: of ``target``, of any URL, of ``password=`` pairs."""
    return mask_secrets(text, target)


@contextmanager
def opened(args: argparse.Namespace, *, create: bool = False, migrate: bool = False,
           current: bool = True) -> Iterator[Store]:
    """Yield a store on ``--db``, closed afterwards.

    Unless ``create``, a SQLite file that does not exist is an error (and is not
    created). ``migrate`` brings the schema up to date; otherwise ``current``
    refuses a database that still needs migrations: a SQLite file is refused after a
    read-only look, before any connection that could change it (WAL mode included).
    """
    database = open_database(_target(args))
    look = _first_look(database, create=create,
                       adopt_foreign=bool(getattr(args, "adopt_foreign", False)))
    check = current and not migrate
    if check and look is not None:
        _refuse_outdated(describe(database), look)
    store = Store(database, migrate=migrate, time_unit=getattr(args, "time_unit", None),
                  default_time_unit=db.TIME_UNIT)
    try:
        if check and look is None:
            _refuse_outdated(store.location, migrations.read_state(store.database,
                                                                   store.location))
        yield store
    finally:
        store.close()


def _first_look(database: peewee.Database, *, create: bool = False,
                adopt_foreign: bool = False) -> SchemaState | None:
    """Read a SQLite file's schema state on a read-only connection (None on a server).

    Unless ``create``, a missing file is an error (and is not created).
    """
    if not isinstance(database, peewee.SqliteDatabase):
        return None
    path = str(database.database)
    if not create and not os.path.exists(path):
        raise CommandError(f"{path}: no such database file (create one with "
                           f"`{PROG} init`, or try `{PROG} --db demo.db demo`)")
    return migrations.inspect_sqlite_file(path, adopt_foreign=adopt_foreign)


def _refuse_outdated(location: str, state: SchemaState) -> None:
    pending = migrations.pending_migrations(state)
    if not pending:
        return
    if state.kind == "fresh":
        raise CommandError(f"{location} holds no sprint-runner tables; "
                           f"create them with `{PROG} init`")
    raise CommandError(
        f"{location} is at schema version {state.version} and needs "
        f"{_plural(len(pending), 'migration')} ({', '.join(str(m.version) for m in pending)}); "
        f"run `{PROG} migrate` first")


def _check_destination(args: argparse.Namespace, path: str, *, new: bool = False,
                       what: str) -> None:
    """Refuse a destination before the database is even opened (the writer checks again)."""
    try:
        files.check_destination(path, protect=files.files_of(open_database(_target(args))),
                                new=new, what=what)
    except files.RefusedDestination as exc:
        raise _destination_refused(exc) from None


def _destination_refused(exc: files.RefusedDestination) -> CommandError:
    # The database itself is never a place to write to, whatever is on the disk: a
    # usage error. Anything else (a symlink, a FIFO, a file that exists) is a problem
    # found on the disk, as a missing folder or a full disk are.
    if isinstance(exc, files.DatabaseDestination):
        return UsageError(str(exc))
    return CommandError(str(exc))


# -- declaring commands --------------------------------------------------------------------

_Handler = Callable[[argparse.Namespace], int]


class _Option(NamedTuple):
    """One argument, declared once and added to every parser that takes it."""

    flags: tuple[str, ...]
    settings: dict[str, Any]

    def add_to(self, parser: argparse.ArgumentParser, **overrides: Any) -> None:
        """Add this argument to ``parser``, with ``overrides`` of its settings."""
        parser.add_argument(*self.flags, **{**self.settings, **overrides})


def _option(*flags: str, **settings: Any) -> _Option:
    return _Option(flags, settings)


class _Command(NamedTuple):
    name: str
    summary: str
    options: tuple[_Option, ...]
    handler: _Handler


_COMMANDS: list[_Command] = []
"""Every command, in the order ``--help`` lists them: each registers itself where its
handler is defined (:func:`_command`), and :func:`_parser` builds its subparser from it."""


def _command(name: str, summary: str, *options: _Option) -> Callable[[_Handler], _Handler]:
    """Declare the decorated handler as command ``name``, taking ``options`` (beside
    ``--db`` and ``--json``, which every command takes)."""
    def register(handler: _Handler) -> _Handler:
        _COMMANDS.append(_Command(name, summary, options, handler))
        return handler
    return register


_DB_HELP = "database file or URL (default: $SPRINT_RUNNER_DB, else sprint-runner.db)"
_JSON_HELP = "print JSON for machines (times as epoch seconds)"
_EVERYWHERE = (_option("--db", metavar="PATH|URL", help=_DB_HELP),
               _option("--json", action="store_true", help=_JSON_HELP))
"""Taken before the command and after it."""

_BATCH = _option("--batch", metavar="N", type=_count(1), help="only this batch's events")
_FILTERS = (
    _BATCH,
    _option("--story", metavar="KEY", help="only events of this story key"),
    _option("--command", metavar="C", dest="command_name",
            help="only events of this command (dev-story, ...)"),
    _option("--status", metavar="S", help="only events with this status"),
    _option("--event-type", metavar="TYPE",
            help="only events of this type (command:start, batch:end, ...)"),
    _option("--since", metavar="T", type=parse_moment, help="only events at or after this time"),
    _option("--until", metavar="T", type=parse_moment, help="only events before this time"),
)
"""Which events: ``events`` lists them, ``export`` writes them."""


def _dry_run(what: str) -> _Option:
    return _option("--dry-run", action="store_true", help=what)


def _stale_after(what: str) -> _Option:
    return _option("--stale-after", metavar="DURATION", type=parse_duration, default=600,
                   help=what)


# -- commands ------------------------------------------------------------------------------

@_command("init", "create the database or bring its schema up to date",
          _option("--time-unit", choices=("s", "ms"),
                  help="the unit of a new database's timestamps: s (seconds) or ms "
                       "(milliseconds); default $SPRINT_RUNNER_TIME_UNIT, else s"),
          _option("--adopt-foreign", action="store_true",
                  help="add sprint-runner's tables to a SQLite file that holds another "
                       "program's tables (refused otherwise)"))
def _cmd_init(args: argparse.Namespace) -> int:
    return _migrate(args, create=True, dry_run=False)


def _migrate(args: argparse.Namespace, *, create: bool, dry_run: bool) -> int:
    if dry_run:
        return _migrate_dry_run(args)
    with opened(args, create=create, current=False) as store:
        fresh = not store.database.get_tables()
        before = store.schema_version()
        applied = store.migrate()
        after = store.schema_version()
        if args.json:
            _print_json({"location": store.location, "backend": store.backend,
                         "schema_version": after, "previous_version": before,
                         "applied": applied, "time_unit": store.time_unit})
        elif applied and fresh:
            _say(f"created {store.location} at schema version {after} "
                 f"(timestamps in {_UNIT_WORDS[store.time_unit]})")
        elif applied:
            _say(f"migrated {store.location} from schema version {before} to {after} "
                  f"(applied {', '.join(str(v) for v in applied)})")
        else:
            _say(f"{store.location} is at schema version {after}: up to date")
    return 0


def _migrate_dry_run(args: argparse.Namespace) -> int:
    database = open_database(_target(args))
    look = _first_look(database)  # a SQLite file is only read: nothing may change
    if look is not None:
        location, backend = describe(database), backend_of(database)
        version = look.version
        pending = [(m.version, m.name) for m in migrations.pending_migrations(look)]
    else:
        with opened(args, current=False) as store:
            location, backend = store.location, store.backend
            version = store.schema_version()
            pending = store.pending_migrations()
    if args.json:
        _print_json({"location": location, "backend": backend, "schema_version": version,
                     "previous_version": version, "applied": [],
                     "pending": [{"version": v, "name": n} for v, n in pending]})
    elif not pending:
        _say(f"{location} is at schema version {version}: up to date")
    else:
        _say(f"{location} is at schema version {version}; `{PROG} migrate` would apply:")
        for v, name in pending:
            _say(f"  {v}  {name}")
    return 0


def _status_lines(store: Store, summary: dict[str, Any], now: int) -> list[str]:
    batch = summary["batch"]
    lines = [f"Batch {batch['id']} - {batch['status']} - "
             f"cycle {batch['cycles_completed'] or 0} of {batch['max_cycles']} done"]
    owner = f" by {batch['owner']}" if batch["owner"] else ""
    lines.append(f"  started    {local_time(batch['started_at'])} "
                 f"({_ago(batch['started_at'], now)}){owner}")
    if batch["ended_at"] is not None:
        lines.append(f"  ended      {local_time(batch['ended_at'])} "
                     f"({_took(batch['started_at'], batch['ended_at'], now)})")
    if summary["heartbeat_age"] is not None:
        lines.append(f"  heartbeat  {span(summary['heartbeat_age'])} ago")
    by_status = summary["stories_by_status"]
    stories = ", ".join(f"{n} {status}" for status, n in sorted(
        by_status.items(), key=lambda item: (-item[1], item[0]))) or "none yet"
    lines.append(f"  stories    {stories}")
    keys = {s["id"]: s["story_key"] for s in store.get_stories_by_batch(batch["id"])} \
        if summary["running_commands"] else {}
    running = summary["running_commands"]
    tasks = summary["pending_background_tasks"]
    live = batch["status"] == "running"
    if running or live:
        lines.append(f"  running    {_plural(len(running), 'command') if running else 'none'}")
    for c in running:
        lines.append(f"    #{c['id']} {c['command']} for {keys.get(c['story_id'], '?')} "
                     f"(task {c['task_id']}), {_took(c['started_at'], None, now)}")
    if tasks or live:
        pending = f"{_plural(len(tasks), 'task')} pending" if tasks else "none pending"
        lines.append(f"  background {pending}")
    for t in tasks:
        lines.append(f"    #{t['id']} {t['task_type']} for {t['story_key']}, "
                     f"{_took(t['spawned_at'], None, now)}")
    events = summary["last_events"]
    if events:
        lines.append("")
        lines.append(f"Last {_plural(len(events), 'event')}, newest first:")
        lines.extend("  " + _event_line(e, now) for e in events)
    return lines


@_command("status", "the running batch (else the last one) at a glance",
          _option("--events", metavar="N", type=_count(0, MAX_PAGE), default=10,
                  help="how many recent events to show (default: 10)"))
def _cmd_status(args: argparse.Namespace) -> int:
    now = system_clock()
    with opened(args) as store:
        batch = store.get_active_batch()
        if batch is None:
            latest = store.list_batches(limit=1)
            batch = latest[0] if latest else None
        summary = None if batch is None else store.batch_summary(batch["id"], events=args.events)
        if args.json:
            _print_json(None if summary is None else {**summary, "time_unit": store.time_unit})
        elif summary is None:
            _say(f"no batches yet in {store.location}")
        else:
            if summary["batch"]["status"] != "running":
                _say(f"No batch is running; the last one in {store.location}:")
            _say(*_status_lines(store, _in_seconds(store, summary), now))
    return 0


@_command("batches", "list the most recent batches, newest first",
          _option("--limit", metavar="N", type=_count(1), default=20,
                  help="how many (default: 20)"))
def _cmd_batches(args: argparse.Namespace) -> int:
    now = system_clock()
    with opened(args) as store:
        batches = store.list_batches(limit=args.limit)
        shown = _in_seconds(store, batches)
    if args.json:
        _print_json(batches)
    elif not batches:
        _say("no batches yet")
    else:
        rows = [(b["id"], b["status"], f"{b['cycles_completed'] or 0}/{b['max_cycles']}",
                 local_time(b["started_at"]),
                 _took(b["started_at"], b["ended_at"], now).replace("took ", ""),
                 _ago(b["heartbeat_at"], now) if b["status"] == "running" else "-",
                 b["owner"] or "-") for b in shown]
        _say(*_table(("ID", "STATUS", "CYCLES", "STARTED", "DURATION", "HEARTBEAT", "OWNER"),
                     rows))
    return 0


@_command("show", "one batch: its stories with their commands, its background tasks",
          _option("batch_id", metavar="BATCH_ID", type=_count(1), help="the batch's id"))
def _cmd_show(args: argparse.Namespace) -> int:
    now = system_clock()
    with opened(args) as store:
        batch = store.get_batch(args.batch_id)
        if batch is None:
            raise CommandError(f"batch {args.batch_id} not found in {store.location}")
        stories = store.get_stories_by_batch(args.batch_id)
        commands = store.get_commands_by_batch(args.batch_id)
        tasks = store.get_background_tasks_by_batch(args.batch_id)
        if not args.json:
            batch, stories, commands, tasks = _in_seconds(store, [batch, stories, commands,
                                                                  tasks])
    by_story: dict[int, list[Row]] = {}
    for c in commands:
        by_story.setdefault(c["story_id"], []).append(c)
    if args.json:
        _print_json({"batch": batch,
                     "stories": [{**s, "commands": by_story.get(s["id"], [])} for s in stories],
                     "background_tasks": tasks})
        return 0
    owner = f" by {batch['owner']}" if batch["owner"] else ""
    _say(f"Batch {batch['id']} - {batch['status']} - "
          f"cycle {batch['cycles_completed'] or 0} of {batch['max_cycles']} done")
    _say(f"  started  {local_time(batch['started_at'])}{owner}")
    _say(f"  ended    {local_time(batch['ended_at'])}  "
          f"{_took(batch['started_at'], batch['ended_at'], now)}")
    if batch["status"] == "running":
        _say(f"  heartbeat {_ago(batch['heartbeat_at'], now)}")
    _say("")
    _say(f"{_plural(len(stories), 'story', 'stories')}:")
    # One table for every command, so columns line up across stories.
    rows = [(f"#{c['id']}", c["command"], c["task_id"], c["status"],
             _took(c["started_at"], c["ended_at"], now).replace("took ", ""),
             c["output_summary"] or "") for c in commands]
    lines = _table(("", "COMMAND", "TASK", "STATUS", "TIME", "SUMMARY"), rows)[1:]
    line_of = {c["id"]: line for c, line in zip(commands, lines, strict=True)}
    for s in stories:
        _say(f"  {s['story_key']} (epic {s['epic_id']}, #{s['id']})  {s['status']}  "
              f"started {local_time(s['started_at'])}, "
              f"{_took(s['started_at'], s['ended_at'], now)}")
        for c in by_story.get(s["id"], []):
            _say("    " + line_of[c["id"]])
    if tasks:
        _say("")
        _say(f"{_plural(len(tasks), 'background task')}:")
        task_rows = [(f"#{t['id']}", t["task_type"], t["story_key"], t["status"],
                      f"spawned {local_time(t['spawned_at'])}",
                      _took(t["spawned_at"], t["completed_at"], now)) for t in tasks]
        for line in _table(("", "TYPE", "STORY", "STATUS", "SPAWNED", "TIME"), task_rows)[1:]:
            _say("  " + line)
    return 0


def _event_filters(args: argparse.Namespace, now: int, store: Store) -> dict[str, Any]:
    """The event filters given, times in the store's unit (``now`` in seconds)."""
    scale = _PER_SECOND[store.time_unit]
    return {"batch_id": args.batch, "story_key": args.story, "command": args.command_name,
            "status": args.status, "event_type": args.event_type,
            "since": None if args.since is None else args.since.resolve(now) * scale,
            "until": None if args.until is None else args.until.resolve(now) * scale}


def _in_seconds(store: Store, value: Any) -> Any:
    """Return rows (dicts, lists of them, nested) with every timestamp in seconds, for
    people; ``--json`` shows the stored integers instead."""
    scale = _PER_SECOND[store.time_unit]
    if scale == 1:
        return value
    if isinstance(value, dict):
        return {k: (v // scale if isinstance(v, int) and k in _TIMESTAMP_KEYS
                    else _in_seconds(store, v)) for k, v in value.items()}
    if isinstance(value, list):
        return [_in_seconds(store, v) for v in value]
    return value


@_command("events", "list events, newest first, a page at a time", *_FILTERS,
          _option("--limit", metavar="N", type=_count(1, MAX_PAGE), default=50,
                  help="events per page (default: 50)"),
          _option("--cursor", metavar="CURSOR",
                  help="continue after the page that printed this cursor"))
def _cmd_events(args: argparse.Namespace) -> int:
    now = system_clock()
    with opened(args) as store:
        page = store.page_events(limit=args.limit, cursor=args.cursor,
                                 **_event_filters(args, now, store))
        events = _in_seconds(store, page["events"])
    if args.json:
        _print_json(page)
        return 0
    if not events:
        _say("no events match")
        return 0
    rows = [(e["id"], local_time(e["timestamp"]), e["batch_id"], e["story_key"], e["command"],
             e["status"], e["message"] or "") for e in events]
    _say(*_table(("ID", "TIME", "BATCH", "STORY", "COMMAND", "STATUS", "MESSAGE"), rows))
    if page["next_cursor"]:
        _say(f"(more: add --cursor {page['next_cursor']})")
    return 0


@_command("tail", "show the latest events, then follow new ones (Ctrl-C stops)", _BATCH,
          _option("-n", "--lines", metavar="N", type=_count(0, MAX_PAGE), default=10,
                  help="how many existing events to show first (default: 10)"),
          _option("--interval", metavar="S", type=_interval, default=1.0,
                  help="seconds between polls (default: 1)"),
          _option("--max-polls", type=_count(1), help=argparse.SUPPRESS))
def _cmd_tail(args: argparse.Namespace) -> int:
    try:
        with opened(args) as store:

            def emit(event: Row) -> None:
                line = (json_text(event) if args.json
                        else _event_line(_in_seconds(store, event), None))
                print(line, flush=True)

            recent = store.page_events(limit=max(args.lines, 1), batch_id=args.batch)["events"]
            shown = {event["id"] for event in recent}  # printed, or older than asked
            for event in reversed(recent[:args.lines]):
                emit(event)
            # Follow from below the oldest event read, not the newest: on a server an event
            # below it may still commit; the tail returns it, and skips what was shown.
            after = recent[-1]["id"] - 1 if recent else 0
            polls = 0
            while True:
                events = store.tail_events(after, batch_id=args.batch, limit=_TAIL_CHUNK)
                for event in events:
                    if event["id"] not in shown:
                        emit(event)
                    after = event["id"]
                shown = {i for i in shown if i > after}
                if len(events) == _TAIL_CHUNK:
                    continue
                polls += 1
                if args.max_polls is not None and polls >= args.max_polls:
                    return 0
                _sleep(args.interval)
    except KeyboardInterrupt:
        return 0


def _write_events(rows: Iterator[Row], out: IO[str], fmt: str,
                  progress: Callable[[int], None] | None) -> int:
    count = 0
    if fmt == "csv":
        # RFC 4180's CRLF: with "\n" alone, csv leaves a field holding a bare CR unquoted,
        # and a reader splits the row there.
        writer = csv.writer(out, lineterminator="\r\n")
        writer.writerow(EVENT_COLUMNS)
        # A spreadsheet would run a cell such as "=HYPERLINK(...)"; a terminal would obey
        # the escape sequences in one.
        cell = _terminal_cell if out.isatty() else untrusted.csv_cell
        for row in rows:
            writer.writerow([cell(row[c]) for c in EVENT_COLUMNS])
            count += 1
            if progress is not None and count % _PROGRESS_EVERY == 0:
                progress(count)
    else:
        for row in rows:
            out.write(json_text(row))
            out.write("\n")
            count += 1
            if progress is not None and count % _PROGRESS_EVERY == 0:
                progress(count)
    return count


def _terminal_cell(value: object) -> object:
    return value if value is None or type(value) is int else for_terminal(untrusted.csv_cell(value))


@_command("export", "write matching events, oldest first, as JSON lines or CSV", *_FILTERS,
          _option("--format", choices=("jsonl", "csv"), default="jsonl",
                  help="output format (default: jsonl)"),
          _option("-o", "--output", metavar="FILE",
                  help="write to FILE (replaced when complete) instead of stdout"))
def _cmd_export(args: argparse.Namespace) -> int:
    now = system_clock()
    show_progress = sys.stderr.isatty()
    if args.output is not None:
        _check_destination(args, args.output, what="output file")

    with opened(args) as store:
        filters = _event_filters(args, now, store)
        total = store.count_events(**filters) if show_progress else 0

        def progress(n: int) -> None:
            sys.stderr.write(f"\rexported {n:,} of {total:,} events")
            sys.stderr.flush()

        rows = store.iter_events(**filters)
        report = progress if show_progress else None
        if args.output is None:
            count = _write_events(rows, sys.stdout, args.format, report)
            sys.stdout.flush()
        else:
            # Written privately beside FILE, then renamed over it: FILE is never left
            # half written, and never is the database, a symlink, a FIFO or a device.
            try:
                count = files.write_text(
                    args.output, lambda out: _write_events(rows, out, args.format, report),
                    protect=files.files_of(store.database), what="output file")
            except files.RefusedDestination as exc:
                raise _destination_refused(exc) from None
            except OSError as exc:
                raise CommandError(f"cannot write {args.output}: {exc.strerror or exc}") from exc
    if show_progress:
        sys.stderr.write(f"\rexported {count:,} events\n")
    if args.output is not None:
        if args.json:
            _print_json({"path": args.output, "format": args.format, "events": count})
        else:
            _say(f"exported {_plural(count, 'event')} to {args.output} ({args.format})")
    return 0


_ONE_ROW = {"stories": "story", "commands": "command", "background_tasks": "background task"}


@_command("prune", "delete old finished batches and old events",
          _option("--older-than", metavar="T", type=parse_moment, required=True,
                  help="the cutoff: an age such as 30d, or a time"),
          _option("--events-only", action="store_true",
                  help="delete only old events; keep every batch, story and command"),
          _dry_run("count, delete nothing"))
def _cmd_prune(args: argparse.Namespace) -> int:
    cutoff = args.older_than.resolve(system_clock())
    with opened(args) as store:
        stored_cutoff = cutoff * _PER_SECOND[store.time_unit]
        counts = store.prune(older_than=stored_cutoff, events_only=args.events_only,
                             dry_run=args.dry_run)
    if args.json:
        _print_json({"older_than": stored_cutoff, "dry_run": args.dry_run,
                     "events_only": args.events_only, "deleted": counts})
        return 0
    verb = "would delete" if args.dry_run else "deleted"
    _say(f"cutoff: {local_time(cutoff)}")
    if not args.events_only:
        contents = ", ".join(_plural(n, _ONE_ROW[table], table.replace("_", " "))
                             for table, n in counts.items() if table not in ("batches", "events"))
        _say(f"{verb} {_plural(counts['batches'], 'finished batch', 'finished batches')}"
              f" that ended before it" + (f" ({contents})" if counts["batches"] else ""))
    _say(f"{verb} {_plural(counts['events'], 'event')} in all, older ones of batches "
          "that are not running included")
    return 0


@_command("backup", "copy the whole database to a new SQLite file",
          _option("dest", metavar="DEST", help="the new file (must not exist)"))
def _cmd_backup(args: argparse.Namespace) -> int:
    directory = os.path.dirname(os.path.abspath(args.dest))
    if not os.path.isdir(directory):
        raise CommandError(f"cannot write {args.dest}: no such directory {directory}")
    _check_destination(args, args.dest, new=True, what="backup destination")
    with opened(args, current=False) as store:
        if store.backend != "sqlite":  # a SQLite file is copied as it is, whatever its version
            _refuse_outdated(store.location, migrations.read_state(store.database,
                                                                   store.location))
        try:
            store.backup(args.dest)
        except files.RefusedDestination as exc:
            raise _destination_refused(exc) from None
        location = store.location
    size = os.path.getsize(args.dest)
    if args.json:
        _print_json({"source": location, "dest": args.dest, "bytes": size})
    else:
        _say(f"backed up {location} to {args.dest} ({_bytes(size)})")
    return 0


@_command("recover", "stop running batches whose heartbeat went silent",
          _stale_after("silent for this long (default: 10m)"),
          _dry_run("list them, change nothing"))
def _cmd_recover(args: argparse.Namespace) -> int:
    now = system_clock()
    with opened(args) as store:
        stale = {b["id"]: b for b in _in_seconds(store, store.find_stale_batches(
            args.stale_after))}
        stopped = list(stale) if args.dry_run else store.recover_stale_batches(args.stale_after)
    if args.json:
        _print_json({"stale_after": args.stale_after, "dry_run": args.dry_run,
                     "batches": stopped})
        return 0
    if not stopped:
        _say(f"no stale batches (none running without a heartbeat for {span(args.stale_after)})")
        return 0
    verb = "would stop" if args.dry_run else "stopped"
    for batch_id in stopped:
        b = stale.get(batch_id)
        seen = None if b is None else Store.last_seen(b)
        owner = f"owner {b['owner']}, " if b is not None and b["owner"] else ""
        _say(f"{verb} batch {batch_id} ({owner}last heartbeat {_ago(seen, now)})")
    return 0


@_command("migrate", "apply pending schema migrations", _dry_run("list them, change nothing"))
def _cmd_migrate(args: argparse.Namespace) -> int:
    return _migrate(args, create=False, dry_run=args.dry_run)


@_command("doctor", "check integrity, schema, size, rows and stale batches",
          _stale_after("a running batch silent for this long needs attention (default: 10m)"))
def _cmd_doctor(args: argparse.Namespace) -> int:
    report = _doctor_report(args)
    if args.json:
        _print_json(report)
    else:
        _say(*_doctor_lines(report, args.stale_after))
    return 0 if report["ok"] else 1


def _doctor_report(args: argparse.Namespace) -> dict[str, Any]:
    """Look the database over; return what ``doctor --json`` prints (``ok`` when no
    ``problems``, and the ``advice`` that fixes them)."""
    now = system_clock()
    problems: list[str] = []
    advice: list[str] = []
    database = open_database(_target(args))
    report: dict[str, Any] = {
        "location": describe(database), "backend": backend_of(database),
        "schema_version": None, "pending_migrations": None, "integrity": None,
        "storage": {}, "space": None, "tables": None, "stale_batches": None,
        "time_unit": None}
    per_second = 1
    try:
        look = _first_look(database)
        if look is not None and migrations.pending_migrations(look):
            # A file that needs migrating is only looked at, read-only: never changed.
            path = str(database.database)
            report["storage"] = sqlite_storage_info(path)
            report["schema_version"] = look.version
            report["time_unit"] = look.time_unit
            per_second = _PER_SECOND[look.time_unit or "s"]
            pending = [(m.version, m.name) for m in migrations.pending_migrations(look)]
            report["integrity"] = (migrations.check_sqlite_file(path)
                                   + migrations.schema_problems(look))
        else:
            with opened(args, current=False) as store:
                report["storage"] = store.storage_info()
                report["schema_version"] = store.schema_version()
                report["time_unit"] = store.time_unit
                per_second = _PER_SECOND[store.time_unit]
                pending = store.pending_migrations()
                report["integrity"] = store.integrity_check()  # names pending migrations too
                if not pending:
                    report["tables"] = store.table_counts()
                    report["stale_batches"] = store.find_stale_batches(args.stale_after)
        report["pending_migrations"] = [{"version": v, "name": n} for v, n in pending]
        problems += report["integrity"]
        if pending:
            advice.append(f"{PROG} migrate")
    except (peewee.DatabaseError, sqlite3.DatabaseError) as exc:
        reason = _one_line(_scrub(str(exc), _target(args)))
        problems.append(f"cannot read the database: {reason}")
        if report["backend"] == "sqlite":
            advice.append("restore a backup, or salvage the file with sqlite3's .recover")
    if report["backend"] == "sqlite":
        path = str(database.database)
        _check_file_mode(path, problems, advice)
        if report["tables"] is not None:
            _check_free_space(args, path, report, per_second, problems, advice)
    for b in report["stale_batches"] or ():
        owner = f" (owner {b['owner']})" if b["owner"] else ""
        problems.append(f"batch {b['id']} is running but silent for "
                        f"{span(now - Store.last_seen(b) // per_second)}{owner}")
    if report["stale_batches"]:
        advice.append(f"{PROG} recover --stale-after {span(args.stale_after).replace(' ', '')}"
                      "   (once you know the batches' processes are gone)")
    report.update(problems=problems, advice=advice, ok=not problems)
    return report


def _check_file_mode(path: str, problems: list[str], advice: list[str]) -> None:
    """A database file others may read is a problem: it holds the agents' messages."""
    try:
        mode = os.stat(path).st_mode & 0o777
    except OSError:
        return
    if mode & 0o044:
        who = " and ".join(w for w, bit in (("group", 0o040), ("others", 0o004)) if mode & bit)
        problems.append(f"{path} is readable by {who} (mode {mode:04o}); it should be "
                        "owner-only (0600)")
        advice.append(f"chmod 600 {shlex.quote(path)}*   (the file and its -wal/-shm)")


_LOW_SPACE_SHARE = 0.10  # doctor warns below 10% free on the database's filesystem
_GROWTH_DAYS = 20  # ... or below 20 days of the file's growth
_DAY = 86_400
_PRUNE_HINT_DAYS = 30


def _check_free_space(args: argparse.Namespace, path: str, report: dict[str, Any],
                      per_second: int, problems: list[str], advice: list[str]) -> None:
    """Warn when the database's filesystem runs low: below 10% free, or below 20 times
    the file's daily growth (estimated from the events' span, when it is two days or
    more); say what ``prune --older-than 30d`` would free."""
    try:
        st = os.statvfs(os.path.dirname(os.path.abspath(path)) or ".")
    except (OSError, AttributeError):
        return
    free, total = st.f_bavail * st.f_frsize, st.f_blocks * st.f_frsize
    storage = report["storage"]
    size = int(storage.get("file_bytes", 0)) + int(storage.get("wal_bytes", 0))
    with opened(args, current=False) as store:
        oldest = next(store.iter_events(chunk_size=1), None)
        newest = next(store.iter_events(chunk_size=1, newest_first=True), None)
        events = store.count_events()
        reasons = []
        if total and free < _LOW_SPACE_SHARE * total:
            reasons.append(f"{free / total:.1%} of its filesystem is free")
        daily = None
        if oldest is not None and newest is not None:
            days = abs(newest["timestamp"] - oldest["timestamp"]) / per_second / _DAY
            if days >= 2:
                daily = size / days
                if free < _GROWTH_DAYS * daily:
                    reasons.append(f"it grows about {_bytes(int(daily))} a day and only "
                                   f"{free / daily:.0f} days of that are free")
        report["space"] = {"free_bytes": free, "total_bytes": total,
                           "daily_growth_bytes": None if daily is None else int(daily)}
        if not reasons:
            return
        cutoff = system_clock() - _PRUNE_HINT_DAYS * _DAY
        counts = store.prune(older_than=cutoff * per_second, dry_run=True)
    share = counts["events"] / events if events else 0.0
    problems.append(f"low disk space for {path}: {_bytes(free)} free; "
                    + "; ".join(reasons))
    advice.append(f"{PROG} prune --older-than {_PRUNE_HINT_DAYS}d   (would delete "
                  f"{counts['events']:,} of {events:,} events and {counts['batches']:,} "
                  f"batches, about {_bytes(int(size * share))} of the file, reused by new "
                  "rows), or free space on the filesystem")


def _doctor_lines(report: dict[str, Any], stale_after: int) -> list[str]:
    """The doctor's report for people (``stale_after``: the seconds it was asked for)."""
    storage = report["storage"]
    lines = [f"database    {report['location']} ({report['backend']})"]
    if report["schema_version"] is not None:
        pending = report["pending_migrations"]
        state = (f"{_plural(len(pending), 'migration')} pending" if pending else "up to date")
        lines.append(f"schema      version {report['schema_version']} ({state})")
    if "file_bytes" in storage:
        lines.append(f"size        {_bytes(storage['file_bytes'])}, "
                     f"WAL {_bytes(storage['wal_bytes'])}")
    if report["time_unit"] is not None:
        lines.append(f"time unit   {_UNIT_WORDS[report['time_unit']]}")
    if report["integrity"] is not None:
        lines.append(f"integrity   {'ok' if not report['integrity'] else 'PROBLEMS'}")
    if report["tables"] is not None:
        lines.append("rows        " + ", ".join(f"{t} {n:,}"
                                                for t, n in report["tables"].items()))
    if report["stale_batches"] is not None:
        stale = report["stale_batches"]
        lines.append(f"stale       {', '.join('batch ' + str(b['id']) for b in stale) or 'none'} "
                     f"(running batches silent for {span(stale_after)} or more)")
    lines.append("")
    problems = report["problems"]
    if not problems:
        return [*lines, "ok: nothing needs attention"]
    lines.append(f"{_plural(len(problems), 'problem')} need{'s' if len(problems) == 1 else ''} "
                 "attention:")
    lines.extend(f"  - {problem}" for problem in problems)
    lines.extend(f"to fix: {line}" for line in report["advice"])
    return lines


# -- demo ------------------------------------------------------------------------------------

_DEMO_REPEATS = 20


def _holds_data(location: str) -> CommandError:
    return CommandError(
        f"{location} already holds data; the demo writes only into a new "
        f"database, or one where only demos ran: try `{PROG} --db demo.db demo`")


@_command("demo", "simulate a small sprint into a new database, then show its status")
def _cmd_demo(args: argparse.Namespace) -> int:
    now = system_clock()
    database = open_database(_target(args))
    look = _first_look(database, create=True)
    if look is not None and look.tables and migrations.pending_migrations(look):
        raise _holds_data(describe(database))  # refused after a read-only look
    with opened(args, create=True, current=False) as store:
        # Checked before migrating: the demo must not upgrade or fill a real database.
        # Running it again where only demos ran adds one more demo batch.
        if store.database.get_tables() and (
                store.pending_migrations()
                or store.table_counts()["batches"] > _DEMO_REPEATS
                or any(b["owner"] != demo.OWNER for b in store.list_batches(_DEMO_REPEATS))):
            raise _holds_data(store.location)
        store.migrate()
        # A sprint that ends now.
        batch = demo.simulate_sprint(store, end=now * _PER_SECOND[store.time_unit])
        events = store.count_events(batch_id=batch)
        summary = store.batch_summary(batch)
        stories = len(store.get_stories_by_batch(batch))
        commands = store.get_commands_by_batch(batch)
        failed = sum(c["status"] == "failed" for c in commands)
        tasks = len(store.get_background_tasks_by_batch(batch))
        if args.json:
            _print_json(summary)
            return 0
        assert summary is not None
        _say(f"Simulated a small sprint in {store.location}: "
              f"{_plural(stories, 'story', 'stories')}, "
              f"{_plural(len(commands), 'command')} ({failed} failed), "
              f"{_plural(tasks, 'background task')}, {_plural(events, 'event')}.")
        _say("")
        _say(*_status_lines(store, _in_seconds(store, summary), now))
    db_option = f" --db {shlex.quote(mask_url(args.db))}" if args.db is not None else ""
    _say("")
    _say("Look closer:")
    for command, what in ((f"show {batch}", "the stories and their commands"),
                          ("events --story 2b-2", "why story 2b-2 is blocked"),
                          ("doctor", "the health of the database")):
        _say(f"  {PROG}{db_option} {command:<20} # {what}")
    return 0


# -- serve ------------------------------------------------------------------------------------

_WEB_MISSING = "the dashboard needs aiohttp: pip install 'sprint-runner[web]'"


@_command("serve", "serve the read-only web dashboard (pages, JSON API, live stream)",
          _option("--host", metavar="HOST", default="127.0.0.1",
                  help="the address to listen on (default: 127.0.0.1; any other than a "
                       "loopback one needs --token)"),
          _option("--port", metavar="N", type=_count(0, 65535), default=8765,
                  help="the port to listen on (default: 8765)"),
          _option("--token", metavar="T",
                  help="require this token: 'Authorization: Bearer T', or open ?token=T "
                       "once (default: $SPRINT_RUNNER_TOKEN)"),
          _option("--allow-host", metavar="NAME", action="append", default=[],
                  dest="allow_hosts",
                  help="also answer requests whose Host header names NAME (a name, or "
                       "name:port as clients send it; repeatable; loopback names and "
                       "--host always are)"),
          _stale_after("show a running batch silent for this long as stale (default: 10m)"),
          _option("--open", action="store_true",
                  help="open the dashboard in the default web browser once it listens"))
def _cmd_serve(args: argparse.Namespace) -> int:
    try:
        from aiohttp import web as aiohttp_web

        from . import web
    except ImportError:
        raise CommandError(_WEB_MISSING) from None
    token = args.token or os.environ.get("SPRINT_RUNNER_TOKEN") or None
    if not web.is_loopback(args.host) and token is None:
        raise UsageError(f"--host {args.host} is not a loopback address: give --token T "
                         "(or $SPRINT_RUNNER_TOKEN) so that only you can read the dashboard")
    database = open_database(_target(args))
    look = _first_look(database)  # never creates a file; read-only look
    if look is not None:
        _refuse_outdated(describe(database), look)
    app = web.create_app(_target(args), token=token, host=args.host,
                         allow_hosts=args.allow_hosts, stale_after=args.stale_after)
    shown = f"[{args.host}]" if ":" in args.host else args.host
    url = f"http://{shown}:{args.port}/"
    _say(f"serving {describe(database)} read-only on {url} (Ctrl-C stops)")
    if args.open:
        # With a token, the first page sets the cookie (and redirects to drop the token).
        target = url + ("?" + urllib.parse.urlencode({"token": token}) if token else "")
        app.on_startup.append(functools.partial(_open_browser, target))
    aiohttp_web.run_app(app, host=args.host, port=args.port, print=None,
                        handle_signals=True)
    return 0


async def _open_browser(url: str, app: Any) -> None:
    """Open ``url`` in the default browser, off the event loop (it may take a while)."""
    import asyncio
    import webbrowser

    await asyncio.get_running_loop().run_in_executor(None, webbrowser.open, url)


# -- the parser -------------------------------------------------------------------------------

_EPILOG = f"""\
times:  epoch seconds, ISO-8601 (2024-05-01T12:00, local unless it says Z or +HH:MM)
        or an age before now (30d, 2h, 10m, 45s, 1w, 1d12h)
exit:   0 ok, 1 a problem found, 2 a usage error
start:  {PROG} --db demo.db demo
"""


class _Parser(argparse.ArgumentParser):
    """argparse, with a usage error on one line (``--help`` still shows the whole usage)."""

    def error(self, message: str) -> NoReturn:
        """Print the error and where to look on one line; exit 2."""
        self.exit(2, f"{self.prog}: error: {for_terminal(message)} (see {self.prog} --help)\n")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog=PROG, description="Look into and look after a sprint-runner database.",
        epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    # --db and --json work before or after the command; after it they must not reset
    # a value given before it, hence SUPPRESS as their default there.
    common = _Parser(add_help=False)
    for option in _EVERYWHERE:
        option.add_to(parser)
        option.add_to(common, default=argparse.SUPPRESS)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", title="commands", metavar="COMMAND",
                                     required=True)
    for command in _COMMANDS:
        sentence = command.summary[0].upper() + command.summary[1:] + "."
        sub = commands.add_parser(command.name, parents=[common], help=command.summary,
                                  description=sentence)
        for option in command.options:
            option.add_to(sub)
        sub.set_defaults(handler=command.handler)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``sprint-runner-db`` on ``argv`` (default ``sys.argv[1:]``); return the exit status."""
    args = _parser().parse_args(argv)
    run: _Handler = args.handler
    target = _target(args)
    # The store's warnings (a backup made before a migration, ...) reach stderr unless
    # the program embedding us already routes logging somewhere.
    logger = logging.getLogger("sprint_runner")
    handler = None if logger.hasHandlers() else logging.StreamHandler()
    if handler is not None:
        handler.setLevel(logging.WARNING)
        handler.setFormatter(logging.Formatter(f"{PROG}: %(message)s"))
        logger.addHandler(handler)
    status = 1
    try:
        return run(args)
    except CommandError as exc:
        message, status = str(exc), exc.status
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader went away (| head): stop quietly, as cat and grep do.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    except DriverMissing as exc:
        message = _one_line(exc)
    except ValueError as exc:
        # Bad input that argparse could not see (a cursor, a URL, a bound): a usage error.
        message, status = _one_line(exc) or type(exc).__name__, 2
    except (peewee.PeeweeException, sqlite3.Error, OSError) as exc:
        where = mask_url(target)
        message = _one_line(exc) or type(exc).__name__
        if where not in message and not isinstance(exc, OSError):
            message = f"{where}: {message}"
    finally:
        if handler is not None:
            logger.removeHandler(handler)
    print(f"{PROG}: error: {for_terminal(_scrub(message, target))}", file=sys.stderr)
    return status
