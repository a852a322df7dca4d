"""The module-level API of sprint_runner.db: a drop-in for the old module."""
from __future__ import annotations

import inspect
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from conftest import subprocess_env

from sprint_runner import Store, db

CONTRACT = {
    "init_db": ["path", "clock", "time_unit"],
    "get_connection": [],
    "transaction": [],
    "create_batch": ["max_cycles"],
    "update_batch": ["batch_id", "fields"],
    "get_batch": ["batch_id"],
    "get_active_batch": [],
    "create_story": ["batch_id", "story_key", "epic_id"],
    "update_story": ["story_id", "fields"],
    "get_story": ["story_id"],
    "get_story_by_key": ["story_key", "batch_id"],
    "get_stories_by_batch": ["batch_id"],
    "create_command": ["story_id", "command", "task_id"],
    "update_command": ["command_id", "fields"],
    "get_commands_by_story": ["story_id"],
    "create_event": ["batch_id", "story_id", "command_id", "epic_id", "story_key", "command",
                     "task_id", "status", "message", "event_type", "payload"],
    "get_events": ["limit", "offset"],
    "get_events_by_batch": ["batch_id"],
    "create_background_task": ["batch_id", "story_key", "task_type"],
    "update_background_task": ["task_id", "fields"],
    "get_pending_background_tasks": ["batch_id"],
    "get_current_batch_status": [],
    "count_completed_cycles": ["batch_id"],
    "check_story_blocked": ["story_id"],
    "schema_version": [],
    "migrate": [],
    "heartbeat": ["batch_id"],
    "recover_stale_batches": ["stale_after"],
    "backup": ["dest"],
    "page_events": ["limit", "cursor", "batch_id", "story_key", "command", "status", "since",
                    "until", "newest_first", "event_type"],
    "tail_events": ["after_id", "batch_id", "limit"],
    "iter_events": ["batch_id", "story_key", "command", "status", "since", "until",
                    "newest_first", "event_type"],
    "create_events": ["events"],
    "prune_events": ["older_than", "dry_run"],
    "prune_batches": ["older_than", "dry_run"],
}


@pytest.mark.parametrize("name", sorted(CONTRACT))
def test_signature_contract(name: str) -> None:
    params = list(inspect.signature(getattr(db, name)).parameters)
    assert params == CONTRACT[name]
    if hasattr(Store, name) and name != "init_db":
        store_params = list(inspect.signature(getattr(Store, name)).parameters)[1:]
        assert store_params[:len(params)] == params


@pytest.mark.parametrize("name", sorted(CONTRACT))
def test_every_function_has_a_docstring_and_hints(name: str) -> None:
    fn = getattr(db, name)
    assert fn.__doc__ and fn.__doc__.strip()
    assert "return" in fn.__annotations__


def test_defaults_match_old_module() -> None:
    sig = inspect.signature(db.get_events)
    assert (sig.parameters["limit"].default, sig.parameters["offset"].default) == (100, 0)
    assert inspect.signature(db.init_db).parameters["path"].default is None


def test_positional_old_style_session(module_db) -> None:
    batch = module_db.create_batch(2)
    story = module_db.create_story(batch, "2a-1", "2a")
    command = module_db.create_command(story, "dev-story", "setup")
    module_db.create_event(batch, story, command, "2a", "2a-1", "dev-story", "setup", "start",
                           "go")
    task = module_db.create_background_task(batch, "2a-1", "story-review-chain")
    module_db.update_command(command, status="failed")
    module_db.update_background_task(task, status="completed")
    module_db.update_story(story, status="done")
    module_db.update_batch(batch, cycles_completed=1)
    assert module_db.get_story_by_key("2a-1", batch)["status"] == "done"
    assert module_db.get_commands_by_story(story)[0]["status"] == "failed"
    assert module_db.get_events(10, 0)[0]["message"] == "go"
    assert module_db.get_events_by_batch(batch)[0]["status"] == "start"
    assert module_db.get_pending_background_tasks(batch) == []
    assert module_db.count_completed_cycles(batch) == 1
    assert module_db.get_current_batch_status()["id"] == batch
    assert module_db.get_active_batch()["id"] == batch
    assert module_db.check_story_blocked(story) is False
    assert module_db.get_stories_by_batch(batch)[0]["id"] == story
    assert module_db.get_batch(batch)["max_cycles"] == 2
    assert module_db.get_story(story)["epic_id"] == "2a"
    assert module_db.schema_version() >= 3
    assert module_db.migrate() == []
    with module_db.transaction():
        module_db.heartbeat(batch)
    with module_db.get_connection() as conn:
        cursor = conn.cursor()
        cursor.execute("SELECT COUNT(*) AS n FROM stories")
        assert cursor.fetchone()["n"] == 1


def test_init_db_reads_db_path_at_call_time(tmp_path: Path, monkeypatch) -> None:
    target = tmp_path / "patched.db"
    monkeypatch.setattr(db, "_default", None)
    monkeypatch.setattr(db, "DB_PATH", str(target))
    db.init_db()
    try:
        assert target.exists()
        assert db.get_store().location == str(target)
    finally:
        db.get_store().close()


def test_first_call_initialises_lazily(tmp_path: Path, monkeypatch) -> None:
    target = tmp_path / "lazy.db"
    monkeypatch.setattr(db, "_default", None)
    monkeypatch.setattr(db, "DB_PATH", str(target))
    assert not target.exists()
    batch = db.create_batch(1)
    try:
        assert target.exists()
        assert db.get_batch(batch)["id"] == batch
    finally:
        db.get_store().close()


def test_init_db_is_idempotent(module_db, db_target: str) -> None:
    batch = module_db.create_batch(1)
    module_db.init_db(db_target)
    module_db.init_db(db_target)
    assert module_db.get_batch(batch)["id"] == batch


def test_init_db_with_clock(module_db, db_target: str) -> None:
    module_db.init_db(db_target, clock=lambda: 1234)
    batch = module_db.create_batch(1)
    assert module_db.get_batch(batch)["started_at"] == 1234


@pytest.mark.sqlite_only
def test_init_db_switches_every_thread(tmp_path: Path, monkeypatch) -> None:
    first, second = tmp_path / "first.db", tmp_path / "second.db"
    monkeypatch.setattr(db, "_default", None)
    db.init_db(str(first))
    switched = threading.Event()
    done = threading.Event()
    seen: list[str] = []

    def worker() -> None:
        db.create_batch(1)  # opens this thread's connection to the first file
        seen.append(db.get_store().location)
        switched.wait(5)
        db.create_batch(2)
        seen.append(db.get_store().location)
        done.set()

    thread = threading.Thread(target=worker)
    thread.start()
    while not seen:
        threading.Event().wait(0.01)
    db.init_db(str(second))
    switched.set()
    assert done.wait(5)
    thread.join()
    try:
        assert seen == [str(first), str(second)]
        assert [b["max_cycles"] for b in Store(str(first)).list_batches()] == [1]
        assert [b["max_cycles"] for b in Store(str(second)).list_batches()] == [2]
    finally:
        db.get_store().close()


def _run(code: str, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code], cwd=cwd,
                          env=subprocess_env(without=("SPRINT_RUNNER_DB",), **env),
                          capture_output=True, text=True, check=True, timeout=60)


def test_import_has_no_side_effects(tmp_path: Path) -> None:
    # peewee itself tries to import the drivers it finds installed; the package adds
    # nothing heavy beyond peewee, and creates no file.
    code = ("import sys, peewee, playhouse.pool, playhouse.migrate; before = set(sys.modules); "
            "import sprint_runner, sprint_runner.db as d, sprint_runner.cli; "
            "print(d.DB_PATH); "
            "print(sorted(m for m in set(sys.modules) - before "
            "if not m.startswith('sprint_runner') and m not in sys.stdlib_module_names "
            "and m.split('.')[0] not in sys.stdlib_module_names))")
    result = _run(code, tmp_path)
    assert result.stdout.split("\n")[:2] == ["sprint-runner.db", "[]"]
    assert list(tmp_path.iterdir()) == []


def test_db_path_from_environment(tmp_path: Path) -> None:
    result = _run("import sprint_runner.db as d; print(d.DB_PATH)", tmp_path,
                  SPRINT_RUNNER_DB=str(tmp_path / "env.db"))
    assert result.stdout.strip() == str(tmp_path / "env.db")


def test_default_file_in_current_directory(tmp_path: Path) -> None:
    _run("import sprint_runner.db as d; d.create_batch(1)", tmp_path)
    assert (tmp_path / "sprint-runner.db").exists()
