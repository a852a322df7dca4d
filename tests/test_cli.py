"""The ``sprint-runner-db`` command line, run through ``main([...])`` on a test database."""
from __future__ import annotations

import argparse
import base64
import csv
import datetime
import io
import json
import os
import sqlite3
import stat
import subprocess
import sys
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import legacy_schema
import pytest
from conftest import (
    SPECIAL_KINDS,
    digest,
    log_event,
    make_special,
    node_of,
    run_cli,
    subprocess_env,
    victim_database,
)
from freezegun import freeze_time

from sprint_runner import Store, cli, db, migrations
from sprint_runner.cli import Moment, main, parse_duration, parse_moment, span
from sprint_runner.store import EVENT_COLUMNS


def _command_names() -> tuple[str, ...]:
    """The commands as the parser declares them, in the order ``--help`` lists them."""
    (subparsers,) = (a for a in cli._parser()._actions
                     if isinstance(a, argparse._SubParsersAction))
    return tuple(subparsers.choices)


COMMANDS = _command_names()


run = run_cli


def run_json(capsys: pytest.CaptureFixture[str], target: str, *argv: str) -> Any:
    code, out, err = run(capsys, "--db", target, "--json", *argv)
    assert (code, err) == (0, ""), err
    return json.loads(out)


@pytest.fixture
def frozen(clock: Any) -> Iterator[Any]:
    """Wall-clock time frozen at the fake clock's now, so the CLI and the store agree."""
    with freeze_time(datetime.datetime.fromtimestamp(clock.now, datetime.timezone.utc)) as f:
        yield f


@pytest.fixture
def sprint(store: Store, clock: Any) -> dict[str, int]:
    """A finished batch, then a running one with work in flight and a pending task."""
    old = store.create_batch(1)
    old_story = store.create_story(old, "1a-1", "1a")
    store.create_event(old, old_story, None, "1a", "1a-1", "dev-story", "t", "end", "old work")
    store.update_story(old_story, status="done", ended_at=clock.now + 60)
    store.update_batch(old, status="completed", cycles_completed=1, ended_at=clock.now + 60)
    clock.advance(3600)
    batch = store.create_batch(3)
    story = store.create_story(batch, "2a-1", "2a")
    done = store.create_command(story, "create-story", "draft")
    store.update_command(done, status="completed", ended_at=clock.now + 30)
    running = store.create_command(story, "dev-story", "implement")
    blocked = store.create_story(batch, "2a-2", "2a")
    store.update_story(blocked, status="blocked")
    task = store.create_background_task(batch, "2a-1", "context-refresh")
    for i in range(5):
        clock.advance(10)
        store.create_event(batch, story, running, "2a", "2a-1", "dev-story", "implement",
                           "failed" if i == 3 else "progress", f"step {i}")
    store.update_batch(batch, cycles_completed=1)
    clock.advance(20)
    store.heartbeat(batch)
    clock.advance(40)
    return {"old": old, "batch": batch, "story": story, "running": running, "task": task,
            "blocked": blocked}


# -- the parser ---------------------------------------------------------------------------

def test_help_lists_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    out = capsys.readouterr().out
    assert exc.value.code == 0
    listed = out.partition("\n  COMMAND\n")[2].partition("\n\n")[0].splitlines()
    # A command's line starts 4 columns in; a summary wrapped on a narrow terminal, further.
    assert tuple(line.split()[0] for line in listed if line[4] != " ") == COMMANDS
    assert "--max-polls" not in out


@pytest.mark.parametrize("name", COMMANDS)
def test_every_command_has_help_with_db_and_json(capsys: pytest.CaptureFixture[str],
                                                 name: str) -> None:
    with pytest.raises(SystemExit) as exc:
        main([name, "--help"])
    out = capsys.readouterr().out
    assert exc.value.code == 0
    assert "--db PATH|URL" in out and "--json" in out


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.startswith("sprint-runner-db ")


def test_python_dash_m() -> None:
    result = subprocess.run([sys.executable, "-m", "sprint_runner", "--help"],
                            capture_output=True, text=True, timeout=60, env=subprocess_env())
    assert result.returncode == 0
    assert result.stdout.startswith("usage: sprint-runner-db ")


@pytest.mark.parametrize(("argv", "names"), [
    ([], "COMMAND"),
    (["frobnicate"], "frobnicate"),
    (["events", "--since", "yesterday"], "--since"),
    (["events", "--until", "2024-13-01"], "--until"),
    (["events", "--limit", "0"], "--limit"),
    (["events", "--limit", "10001"], "--limit"),
    (["events", "--batch", "x"], "--batch"),
    (["batches", "--limit", "-1"], "--limit"),
    (["show"], "BATCH_ID"),
    (["show", "abc"], "BATCH_ID"),
    (["prune"], "--older-than"),
    (["prune", "--older-than", "a while"], "--older-than"),
    (["tail", "--interval", "0"], "--interval"),
    (["tail", "--interval", "nan"], "--interval"),
    (["recover", "--stale-after", "soon"], "--stale-after"),
    (["doctor", "--stale-after", "-5"], "--stale-after"),
    (["export", "--format", "xml"], "--format"),
    (["backup"], "DEST"),
    (["status", "--events", "many"], "--events"),
    # Issue 10, items 12 and 13: too-large numbers exited 1 (or with a traceback), and a
    # 1e-9 interval polled 10,000 times a second.
    (["events", "--batch", "9" * 25], "--batch"),
    (["show", "9" * 25], "BATCH_ID"),
    (["events", "--since", "9" * 400], "--since"),
    (["events", "--until", "9" * 20 + ".5"], "--until"),
    (["prune", "--older-than", "9" * 30 + "d"], "--older-than"),
    (["recover", "--stale-after", "9" * 30], "--stale-after"),
    (["tail", "--interval", "1e-9"], "--interval"),
    (["tail", "--interval", "0.09"], "--interval"),
    (["batches", "--limit", "\u0661"], "--limit"),
])
def test_bad_arguments_are_usage_errors(capsys: pytest.CaptureFixture[str], db_target: str,
                                        argv: list[str], names: str) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--db", db_target, *argv])
    err = capsys.readouterr().err
    assert exc.value.code == 2
    # One line, not argparse's usage block (--help still prints the whole usage).
    assert len(err.splitlines()) == 1, err
    assert names in err and err.startswith("sprint-runner-db") and "--help)" in err
    assert "Traceback" not in err
    if "://" not in db_target:
        assert not os.path.exists(db_target)


def test_db_and_json_also_after_the_command(capsys: pytest.CaptureFixture[str],
                                            db_target: str) -> None:
    assert run(capsys, "init", "--db", db_target)[0] == 0
    code, out, _ = run(capsys, "batches", "--db", db_target, "--json")
    assert (code, json.loads(out)) == (0, [])
    # Given before the command, they are not reset by the command's own defaults.
    code, out, _ = run(capsys, "--db", db_target, "--json", "batches")
    assert (code, json.loads(out)) == (0, [])


def test_default_database_is_db_path(capsys: pytest.CaptureFixture[str], db_target: str,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(db, "DB_PATH", db_target)
    code, out, _ = run(capsys, "init")
    assert code == 0 and "schema version" in out
    assert run(capsys, "--json", "batches")[1].strip() == "[]"


# -- times --------------------------------------------------------------------------------

@pytest.mark.parametrize(("text", "moment"), [
    ("1700000000", Moment(1_700_000_000, False)),
    ("1700000000.9", Moment(1_700_000_000, False)),
    ("2023-11-14T22:13:20Z", Moment(1_700_000_000, False)),
    ("2023-11-14T22:13:20+00:00", Moment(1_700_000_000, False)),
    ("2023-11-15T00:13:20+02:00", Moment(1_700_000_000, False)),
    ("30d", Moment(30 * 86400, True)),
    ("10m", Moment(600, True)),
    ("2h", Moment(7200, True)),
    ("45s", Moment(45, True)),
    ("1w", Moment(7 * 86400, True)),
    ("1d12h", Moment(86400 + 12 * 3600, True)),
    (" 2h 30m ", Moment(9000, True)),
])
def test_parse_moment(text: str, moment: Moment) -> None:
    assert parse_moment(text) == moment


def test_parse_moment_naive_iso_is_local_time() -> None:
    expected = int(datetime.datetime(2024, 5, 1, 12, 0).timestamp())
    assert parse_moment("2024-05-01T12:00") == Moment(expected, False)
    assert parse_moment("2024-05-01 12:00:00") == Moment(expected, False)
    assert parse_moment("2024-05-01") == Moment(expected - 12 * 3600, False)


@pytest.mark.parametrize("text", ["", "yesterday", "-5", "5x", "2h-", "1969-01-01T00:00Z",
                                  "2024-02-30", "1e9", "d"])
def test_parse_moment_refuses(text: str) -> None:
    with pytest.raises(Exception, match="invalid time"):
        parse_moment(text)


def test_moment_resolve() -> None:
    assert Moment(600, True).resolve(1_700_000_000) == 1_699_999_400
    assert Moment(5, False).resolve(1_700_000_000) == 5
    assert Moment(10**12, True).resolve(1_700_000_000) == 0


@pytest.mark.parametrize(("text", "seconds"), [
    ("600", 600), ("10m", 600), ("2h", 7200), ("30d", 2_592_000), ("1h30m", 5400), ("0", 0)])
def test_parse_duration(text: str, seconds: int) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "-1", "ten minutes", "1.5h", "2024-01-01"])
def test_parse_duration_refuses(text: str) -> None:
    with pytest.raises(Exception, match="invalid duration"):
        parse_duration(text)


@pytest.mark.parametrize(("seconds", "text"), [
    (0, "0s"), (45, "45s"), (60, "1m"), (605, "10m 5s"), (7200, "2h"), (7500, "2h 5m"),
    (90061, "1d 1h"), (-3, "0s")])
def test_span(seconds: int, text: str) -> None:
    assert span(seconds) == text


# -- missing, legacy and damaged databases --------------------------------------------------

@pytest.mark.sqlite_only
@pytest.mark.parametrize("argv", [
    ["status"], ["batches"], ["show", "1"], ["events"], ["tail", "--max-polls", "1"],
    ["export"], ["prune", "--older-than", "30d"], ["backup", "BACKUP"], ["recover"],
    ["migrate"], ["migrate", "--dry-run"], ["doctor"], ["status", "--json"],
])
def test_missing_database_file_is_an_error_and_not_created(
        capsys: pytest.CaptureFixture[str], tmp_path: Any, argv: list[str]) -> None:
    path = str(tmp_path / "absent.db")
    argv = [str(tmp_path / "copy.db") if a == "BACKUP" else a for a in argv]
    code, out, err = run(capsys, "--db", path, *argv)
    assert code == 1
    assert out == ""
    assert err.count("\n") == 1
    assert err.startswith(f"sprint-runner-db: error: {path}: no such database file")
    assert os.listdir(tmp_path) == []


@pytest.mark.sqlite_only
def test_sqlite_url_missing_file(capsys: pytest.CaptureFixture[str], tmp_path: Any) -> None:
    code, _, err = run(capsys, "--db", f"sqlite:///{tmp_path}/absent.db", "status")
    assert code == 1 and "no such database file" in err
    assert os.listdir(tmp_path) == []


@pytest.mark.sqlite_only
def test_legacy_file_needs_migrate_first(capsys: pytest.CaptureFixture[str],
                                         db_target: str) -> None:
    import legacy_schema

    legacy_schema.legacy(db_target)
    code, out, err = run(capsys, "--db", db_target, "status")
    assert (code, out) == (1, "")
    assert "schema version 0" in err and "run `sprint-runner-db migrate` first" in err
    code, out, _ = run(capsys, "--db", db_target, "migrate", "--dry-run")
    assert code == 0 and "would apply" in out and "baseline" in out
    assert Store(db_target, migrate=False).schema_version() == 0  # nothing applied
    code, out, err = run(capsys, "--db", db_target, "doctor")
    assert code == 1 and "migration(s) pending" in out and "to fix: sprint-runner-db migrate" in out
    code, out, _ = run(capsys, "--db", db_target, "migrate")
    assert code == 0 and "from schema version 0 to" in out
    assert os.path.exists(db_target + ".bak-v0")
    code, out, _ = run(capsys, "--db", db_target, "status")
    assert code == 0 and "Batch 2 - running" in out


def _damage(path: str, how: str) -> None:
    if how == "garbage":
        with open(path, "wb") as f:
            f.write(os.urandom(3000) + b"not a database" * 100)
        return
    store = Store(path)
    batch = store.create_batch(1)
    store.create_events([{"batch_id": batch, "epic_id": "e", "story_key": "k", "command": "c",
                          "task_id": "t", "status": "s", "message": "x" * 200}] * 2000)
    store.database.execute_sql("PRAGMA wal_checkpoint(TRUNCATE)")
    store.close()
    size = os.path.getsize(path)
    with open(path, "r+b") as f:
        if how == "truncated":
            f.truncate(size // 2)
        else:  # overwritten pages in the middle
            f.seek(size // 3)
            f.write(b"\xff" * 8192)


@pytest.mark.sqlite_only
@pytest.mark.parametrize("how", ["garbage", "truncated", "overwritten"])
def test_doctor_on_a_damaged_file(capsys: pytest.CaptureFixture[str], db_target: str,
                                  how: str) -> None:
    _damage(db_target, how)
    code, out, err = run(capsys, "--db", db_target, "doctor")
    assert (code, err) == (1, "")
    assert "cannot read the database" in out or "integrity   PROBLEMS" in out
    assert "need" in out and "attention" in out
    code, out, err = run(capsys, "--db", db_target, "--json", "doctor")
    report = json.loads(out)
    assert (code, err, report["ok"]) == (1, "", False)
    assert report["problems"]


@pytest.mark.sqlite_only
@pytest.mark.parametrize("argv", [["status"], ["events"], ["export"], ["backup", "copy.db"]])
def test_damaged_file_is_one_line_error(capsys: pytest.CaptureFixture[str], db_target: str,
                                        tmp_path: Any, argv: list[str]) -> None:
    _damage(db_target, "garbage")
    argv = [str(tmp_path / a) if a.endswith(".db") else a for a in argv]
    code, out, err = run(capsys, "--db", db_target, *argv)
    assert (code, out) == (1, "")
    assert err == (f"sprint-runner-db: error: {db_target} is not a readable SQLite "
                   "database: file is not a database\n")


def test_password_is_masked_in_errors(capsys: pytest.CaptureFixture[str]) -> None:
    url = "postgresql://alice:s3cr%40t@127.0.0.1:1/nowhere"
    for argv in (["status"], ["doctor"], ["--json", "doctor"], ["init"]):
        code, out, err = run(capsys, "--db", url, *argv)
        assert code == 1
        assert "s3cr" not in out + err
        assert "alice:***@" in out + err or "driver" in err



@pytest.mark.parametrize("url", [
    "postgresql://u:S3cret@127.0.0.1:1/x?password=S3cret",
    "postgresql://u@127.0.0.1:1/x?password=S3cret",
    "mysql://u:S3cret@127.0.0.1:1/x?passwd=S3cret",
    "mysql://u@127.0.0.1:1/x?passwd=S3cret",
    "postgresql://postgres:ab/S3cret@127.0.0.1/db",
    "postgresql://u:S3cret@[::1:5432/x",
    "postgresql://u:S3cret@127.0.0.1:1/x" + chr(0xD800),
    "sqlite://u:S3cret@/",
])
@pytest.mark.parametrize("argv", [["status"], ["doctor"], ["--json", "doctor"], ["init"]])
def test_password_never_printed_for_bad_urls(capsys: pytest.CaptureFixture[str], url: str,
                                             argv: list[str]) -> None:
    code, out, err = run(capsys, "--db", url, *argv)
    assert (code, out) == (2, "")  # a URL that cannot be right is a usage error
    assert err.startswith("sprint-runner-db: error: ") and err.count("\n") == 1
    assert "S3cret" not in err


@pytest.mark.parametrize("url", ["postgresql://u:1@127.0.0.1:1/x",
                                 "mysql://root:1@127.0.0.1:1/x"])
def test_short_password_leaves_the_rest_of_the_message_alone(
        capsys: pytest.CaptureFixture[str], url: str) -> None:
    pytest.importorskip("psycopg2" if url.startswith("postgresql") else "pymysql")
    code, out, err = run(capsys, "--db", url, "status")
    assert (code, out) == (1, "")
    assert err.startswith(f"sprint-runner-db: error: {url.replace(':1@', ':***@')}: ")
    assert "127.0.0.1" in err.split(": ", 2)[2]  # the driver's own words, intact
    assert "***27" not in err and "0.0.***" not in err


@pytest.mark.parametrize(("query", "named"), [
    ("init_command=DROP%20TABLE%20events", "'init_command'"),
    ("local_infile=1", "'local_infile'"),
    ("client_flag=65536", "'client_flag'"),
    ("bogus=1", "'bogus'"),
    ("connect_timeout=1&connect_timeout=2", "repeats the option 'connect_timeout'"),
])
def test_url_options_outside_the_allowlist_are_one_line_errors(
        capsys: pytest.CaptureFixture[str], query: str, named: str) -> None:
    code, out, err = run(capsys, "--db", f"mysql://root:S3cret@127.0.0.1:1/x?{query}", "status")
    assert (code, out) == (2, "")
    assert named in err and err.count("\n") == 1 and "S3cret" not in err


def test_directory_as_database_is_named(capsys: pytest.CaptureFixture[str], tmp_path: Any,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    for argv in (["status"], ["init"], ["doctor"]):
        code, out, err = run(capsys, "--db", ".", *argv)
        assert (code, out, err) == (
            2, "", "sprint-runner-db: error: . is a directory, not a database file\n")
    assert os.listdir(tmp_path) == []


# -- init, migrate ------------------------------------------------------------------------

def test_init(capsys: pytest.CaptureFixture[str], db_target: str) -> None:
    code, out, err = run(capsys, "--db", db_target, "init")
    store = Store(db_target, migrate=False)
    version = store.schema_version()
    assert (code, err) == (0, "")
    assert out == f"created {store.location} at schema version {version} " \
        "(timestamps in seconds)\n"
    code, out, _ = run(capsys, "--db", db_target, "init")
    assert out == f"{store.location} is at schema version {version}: up to date\n"
    assert run_json(capsys, db_target, "init") == {
        "location": store.location, "backend": store.backend, "schema_version": version,
        "previous_version": version, "applied": [], "time_unit": "s"}
    store.close()


def test_migrate(capsys: pytest.CaptureFixture[str], db_target: str, store: Store) -> None:
    version = store.schema_version()
    code, out, _ = run(capsys, "--db", db_target, "migrate")
    assert (code, out) == (0, f"{store.location} is at schema version {version}: up to date\n")
    assert run_json(capsys, db_target, "migrate", "--dry-run") == {
        "location": store.location, "backend": store.backend, "schema_version": version,
        "previous_version": version, "applied": [], "pending": []}


def test_read_command_on_an_empty_server_or_file(capsys: pytest.CaptureFixture[str],
                                                 db_target: str) -> None:
    if "://" not in db_target:
        open(db_target, "wb").close()
    code, out, err = run(capsys, "--db", db_target, "status")
    assert (code, out) == (1, "")
    assert "holds no sprint-runner tables; create them with `sprint-runner-db init`" in err


# -- status, batches, show ------------------------------------------------------------------

def test_status_running_batch(capsys: pytest.CaptureFixture[str], db_target: str,
                              store: Store, sprint: dict[str, int], frozen: Any) -> None:
    code, out, err = run(capsys, "--db", db_target, "status")
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert lines[0] == f"Batch {sprint['batch']} - running - cycle 1 of 3 done"
    batch = store.get_batch(sprint["batch"])
    assert batch is not None
    assert f"(1m 50s ago) by {batch['owner']}" in out
    assert "  heartbeat  40s ago" in lines
    assert "  stories    1 blocked, 1 in-progress" in lines
    assert "  running    1 command" in lines
    assert f"    #{sprint['running']} dev-story for 2a-1 (task implement), running for 1m 50s" \
        in lines
    assert "  background 1 task pending" in lines
    assert "Last 5 events, newest first:" in lines
    assert lines[-5].split()[1:] == ["2a-1", "dev-story", "progress", "step", "4"]
    assert lines[-4].split()[1:] == ["2a-1", "dev-story", "failed", "step", "3"]


def test_status_json(capsys: pytest.CaptureFixture[str], db_target: str, store: Store,
                     sprint: dict[str, int], frozen: Any) -> None:
    assert run_json(capsys, db_target, "status") == {
        **store.batch_summary(sprint["batch"]), "time_unit": "s"}
    summary = run_json(capsys, db_target, "status", "--events", "2")
    assert [e["message"] for e in summary["last_events"]] == ["step 4", "step 3"]
    assert summary["heartbeat_age"] == 40
    assert isinstance(summary["batch"]["started_at"], int)


def test_status_without_running_batch_shows_the_last(
        capsys: pytest.CaptureFixture[str], db_target: str, store: Store,
        sprint: dict[str, int], frozen: Any) -> None:
    store.update_batch(sprint["batch"], status="stopped", ended_at=store.clock())
    code, out, _ = run(capsys, "--db", db_target, "status")
    assert code == 0
    assert out.splitlines()[:2] == [
        f"No batch is running; the last one in {store.location}:",
        f"Batch {sprint['batch']} - stopped - cycle 1 of 3 done"]
    assert "heartbeat" not in out
    assert "  ended      " in out


def test_status_empty(capsys: pytest.CaptureFixture[str], db_target: str, store: Store) -> None:
    assert run(capsys, "--db", db_target, "status") == (
        0, f"no batches yet in {store.location}\n", "")
    assert run_json(capsys, db_target, "status") is None


def test_batches(capsys: pytest.CaptureFixture[str], db_target: str, store: Store,
                 sprint: dict[str, int], frozen: Any) -> None:
    code, out, _ = run(capsys, "--db", db_target, "batches")
    lines = out.splitlines()
    assert code == 0 and len(lines) == 3
    assert lines[0].split() == ["ID", "STATUS", "CYCLES", "STARTED", "DURATION", "HEARTBEAT",
                                "OWNER"]
    assert lines[1].split()[:3] == [str(sprint["batch"]), "running", "1/3"]
    assert "40s ago" in lines[1]
    assert lines[2].split()[:3] == [str(sprint["old"]), "completed", "1/1"]
    assert "1m" in lines[2]
    assert run_json(capsys, db_target, "batches") == store.list_batches()
    assert run_json(capsys, db_target, "batches", "--limit", "1") == store.list_batches(1)


def test_batches_empty(capsys: pytest.CaptureFixture[str], db_target: str,
                       store: Store) -> None:
    assert run(capsys, "--db", db_target, "batches") == (0, "no batches yet\n", "")


def test_show(capsys: pytest.CaptureFixture[str], db_target: str, store: Store,
              sprint: dict[str, int], frozen: Any) -> None:
    code, out, _ = run(capsys, "--db", db_target, "show", str(sprint["batch"]))
    assert code == 0
    assert out.startswith(f"Batch {sprint['batch']} - running - cycle 1 of 3 done\n")
    assert "2 stories:" in out
    assert "  2a-1 (epic 2a, " in out and "  2a-2 (epic 2a, " in out
    lines = out.splitlines()
    dev = next(line for line in lines if "dev-story" in line)
    assert dev.split()[:4] == [f"#{sprint['running']}", "dev-story", "implement", "running"]
    assert "1 background task:" in out and "context-refresh" in out
    result = run_json(capsys, db_target, "show", str(sprint["batch"]))
    assert result["batch"] == store.get_batch(sprint["batch"])
    assert [s["story_key"] for s in result["stories"]] == ["2a-1", "2a-2"]
    assert result["stories"][0]["commands"] == store.get_commands_by_story(sprint["story"])
    assert result["stories"][1]["commands"] == []
    assert result["background_tasks"] == store.get_background_tasks_by_batch(sprint["batch"])


def test_show_unknown_batch(capsys: pytest.CaptureFixture[str], db_target: str,
                            store: Store) -> None:
    code, out, err = run(capsys, "--db", db_target, "show", "99")
    assert (code, out) == (1, "")
    assert err == f"sprint-runner-db: error: batch 99 not found in {store.location}\n"


# -- events, tail, export -------------------------------------------------------------------

def test_events(capsys: pytest.CaptureFixture[str], db_target: str, store: Store,
                sprint: dict[str, int], frozen: Any) -> None:
    code, out, _ = run(capsys, "--db", db_target, "events")
    lines = out.splitlines()
    assert code == 0 and len(lines) == 7
    assert lines[0].split() == ["ID", "TIME", "BATCH", "STORY", "COMMAND", "STATUS", "MESSAGE"]
    newest = store.page_events(limit=1)["events"][0]
    assert lines[1].split()[:3] == [str(newest["id"])] + cli.local_time(newest["timestamp"]).split()
    assert lines[1].endswith("step 4") and lines[-1].endswith("old work")


def test_events_filters(capsys: pytest.CaptureFixture[str], db_target: str, store: Store,
                        sprint: dict[str, int], clock: Any, frozen: Any) -> None:
    def messages(*argv: str) -> list[str]:
        return [e["message"] for e in run_json(capsys, db_target, "events", *argv)["events"]]

    assert messages("--batch", str(sprint["old"])) == ["old work"]
    assert messages("--story", "2a-1", "--status", "failed") == ["step 3"]
    assert messages("--command", "dev-story", "--since", "70s") == ["step 4", "step 3"]
    assert messages("--since", str(clock.now - 90), "--until", str(clock.now - 70)) == [
        "step 2", "step 1"]
    iso = datetime.datetime.fromtimestamp(clock.now - 70, datetime.timezone.utc).isoformat()
    assert messages("--batch", str(sprint["batch"]), "--until", iso) == [
        "step 2", "step 1", "step 0"]
    assert messages("--story", "nope") == []
    assert run(capsys, "--db", db_target, "events", "--story", "nope")[1] == "no events match\n"


def test_events_pages_by_cursor(capsys: pytest.CaptureFixture[str], db_target: str,
                                store: Store, sprint: dict[str, int]) -> None:
    seen: list[int] = []
    cursor: list[str] = []
    while True:
        page = run_json(capsys, db_target, "events", "--limit", "2", *cursor)
        seen += [e["id"] for e in page["events"]]
        if page["next_cursor"] is None:
            break
        cursor = ["--cursor", page["next_cursor"]]
    assert seen == [e["id"] for e in store.page_events(limit=100)["events"]]
    code, out, _ = run(capsys, "--db", db_target, "events", "--limit", "2")
    assert out.splitlines()[-1].startswith("(more: add --cursor ")


def test_events_bad_cursor(capsys: pytest.CaptureFixture[str], db_target: str,
                           store: Store) -> None:
    for cursor in ("garbage", "", base64.urlsafe_b64encode(b"ev1:d:" + b"9" * 25).decode()):
        # Issue 10, item 13: "" was a TypeError traceback, 25 digits an OverflowError.
        code, out, err = run(capsys, "--db", db_target, "events", "--cursor", cursor)
        assert (code, out) == (2, "")
        assert err.startswith(f"sprint-runner-db: error: invalid cursor {cursor!r}")
        assert err.count("\n") == 1


def test_tail_shows_the_last_lines_then_follows(capsys: pytest.CaptureFixture[str],
                                                db_target: str, store: Store,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    batch = store.create_batch(1)
    other = store.create_batch(1)
    for i in range(15):
        log_event(store, batch, f"old {i}")
    sleeps: list[float] = []

    def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        if len(sleeps) == 1:
            log_event(store, batch, "new 1")
            log_event(store, other, "elsewhere")
            log_event(store, batch, "new 2")

    monkeypatch.setattr(cli, "_sleep", sleep)
    code, out, err = run(capsys, "--db", db_target, "tail", "--batch", str(batch), "-n", "3",
                         "--interval", "0.25", "--max-polls", "3")
    assert (code, err) == (0, "")
    assert [line.split()[-1] for line in out.splitlines()] == ["12", "13", "14", "1", "2"]
    assert sleeps == [0.25, 0.25]


@pytest.mark.sqlite_only
def test_tail_prints_an_event_that_commits_late_below_the_newest(
        capsys: pytest.CaptureFixture[str], db_target: str, store: Store,
        monkeypatch: pytest.MonkeyPatch) -> None:
    # On a server an id can commit after a higher one; here the late event is written
    # with its id by hand, below the newest shown. It is printed once, nothing twice.
    batch = store.create_batch(1)
    ids = [log_event(store, batch, f"m{i}") for i in range(6)]
    with store.get_connection() as conn:
        conn.execute("DELETE FROM events WHERE id = ?", (ids[4],))
    late = dict(next(e for e in store.iter_events() if e["id"] == ids[3]), id=ids[4],
                message="late")

    page_events = Store.page_events

    def page_then_late_commit(self: Store, **kwargs: Any) -> Any:
        page = page_events(self, **kwargs)  # the late event commits right after this read
        with store.get_connection() as conn:
            conn.execute(f"INSERT INTO events ({', '.join(late)}) VALUES "
                         f"({', '.join('?' * len(late))})", tuple(late.values()))
        return page

    monkeypatch.setattr(Store, "page_events", page_then_late_commit)
    monkeypatch.setattr(cli, "_sleep", lambda seconds: None)
    code, out, err = run(capsys, "--db", db_target, "tail", "-n", "2", "--max-polls", "2")
    assert (code, err) == (0, "")
    assert [line.split()[-1] for line in out.splitlines()] == ["m3", "m5", "late"]


def test_tail_json_and_ctrl_c(capsys: pytest.CaptureFixture[str], db_target: str,
                              store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    batch = store.create_batch(1)
    first = log_event(store, batch, "first")

    def sleep(seconds: float) -> None:
        log_event(store, batch, "second")
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "_sleep", sleep)
    code, out, err = run(capsys, "--db", db_target, "--json", "tail")
    assert (code, err) == (0, "")
    assert [json.loads(line) for line in out.splitlines()] == store.tail_events(first - 1)[:1]


def test_tail_real_sleep_stops_after_max_polls(capsys: pytest.CaptureFixture[str],
                                               db_target: str, store: Store) -> None:
    store.create_batch(1)
    code, out, err = run(capsys, "--db", db_target, "tail", "-n", "0", "--interval", "0.1",
                         "--max-polls", "3")
    assert (code, out, err) == (0, "", "")


def test_export_jsonl_and_csv(capsys: pytest.CaptureFixture[str], db_target: str,
                              store: Store, sprint: dict[str, int], tmp_path: Any) -> None:
    every = list(store.iter_events())
    code, out, err = run(capsys, "--db", db_target, "export")
    assert (code, err) == (0, "")
    assert [json.loads(line) for line in out.splitlines()] == every
    code, out, _ = run(capsys, "--db", db_target, "export", "--format", "csv",
                       "--batch", str(sprint["old"]))
    rows = list(csv.reader(io.StringIO(out)))
    assert rows[0] == list(EVENT_COLUMNS)
    assert rows[1][EVENT_COLUMNS.index("message")] == "old work"
    assert rows[1][EVENT_COLUMNS.index("command_id")] == ""  # None
    assert len(rows) == 2
    os.mkdir(tmp_path / "out")
    path = str(tmp_path / "out" / "out.jsonl")
    code, out, _ = run(capsys, "--db", db_target, "export", "-o", path, "--status", "failed")
    assert (code, out) == (0, f"exported 1 event to {path} (jsonl)\n")
    with open(path, encoding="utf-8") as f:
        assert [json.loads(line)["message"] for line in f] == ["step 3"]
    assert os.listdir(tmp_path / "out") == ["out.jsonl"]  # no part file left behind
    assert run_json(capsys, db_target, "export", "-o", path) == {
        "path": path, "format": "jsonl", "events": len(every)}


def test_export_progress_only_on_a_terminal(capsys: pytest.CaptureFixture[str],
                                            db_target: str, store: Store, tmp_path: Any,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    batch = store.create_batch(1)
    store.create_events([{"batch_id": batch, "epic_id": "e", "story_key": "k", "command": "c",
                          "task_id": "t", "status": "s"}] * 6000)
    path = str(tmp_path / "e.csv")
    code, _, err = run(capsys, "--db", db_target, "export", "--format", "csv", "-o", path)
    assert (code, err) == (0, "")
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    os.unlink(path)
    code, _, err = run(capsys, "--db", db_target, "export", "--format", "csv", "-o", path)
    assert code == 0
    assert err == "\rexported 5,000 of 6,000 events\rexported 6,000 events\n"


def test_export_unwritable_output(capsys: pytest.CaptureFixture[str], db_target: str,
                                  store: Store, tmp_path: Any) -> None:
    path = str(tmp_path / "no" / "such" / "dir.jsonl")
    code, out, err = run(capsys, "--db", db_target, "export", "-o", path)
    assert (code, out) == (1, "")
    assert err.startswith(f"sprint-runner-db: error: cannot write {path}: ")


@pytest.mark.slow
def test_export_100k_events_in_bounded_memory(capsys: pytest.CaptureFixture[str],
                                              db_target: str, store: Store,
                                              tmp_path: Any) -> None:
    batch = store.create_batch(1)
    n = 100_000
    store.create_events({"batch_id": batch, "epic_id": "2a", "story_key": f"2a-{i % 50}",
                         "command": "dev-story", "task_id": f"task-{i}", "status": "progress",
                         "message": f"event number {i} of the export test",
                         "timestamp": 1_700_000_000 + i} for i in range(n))
    path = str(tmp_path / "events.jsonl")
    tracemalloc.start()
    try:
        code, out, err = run(capsys, "--db", db_target, "export", "-o", path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert (code, err) == (0, "")
    assert out == f"exported {n} events to {path} (jsonl)\n"
    # 100k event dicts held at once would take well over 50 MB.
    assert peak < 20 * 1024 * 1024, f"peak {peak / 1e6:.1f} MB"
    with open(path, encoding="utf-8") as f:
        count = sum(1 for _ in f)
        f.seek(0)
        assert json.loads(f.readline())["task_id"] == "task-0"
    assert count == n


# -- export -o and backup: where a file may be written ----------------------------------------

_WHAT = {"export": "output file", "backup": "backup destination"}
_KIND_NAMES = {"symlink": "a symbolic link", "dangling-symlink": "a symbolic link",
               "fifo": "a FIFO", "device": "a character device", "directory": "a directory"}


def _write_to(command: str, dest: str) -> list[str]:
    return ["export", "--format", "csv", "-o", dest] if command == "export" else ["backup", dest]


def _files_in(folder: Any) -> dict[str, str | None]:
    """Every entry of ``folder``: a regular file's sha256, None for anything else."""
    return {name: digest(os.path.join(folder, name))
            if os.path.isfile(os.path.join(folder, name))
            and not os.path.islink(os.path.join(folder, name)) else None
            for name in sorted(os.listdir(folder))}


def _database_alias(how: str, path: str, monkeypatch: pytest.MonkeyPatch) -> str:
    folder = os.path.dirname(path)
    if how == "relative":
        monkeypatch.chdir(folder)
        return os.path.basename(path)
    if how == "symlink":
        os.symlink(path, os.path.join(folder, "alias.db"))
        return os.path.join(folder, "alias.db")
    if how == "hardlink":
        os.link(path, os.path.join(folder, "hard.db"))
        return os.path.join(folder, "hard.db")
    if how in ("-wal", "-shm", "-journal"):
        return path + how
    return path


@pytest.mark.sqlite_only
@pytest.mark.parametrize("command", ["export", "backup"])
@pytest.mark.parametrize("how", ["path", "relative", "symlink", "hardlink", "-wal", "-shm",
                                 "-journal"])
def test_the_database_itself_is_never_written_over(
        capsys: pytest.CaptureFixture[str], db_target: str, store: Store,
        sprint: dict[str, int], monkeypatch: pytest.MonkeyPatch, how: str,
        command: str) -> None:
    counts = store.table_counts()
    store.close()
    dest = _database_alias(how, db_target, monkeypatch)
    folder = os.path.dirname(db_target)
    before = _files_in(folder)
    code, out, err = run(capsys, "--db", db_target, *_write_to(command, dest))
    # A usage error: no state of the disk makes the database a place to write to.
    assert (code, out) == (2, "")
    assert err.startswith(f"sprint-runner-db: error: {_WHAT[command]} {dest} is ")
    assert "database" in err and err.endswith("; nothing was written\n")
    assert err.count("\n") == 1
    assert _files_in(folder) == before
    check = Store(db_target, migrate=False)
    try:
        assert check.table_counts() == counts
    finally:
        check.close()


@pytest.mark.parametrize("command", ["export", "backup"])
@pytest.mark.parametrize("kind", SPECIAL_KINDS)
def test_a_destination_that_is_not_a_regular_file_is_refused(
        capsys: pytest.CaptureFixture[str], db_target: str, store: Store,
        sprint: dict[str, int], tmp_path: Any, kind: str, command: str) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    (tmp_path / "out").mkdir()
    dest = make_special(kind, tmp_path / "out" / "dest", victim)
    node, folder = node_of(dest), _files_in(os.path.dirname(dest))
    code, out, err = run(capsys, "--db", db_target, *_write_to(command, dest))
    assert (code, out) == (1, "")
    assert err == (f"sprint-runner-db: error: {_WHAT[command]} {dest} is {_KIND_NAMES[kind]}, "
                   "not a regular file; nothing was written\n")
    assert node_of(dest) == node
    assert _files_in(os.path.dirname(dest)) == folder
    assert victim.read_text() == "precious\n"


@pytest.mark.parametrize("command", ["export", "backup"])
def test_a_planted_part_symlink_is_never_followed(
        capsys: pytest.CaptureFixture[str], db_target: str, store: Store,
        sprint: dict[str, int], tmp_path: Any, command: str) -> None:
    victim = victim_database(tmp_path / "victim.db")
    victim_bytes = digest(victim)
    (tmp_path / "out").mkdir()
    dest = str(tmp_path / "out" / "copy")
    planted = [f"{dest}.part-{os.getpid()}{side}" for side in ("", "-journal", "-wal", "-shm")]
    for name in planted:
        os.symlink(victim, name)
    code, _, err = run(capsys, "--db", db_target, *_write_to(command, dest))
    assert (code, err) == (0, "")
    assert digest(victim) == victim_bytes
    assert [os.readlink(name) for name in planted] == [victim] * len(planted)
    assert sorted(os.listdir(tmp_path / "out")) == sorted(
        [os.path.basename(n) for n in planted] + ["copy"])
    assert not os.path.islink(dest)
    if command == "export":
        with open(dest, encoding="utf-8") as f:
            assert len(list(csv.reader(f))) == 1 + len(list(store.iter_events()))
    else:
        copy = Store(dest, migrate=False)
        try:
            assert copy.table_counts() == store.table_counts()
        finally:
            copy.close()


def test_export_replaces_an_older_export(capsys: pytest.CaptureFixture[str], db_target: str,
                                         store: Store, sprint: dict[str, int],
                                         tmp_path: Any) -> None:
    (tmp_path / "out").mkdir()
    dest = tmp_path / "out" / "events.jsonl"
    dest.write_text("last week's export\n")
    inode = dest.stat().st_ino
    code, _, err = run(capsys, "--db", db_target, "export", "-o", str(dest))
    assert (code, err) == (0, "")
    assert [json.loads(line) for line in dest.read_text().splitlines()] == list(
        store.iter_events())
    assert dest.stat().st_ino != inode  # a new file renamed over the old one
    assert stat.S_IMODE(dest.stat().st_mode) == 0o600  # agent output: owner-only
    assert os.listdir(tmp_path / "out") == ["events.jsonl"]


def test_backup_is_owner_only(capsys: pytest.CaptureFixture[str], db_target: str,
                              store: Store, sprint: dict[str, int], tmp_path: Any) -> None:
    dest = tmp_path / "backup.db"
    code, _, err = run(capsys, "--db", db_target, "backup", str(dest))
    assert (code, err) == (0, "")
    assert stat.S_IMODE(dest.stat().st_mode) == 0o600


# -- old-format files: a read-only first look ----------------------------------------------------

_OLD_FILES = {"legacy": (legacy_schema.legacy, 0), "version1": (legacy_schema.version1, 1),
              "version2": (legacy_schema.version2, 2)}
_MIGRATION_NAMES = {m.version: m.name for m in migrations.MIGRATIONS}


@pytest.fixture(params=list(_OLD_FILES))
def old_file(request: pytest.FixtureRequest, tmp_path: Any) -> tuple[str, int]:
    """A SQLite file an earlier generation left, alone in its folder, and its version."""
    build, version = _OLD_FILES[request.param]
    (tmp_path / "old").mkdir()
    path = str(tmp_path / "old" / "state.db")
    build(path)
    return path, version


def _pending(version: int) -> list[int]:
    return [v for v in _MIGRATION_NAMES if v > version]


@pytest.mark.sqlite_only
@pytest.mark.parametrize("argv", [
    ["status"], ["status", "--json"], ["batches"], ["show", "1"], ["events"],
    ["tail", "--max-polls", "1"], ["export"], ["export", "-o", "OUT"],
    ["prune", "--older-than", "30d"], ["prune", "--older-than", "30d", "--dry-run"],
    ["recover"], ["recover", "--dry-run"],
])
def test_an_old_file_is_refused_with_not_a_byte_changed(
        capsys: pytest.CaptureFixture[str], old_file: tuple[str, int], tmp_path: Any,
        argv: list[str]) -> None:
    path, version = old_file
    folder = os.path.dirname(path)
    before = _files_in(folder)
    argv = [str(tmp_path / "old" / "out.jsonl") if a == "OUT" else a for a in argv]
    code, out, err = run(capsys, "--db", path, *argv)
    pending = _pending(version)
    assert (code, out) == (1, "")
    assert err == (f"sprint-runner-db: error: {path} is at schema version {version} and needs "
                   f"{len(pending)} migration{'s' if len(pending) > 1 else ''} "
                   f"({', '.join(map(str, pending))}); run `sprint-runner-db migrate` first\n")
    assert _files_in(folder) == before  # the whole file, and no -wal, -shm, -journal


@pytest.mark.sqlite_only
def test_doctor_reports_an_old_file_read_only(capsys: pytest.CaptureFixture[str],
                                              old_file: tuple[str, int]) -> None:
    path, version = old_file
    folder = os.path.dirname(path)
    before = _files_in(folder)
    pending = _pending(version)
    code, out, err = run(capsys, "--db", path, "doctor")
    assert (code, err) == (1, "")
    assert out.startswith(f"database    {path} (sqlite)\n")
    many = "s" if len(pending) > 1 else ""
    assert f"schema      version {version} ({len(pending)} migration{many} pending)" in out
    assert f"size        {os.path.getsize(path) / 1024:.1f} KiB, WAL 0 B" in out
    assert f"  - schema is at version {version}, {len(pending)} migration(s) pending" in out
    assert "to fix: sprint-runner-db migrate" in out
    code, out, err = run(capsys, "--db", path, "--json", "doctor")
    report = json.loads(out)
    assert (code, err, report["ok"]) == (1, "", False)
    assert report["schema_version"] == version
    assert report["pending_migrations"] == [{"version": v, "name": _MIGRATION_NAMES[v]}
                                            for v in pending]
    assert report["storage"] == {"backend": "sqlite", "location": path,
                                 "file_bytes": os.path.getsize(path), "wal_bytes": 0}
    assert report["tables"] is None and report["stale_batches"] is None
    assert _files_in(folder) == before


@pytest.mark.sqlite_only
def test_doctor_checks_an_old_file_integrity_read_only(capsys: pytest.CaptureFixture[str],
                                                       tmp_path: Any) -> None:
    path = str(tmp_path / "old.db")
    legacy_schema.legacy(path)
    conn = sqlite3.connect(path)
    page_size = conn.execute("PRAGMA page_size").fetchone()[0]
    root = conn.execute("SELECT rootpage FROM sqlite_master "
                        "WHERE name = 'idx_events_timestamp'").fetchone()[0]
    conn.close()
    data = bytearray(Path(path).read_bytes())
    at = (root - 1) * page_size + data[(root - 1) * page_size:root * page_size].find(
        (1_700_000_000).to_bytes(4, "big")) + 3
    data[at] += 1  # one index entry now disagrees with its row
    Path(path).write_bytes(data)
    before = _files_in(tmp_path)
    code, out, err = run(capsys, "--db", path, "doctor")
    assert (code, err) == (1, "")
    assert "integrity   PROBLEMS" in out
    assert "  - row 1 missing from index idx_events_timestamp" in out
    assert _files_in(tmp_path) == before


@pytest.mark.sqlite_only
def test_migrate_dry_run_reads_an_old_file_only(capsys: pytest.CaptureFixture[str],
                                                old_file: tuple[str, int]) -> None:
    path, version = old_file
    folder = os.path.dirname(path)
    before = _files_in(folder)
    pending = _pending(version)
    code, out, err = run(capsys, "--db", path, "migrate", "--dry-run")
    assert (code, err) == (0, "")
    assert out == (f"{path} is at schema version {version}; `sprint-runner-db migrate` would "
                   "apply:\n" + "".join(f"  {v}  {_MIGRATION_NAMES[v]}\n" for v in pending))
    assert run_json(capsys, path, "migrate", "--dry-run") == {
        "location": path, "backend": "sqlite", "schema_version": version,
        "previous_version": version, "applied": [],
        "pending": [{"version": v, "name": _MIGRATION_NAMES[v]} for v in pending]}
    assert _files_in(folder) == before


@pytest.mark.sqlite_only
def test_backup_and_demo_leave_an_old_file_as_it_was(capsys: pytest.CaptureFixture[str],
                                                     old_file: tuple[str, int],
                                                     tmp_path: Any) -> None:
    path, _ = old_file
    folder = os.path.dirname(path)
    before = _files_in(folder)
    copy = str(tmp_path / "copy.db")
    code, out, err = run(capsys, "--db", path, "backup", copy)
    assert (code, err) == (0, "")
    assert _files_in(folder) == before
    plain = sqlite3.connect(f"file:{copy}?mode=ro", uri=True)
    original = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        for table in legacy_schema.DATA_TABLES:
            query = f'SELECT * FROM "{table}" ORDER BY id'
            assert plain.execute(query).fetchall() == original.execute(query).fetchall()
    finally:
        plain.close()
        original.close()
    code, out, err = run(capsys, "--db", path, "demo")
    assert (code, out) == (1, "")
    assert "already holds data" in err
    assert _files_in(folder) == before


# -- prune, backup, recover ---------------------------------------------------------------

def test_prune(capsys: pytest.CaptureFixture[str], db_target: str, store: Store,
               sprint: dict[str, int], clock: Any, frozen: Any) -> None:
    frozen.tick(datetime.timedelta(days=40))
    before = store.table_counts()
    dry = run_json(capsys, db_target, "prune", "--older-than", "30d", "--dry-run")
    assert dry["dry_run"] is True
    assert dry["older_than"] == clock.now + 10 * 86400
    assert dry["deleted"] == {"batches": 1, "stories": 1, "commands": 0, "events": 1,
                              "background_tasks": 0}
    assert store.table_counts() == before
    code, out, _ = run(capsys, "--db", db_target, "prune", "--older-than", "30d", "--dry-run")
    assert code == 0 and "would delete 1 finished batch that ended before it" in out
    # Issue 10, item 13: "1 stories": plural by count.
    assert "(1 story, 0 commands, 0 background tasks)" in out
    assert "would delete 1 event in all" in out
    code, out, _ = run(capsys, "--db", db_target, "prune", "--older-than", "30d",
                       "--events-only")
    assert code == 0
    assert "deleted 1 event in all" in out
    assert "finished batch" not in out
    assert store.get_batch(sprint["old"]) is not None
    result = run_json(capsys, db_target, "prune", "--older-than", "30d")
    assert result["deleted"]["batches"] == 1 and result["deleted"]["events"] == 0
    assert store.get_batch(sprint["old"]) is None
    assert store.get_batch(sprint["batch"]) is not None  # running: never pruned


def test_backup(capsys: pytest.CaptureFixture[str], db_target: str, store: Store,
                sprint: dict[str, int], tmp_path: Any) -> None:
    dest = str(tmp_path / "backup.db")
    code, out, err = run(capsys, "--db", db_target, "backup", dest)
    assert (code, err) == (0, "")
    assert out.startswith(f"backed up {store.location} to {dest} (")
    copy = Store(dest, migrate=False)
    assert copy.table_counts() == store.table_counts()
    copy.close()
    code, out, err = run(capsys, "--db", db_target, "backup", dest)
    assert (code, out) == (1, "")
    assert err == (f"sprint-runner-db: error: backup destination {dest} already exists; "
                   "choose a new path\n")
    other = str(tmp_path / "second.db")
    assert run_json(capsys, db_target, "backup", other) == {
        "source": store.location, "dest": other, "bytes": os.path.getsize(other)}
    code, _, err = run(capsys, "--db", db_target, "backup", str(tmp_path / "nope" / "x.db"))
    assert code == 1 and "no such directory" in err


def test_recover(capsys: pytest.CaptureFixture[str], db_target: str, store: Store,
                 sprint: dict[str, int], frozen: Any) -> None:
    code, out, _ = run(capsys, "--db", db_target, "recover")
    assert (code, out) == (0, "no stale batches (none running without a heartbeat for 10m)\n")
    frozen.tick(datetime.timedelta(hours=2))
    code, out, _ = run(capsys, "--db", db_target, "recover", "--dry-run")
    owner = store.get_batch(sprint["batch"])["owner"]  # type: ignore[index]
    assert out == (f"would stop batch {sprint['batch']} (owner {owner}, "
                   "last heartbeat 2h ago)\n")
    assert store.get_batch(sprint["batch"])["status"] == "running"  # type: ignore[index]
    assert run_json(capsys, db_target, "recover", "--stale-after", "1h") == {
        "stale_after": 3600, "dry_run": False, "batches": [sprint["batch"]]}
    assert store.get_batch(sprint["batch"])["status"] == "stopped"  # type: ignore[index]


# -- doctor -----------------------------------------------------------------------------------

def test_doctor_healthy(capsys: pytest.CaptureFixture[str], db_target: str, store: Store,
                        sprint: dict[str, int], frozen: Any) -> None:
    code, out, err = run(capsys, "--db", db_target, "doctor")
    assert (code, err) == (0, "")
    assert out.startswith(f"database    {store.location} ({store.backend})\n")
    assert f"schema      version {store.schema_version()} (up to date)" in out
    assert "integrity   ok" in out
    assert "rows        batches 2, stories 3, commands 2, events 6, background_tasks 1" in out
    assert out.endswith("ok: nothing needs attention\n")
    assert ("size        " in out) is (store.backend == "sqlite")
    report = run_json(capsys, db_target, "doctor")
    assert report["ok"] is True and report["problems"] == [] and report["stale_batches"] == []
    assert report["tables"] == store.table_counts()
    assert report["storage"] == store.storage_info()


def test_doctor_finds_a_stale_batch(capsys: pytest.CaptureFixture[str], db_target: str,
                                    store: Store, sprint: dict[str, int], frozen: Any) -> None:
    frozen.tick(datetime.timedelta(minutes=30))
    code, out, err = run(capsys, "--db", db_target, "doctor")
    assert (code, err) == (1, "")
    assert f"stale       batch {sprint['batch']} (running batches silent for 10m or more)" in out
    assert f"  - batch {sprint['batch']} is running but silent for 30m 40s (owner " in out
    assert "to fix: sprint-runner-db recover --stale-after 10m" in out
    code, out, _ = run(capsys, "--db", db_target, "doctor", "--stale-after", "1h")
    assert code == 0
    report = json.loads(run(capsys, "--db", db_target, "--json", "doctor")[1])
    assert report["ok"] is False
    assert [b["id"] for b in report["stale_batches"]] == [sprint["batch"]]


# -- demo ---------------------------------------------------------------------------------------

def test_demo(capsys: pytest.CaptureFixture[str], db_target: str, frozen: Any,
              clock: Any) -> None:
    code, out, err = run(capsys, "--db", db_target, "demo")
    assert (code, err) == (0, "")
    store = Store(db_target, migrate=False)
    try:
        (batch,) = store.list_batches()
        assert (batch["status"], batch["max_cycles"], batch["cycles_completed"]) == (
            "completed", 2, 2)
        assert batch["owner"] == "sprint-runner-db demo"
        assert batch["ended_at"] == clock.now
        stories = store.get_stories_by_batch(batch["id"])
        assert sorted(s["status"] for s in stories) == ["blocked", "done", "done", "done"]
        blocked = next(s for s in stories if s["status"] == "blocked")
        assert store.check_story_blocked(blocked["id"])
        assert len(store.get_commands_by_batch(batch["id"], "failed")) == 4
        assert [t["status"] for t in store.get_background_tasks_by_batch(batch["id"])] == [
            "completed"]
        counts = store.table_counts()
        location = store.location
    finally:
        store.close()
    assert out.startswith(f"Simulated a small sprint in {location}: 4 stories, "
                          f"{counts['commands']} commands (4 failed), 1 background task, "
                          f"{counts['events']} events.\n")
    assert f"Batch {batch['id']} - completed - cycle 2 of 2 done" in out
    assert "  stories    3 done, 1 blocked" in out
    assert "Last 10 events, newest first:" in out
    assert "blocked" in out and "failed" in out
    assert f"sprint-runner-db --db {db_target} doctor" in out or "://" in db_target
    assert run(capsys, "--db", db_target, "doctor")[0] == 0
    # Again: one more demo batch, shown by the status that follows.
    code, out, err = run(capsys, "--db", db_target, "demo")
    assert (code, err) == (0, "")
    assert f"Batch {batch['id'] + 1} - completed" in out


def test_demo_refuses_a_database_with_real_batches(capsys: pytest.CaptureFixture[str],
                                                   db_target: str, store: Store) -> None:
    store.create_batch(1)
    code, out, err = run(capsys, "--db", db_target, "demo")
    assert (code, out) == (1, "")
    assert err == (f"sprint-runner-db: error: {store.location} already holds data; the demo "
                   "writes only into a new database, or one where only demos ran: try "
                   "`sprint-runner-db --db demo.db demo`\n")
    assert len(store.list_batches()) == 1


def test_demo_json(capsys: pytest.CaptureFixture[str], db_target: str, frozen: Any) -> None:
    summary = run_json(capsys, db_target, "demo")
    assert summary["batch"]["status"] == "completed"
    assert summary["stories_by_status"] == {"done": 3, "blocked": 1}
    assert len(summary["last_events"]) == 10


@pytest.mark.sqlite_only
def test_demo_refuses_a_legacy_file_without_migrating_it(capsys: pytest.CaptureFixture[str],
                                                         db_target: str) -> None:
    import legacy_schema

    legacy_schema.legacy(db_target)
    code, out, err = run(capsys, "--db", db_target, "demo")
    assert (code, out) == (1, "")
    assert "already holds data" in err
    assert Store(db_target, migrate=False).schema_version() == 0
    assert not os.path.exists(db_target + ".bak-v0")


def test_readme_documents_every_command() -> None:
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
    for command in COMMANDS:
        assert f"| `{command}" in readme, f"README lacks a row for `{command}`"
