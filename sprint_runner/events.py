"""Events: the stateless rules of the event log and its history.

The checks of an event row (one expression for the common case, then the
:mod:`~sprint_runner.validation` rules that name the culprit), the filters the
history reads take, the opaque keyset cursor, and the sizes that bound memory.
"""
from __future__ import annotations

import base64
import binascii
import inspect
import json
from collections.abc import Callable, Mapping
from typing import Any

from peewee import Expression

from .models import KEY_LENGTH, Event
from .statements import Slot
from .validation import (
    INT64_MAX,
    INT64_MIN,
    SURROGATE,
    check_int,
    check_optional_int,
    check_optional_text,
    check_text,
)

OLD_EVENT_ARGUMENTS = ("batch_id", "story_id", "command_id", "epic_id", "story_key", "command",
                       "task_id", "status", "message")
"""``create_event``'s positional parameters in the old module's form."""
LATER_EVENT_ARGUMENTS = ("batch_id", "story_id", "command_id", "event_type", "epic_id",
                         "story_key", "command", "task_id", "status", "message", "payload")
"""... and in the later module's (``event_type`` fourth, ``payload`` eleventh)."""
EVENT_FIELDS = OLD_EVENT_ARGUMENTS + ("event_type", "payload")
"""The keys ``create_events`` takes (``timestamp`` too)."""
MAX_TEXT_BYTES = 4 * 2**20
"""The largest ``message`` and ``payload`` JSON, in UTF-8 bytes: under every backend's
packet limit (MySQL's default ``max_allowed_packet`` is 16 MiB)."""
_FAST_TEXT = MAX_TEXT_BYTES // 4  # this many characters are under the bound in any script

CHUNK = 1000
"""Rows per statement or transaction in bulk writes, deletes and streamed reads."""
MAX_PAGE = 10_000
"""The largest ``limit`` a page or tail call takes (bounds memory per call)."""
_CURSOR_PREFIX = "ev1"

EVENT_FILTERS: dict[str, Callable[..., Expression]] = {
    "batch_id": lambda e=Event: e.batch == Slot("batch_id"),
    "story_key": lambda e=Event: e.story_key == Slot("story_key"),
    "command": lambda e=Event: e.command_name == Slot("command"),
    "status": lambda e=Event: e.status == Slot("status"),
    "event_type": lambda e=Event: e.event_type == Slot("event_type"),
    "since": lambda e=Event: e.timestamp >= Slot("since"),
    "until": lambda e=Event: e.timestamp < Slot("until"),
}
"""Each filter's condition, by the name of the parameter that gives its value; each takes
the events model or an alias of it (the time page reads an alias)."""
TIME_FILTERS = ("since", "until")
TIME_RANGE_PAGES = 20
"""A page with a time bound first counts, up to this many pages' worth, the rows of its
time range on the timestamp index alone (see ``Statements.event_time_page``)."""

_REQUIRED_EVENT_KEYS = ("batch_id", "epic_id", "story_key", "command", "task_id", "status")
_REQUIRED_EVENT_KEY_SET = frozenset(_REQUIRED_EVENT_KEYS)
_EVENT_KEYS = frozenset(EVENT_FIELDS) | {"timestamp"}


def event_row(batch_id: object, story_id: object, command_id: object, event_type: object,
              epic_id: object, story_key: object, command: object, task_id: object,
              status: object, message: object, payload: object,
              timestamp: int) -> tuple[Any, ...]:
    """Return the checked row ``insert_event`` binds, or raise naming the bad parameter."""
    # The common case, decided in one expression: a bulk insert pays this per event.
    # Anything it does not accept goes through the checks below, which name the culprit.
    if (type(batch_id) is int and INT64_MIN <= batch_id <= INT64_MAX
            and (story_id is None or (type(story_id) is int and INT64_MIN <= story_id <= INT64_MAX))
            and (command_id is None
                 or (type(command_id) is int and INT64_MIN <= command_id <= INT64_MAX))
            and type(event_type) is str and len(event_type) <= KEY_LENGTH
            and type(epic_id) is str and len(epic_id) <= KEY_LENGTH
            and type(story_key) is str and len(story_key) <= KEY_LENGTH
            and type(command) is str and len(command) <= KEY_LENGTH
            and type(task_id) is str and len(task_id) <= KEY_LENGTH
            and type(status) is str and 0 < len(status) <= KEY_LENGTH
            and (message is None or (type(message) is str and len(message) <= _FAST_TEXT))
            and payload is None
            and "\x00" not in event_type and "\x00" not in epic_id
            and "\x00" not in story_key and "\x00" not in command
            and "\x00" not in task_id and "\x00" not in status
            and (message is None or "\x00" not in message)
            and event_type.isascii() and epic_id.isascii() and story_key.isascii()
            and command.isascii() and task_id.isascii() and status.isascii()
            and (message is None or message.isascii() or not SURROGATE.search(message))):
        return (batch_id, story_id, command_id, timestamp, epic_id, story_key, command,
                task_id, status, message, event_type, None)
    check_int("batch_id", batch_id)
    check_optional_int("story_id", story_id)
    check_optional_int("command_id", command_id)
    # The later module sends "" where a log line has no story, command or type.
    for name, value in (("event_type", event_type), ("epic_id", epic_id),
                        ("story_key", story_key), ("command", command), ("task_id", task_id)):
        check_text(name, value, max_length=KEY_LENGTH, allow_empty=True)
    check_text("status", status, max_length=KEY_LENGTH)
    text = check_optional_text("message", message)
    if text is not None:
        check_size("message", text)
    return (batch_id, story_id, command_id, timestamp, epic_id, story_key, command, task_id,
            status, message, event_type, payload_text(payload))


def check_size(name: str, text: str) -> None:
    """Raise ``ValueError`` naming ``name`` if ``text`` is over 4 MiB as UTF-8."""
    if len(text) > _FAST_TEXT and len(text.encode("utf-8")) > MAX_TEXT_BYTES:
        raise ValueError(f"{name} is larger than {MAX_TEXT_BYTES // 2**20} MiB as UTF-8 "
                         f"({len(text.encode('utf-8')):,} bytes)")


def payload_text(payload: object) -> str | None:
    """Return ``payload`` as the strict, compact JSON text stored in ``payload_json``."""
    if payload is None:
        return None
    if not isinstance(payload, Mapping):
        raise TypeError(f"payload must be a mapping (a JSON object), not "
                        f"{type(payload).__name__}: {payload!r:.80}")
    try:
        text = json.dumps(payload if isinstance(payload, dict) else dict(payload),
                          ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as exc:
        # A set, an object, NaN or an infinity: nothing JSON can hold exactly.
        raise TypeError(f"payload is not JSON-serialisable: {exc}") from None
    if SURROGATE.search(text):
        raise ValueError("payload contains a lone surrogate, not valid Unicode text")
    check_size("payload", text)
    return text


def create_event_signature(*, method: bool) -> inspect.Signature:
    """Return the signature ``create_event`` shows: the old module's parameters, then
    ``event_type`` and ``payload`` by keyword (the later positional form is bound by
    :func:`create_event_arguments`)."""
    kind = inspect.Parameter.POSITIONAL_OR_KEYWORD
    parameters = [inspect.Parameter("self", kind)] if method else []
    parameters += [inspect.Parameter(name, kind) for name in OLD_EVENT_ARGUMENTS]
    parameters += [inspect.Parameter("event_type", inspect.Parameter.KEYWORD_ONLY, default=""),
                   inspect.Parameter("payload", inspect.Parameter.KEYWORD_ONLY, default=None)]
    return inspect.Signature(parameters, return_annotation="int")


def create_event_arguments(args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
    """Bind ``create_event``'s arguments in either module's form; return them by name.

    Ten or eleven positional arguments, or exactly nine with ``message=`` given by
    keyword, are the later module's form (``event_type`` fourth, ``payload``
    eleventh); every other call is the old module's (``event_type`` and ``payload``
    by keyword only).
    """
    count = len(args)
    later = count in (10, 11) or (count == 9 and "message" in kwargs)
    names = LATER_EVENT_ARGUMENTS if later else OLD_EVENT_ARGUMENTS
    if count > len(names):
        raise TypeError(f"create_event() takes at most 11 positional arguments ({count} given)")
    bound = dict(zip(names, args))
    for name, value in kwargs.items():
        if name not in LATER_EVENT_ARGUMENTS:
            raise TypeError(f"create_event() got an unexpected keyword argument {name!r}")
        if name in bound:
            raise TypeError(f"create_event() got multiple values for argument {name!r}")
        bound[name] = value
    missing = [name for name in OLD_EVENT_ARGUMENTS if name not in bound]
    if missing:
        raise TypeError(f"create_event() missing required arguments: {', '.join(missing)}")
    bound.setdefault("event_type", "")
    bound.setdefault("payload", None)
    return bound


def create_event_row(args: tuple[Any, ...], kwargs: dict[str, Any],
                     now: Callable[[], int]) -> tuple[Any, ...]:
    """Return the checked row of a ``create_event(*args, **kwargs)`` call, its timestamp
    ``now()`` (read after the arguments are bound, before the row is checked)."""
    if len(args) == 9 and not kwargs:  # the old module's form, every argument positional
        b, s, c, epic_id, story_key, command, task_id, status, message = args
        return event_row(b, s, c, "", epic_id, story_key, command, task_id, status,
                         message, None, now())
    a = create_event_arguments(args, kwargs)
    return event_row(a["batch_id"], a["story_id"], a["command_id"], a["event_type"],
                     a["epic_id"], a["story_key"], a["command"], a["task_id"], a["status"],
                     a["message"], a["payload"], now())


def split(n: int) -> list[int]:
    """Split ``n`` rows into full chunks and powers of two, so that a handful of
    cached statements (not one per remainder size) serve every count."""
    sizes = [CHUNK] * (n // CHUNK)
    rest = n % CHUNK
    while rest:
        size = 1 << (rest.bit_length() - 1)
        sizes.append(size)
        rest -= size
    return sizes


def event_filters(batch_id: object, story_key: object, command: object, status: object,
                  since: object, until: object, event_type: object = None) -> dict[str, Any]:
    """Validate event filters; return the given ones by name, in a fixed order.

    A text filter may be ``""``: the batch-level events the later module logs
    without a story or command.
    """
    filters: dict[str, Any] = {}
    if batch_id is not None:
        filters["batch_id"] = check_int("batch_id", batch_id)
    for name, value in (("story_key", story_key), ("command", command), ("status", status),
                        ("event_type", event_type)):
        if value is not None:
            filters[name] = check_text(name, value, max_length=KEY_LENGTH, allow_empty=True)
    if since is not None:
        filters["since"] = check_int("since", since, minimum=0)
    if until is not None:
        filters["until"] = check_int("until", until, minimum=0)
    return filters


def encode_cursor(last_id: int, newest_first: bool) -> str:
    """Return the opaque cursor of the page after the event ``last_id``."""
    raw = f"{_CURSOR_PREFIX}:{'d' if newest_first else 'a'}:{last_id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: object, newest_first: bool) -> int:
    """Return the event id a cursor continues after; raise on anything not made here."""
    if not isinstance(cursor, str):
        raise TypeError(f"cursor must be a str from a previous page's next_cursor, not {cursor!r}")
    invalid = ValueError(f"invalid cursor {cursor!r}: pass a next_cursor value unchanged")
    if not cursor or len(cursor) > 64 or not cursor.isascii():
        raise invalid
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        prefix, direction, last = raw.split(":")
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise invalid from None
    # Plain ASCII digits of an id the tables can hold: int() alone takes "+1", " 1",
    # other scripts' digits and ids no backend stores.
    if (prefix != _CURSOR_PREFIX or not last.isascii() or not last.isdigit()
            or len(last) > 19 or int(last) > INT64_MAX):
        raise invalid
    last_id = int(last)
    if direction != ("d" if newest_first else "a"):
        raise ValueError(f"cursor {cursor!r} was made with newest_first={not newest_first}")
    return last_id


def event_from_mapping(index: int, event: object, now: int) -> tuple[Any, ...]:
    """Return the checked row of ``create_events``' ``events[index]`` (timestamp: now)."""
    if type(event) is not dict and not isinstance(event, Mapping):
        raise TypeError(f"events[{index}] must be a mapping, not {type(event).__name__}")
    keys = event.keys()
    # Set comparisons first: the lists that name the culprits are built only on failure.
    if not keys <= _EVENT_KEYS:
        unknown = sorted(str(k) for k in keys if k not in _EVENT_KEYS)
        raise ValueError(f"Invalid fields in events[{index}]: {', '.join(unknown)}")
    if not _REQUIRED_EVENT_KEY_SET <= keys:
        missing = [k for k in _REQUIRED_EVENT_KEYS if k not in keys]
        raise ValueError(f"events[{index}] lacks {', '.join(missing)}")
    timestamp = event.get("timestamp", now)
    try:
        check_int("timestamp", timestamp, minimum=0)
        return event_row(event["batch_id"], event.get("story_id"), event.get("command_id"),
                         event.get("event_type", ""), event["epic_id"], event["story_key"],
                         event["command"], event["task_id"], event["status"],
                         event.get("message"), event.get("payload"), timestamp)
    except (TypeError, ValueError) as exc:
        raise type(exc)(f"events[{index}]: {exc}") from None
