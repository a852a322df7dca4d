"""A small, realistic sprint, simulated into a store: what ``sprint-runner-db demo`` shows.

:func:`simulate_sprint` fills a database the way the orchestrator would (batches,
stories, commands, events, a background task, heartbeats), for a demo or for tests
that want a sprint to look at.
"""
from __future__ import annotations

from collections.abc import Callable

from .clock import PER_SECOND
from .store import Store

OWNER = "sprint-runner-db demo"
"""The owner of every simulated batch: it marks the batch as a demo, not a real sprint."""

PLAN: tuple[tuple[str, str, tuple[tuple[str, str, int, str | None], ...]], ...] = (
    # (story, epic, ((command, task, minutes, failure or None), ...)) in cycle order.
    ("2a-1", "2a", (("create-story", "draft", 3, None), ("dev-story", "implement", 9, None),
                    ("code-review", "review", 4, None))),
    ("2a-2", "2a", (("create-story", "draft", 2, None),
                    ("dev-story", "implement", 7, "2 tests failed in test_login.py"),
                    ("dev-story", "fix", 4, None), ("code-review", "review", 3, None))),
    ("2b-1", "2b", (("create-story", "draft", 2, None), ("dev-story", "implement", 5, None),
                    ("code-review", "review", 2, None))),
    ("2b-2", "2b", (("create-story", "draft", 2, None),
                    ("dev-story", "implement", 6, "build failed: missing database migration"),
                    ("dev-story", "fix", 3, "build failed: migration conflicts with 2a-2"),
                    ("dev-story", "fix", 3, "build failed: migration conflicts with 2a-2"))),
)
"""The sprint: two cycles of two stories; story 2b-2's last three commands fail (blocked)."""

MINUTES = sum(length for _, _, commands in PLAN for _, _, length, _ in commands)
"""How long the simulated sprint takes, in minutes of its clock."""

_SUMMARIES = {"create-story": "story file written", "dev-story": "all tests pass",
              "code-review": "approved"}


def simulate_sprint(store: Store, *, end: int | None = None) -> int:
    """Simulate a two-cycle sprint into ``store``'s database; return the new batch's id.

    The sprint is :data:`PLAN`: four stories, three done and one (2b-2) blocked by its
    last three failed commands, one background task, and an event for every start and
    end; the batch is completed, owned by :data:`OWNER`. Its rows are written in one
    transaction through a second :class:`Store` on ``store.database`` whose clock is
    simulated: it starts :data:`MINUTES` minutes before ``end`` (in the store's unit; default
    ``store.clock()``), moves on by each command's minutes and stops at ``end``. So the
    same ``end`` gives the same sprint, to the second; ``store``'s own clock is neither
    moved nor called after that. The database's schema must be up to date.
    """
    finish = store.clock() if end is None else end
    minute = 60 * PER_SECOND[store.time_unit]
    simulated = [finish - minute * MINUTES]
    sprint = Store(store.database, clock=lambda: simulated[0], migrate=False,
                   time_unit=store.time_unit)

    def minutes(n: int) -> None:
        simulated[0] += minute * n

    with sprint.transaction():
        return _run(sprint, minutes)


def _run(store: Store, minutes: Callable[[int], None]) -> int:
    """Simulate the sprint through ``store`` (its clock moved by ``minutes``); return the
    batch id."""
    batch = store.create_batch(2)
    store.update_batch(batch, owner=OWNER)
    task: int | None = None

    def event(story: tuple[int, str, str] | None, command: tuple[int, str, str] | None,
              status: str, message: str, cycle: int) -> None:
        story_id, key, epic = story if story else (None, "batch", "system")
        command_id, name, task_name = command if command else (
            None, "story" if story else "sprint", f"cycle-{cycle}")
        store.create_event(batch, story_id, command_id, epic, key, name, task_name, status,
                           message)

    event(None, None, "start", f"batch {batch} started: 2 cycles, 4 stories", 1)
    for cycle, plan in ((1, PLAN[:2]), (2, PLAN[2:])):
        event(None, None, "start", f"cycle {cycle} of 2 started", cycle)
        for key, epic, commands in plan:
            story_id = store.create_story(batch, key, epic)
            story = (story_id, key, epic)
            event(story, None, "start", f"story {key} started", cycle)
            for name, task_name, length, failure in commands:
                command_id = store.create_command(story_id, name, task_name)
                event(story, (command_id, name, task_name), "start", f"{name} started", cycle)
                if task is None and name == "code-review":
                    task = store.create_background_task(batch, key, "context-refresh")
                minutes(length)
                store.heartbeat(batch)
                store.update_command(command_id, status="failed" if failure else "completed",
                                     ended_at=store.clock(),
                                     output_summary=failure or _SUMMARIES[name])
                event(story, (command_id, name, task_name), "failed" if failure else "end",
                      failure or f"{name} done", cycle)
            blocked = store.check_story_blocked(story_id)
            store.update_story(story_id, status="blocked" if blocked else "done",
                               ended_at=store.clock())
            event(story, None, "blocked" if blocked else "end",
                  f"story {key} blocked: its last 3 commands failed" if blocked
                  else f"story {key} done", cycle)
            if task is not None and cycle == 1 and key == plan[-1][0]:
                store.update_background_task(task, status="completed",
                                             completed_at=store.clock())
        store.update_batch(batch, cycles_completed=cycle)
        event(None, None, "end", f"cycle {cycle} of 2 done", cycle)
    store.update_batch(batch, status="completed", ended_at=store.clock())
    event(None, None, "end", f"batch {batch} completed: 3 stories done, 1 blocked", 2)
    return batch
