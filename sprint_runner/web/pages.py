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


def esc(value: object) -> str:
    """``value`` as HTML text: None is empty, control and bidi characters visible."""
    if value is None:
        return ""
    return html.escape(for_terminal(value), quote=True)


def when(timestamp: int | None, unit: str) -> str:
    """A stored timestamp as UTC ``YYYY-MM-DD HH:MM:SSZ`` (empty for None)."""
    if timestamp is None:
        return ""
    try:
        moment = datetime.datetime.fromtimestamp(timestamp // PER_SECOND[unit],
                                                 tz=datetime.timezone.utc)
    except (OverflowError, OSError, ValueError):
        return str(timestamp)
    return moment.strftime("%Y-%m-%d %H:%M:%SZ")


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
             ("owner", batch["owner"]), ("started", when(batch["started_at"], unit)),
             ("ended", when(batch["ended_at"], unit)),
             ("heartbeat", when(batch["heartbeat_at"], unit))]
    return "<dl class=\"facts\">" + "".join(
        f"<dt>{esc(k)}</dt><dd class=\"{esc(k)}\">{esc(v)}</dd>" for k, v in facts) + "</dl>"


_FEED_HEADERS = ("ID", "TIME", "STORY", "COMMAND", "TYPE", "STATUS", "MESSAGE")


def feed_rows(events: Sequence[Mapping[str, Any]], unit: str) -> tuple[list[list[object]],
                                                                         list[str]]:
    rows = [[e["id"], when(e["timestamp"], unit), e["story_key"], e["command"],
             e["event_type"], e["status"], e["message"]] for e in events]
    return rows, [f" data-event-id=\"{int(e['id'])}\"" for e in events]


async def now_page(request: web.Request) -> web.Response:
    store = request.app[_app.STORE]
    summary = await _app.now_summary(store, events=20)
    unit = summary["time_unit"]
    batch = summary["batch"]
    parts = []
    if batch is None:
        parts.append("<p class=\"empty\">No batches yet.</p>")
        stream = "/api/stream"
        after = 0
    else:
        running = batch["status"] == "running"
        parts.append(f"<section id=\"batch\" data-batch-id=\"{int(batch['id'])}\">"
                     f"<h2>{'Running' if running else 'Last'} batch "
                     f"{_batch_link(batch['id'])}</h2>{_batch_facts(batch, unit)}")
        if summary["heartbeat_age"] is not None:
            parts.append(f"<p>heartbeat {int(summary['heartbeat_age'])} s ago</p>")
        parts.append("</section>")
        by_status = sorted(summary["stories_by_status"].items(), key=lambda kv: (-kv[1], kv[0]))
        parts.append("<h2>Stories by status</h2>" + table(("STATUS", "STORIES"), by_status))
        keys = {s["id"]: s["story_key"]
                for s in await store.get_stories_by_batch(batch["id"])}
        parts.append("<h2>Running commands</h2>" + table(
            ("ID", "STORY", "COMMAND", "TASK", "STARTED"),
            [(c["id"], keys.get(c["story_id"], "?"), c["command"], c["task_id"],
              when(c["started_at"], unit)) for c in summary["running_commands"]]))
        parts.append("<h2>Pending background tasks</h2>" + table(
            ("ID", "STORY", "TYPE", "SPAWNED"),
            [(t["id"], t["story_key"], t["task_type"], when(t["spawned_at"], unit))
             for t in summary["pending_background_tasks"]]))
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
        f"{esc(b['max_cycles'])}</td><td>{esc(when(b['started_at'], unit))}</td>"
        f"<td>{esc(when(b['ended_at'], unit))}</td><td>{esc(b['owner'])}</td></tr>"
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
             start: int, now: int) -> str:
    """An SVG: one lane per story, one ``rect`` per command from its start to its end (or
    ``now``), filled by status, with the escaped summary as its ``<title>``."""
    ends = [c["ended_at"] if c["ended_at"] is not None else now for c in commands]
    first = min([start, *(c["started_at"] for c in commands)])
    last = max([first + 1, *ends])
    span = last - first
    lanes = {s["id"]: n for n, s in enumerate(stories)}
    height = _LANE * max(len(stories), 1) + 4
    width = _LABEL + _WIDTH + 10
    parts = [f"<svg id=\"timeline\" xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" "
             f"height=\"{height}\" viewBox=\"0 0 {width} {height}\" role=\"img\">"]
    for s in stories:
        y = lanes[s["id"]] * _LANE
        parts.append(f"<text x=\"4\" y=\"{y + 16}\" class=\"lane\">{esc(s['story_key'])}</text>"
                     f"<line x1=\"{_LABEL}\" x2=\"{width}\" y1=\"{y + _LANE - 1}\" "
                     f"y2=\"{y + _LANE - 1}\" stroke=\"#ddd\"/>")
    for c, end in zip(commands, ends):
        lane = lanes.get(c["story_id"])
        if lane is None:
            continue
        x = _LABEL + (c["started_at"] - first) * _WIDTH / span
        w = max((end - c["started_at"]) * _WIDTH / span, 2.0)
        colour = STATUS_COLOURS.get(c["status"], "#999999")
        title = (f"#{c['id']} {c['command']} ({c['task_id']}) {c['status']}"
                 + (f": {c['output_summary']}" if c["output_summary"] else ""))
        parts.append(f"<rect data-command-id=\"{int(c['id'])}\" data-status=\"{esc(c['status'])}\""
                     f" x=\"{x:.1f}\" y=\"{lane * _LANE + 3}\" width=\"{w:.1f}\" "
                     f"height=\"{_LANE - 8}\" fill=\"{colour}\"><title>{esc(title)}</title></rect>")
    parts.append("</svg>")
    return "".join(parts)


async def batch_page(request: web.Request) -> web.Response:
    store = request.app[_app.STORE]
    data = await _app.batch_detail(store, _app.path_id(request))
    unit, batch = data["time_unit"], data["batch"]
    stories, commands = data["stories"], data["commands"]
    keys = {s["id"]: s["story_key"] for s in stories}
    parts = [_batch_facts(batch, unit), "<h2>Timeline</h2>",
             timeline(stories, commands, batch["started_at"], store.clock())]
    parts.append("<h2>Stories</h2>" + table(
        ("ID", "STORY", "EPIC", "STATUS", "STARTED", "ENDED"),
        [(s["id"], s["story_key"], s["epic_id"], s["status"], when(s["started_at"], unit),
          when(s["ended_at"], unit)) for s in stories]))
    parts.append("<h2>Commands</h2>" + table(
        ("ID", "STORY", "COMMAND", "TASK", "STATUS", "STARTED", "ENDED", "SUMMARY"),
        [(c["id"], keys.get(c["story_id"], "?"), c["command"], c["task_id"], c["status"],
          when(c["started_at"], unit), when(c["ended_at"], unit), c["output_summary"])
         for c in commands]))
    parts.append("<h2>Background tasks</h2>" + table(
        ("ID", "STORY", "TYPE", "STATUS", "SPAWNED", "COMPLETED"),
        [(t["id"], t["story_key"], t["task_type"], t["status"], when(t["spawned_at"], unit),
          when(t["completed_at"], unit)) for t in data["background_tasks"]]))
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
            f"<td>{esc(when(e['timestamp'], unit))}</td><td>{_batch_link(e['batch_id'])}</td>"
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
