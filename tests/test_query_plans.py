"""Every statement the store runs is served by an index (EXPLAIN QUERY PLAN, SQLite).

The database holds 100k events over many batches, stories and commands, so the
planner faces realistic sizes: each plan line must be a SEARCH, or a SCAN that
walks an index; a bare ``SCAN <table>`` fails the test.
"""
from __future__ import annotations

import itertools
import re
from collections.abc import Iterator

import pytest

from sprint_runner import Store
from sprint_runner.events import EVENT_FILTERS
from sprint_runner.statements import Statement

pytestmark = pytest.mark.sqlite_only

BARE_SCAN = re.compile(r"^SCAN (\w+)$")
# The time page's probe and page read at most a few pages of ids from an index into
# these two derived tables, then scan those.
DERIVED = {"SCAN page", "SCAN in_range"}


@pytest.fixture(scope="module")
def big_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Store]:
    store = Store(str(tmp_path_factory.mktemp("plans") / "big.db"), clock=lambda: 1_700_000_000)
    batches = [store.create_batch(3) for _ in range(200)]
    stories, commands = [], []
    for i, batch in enumerate(batches):
        store.update_batch(batch, status="completed" if i % 4 else "running")
        for n in range(5):
            story = store.create_story(batch, f"{i}-{n}", str(i))
            stories.append((batch, story))
            commands.append((batch, story, store.create_command(story, "dev-story", "t")))
            store.create_background_task(batch, f"{i}-{n}", "context-refresh")
    store.create_events(
        {"batch_id": b, "story_id": s, "command_id": c, "epic_id": "e",
         "story_key": f"k{i % 997}", "command": f"cmd{i % 13}", "task_id": "t",
         "status": ("start", "progress", "end")[i % 3], "message": None,
         "timestamp": 1_600_000_000 + i}
        for i, (b, s, c) in zip(range(100_000), itertools.cycle(commands)))
    yield store
    store.close()


def statements(store: Store) -> Iterator[tuple[str, Statement]]:
    q = store._statements
    for name, value in vars(q).items():
        if isinstance(value, Statement):
            yield name, value
        elif isinstance(value, list):
            for i, (key, statement) in enumerate(value):
                label = key if isinstance(key, str) else key._meta.table_name
                yield f"{name}[{i}:{label}]", statement
    filters = tuple(EVENT_FILTERS)
    for size in range(len(filters) + 1):
        for combo in itertools.combinations(filters, size):
            for newest_first in (True, False):
                yield f"event_page{combo}{'desc' if newest_first else 'asc'}", \
                    q.event_page(combo, newest_first)
                by_time = q.event_time_page(combo, newest_first)
                if by_time is not None:
                    for label, statement in zip(("probe", "page"), by_time):
                        yield f"event_time_{label}{combo}{'desc' if newest_first else 'asc'}", \
                            statement
    yield "delete_events", q.delete_events(3)
    for model in ("batches", "stories", "commands", "events", "background_tasks"):
        table = next(m for m in __import__("sprint_runner.models").models.MODELS
                     if m._meta.table_name == model)
        yield f"select_all[{model}]", q.select_all(table)


def plan(store: Store, statement: Statement) -> list[str]:
    params = statement.complete([1] * len(statement.slots))
    rows = store.database.execute_sql("EXPLAIN QUERY PLAN " + statement.sql, params).fetchall()
    return [row[3] for row in rows]


def test_every_statement_uses_an_index(big_store: Store) -> None:
    checked, bare = 0, []
    for name, statement in statements(big_store):
        if statement.sql.startswith("INSERT"):
            continue
        checked += 1
        for line in plan(big_store, statement):
            if BARE_SCAN.match(line) and line not in DERIVED:
                bare.append(f"{name}: {line}  <- {statement.sql}")
    assert checked > 80
    assert bare == []


@pytest.mark.parametrize(("name", "index"), [
    ("active_batch", "idx_batches_status"),
    ("story_by_key", "idx_stories_batch_key"),
    ("stories_by_batch", "idx_stories_batch_id"),
    ("commands_by_story", "idx_commands_story_id"),
    ("last_command_statuses", "idx_commands_story_id"),
    ("events_newest", "idx_events_timestamp"),
    ("events_by_batch", "idx_events_batch_timestamp"),
    ("pending_tasks", "idx_background_tasks_batch_status"),
])
def test_hot_reads_use_the_intended_index(big_store: Store, name: str, index: str) -> None:
    lines = plan(big_store, getattr(big_store._statements, name))
    assert any(index in line for line in lines), lines
    assert not any("TEMP B-TREE" in line for line in lines), lines


def test_keyset_pages_need_no_sort(big_store: Store) -> None:
    for combo in [(), ("batch_id",), ("story_key",), ("command",), ("status",)]:
        for newest_first in (True, False):
            lines = plan(big_store, big_store._statements.event_page(combo, newest_first))
            assert not any("TEMP B-TREE" in line for line in lines), (combo, lines)


DASHBOARD_PAIRS = [(("batch_id", "story_key"), "idx_events_batch_story_key"),
                   (("batch_id", "status"), "idx_events_batch_status"),
                   (("batch_id", "command"), "idx_events_batch_command")]


@pytest.mark.parametrize(("combo", "index"), DASHBOARD_PAIRS)
def test_batch_and_key_pages_walk_both_in_one_index(big_store: Store, combo: tuple[str, ...],
                                                    index: str) -> None:
    # Issue 10, item 12: the batch's own index made such a page test every event of
    # the batch when few matched; the pair's index seeks straight to its rows.
    for newest_first in (True, False):
        (line,) = plan(big_store, big_store._statements.event_page(combo, newest_first))
        assert line.startswith(f"SEARCH t1 USING INDEX {index} (batch_id=? AND "), line
        assert "id<?" in line or "id>?" in line, line


@pytest.mark.parametrize("bound", ["since", "until"])
def test_batch_time_pages_read_the_range_on_its_index(big_store: Store, bound: str) -> None:
    # The probe counts the batch's rows in the time range on the index alone, and the
    # page statement takes at most that many ids from it: neither walks the batch.
    for newest_first in (True, False):
        probe, page = big_store._statements.event_time_page(("batch_id", bound), newest_first)
        for statement in (probe, page):
            lines = plan(big_store, statement)
            assert any("COVERING INDEX idx_events_batch_timestamp (batch_id=? AND timestamp"
                       in line for line in lines), lines
            assert not any("idx_events_batch_id " in line or "PRIMARY KEY (rowid<" in line
                           or "PRIMARY KEY (rowid>" in line for line in lines), lines


@pytest.mark.parametrize("bound", ["since", "until"])
def test_a_small_time_range_is_paged_from_its_index(big_store: Store, bound: str) -> None:
    # Correctness and path together: a range of 30 events (a few of them
    # the batch's) among 100k.
    newest = bound == "since"
    batch = big_store.page_events(limit=1, newest_first=newest)["events"][0]["batch_id"]
    values = {"since": 1_600_000_000 + 99_970} if bound == "since" else \
        {"until": 1_600_000_000 + 30}
    everything = [e for e in big_store.iter_events(batch_id=batch)
                  if ("since" not in values or e["timestamp"] >= values["since"])
                  and ("until" not in values or e["timestamp"] < values["until"])]
    calls: list[str] = []
    conn = big_store._executor.connect()
    conn.set_trace_callback(calls.append)  # every statement SQLite runs, whatever the path
    try:
        page = big_store.page_events(batch_id=batch, limit=100, **values)
    finally:
        conn.set_trace_callback(None)
    assert [e["id"] for e in page["events"]] == sorted((e["id"] for e in everything),
                                                       reverse=True)[:100]
    assert everything and len(calls) == 2 and "INNER JOIN" in calls[1], calls
