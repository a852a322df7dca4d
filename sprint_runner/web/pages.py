"""The dashboard's pages: server-rendered HTML in which every stored value is escaped
(``html.escape``, after control and bidi characters are made visible), no inline script
or style (the Content-Security-Policy is ``default-src 'self'``)."""
from __future__ import annotations

import datetime
import html
import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any
from urllib.parse import urlencode

from aiohttp import web

from ..clock import PER_SECOND
from ..untrusted import for_terminal, json_text
from . import app as _app

STATUS_COLOURS = {"running": "#2f7de1", "completed": "#2e9d4f", "failed": "#d64545"}
"""Timeline fill by command status (any other status: grey)."""
_LANE, _LABEL, _WIDTH = 24, 160, 820


class Markup(str):
    """HTML built here from escaped parts: ``esc`` passes it through unchanged."""


def esc(value: object) -> str:
    """``value`` as HTML text: None is empty, control and bidi characters visible."""
    if value is None:
        return ""
    if isinstance(value, Markup):
        return value
    return html.escape(for_terminal(value), quote=True)


def _moment(timestamp: int, unit: str) -> datetime.datetime | None:
    try:
        return datetime.datetime.fromtimestamp(timestamp // PER_SECOND[unit],
                                               tz=datetime.timezone.utc)
    except (OverflowError, OSError, ValueError):
        return None


def when(timestamp: int | None, unit: str) -> str:
    """A stored timestamp as UTC ``YYYY-MM-DD HH:MM:SSZ`` (empty for None)."""
    if timestamp is None:
        return ""
    moment = _moment(timestamp, unit)
    return str(timestamp) if moment is None else moment.strftime("%Y-%m-%d %H:%M:%SZ")


def time_tag(timestamp: int | None, unit: str) -> Markup:
    """``<time>`` of a stored timestamp: UTC text that the script rewrites to the
    viewer's local time from ``data-ts`` (empty for None)."""
    if timestamp is None:
        return Markup("")
    moment = _moment(timestamp, unit)
    if moment is None:
        return Markup(esc(timestamp))
    iso = moment.strftime("%Y-%m-%dT%H:%M:%SZ")
    return Markup(f"<time datetime=\"{iso}\" data-ts=\"{int(timestamp)}\" "
                  f"data-unit=\"{esc(unit)}\">{esc(when(timestamp, unit))}</time>")


def ago(seconds: int | float | None) -> str:
    """An age for people: ``12 s ago``, ``3 min ago``, ``2 h ago``, ``4 d ago``."""
    if seconds is None:
        return ""
    s = max(int(seconds), 0)
    if s < 60:
        return f"{s} s ago"
    if s < 3600:
        return f"{s // 60} min ago"
    if s < 2 * 86400:
        return f"{s // 3600} h ago"
    return f"{s // 86400} d ago"


def age_tag(seconds: int | float | None) -> Markup:
    """An age the script keeps counting (``data-age``: seconds when the page was made)."""
    if seconds is None:
        return Markup("")
    return Markup(f"<span class=\"age\" data-age=\"{max(int(seconds), 0)}\">"
                  f"{esc(ago(seconds))}</span>")


def page(title: str, body: str, status: int = 200) -> web.Response:
    text = (
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
        f"<title>{esc(title)} - sprint-runner</title>"
        "<link rel=\"stylesheet\" href=\"/static/dashboard.css\">"
        "<script src=\"/static/dashboard.js\" defer></script></head><body>"
        "<nav><a href=\"/\">Now</a> <a href=\"/batches\">Batches</a> "
        "<a href=\"/events\">Events</a></nav>"
        f"<main><h1>{esc(title)}</h1>{body}</main></body></html>\n")
    return web.Response(text=text, status=status, content_type="text/html", charset="utf-8")


def error_page(status: int, reason: str) -> web.Response:
    return page(f"Error {status}", f"<p class=\"error\">{esc(reason)}</p>", status)


def table(headers: Sequence[str], rows: Iterable[Sequence[object]], *,
          row_attrs: Iterable[str] | None = None, table_attrs: str = "") -> str:
    """A table of escaped cells (``row_attrs``: trusted attribute text per row)."""
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    attrs = iter(row_attrs) if row_attrs is not None else None
    body = []
    for row in rows:
        extra = next(attrs) if attrs is not None else ""
        body.append(f"<tr{extra}>" + "".join(f"<td>{esc(c)}</td>" for c in row) + "</tr>")
    return (f"<table{table_attrs}><thead><tr>{head}</tr></thead>"
            f"<tbody>{''.join(body)}</tbody></table>")


def _batch_link(batch_id: int) -> str:
    return f"<a href=\"/batches/{int(batch_id)}\">#{int(batch_id)}</a>"


def _batch_facts(batch: Mapping[str, Any], unit: str) -> str:
    facts = [("status", batch["status"]),
             ("cycles", f"{batch['cycles_completed'] or 0} of {batch['max_cycles']}"),
             ("owner", batch["owner"]), ("started", time_tag(batch["started_at"], unit)),
             ("ended", time_tag(batch["ended_at"], unit)),
             ("heartbeat", time_tag(batch["heartbeat_at"], unit))]
    return "<dl class=\"facts\">" + "".join(
        f"<dt>{esc(k)}</dt><dd class=\"{esc(k)}\">{esc(v)}</dd>" for k, v in facts) + "</dl>"


def duration(seconds: int) -> str:
    """A threshold for people: ``45 s``, ``10 min``, ``2 h``."""
    if seconds % 3600 == 0 and seconds:
        return f"{seconds // 3600} h"
    if seconds % 60 == 0 and seconds:
        return f"{seconds // 60} min"
    return f"{seconds} s"


def heartbeat_line(batch: Mapping[str, Any]) -> str:
    """The heartbeat's age, counted on by the script; class ``stale`` past the threshold
    (hidden once the batch no longer runs)."""
    attrs = (" class=\"stale\"" if batch["stale"] else "") + \
        ("" if batch["running"] else " hidden")
    return (f"<p id=\"heartbeat-age\"{attrs} data-stale-after=\"{int(batch['stale_after'])}\">"
            f"heartbeat {age_tag(batch['heartbeat_age'] or 0)} <strong class=\"warning\">"
            f"stale: silent for {esc(duration(int(batch['stale_after'])))} or more</strong></p>")


_FEED_HEADERS = ("ID", "TIME", "STORY", "COMMAND", "TYPE", "STATUS", "MESSAGE")


def feed_rows(events: Sequence[Mapping[str, Any]], unit: str) -> tuple[list[list[object]],
                                                                         list[str]]:
    rows = [[e["id"], time_tag(e["timestamp"], unit), e["story_key"], e["command"],
             e["event_type"], e["status"], e["message"]] for e in events]
    return rows, [f" data-event-id=\"{int(e['id'])}\"" for e in events]


def batch_sections(state: Mapping[str, Mapping[str, Any]]) -> str:
    """The Now page's parts that ``/api/stream``'s named messages update: stories by
    status, blocked stories, running commands, pending background tasks."""
    unit = state["batch"]["time_unit"]
    blocked = state["stories"]["blocked"]
    parts = ["<h2>Stories by status</h2>" + table(
        ("STATUS", "STORIES"), state["stories"]["by_status"],
        table_attrs=" id=\"stories-by-status\"")]
    parts.append("<h2>Blocked stories</h2><ul id=\"blocked-stories\">" + "".join(
        f"<li class=\"blocked\">{esc(key)}</li>" for key in blocked) + "</ul>")
    parts.append("<h2>Running commands</h2>" + table(
        ("ID", "STORY", "COMMAND", "TASK", "STARTED", "AGE"),
        [(c["id"], c["story_key"], c["command"], c["task_id"], time_tag(c["started_at"], unit),
          age_tag(c["age"])) for c in state["commands"]["running"]],
        table_attrs=" id=\"running-commands\""))
    parts.append("<h2>Pending background tasks</h2>" + table(
        ("ID", "STORY", "TYPE", "SPAWNED", "AGE"),
        [(t["id"], t["story_key"], t["task_type"], time_tag(t["spawned_at"], unit),
          age_tag(t["age"])) for t in state["tasks"]["pending"]],
        table_attrs=" id=\"pending-tasks\""))
    return "".join(parts)


async def now_page(request: web.Request) -> web.Response:
    store = request.app[_app.STORE]
    summary = await _app.now_summary(store, events=20)
    unit = summary["time_unit"]
    batch = summary["batch"]
    state = None if batch is None else await _app.batch_state(
        store, batch["id"], request.app[_app.CONFIG]["stale_after"])
    parts = []
    if batch is None or state is None:
        parts.append("<p class=\"empty\" id=\"batch\" data-batch-id=\"\">No batches yet.</p>")
        stream = "/api/stream"
        after = 0
    else:
        running = batch["status"] == "running"
        parts.append(f"<section id=\"batch\" data-batch-id=\"{int(batch['id'])}\">"
                     f"<h2>{'Running' if running else 'Last'} batch "
                     f"{_batch_link(batch['id'])}</h2>{_batch_facts(batch, unit)}"
                     f"{heartbeat_line(state['batch'])}</section>")
        parts.append(batch_sections(state))
        stream = f"/api/stream?batch={int(batch['id'])}" if running else "/api/stream"
        latest = (await store.page_events(limit=1))["events"] if not running else []
        shown = [e["id"] for e in summary["last_events"]]
        after = max(shown + [e["id"] for e in latest], default=0)
    rows, attrs = feed_rows(summary["last_events"], unit)
    sep = "&" if "?" in stream else "?"
    parts.append(
        "<h2>Live feed <span id=\"feed-status\">connecting</span></h2>" + table(
            _FEED_HEADERS, rows, row_attrs=attrs,
            table_attrs=(f" id=\"feed\" data-time-unit=\"{esc(unit)}\""
                         f" data-stream=\"{esc(f'{stream}{sep}after={int(after)}')}\"")))
    return page("Now", "".join(parts))


async def batches_page(request: web.Request) -> web.Response:
    data = await _app.batches_page_data(request.app[_app.STORE], request.query)
    unit, limit, offset, total = data["time_unit"], data["limit"], data["offset"], data["total"]
    rows = "".join(
        f"<tr><td>{_batch_link(b['id'])}</td><td>{esc(b['status'])}</td>"
        f"<td>{esc(b['story_count'])}</td><td>{esc(b['cycles_completed'] or 0)} of "
        f"{esc(b['max_cycles'])}</td><td>{time_tag(b['started_at'], unit)}</td>"
        f"<td>{time_tag(b['ended_at'], unit)}</td><td>{esc(b['owner'])}</td></tr>"
        for b in data["batches"])
    body = ("<table id=\"batches\"><thead><tr><th>ID</th><th>STATUS</th><th>STORIES</th>"
            "<th>CYCLES</th><th>STARTED</th><th>ENDED</th><th>OWNER</th></tr></thead>"
            f"<tbody>{rows}</tbody></table>")
    links = []
    if offset > 0:
        links.append(f"<a href=\"/batches?{esc(urlencode({'limit': limit, 'offset': max(offset - limit, 0)}))}\">newer</a>")  # noqa: E501
    if offset + limit < total:
        links.append(f"<a href=\"/batches?{esc(urlencode({'limit': limit, 'offset': offset + limit}))}\">older</a>")  # noqa: E501
    shown = f"{offset + 1}-{offset + len(data['batches'])}" if data["batches"] else "none"
    return page("Batches", f"<p>{esc(shown)} of {esc(total)}</p>{body}"
                           f"<p class=\"pager\">{' '.join(links)}</p>")


def timeline(stories: Sequence[Mapping[str, Any]], commands: Sequence[Mapping[str, Any]],
             start: int, now: int, unit: str) -> str:
    """An SVG: one lane per story, one ``rect`` per command from its start to its end (or
    ``now``), filled by status, with the escaped summary as its ``<title>``. A failed
    command is outlined and marked with an ✕; a running one carries ``data-running`` and
    the script lengthens it by the time elapsed (``data-scale``: pixels per stored unit;
    the axis leaves a quarter of its span free after ``now`` for that)."""
    ends = [c["ended_at"] if c["ended_at"] is not None else now for c in commands]
    first = min([start, *(c["started_at"] for c in commands)])
    last = max([first + 1, *ends])
    if any(c["ended_at"] is None for c in commands):
        last += max((last - first) // 4, PER_SECOND[unit] * 60)
    span = last - first
    scale = _WIDTH / span
    lanes = {s["id"]: n for n, s in enumerate(stories)}
    height = _LANE * max(len(stories), 1) + 4
    width = _LABEL + _WIDTH + 10
    parts = [f"<svg id=\"timeline\" xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" "
             f"height=\"{height}\" viewBox=\"0 0 {width} {height}\" role=\"img\" "
             f"data-scale=\"{scale:.9g}\" data-unit=\"{esc(unit)}\" "
             f"data-max-x=\"{_LABEL + _WIDTH}\">"]
    for s in stories:
        y = lanes[s["id"]] * _LANE
        parts.append(f"<text x=\"4\" y=\"{y + 16}\" class=\"lane\">{esc(s['story_key'])}</text>"
                     f"<line x1=\"{_LABEL}\" x2=\"{width}\" y1=\"{y + _LANE - 1}\" "
                     f"y2=\"{y + _LANE - 1}\" stroke=\"#ddd\"/>")
    for c, end in zip(commands, ends):
        lane = lanes.get(c["story_id"])
        if lane is None:
            continue
        parts.append(_command_bar(c, lane, _LABEL + (c["started_at"] - first) * scale,
                                  max((end - c["started_at"]) * scale, 2.0)))
    parts.append("</svg>")
    return "".join(parts)


def _command_bar(c: Mapping[str, Any], lane: int, x: float, w: float) -> str:
    """One command's ``rect`` (and, if it failed, its ✕ mark)."""
    colour = STATUS_COLOURS.get(c["status"], "#999999")
    title = (f"#{c['id']} {c['command']} ({c['task_id']}) {c['status']}"
             + (f": {c['output_summary']}" if c["output_summary"] else ""))
    y = lane * _LANE + 3
    failed = c["status"] == "failed"
    extra = (" class=\"command failed\" stroke=\"#7a1010\" stroke-width=\"2\"" if failed
             else " class=\"command\"")
    if c["ended_at"] is None:
        extra += f" data-running=\"1\" data-width=\"{w:.1f}\""
    bar = (f"<rect data-command-id=\"{int(c['id'])}\" data-status=\"{esc(c['status'])}\"{extra}"
           f" x=\"{x:.1f}\" y=\"{y}\" width=\"{w:.1f}\" height=\"{_LANE - 8}\" "
           f"fill=\"{colour}\"><title>{esc(title)}</title></rect>")
    if failed:
        bar += (f"<text class=\"failed-mark\" data-command-id=\"{int(c['id'])}\" "
                f"x=\"{x + w + 2:.1f}\" y=\"{y + _LANE - 10}\">\u2715<title>{esc(title)}"
                "</title></text>")
    return bar


_CHART_HEIGHT, _CHART_BARS = 80, 240


def minute_chart(per_minute: Sequence[tuple[int, int]], unit: str) -> str:
    """An SVG of the batch's events per minute (at most ``_CHART_BARS`` bars: a longer
    batch gets bars of several minutes), each bar's count and start as its ``<title>``."""
    if not per_minute:
        return "<p class=\"empty\" id=\"events-per-minute\">No events.</p>"
    minute = 60 * PER_SECOND[unit]
    first, last = per_minute[0][0], per_minute[-1][0]
    minutes = (last - first) // minute + 1
    step = -(-minutes // _CHART_BARS)  # minutes per bar, rounded up
    bars: dict[int, int] = {}
    for start, count in per_minute:
        key = (start - first) // minute // step
        bars[key] = bars.get(key, 0) + count
    top = max(bars.values())
    n = -(-minutes // step)
    bar_width = _WIDTH / n
    width = _LABEL + _WIDTH + 10
    height = _CHART_HEIGHT + 20
    per = "minute" if step == 1 else f"{step} minutes"
    parts = [f"<svg id=\"events-per-minute\" xmlns=\"http://www.w3.org/2000/svg\" "
             f"width=\"{width}\" height=\"{height}\" viewBox=\"0 0 {width} {height}\" "
             f"role=\"img\" data-minutes-per-bar=\"{step}\">",
             f"<text x=\"4\" y=\"14\" class=\"chart-label\">{top} per {esc(per)}</text>",
             f"<text x=\"4\" y=\"{_CHART_HEIGHT}\" class=\"chart-label\">0</text>"]
    for key, count in sorted(bars.items()):
        h = max(count * _CHART_HEIGHT / top, 1.0)
        start = first + key * step * minute
        parts.append(f"<rect class=\"minute\" data-minute=\"{start}\" data-count=\"{count}\" "
                     f"x=\"{_LABEL + key * bar_width:.1f}\" y=\"{_CHART_HEIGHT - h:.1f}\" "
                     f"width=\"{max(bar_width - 1, 1.0):.1f}\" height=\"{h:.1f}\" "
                     f"fill=\"#2f7de1\"><title>{count} events in the {esc(per)} from "
                     f"{esc(when(start, unit))}</title></rect>")
    for x, anchor, start in ((_LABEL, "start", first), (_LABEL + _WIDTH, "end", last)):
        parts.append(f"<text x=\"{x}\" y=\"{height - 4}\" text-anchor=\"{anchor}\" "
                     f"class=\"axis\" data-ts=\"{start}\" data-unit=\"{esc(unit)}\">"
                     f"{esc(when(start, unit))}</text>")
    parts.append("</svg>")
    return "".join(parts)


async def batch_page(request: web.Request) -> web.Response:
    store = request.app[_app.STORE]
    data = await _app.batch_detail(store, _app.path_id(request))
    unit, batch = data["time_unit"], data["batch"]
    stories, commands = data["stories"], data["commands"]
    keys = {s["id"]: s["story_key"] for s in stories}
    blocked = {s["id"] for s in stories if await store.check_story_blocked(s["id"])}
    parts = [_batch_facts(batch, unit), "<h2>Timeline</h2>",
             timeline(stories, commands, batch["started_at"], store.clock(), unit),
             "<h2>Events per minute</h2>",
             minute_chart(await store.events_per_minute(batch["id"]), unit)]
    parts.append("<h2>Background tasks</h2>" + table(
        ("ID", "STORY", "TYPE", "STATUS", "SPAWNED", "COMPLETED"),
        [(t["id"], t["story_key"], t["task_type"], t["status"], time_tag(t["spawned_at"], unit),
          time_tag(t["completed_at"], unit)) for t in data["background_tasks"]]))
    parts.append("<h2>Stories</h2>" + table(
        ("ID", "STORY", "EPIC", "STATUS", "BLOCKED", "STARTED", "ENDED"),
        [(s["id"], s["story_key"], s["epic_id"], s["status"],
          "blocked" if s["id"] in blocked else "", time_tag(s["started_at"], unit),
          time_tag(s["ended_at"], unit)) for s in stories],
        row_attrs=[" class=\"blocked\"" if s["id"] in blocked else "" for s in stories],
        table_attrs=" id=\"stories\""))
    parts.append("<h2>Commands</h2>" + table(
        ("ID", "STORY", "COMMAND", "TASK", "STATUS", "STARTED", "ENDED", "SUMMARY"),
        [(c["id"], keys.get(c["story_id"], "?"), c["command"], c["task_id"], c["status"],
          time_tag(c["started_at"], unit), time_tag(c["ended_at"], unit), c["output_summary"])
         for c in commands],
        row_attrs=[" class=\"failed\"" if c["status"] == "failed" else "" for c in commands]))
    parts.append(f"<p><a href=\"/events?batch={int(batch['id'])}\">this batch's events</a></p>")
    return page(f"Batch {int(batch['id'])}", "".join(parts))


_FILTER_FIELDS = (("batch", "batch"), ("story", "story key"), ("command", "command"),
                  ("status", "status"), ("event_type", "event type"),
                  ("since", "since (epoch, ISO, 2h)"), ("until", "until"), ("limit", "per page"))


def _pretty_payload(text: str | None) -> str:
    if text is None:
        return ""
    try:
        return json_text(json.loads(text), indent=2)
    except ValueError:
        return text


async def events_page(request: web.Request) -> web.Response:
    store = request.app[_app.STORE]
    query = request.query
    result = await store.page_events(**_app.event_query(query, store))
    unit = store.time_unit
    form = ["<form id=\"filters\" method=\"get\" action=\"/events\">"]
    for name, label in _FILTER_FIELDS:
        form.append(f"<label>{esc(label)} <input name=\"{name}\" "
                    f"value=\"{esc(query.get(name, ''))}\" size=\"12\"></label> ")
    form.append("<button type=\"submit\">filter</button></form>")
    rows = []
    for e in result["events"]:
        payload = _pretty_payload(e.get("payload_json"))
        rows.append(
            f"<tr data-event-id=\"{int(e['id'])}\"><td>{int(e['id'])}</td>"
            f"<td>{time_tag(e['timestamp'], unit)}</td><td>{_batch_link(e['batch_id'])}</td>"
            + "".join(f"<td>{esc(e[k])}</td>" for k in
                      ("story_key", "command", "event_type", "status", "message"))
            + f"<td>{'<pre>' + html.escape(payload) + '</pre>' if payload else ''}</td></tr>")
    body = ("<table id=\"events\"><thead><tr><th>ID</th><th>TIME</th><th>BATCH</th>"
            "<th>STORY</th><th>COMMAND</th><th>TYPE</th><th>STATUS</th><th>MESSAGE</th>"
            f"<th>PAYLOAD</th></tr></thead><tbody>{''.join(rows)}</tbody></table>")
    more = ""
    if result["next_cursor"]:
        kept = [(k, v) for k, v in query.items() if k != "cursor"]
        kept.append(("cursor", result["next_cursor"]))
        more = f"<p class=\"pager\"><a id=\"next\" href=\"/events?{esc(urlencode(kept))}\">older</a></p>"
    if not rows:
        body = "<p class=\"empty\">No events match.</p>"
    return page("Events", "".join(form) + body + more)
