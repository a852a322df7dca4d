"""The caller's time unit (issue 12): a database records seconds or milliseconds."""
from __future__ import annotations

import datetime
import hashlib
import json
from pathlib import Path

import legacy_schema
import pytest
from freezegun import freeze_time

from sprint_runner import SchemaError, Store, db
from sprint_runner.cli import main
from sprint_runner.clock import system_clock, system_clock_ms

MS = 1_769_253_352_553  # a real later-module batch started then
FROZEN = datetime.datetime(2026, 1, 24, 11, 15, 52, 553000, tzinfo=datetime.timezone.utc)


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_frozen_time_reaches_both_clocks() -> None:
    with freeze_time(FROZEN):
        assert system_clock() == MS // 1000
        assert system_clock_ms() == MS


def test_a_millisecond_store_end_to_end(db_target: str) -> None:
    with freeze_time(FROZEN) as frozen:
        store = Store(db_target, time_unit="ms")
        try:
            assert store.time_unit == "ms"
            batch = store.create_batch(2)
            assert store.get_batch(batch)["started_at"] == MS
            story = store.create_story(batch, "5-sr-2", "5")
            store.create_event(batch, story, None, "command:start", "5", "5-sr-2", "dev", "t",
                               "start", None)
            assert store.page_events()["events"][0]["timestamp"] == MS
            frozen.tick(datetime.timedelta(minutes=5))
            assert store.heartbeat(batch) == 1
            assert store.get_batch(batch)["heartbeat_at"] == MS + 300_000
            frozen.tick(datetime.timedelta(minutes=11))
            summary = store.batch_summary(batch)
            assert summary is not None and summary["heartbeat_age"] == 660  # seconds
            assert store.find_stale_batches(12 * 60) == []
            assert store.recover_stale_batches(10 * 60) == [batch]
            stopped = store.get_batch(batch)
            assert (stopped["status"], stopped["ended_at"]) == ("stopped", MS + 16 * 60_000)
            message = store.page_events(event_type="batch:end")["events"][0]["message"]
            assert "last heartbeat 660s ago (stale after 600s)" in message
            # Cutoffs are in the store's unit: an hour ago, in milliseconds.
            now = system_clock_ms()
            assert store.prune(older_than=now - 3_600_000, dry_run=True)["batches"] == 0
            assert store.prune(older_than=now + 1)["batches"] == 1
        finally:
            store.close()


def test_the_unit_is_the_databases(db_target: str) -> None:
    Store(db_target, time_unit="ms").close()
    reopened = Store(db_target)  # no unit asked: the recorded one
    assert reopened.time_unit == "ms" and reopened.clock is system_clock_ms
    reopened.close()
    default = Store(db_target, default_time_unit="s")  # a default never overrides it
    assert default.time_unit == "ms"
    default.close()
    with pytest.raises(SchemaError, match=r"milliseconds \('ms'\).*time_unit='s' \(seconds\)"):
        Store(db_target, time_unit="s")


@pytest.mark.sqlite_only
def test_a_disagreeing_unit_writes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    store = Store(path)
    store.create_batch(1)
    store.close()
    before = _digest(path)
    with pytest.raises(SchemaError, match="seconds"):
        Store(path, time_unit="ms")
    assert _digest(path) == before


@pytest.mark.parametrize(("value", "error"), [("sec", ValueError), ("MS", ValueError),
                                              (1000, TypeError), (True, TypeError)])
def test_bad_units(db_target: str, value: object, error: type[Exception]) -> None:
    with pytest.raises(error, match="time_unit"):
        Store(db_target, time_unit=value)  # type: ignore[arg-type]
    with pytest.raises(error, match="default_time_unit"):
        Store(db_target, default_time_unit=value)  # type: ignore[arg-type]


def test_the_module_reads_time_unit_at_call_time(db_target: str, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(db, "TIME_UNIT", "ms")
    db.init_db(db_target)
    assert db.get_store().time_unit == "ms"
    with freeze_time(FROZEN):
        batch = db.create_batch(1)
        assert db.get_batch(batch)["started_at"] == MS
    monkeypatch.setattr(db, "TIME_UNIT", "s")
    db.init_db(db_target)  # an existing database keeps its unit whatever TIME_UNIT says
    assert db.get_store().time_unit == "ms"
    with pytest.raises(SchemaError):
        db.init_db(db_target, time_unit="s")
    db.get_store().close()


@pytest.mark.sqlite_only
@pytest.mark.parametrize("kind", ["kind2", "kind3"])
def test_the_later_modules_files_are_milliseconds(kind: str, tmp_path: Path) -> None:
    path = tmp_path / f"{kind}.db"
    getattr(legacy_schema, kind)(str(path))
    store = Store(path)
    assert store.time_unit == "ms"
    with freeze_time(FROZEN):
        event = store.create_event(1, None, None, "e", "k", "c", "t", "s", None)
    assert next(e for e in store.iter_events() if e["id"] == event)["timestamp"] == MS
    store.close()
    with pytest.raises(SchemaError, match="milliseconds"):
        Store(path, time_unit="s")


@pytest.mark.sqlite_only
def test_a_file_mixing_units_is_refused_untouched(tmp_path: Path) -> None:
    path = tmp_path / "mixed.db"
    legacy_schema.mixed_units(str(path))
    before = _digest(path)
    with pytest.raises(SchemaError, match="mixes timestamps in seconds and in milliseconds"):
        Store(path)
    assert _digest(path) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mixed.db"]


@pytest.mark.sqlite_only
@pytest.mark.parametrize("unit", ["s", "ms"])
def test_an_empty_legacy_file_takes_the_requested_unit(unit: str, tmp_path: Path) -> None:
    path = tmp_path / "empty.db"
    legacy_schema.legacy(str(path), data=False)
    assert Store(path, time_unit=unit).time_unit == unit
    assert Store(path).time_unit == unit


@pytest.mark.sqlite_only
def test_our_own_older_files_are_seconds(tmp_path: Path) -> None:
    path = tmp_path / "v3.db"
    legacy_schema.version3(str(path))
    assert Store(path).time_unit == "s"


def _cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    assert err == "" or code != 0, err
    return code, out


def test_the_command_line_in_milliseconds(capsys: pytest.CaptureFixture[str],
                                          db_target: str) -> None:
    with freeze_time(FROZEN) as frozen:
        code, out = _cli(capsys, "--db", db_target, "init", "--time-unit", "ms")
        assert code == 0 and "(timestamps in milliseconds)" in out
        store = Store(db_target)
        batch = store.create_batch(1)
        store.create_event(batch, None, None, "batch:start", "", "", "", "", "start", "go")
        frozen.tick(datetime.timedelta(hours=3))
        store.create_event(batch, None, None, "command:start", "e", "k", "c", "t", "s", "now")
        store.heartbeat(batch)
        code, out = _cli(capsys, "--db", db_target, "events", "--since", "2h")
        assert code == 0 and "now" in out and " go" not in out
        local = datetime.datetime.fromtimestamp(MS // 1000 + 3 * 3600)
        assert local.strftime("%Y-%m-%d %H:%M:%S") in out  # people see local seconds
        code, out = _cli(capsys, "--db", db_target, "--json", "events", "--since", "4h")
        assert [e["timestamp"] for e in json.loads(out)["events"]] == [
            MS + 3 * 3_600_000, MS]
        code, out = _cli(capsys, "--db", db_target, "--json", "events",
                         "--since", str(MS // 1000 + 1))  # an epoch is seconds
        assert len(json.loads(out)["events"]) == 1
        code, out = _cli(capsys, "--db", db_target, "--json", "events", "--event-type", "")
        assert [e["message"] for e in json.loads(out)["events"]] == []
        code, out = _cli(capsys, "--db", db_target, "--json", "events", "--story", "")
        assert [e["message"] for e in json.loads(out)["events"]] == ["go"]
        code, out = _cli(capsys, "--db", db_target, "status")
        assert "heartbeat  0s ago" in out and local.strftime("%H:%M:%S") in out
        assert "started    " + datetime.datetime.fromtimestamp(MS // 1000).strftime(
            "%Y-%m-%d %H:%M:%S") in out
        code, out = _cli(capsys, "--db", db_target, "--json", "status")
        assert json.loads(out)["time_unit"] == "ms"
        code, out = _cli(capsys, "--db", db_target, "doctor")
        assert "time unit   milliseconds" in out
        code, out = _cli(capsys, "--db", db_target, "--json", "prune", "--older-than", "1h",
                         "--dry-run")
        assert json.loads(out)["older_than"] == (MS // 1000 + 2 * 3600) * 1000  # whole seconds
        store.close()
