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
from sprint_runner.statements import Statement
from sprint_runner.events import EVENT_FILTERS

pytestmark = pytest.mark.sqlite_only

BARE_SCAN = re.compile(r"^SCAN (\w+)$")


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
            if BARE_SCAN.match(line):
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
