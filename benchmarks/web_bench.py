#!/usr/bin/env python
"""Measure the web dashboard's performance targets on a large database.

    python benchmarks/web_bench.py                  # SQLite, 1,000,000 events (file cached in /tmp)
    python benchmarks/web_bench.py --quick          # 20,000 events, few samples, ~20 s
    python benchmarks/web_bench.py --db postgresql://postgres@127.0.0.1:5432/postgres
    python benchmarks/web_bench.py --db mysql://root@127.0.0.1:3306/mysql
    python benchmarks/web_bench.py --skip-browser   # no Chromium needed
    python benchmarks/web_bench.py --screenshot docs/timeline.png   # only the screenshot

The database is ``filters.py``'s table (``--events`` events over 50 batches of 20
stories, written through ``Store.create_events``; the SQLite file is the same cached
file, copied so the benchmark's writes never touch the cache) plus a simulated
completed sprint (``demo.simulate_sprint``) and a running batch with stories,
commands, a pending background task and events: the batch the Now page shows. On a
server the events table is then analysed (``ANALYZE``), as autovacuum would have done
by the time a real table had grown that big: the plans are the steady state's.

The dashboard runs in a process of its own (``create_app`` with its defaults, as
``sprint-runner-db serve`` runs it), with one extra outermost middleware that
answers each request's handler time (``time.perf_counter`` around the handler) in
an ``X-Handler-Time`` header. The measurements:

1. ``/api/events`` pages (first page, a page followed by cursor from depth half of
   the table, filtered first pages): handler time and client round trip, median
   and p95 over ``--samples`` sequential requests on one keep-alive connection;
   target p95 handler time <= 5 ms.
2. The Now page ``/`` (HTML) and ``/api/now``: the same; target p95 <= 20 ms.
3. Headless Chromium on the Now page: a MutationObserver records ``Date.now()``
   when a ``tr[data-event-id]`` is added to the feed; the benchmark writes events
   20-50 ms apart and records ``time.time()`` when each ``create_event`` returns;
   latency = shown - returned; target p95 <= 500 ms (the stream polls every
   ``DEFAULT_POLL_INTERVAL`` = 0.3 s, so expect about half that plus transport).
4. ``--streams`` (50) open ``/api/stream`` clients (aiohttp, in this process) while a
   writer process logs at a fixed pace of ``--rate`` (1,000) events/s for
   ``--seconds`` (10) s and then as fast as it can for a second: every stream must
   get every event exactly once, in order, and the paced writer's achieved rate
   with the streams open must be within 10% of its rate with none open (measured
   before and after). Also reported: ``create_event`` p50/p99 and the writer's
   unpaced maximum rate with and without the streams, and the lag from
   ``create_event`` returning to a stream client reading the event.

Run it under ``flock /tmp/bench.lock`` on a shared machine. It exits 0 unless a full
(not ``--quick``) run misses a target.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # a checkout, not installed
    sys.path.insert(1, str(ROOT))
import filters  # noqa: E402 - the table, its build and the throwaway server database

from sprint_runner import Store  # noqa: E402
from sprint_runner.demo import simulate_sprint  # noqa: E402
from sprint_runner.events import encode_cursor  # noqa: E402

BENCH_DB = "sprint_runner_bench_web"
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
API_BOUND, NOW_BOUND, LIVE_BOUND, RATE_DROP = 0.005, 0.020, 0.500, 0.10


@dataclass(frozen=True)
class Sizes:
    events: int
    samples: int
    live: int
    streams: int
    rate: int
    seconds: float
    burst: float


FULL = Sizes(events=1_000_000, samples=300, live=200, streams=50, rate=1000, seconds=10,
             burst=1.0)
QUICK = Sizes(events=20_000, samples=30, live=30, streams=50, rate=1000, seconds=2, burst=0.5)


# -- the data ------------------------------------------------------------------------------------

@dataclass
class Data:
    target: str
    events: int
    running: int
    middle_batch: int
    middle_story: str
    newest: int
    demo: int


def decorate(store: Store, events: int) -> Data:
    """Add a completed demo sprint and a running batch (the Now page's) to the table."""
    demo = simulate_sprint(store)
    batch = store.create_batch(4)
    store.update_batch(batch, owner="web_bench")
    stories = [store.create_story(batch, f"9-{n}-story", "9") for n in range(1, 13)]
    for n, story in enumerate(stories):
        for name in ("create-story", "dev-story"):
            command = store.create_command(story, name, f"task-{n}")
            if name == "create-story" or n % 3:
                store.update_command(command, status="completed", ended_at=store.clock(),
                                     output_summary=f"{name} done")
            store.create_event(batch, story, command, "9", f"9-{n + 1}-story", name,
                               f"task-{n}", "progress", f"{name} of story {n + 1}")
    store.create_background_task(batch, "9-1-story", "context-refresh")
    store.heartbeat(batch)
    b = filters.BATCHES // 2
    newest = store.page_events(limit=1)["events"][0]["id"]
    return Data(target="", events=events, running=batch, middle_batch=b + 1,
                middle_story=f"{b + 1}-{filters.STORIES // 2}-story", newest=newest, demo=demo)


def sqlite_copy(events: int, quick: bool, cache_dir: str, tmp: str) -> str:
    """A private copy of the cached filters.py file (built here in --quick mode)."""
    work = os.path.join(tmp, "web.db")
    if quick:
        filters.timed_build(work, events)
        return work
    cached = filters.sqlite_file(events, cache_dir)
    for suffix in ("-wal", "-shm"):
        if os.path.exists(cached + suffix):  # a reader left them: fold the log in first
            Store(cached).close()
    shutil.copyfile(cached, work)
    return work


# -- the server process ----------------------------------------------------------------------------

def serve_child(target: str, port: int) -> None:
    """Run the dashboard on ``port`` with a handler-time header; print ``ready``."""
    from aiohttp import web

    from sprint_runner.web import create_app

    @web.middleware
    async def timing(request: web.Request, handler: Any) -> web.StreamResponse:
        started = time.perf_counter()
        response = await handler(request)
        elapsed = time.perf_counter() - started
        if not response.prepared:
            response.headers["X-Handler-Time"] = f"{elapsed * 1e6:.1f}"
        return response

    app = create_app(target)
    app.middlewares.insert(0, timing)

    async def main() -> None:
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        print("ready", flush=True)
        try:
            await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
        finally:
            await runner.cleanup()

    asyncio.run(main())


class Server:
    """The dashboard in a subprocess (own interpreter, own GIL); stopped by closing stdin."""

    def __init__(self, target: str) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(
            [str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
        self.process = subprocess.Popen(
            [sys.executable, __file__, "--serve-child", target, str(self.port)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if line.strip() != "ready":
            self.process.kill()
            raise RuntimeError("the dashboard process did not start")
        self.base = f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.close()
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


# -- 1, 2: request timings ---------------------------------------------------------------------------

@dataclass
class Row:
    name: str
    n: int | str
    p50: str
    p95: str
    extra: str
    target: str
    verdict: str = ""


def pct(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def ms(seconds: float) -> str:
    value = seconds * 1e3
    return f"{value:.2f} ms" if value < 10 else f"{value:.1f} ms" if value < 100 else \
        f"{value:.0f} ms"


async def time_requests(base: str, data: Data, samples: int) -> list[Row]:
    import aiohttp

    deep_id = data.newest - data.events // 2
    batch_first, batch_last = filters.batch_range(data.events, data.middle_batch - 1)
    cases: list[tuple[str, str, float | None, bool]] = [
        ("/api/events first page", "/api/events", API_BOUND, False),
        (f"/api/events from depth {data.events // 2:,} (following cursors)",
         f"/api/events?cursor={encode_cursor(deep_id, True)}", API_BOUND, True),
        ("/api/events?batch= first page", f"/api/events?batch={data.middle_batch}", API_BOUND,
         False),
        ("/api/events?batch= half-way down the batch (following cursors)",
         f"/api/events?batch={data.middle_batch}&cursor="
         f"{encode_cursor((batch_first + batch_last) // 2 + 1, True)}", API_BOUND, True),
        ("/api/events?story= first page", f"/api/events?story={data.middle_story}", API_BOUND,
         False),
        ("/api/events?batch=&story= first page",
         f"/api/events?batch={data.middle_batch}&story={data.middle_story}", API_BOUND, False),
        ("/ (Now page, HTML)", "/", NOW_BOUND, False),
        ("/api/now", "/api/now", NOW_BOUND, False),
        ("/batches/{id} (running batch, HTML)", f"/batches/{data.running}", None, False),
        ("/events (HTML, first page)", "/events", None, False),
    ]
    rows = []
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1)) as session:
        for label, path, bound, follow in cases:
            handler: list[float] = []
            trip: list[float] = []
            url = path
            for i in range(samples + 5):
                started = time.perf_counter()
                async with session.get(base + url) as response:
                    body = await response.read()
                    elapsed = time.perf_counter() - started
                    assert response.status == 200, (url, response.status, body[:200])
                    server = float(response.headers["X-Handler-Time"]) / 1e6
                if follow:
                    cursor = json.loads(body)["next_cursor"]
                    url = path if cursor is None else re.sub(r"cursor=[^&]*",
                                                             f"cursor={cursor}", path)
                if i >= 5:  # the first few warm the statements and the connection
                    handler.append(server)
                    trip.append(elapsed)
            p95 = pct(handler, 0.95)
            target = "—" if bound is None else f"p95 <= {bound * 1e3:.0f} ms"
            verdict = "" if bound is None else ("PASS" if p95 <= bound else "FAIL")
            rows.append(Row(f"{label}: handler", len(handler), ms(statistics.median(handler)),
                            ms(p95), f"max {ms(max(handler))}", target, verdict))
            rows.append(Row(f"{label}: round trip", len(trip), ms(statistics.median(trip)),
                            ms(pct(trip, 0.95)), f"max {ms(max(trip))}", "—"))
            print(f"  {rows[-2].name}: {rows[-2].p50} / {rows[-2].p95}", file=sys.stderr,
                  flush=True)
    return rows


# -- 3: the browser ------------------------------------------------------------------------------------

OBSERVER = """
window.__shown = {};
var body = document.querySelector('#feed tbody');
new MutationObserver(function (mutations) {
  var now = Date.now();
  mutations.forEach(function (m) {
    m.addedNodes.forEach(function (n) {
      if (n.nodeType === 1 && n.matches('tr[data-event-id]')) {
        var id = n.getAttribute('data-event-id');
        if (!(id in window.__shown)) { window.__shown[id] = now; }
      }
    });
  });
}).observe(body, {childList: true});
return true;
"""


def browser_driver(size: str = "1280,1000") -> Any:
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not os.path.exists(p)]
    if missing:
        raise RuntimeError(f"no browser: {', '.join(missing)} missing")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                     "--disable-gpu", f"--window-size={size}"):
        options.add_argument(argument)
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)


def browser_latency(base: str, data: Data, n: int) -> list[Row]:
    import random

    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from sprint_runner.web import DEFAULT_POLL_INTERVAL

    driver = browser_driver()
    store = Store(data.target, migrate=False)
    try:
        driver.get(base + "/")
        WebDriverWait(driver, 20).until(
            lambda d: d.find_element(By.ID, "feed-status").text == "live")
        driver.execute_script(OBSERVER)
        time.sleep(0.5)
        rng = random.Random(7)
        written: dict[int, float] = {}
        for i in range(n):
            event = store.create_event(data.running, None, None, "9", "9-1-story", "dev-story",
                                       "live", "progress", f"live event {i}")
            written[event] = time.time() * 1e3
            time.sleep(rng.uniform(0.020, 0.050))
        deadline = time.monotonic() + 5
        shown: dict[str, float] = {}
        while time.monotonic() < deadline:
            shown = driver.execute_script("return window.__shown;")
            if all(str(i) in shown for i in written):
                break
            time.sleep(0.1)
    finally:
        store.close()
        driver.quit()
    lags = [(shown[str(i)] - t) / 1e3 for i, t in written.items() if str(i) in shown]
    missing = len(written) - len(lags)
    if not lags:
        return [Row("browser: create_event returned -> row in the Now page's feed", n, "—",
                    "—", f"{missing} never shown", f"p95 <= {LIVE_BOUND * 1e3:.0f} ms", "FAIL")]
    p95 = pct(lags, 0.95)
    ok = p95 <= LIVE_BOUND and not missing
    return [Row("browser: create_event returned -> row in the Now page's feed", len(written),
                ms(statistics.median(lags)), ms(p95),
                f"max {ms(max(lags))}, min {ms(min(lags))}"
                + (f", {missing} never shown" if missing else "")
                + f"; poll {DEFAULT_POLL_INTERVAL:g} s",
                f"p95 <= {LIVE_BOUND * 1e3:.0f} ms", "PASS" if ok else "FAIL")]


# -- 4: streams and a writer ----------------------------------------------------------------------------

def writer_child(target: str, batch: int, rate: int, seconds: float, burst: float,
                 ready: Any, go: Any, out: Any) -> None:
    """Log events at ``rate``/s for ``seconds`` (paced), then flat out for ``burst`` s."""
    store = Store(target, migrate=False)
    try:
        for _ in range(20):  # warm the connection and statements (before the streams' cursor)
            store.create_event(batch, None, None, "9", "9-1-story", "dev-story", "warm",
                               "progress", "warm-up")
        ready.set()
        go.wait()
        ids: list[int] = []
        walls: list[float] = []
        paced: list[float] = []
        behind = 0.0
        started = time.perf_counter()
        for i in range(int(rate * seconds)):
            due = started + i / rate
            wait = due - time.perf_counter()
            if wait > 0:
                time.sleep(wait)
            t0 = time.perf_counter()
            behind = max(behind, t0 - due)
            ids.append(store.create_event(batch, None, None, "9", "9-1-story", "dev-story",
                                          "paced", "progress", f"paced event {i}"))
            paced.append(time.perf_counter() - t0)
            walls.append(time.time())
        elapsed = time.perf_counter() - started
        count = 0
        flat_started = time.perf_counter()
        while time.perf_counter() - flat_started < burst:
            ids.append(store.create_event(batch, None, None, "9", "9-1-story", "dev-story",
                                          "burst", "progress", f"burst event {count}"))
            walls.append(time.time())
            count += 1
        flat = time.perf_counter() - flat_started
    finally:
        store.close()
    out.put({"ids": ids, "walls": walls, "paced": paced, "rate": len(paced) / elapsed,
             "behind": behind,
             "max_rate": count / flat})


@dataclass
class Stream:
    ids: list[int] = field(default_factory=list)
    times: list[float] = field(default_factory=list)
    connected: bool = False


async def read_stream(session: Any, url: str, stream: Stream, stop: asyncio.Event) -> None:
    import aiohttp

    pattern = re.compile(rb"^id: (\d+)$", re.M)
    timeout = aiohttp.ClientTimeout(total=None, sock_read=None)
    async with session.get(url, timeout=timeout) as response:
        assert response.status == 200
        buffer = b""
        stream.connected = True
        while not stop.is_set():
            reading = asyncio.ensure_future(response.content.readany())
            stopping = asyncio.ensure_future(stop.wait())
            done, _ = await asyncio.wait({reading, stopping}, return_when=asyncio.FIRST_COMPLETED)
            if reading not in done:
                reading.cancel()
                break
            stopping.cancel()
            chunk = reading.result()
            if not chunk:
                break
            now = time.time()
            buffer += chunk
            end = buffer.rfind(b"\n\n")
            if end < 0:
                continue
            found = [int(i) for i in pattern.findall(buffer, 0, end)]
            buffer = buffer[end + 2:]
            stream.ids.extend(found)
            stream.times.extend([now] * len(found))


def run_writer(data: Data, sizes: Sizes) -> tuple[Any, Any, Any, dict[str, Any]]:
    ctx = multiprocessing.get_context("spawn")
    ready, go, out = ctx.Event(), ctx.Event(), ctx.Queue()
    process = ctx.Process(target=writer_child, args=(data.target, data.running, sizes.rate,
                                                     sizes.seconds, sizes.burst, ready, go, out))
    process.start()
    return process, ready, go, {"out": out}


async def writer_phase(base: str, data: Data, sizes: Sizes, streams: int) -> dict[str, Any]:
    import aiohttp

    process, ready, go, box = run_writer(data, sizes)
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, ready.wait, 120)
    store = Store(data.target, migrate=False)
    try:
        after = store.page_events(limit=1)["events"][0]["id"]
    finally:
        store.close()
    clients = [Stream() for _ in range(streams)]
    stop = asyncio.Event()
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        url = f"{base}/api/stream?batch={data.running}&after={after}"
        tasks = [asyncio.ensure_future(read_stream(session, url, c, stop)) for c in clients]
        while not all(c.connected for c in clients):
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.5)  # every stream past its first poll
        go.set()
        result = await loop.run_in_executor(None, box["out"].get)
        await loop.run_in_executor(None, process.join)
        last = result["ids"][-1]
        drain_started = time.monotonic()
        while streams and time.monotonic() - drain_started < 60:
            if all(c.ids and c.ids[-1] >= last for c in clients):
                break
            await asyncio.sleep(0.05)
        result["drain"] = time.monotonic() - drain_started
        await asyncio.sleep(0.7 if streams else 0)  # a duplicate would arrive by the next poll
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)
    expected = result["ids"]
    result["exact"] = sum(1 for c in clients if c.ids == expected)
    result["streams"] = streams
    wall = dict(zip(expected, result["walls"]))
    paced = set(expected[:len(result["paced"])])
    lags = [t - wall[i] for c in clients for i, t in zip(c.ids, c.times) if i in paced]
    result["lags"] = lags
    return result


def stream_rows(phases: list[dict[str, Any]], sizes: Sizes) -> list[Row]:
    base = [p for p in phases if p["streams"] == 0]
    loaded = [p for p in phases if p["streams"]][0]
    rows = []
    for p in phases:
        what = f"{p['streams']} streams open" if p["streams"] else "no stream open"
        lat = p["paced"]
        rows.append(Row(f"writer paced at {sizes.rate:,}/s for {sizes.seconds:g} s, {what}: "
                        "create_event", len(lat), ms(statistics.median(lat)),
                        ms(pct(lat, 0.95)),
                        f"p99 {ms(pct(lat, 0.99))}; achieved {p['rate']:,.1f}/s, at most "
                        f"{ms(p['behind'])} behind its pace; flat out "
                        f"{p['max_rate']:,.0f}/s", "—"))
    reference = statistics.mean(p["rate"] for p in base)
    drop = 1 - loaded["rate"] / reference
    rows.append(Row(f"writer's paced rate with {loaded['streams']} streams vs none", "—",
                    f"{loaded['rate']:,.1f}/s", "—",
                    f"vs {reference:,.1f}/s (mean of {len(base)} runs without): "
                    f"{-drop * 100:+.1f}%", "falls < 10%",
                    "PASS" if drop < RATE_DROP else "FAIL"))
    flat = statistics.mean(p["max_rate"] for p in base)
    rows.append(Row(f"writer flat out for {sizes.burst:g} s with {loaded['streams']} streams "
                    "vs none (contrast)", "—", f"{loaded['max_rate']:,.0f}/s", "—",
                    f"vs {flat:,.0f}/s: {(loaded['max_rate'] / flat - 1) * 100:+.1f}%", "—"))
    n = len(loaded["ids"])
    rows.append(Row(f"{loaded['streams']} streams: every event exactly once, in order",
                    n, "—", "—",
                    f"{loaded['exact']}/{loaded['streams']} streams got all {n:,} events; "
                    f"drained {loaded['drain']:.2f} s after the writer's last",
                    "all streams", "PASS" if loaded["exact"] == loaded["streams"] else "FAIL"))
    lags = loaded["lags"]
    if lags:
        rows.append(Row(f"{loaded['streams']} streams: create_event returned -> read by a "
                        "client (paced events)", len(lags), ms(statistics.median(lags)),
                        ms(pct(lags, 0.95)), f"max {ms(max(lags))}", "—"))
    return rows


# -- the run --------------------------------------------------------------------------------------------

def print_table(title: str, rows: list[Row]) -> None:
    print(f"\n{title}\n")
    print("| measurement | n | median | p95 | also | target | |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        n = f"{r.n:,}" if isinstance(r.n, int) else r.n
        print(f"| {r.name} | {n} | {r.p50} | {r.p95} | {r.extra} | {r.target} | {r.verdict} |")


def bench(target: str, events: int, sizes: Sizes, skip_browser: bool,
          skipped: list[str]) -> list[Row]:
    store = Store(target, migrate=False)
    try:
        data = decorate(store, events)
        if store.backend != "sqlite":  # the statistics autovacuum would have by now
            store.database.execute_sql("ANALYZE TABLE events" if store.backend == "mysql"
                                       else "ANALYZE events")
    finally:
        store.close()
    data.target = target
    rows: list[Row] = []
    server = Server(target)
    try:
        print("requests...", file=sys.stderr, flush=True)
        rows += asyncio.run(time_requests(server.base, data, sizes.samples))
        if skip_browser:
            skipped.append("browser latency (--skip-browser)")
        else:
            print("browser...", file=sys.stderr, flush=True)
            try:
                rows += browser_latency(server.base, data, sizes.live)
            except (ImportError, RuntimeError) as exc:
                skipped.append(f"browser latency ({exc})")
        phases = []
        counts = [0, sizes.streams] + ([] if sizes is QUICK else [0])
        for streams in counts:
            print(f"writer with {streams} streams...", file=sys.stderr, flush=True)
            phases.append(asyncio.run(writer_phase(server.base, data, sizes, streams)))
        rows += stream_rows(phases, sizes)
    finally:
        server.stop()
    return rows


def server_label(target: str) -> str:
    store = Store(target, migrate=False)
    try:
        if store.backend == "sqlite":
            return "SQLite file"
        return f"{store.backend} {filters.server_version(store)}"
    finally:
        store.close()


def screenshot(path: str) -> None:
    """A screenshot of the demo sprint's batch page (its timeline) at ``path``."""
    with tempfile.TemporaryDirectory(prefix="sprint_runner_web_shot_") as tmp:
        db = os.path.join(tmp, "demo.db")
        store = Store(db)
        try:
            batch = simulate_sprint(store)
        finally:
            store.close()
        server = Server(db)
        try:
            driver = browser_driver("1100,900")
            try:
                driver.get(f"{server.base}/batches/{batch}")
                time.sleep(0.5)
                driver.save_screenshot(path)
            finally:
                driver.quit()
        finally:
            server.stop()
    print(f"wrote {path}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="20,000 events, few samples")
    parser.add_argument("--events", type=int, help="events in the table")
    parser.add_argument("--samples", type=int, help="requests per figure")
    parser.add_argument("--db", metavar="URL", help="a PostgreSQL or MySQL/MariaDB server")
    parser.add_argument("--skip-browser", action="store_true", help="no Chromium measurement")
    parser.add_argument("--cache-dir", default=tempfile.gettempdir(),
                        help="where the SQLite file is cached (full mode)")
    parser.add_argument("--screenshot", metavar="PNG", help="only save a timeline screenshot")
    parser.add_argument("--serve-child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve_child:
        serve_child(args.serve_child[0], int(args.serve_child[1]))
        return 0
    if args.screenshot:
        screenshot(args.screenshot)
        return 0
    sizes = QUICK if args.quick else FULL
    if args.samples:
        sizes = Sizes(**{**sizes.__dict__, "samples": args.samples})
    events = args.events or sizes.events
    skipped: list[str] = []
    if args.db:
        with filters.server_database(args.db, BENCH_DB) as url:
            filters.timed_build(url, events)
            label = server_label(url)
            rows = bench(url, events, sizes, args.skip_browser, skipped)
    else:
        with tempfile.TemporaryDirectory(prefix="sprint_runner_web_") as tmp:
            path = sqlite_copy(events, args.quick, args.cache_dir, tmp)
            label = server_label(path)
            rows = bench(path, events, sizes, args.skip_browser, skipped)
    print(f"\n{filters.machine_line()}; {label}; {events:,} events "
          f"({filters.BATCHES} batches of {filters.STORIES} stories, plus a demo sprint and "
          f"a running batch)")
    print_table(f"Dashboard ({label})", rows)
    failed = [r.name for r in rows if r.verdict == "FAIL"]
    print("\nmissed: " + (", ".join(failed) if failed else "none"))
    if skipped:
        print("not measured: " + "; ".join(skipped))
    return 1 if failed and not args.quick else 0


if __name__ == "__main__":
    raise SystemExit(main())
