"""Schema versions: stamping, ordered migrations, legacy adoption, backups, refusals,
and processes starting together.

Fixture databases are built from the SQL text in ``legacy_schema``; rows and schemas
are read back on plain ``sqlite3`` connections, never through the store under test.
"""
from __future__ import annotations

import glob
import logging
import multiprocessing
import os
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import legacy_schema
import peewee
import pytest
from conftest import subprocess_env
from legacy_schema import DATA_TABLES

from sprint_runner import IntegrityError, SchemaError, Store, db, migrations

LATEST = migrations.LATEST_VERSION
NAMES = {1: "baseline", 2: "batch_owner_heartbeat", 3: "event_history_indexes",
         4: "event_filter_pair_indexes", 5: "typed_events",
         6: "time_unit"}
ADDED_BY_V2 = ("owner", "heartbeat_at")
PROCESSES = 8

Rows = dict[str, tuple[tuple[str, ...], list[tuple[Any, ...]]]]


# -- reading files on a plain connection --------------------------------------------------

def _plain(path: str | Path) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{path}?mode=ro", uri=True)


def rows_of(path: str | Path, tables: tuple[str, ...] = DATA_TABLES,
            columns: dict[str, tuple[str, ...]] | None = None) -> Rows:
    """Every row of ``tables`` by id, each value paired with its Python type."""
    conn = _plain(path)
    try:
        out: Rows = {}
        for table in tables:
            wanted = ", ".join(f'"{c}"' for c in columns[table]) if columns else "*"
            cur = conn.execute(f'SELECT {wanted} FROM "{table}" ORDER BY id')
            names = tuple(d[0] for d in cur.description)
            out[table] = (names, [tuple((type(v).__name__, v) for v in row) for row in cur])
        return out
    finally:
        conn.close()


def _affinity(declared: str) -> str:
    # SQLite's affinity rules (datatype3.html 3.1): what a declared type means.
    t = declared.upper()
    if "INT" in t:
        return "INTEGER"
    if any(s in t for s in ("CHAR", "CLOB", "TEXT")):
        return "TEXT"
    if not t or "BLOB" in t:
        return "BLOB"
    if any(s in t for s in ("REAL", "FLOA", "DOUB")):
        return "REAL"
    return "NUMERIC"


def schema_of(path: str | Path) -> dict[str, dict[str, Any]]:
    """Columns, indexes and foreign keys of the five tables and schema_migrations.

    A column is (name, affinity, not null, default, primary key); an INTEGER PRIMARY
    KEY is a rowid alias, so ``NOT NULL`` on it is implied whether declared or not.
    """
    conn = _plain(path)
    try:
        out = {}
        for table in (*DATA_TABLES, "schema_migrations"):
            columns = [(r[1], _affinity(r[2]), bool(r[3] or r[5]), r[4], r[5])
                       for r in conn.execute(f'PRAGMA table_info("{table}")')]
            indexes = {r[1]: (r[2], tuple(c[2] for c in conn.execute(
                f'PRAGMA index_info("{r[1]}")'))) for r in conn.execute(
                f'PRAGMA index_list("{table}")')}
            fks = sorted((r[3], r[2], r[4], r[5], r[6]) for r in conn.execute(
                f'PRAGMA foreign_key_list("{table}")'))
            out[table] = {"columns": columns, "indexes": indexes, "foreign_keys": fks}
        return out
    finally:
        conn.close()


def stamps(path: str | Path) -> list[tuple[int, str, int]]:
    conn = _plain(path)
    try:
        return conn.execute("SELECT version, name, applied_at FROM schema_migrations "
                            "ORDER BY version").fetchall()
    finally:
        conn.close()


def backups(path: str | Path) -> list[str]:
    return sorted(glob.glob(f"{glob.escape(str(path))}.bak-*"))


def wal_bytes(path: str | Path) -> int:
    wal = f"{path}-wal"
    return os.path.getsize(wal) if os.path.exists(wal) else 0


def check_refused_untouched(path: Path, open_it: Callable[[], object], *fragments: str) -> str:
    """Opening ``path`` raises SchemaError naming ``fragments``; the file is unchanged."""
    before = path.read_bytes()
    with pytest.raises(SchemaError) as err:
        open_it()
    message = str(err.value)
    for fragment in fragments:
        assert fragment in message
    assert path.read_bytes() == before
    assert wal_bytes(path) == 0
    assert backups(path) == []
    return message


# -- fixtures -----------------------------------------------------------------------------

@pytest.fixture
def fresh_schema(tmp_path: Path, clock: Any) -> dict[str, dict[str, Any]]:
    """The schema a new store creates, read from its file."""
    path = tmp_path / "fresh-reference.db"
    Store(path, clock).close()
    return schema_of(path)


@pytest.fixture
def module_api(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """``sprint_runner.db`` with no default store yet; its store is closed afterwards."""
    monkeypatch.setattr(db, "_default", None)
    yield db
    if db._default is not None:
        db._default.close()


@pytest.fixture
def legacy_file(tmp_path: Path) -> Path:
    path = tmp_path / "legacy.db"
    legacy_schema.legacy(str(path))
    return path


# -- every backend: stamping, idempotence, refusing the future -----------------------------

def _schema_rows(store: Store) -> list[tuple[int, str, int]]:
    with store.get_connection() as conn:
        cur = conn.cursor()
        cur.execute("SELECT version, name, applied_at FROM schema_migrations ORDER BY version")
        rows = [(int(r["version"]), r["name"], int(r["applied_at"])) for r in cur.fetchall()]
        cur.close()
    return rows


def test_fresh_database_stamped_at_newest_version(make_store: Any, clock: Any) -> None:
    store = make_store()
    assert store.schema_version() == LATEST == 6
    assert store.pending_migrations() == []
    assert _schema_rows(store) == [(v, NAMES[v], clock.now) for v in NAMES]
    assert [m.version for m in migrations.MIGRATIONS] == list(NAMES)


def test_migrate_when_up_to_date_returns_nothing(make_store: Any, clock: Any) -> None:
    store = make_store()
    clock.advance(60)
    assert store.migrate() == []
    assert store.migrate() == []
    assert make_store().migrate() == []
    assert _schema_rows(store) == [(v, NAMES[v], clock.now - 60) for v in NAMES]


def test_module_api_init_db_migrates(module_db: Any) -> None:
    assert module_db.schema_version() == LATEST
    assert module_db.migrate() == []
    module_db.init_db(module_db.DB_PATH)
    assert module_db.schema_version() == LATEST


def test_future_version_refused_nothing_written(make_store: Any) -> None:
    store = make_store()
    batch = store.create_batch(2)
    p = "?" if store.backend == "sqlite" else "%s"
    with store.get_connection() as conn:
        cur = conn.cursor()
        cur.execute(f"INSERT INTO schema_migrations (version, name, applied_at) "
                    f"VALUES ({p}, {p}, {p})", (1_000_000, "from the future", 0))
        cur.close()
    before = _schema_rows(store)
    tables = sorted(store.database.get_tables())
    with pytest.raises(SchemaError) as err:
        make_store()
    assert "1000000" in str(err.value) and f"({LATEST})" in str(err.value)
    with pytest.raises(SchemaError, match="1000000"):
        store.migrate()
    assert _schema_rows(store) == before
    assert sorted(store.database.get_tables()) == tables
    assert store.get_batch(batch)["max_cycles"] == 2


def _drop_index(store: Store, name: str, table: str) -> str:
    return f"DROP INDEX {name} ON {table}" if store.backend == "mysql" else f"DROP INDEX {name}"


@pytest.mark.parametrize("found", [1, 2, 3])
def test_older_version_upgraded_on_every_backend(found: int, make_store: Any, clock: Any) -> None:
    store = make_store()
    batch = store.create_batch(3)
    story = store.create_story(batch, "été-1", "é")
    event = store.create_event(batch, story, None, "é", "été-1", "c", "t", "s", None)
    original = store.get_batch(batch)
    # Take the database back to ``found``: the later stamps, the indexes of versions 4
    # and 3 (not the ones MySQL needs for its foreign keys), the columns of version 2.
    with store.get_connection() as conn:
        cur = conn.cursor()
        cur.execute(f"DELETE FROM schema_migrations WHERE version > {found}")
        later = migrations.V4_INDEXES + (
            ("idx_events_story_key", "idx_events_command", "idx_events_status")
            if found < 3 else ())
        for name in later:
            cur.execute(_drop_index(store, name, "events"))
        if found < 2:
            for column in ADDED_BY_V2:
                cur.execute(f"ALTER TABLE batches DROP COLUMN {column}")
        cur.close()
    store.close()
    clock.advance(60)

    older = make_store(migrate=False)
    assert older.schema_version() == found
    applied = list(range(found + 1, LATEST + 1))
    assert older.pending_migrations() == [(v, NAMES[v]) for v in applied]
    assert older.migrate() == applied
    assert older.migrate() == []
    assert _schema_rows(older) == ([(v, NAMES[v], clock.now - 60) for v in range(1, found + 1)]
                                   + [(v, NAMES[v], clock.now) for v in applied])
    for name, model, _ in migrations.INDEXES:
        assert name in migrations.existing_indexes(older.database, model._meta.table_name)
    expected = dict(original, **({c: None for c in ADDED_BY_V2} if found < 2 else {}))
    assert older.get_batch(batch) == expected
    assert [e["id"] for e in older.get_events_by_batch(batch)] == [event]
    older.heartbeat(batch)
    assert older.get_batch(batch)["heartbeat_at"] == clock.now


# -- SQLite files: upgrading each earlier version ------------------------------------------

UPGRADES = {
    # name: (builder, version found, migrations applied)
    "legacy": (legacy_schema.legacy, 0, [1, 2, 3, 4, 5, 6]),
    "legacy-without-indexes": (lambda p: legacy_schema.legacy(p, indexes=False), 0,
                               [1, 2, 3, 4, 5, 6]),
    "v1": (legacy_schema.version1, 1, [2, 3, 4, 5, 6]),
    "v2": (legacy_schema.version2, 2, [3, 4, 5, 6]),
    "v3": (legacy_schema.version3, 3, [4, 5, 6]),
}


@pytest.mark.sqlite_only
@pytest.mark.parametrize("kind", list(UPGRADES))
def test_upgrade_keeps_rows_and_reaches_fresh_schema(
        kind: str, tmp_path: Path, make_store: Any, clock: Any,
        fresh_schema: dict[str, dict[str, Any]]) -> None:
    build, found, applied = UPGRADES[kind]
    path = tmp_path / f"{kind}.db"
    build(str(path))
    before = rows_of(path)
    old_stamps = stamps(path) if found else []

    store = make_store(path, migrate=False)
    assert store.schema_version() == found
    assert store.pending_migrations() == [(v, NAMES[v]) for v in applied]
    assert store.migrate() == applied
    assert store.migrate() == []
    assert store.schema_version() == LATEST
    store.close()

    after = rows_of(path, columns={t: names for t, (names, _) in before.items()})
    for table in DATA_TABLES:
        assert after[table] == before[table], table
    if found < 2:
        added = rows_of(path, ("batches",), {"batches": ADDED_BY_V2})["batches"][1]
        assert added == [(("NoneType", None),) * 2] * len(before["batches"][1])
    assert schema_of(path) == fresh_schema
    assert stamps(path) == old_stamps + [(v, NAMES[v], clock.now) for v in applied]
    conn = _plain(path)
    assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    assert conn.execute("PRAGMA foreign_key_check").fetchall() == []
    conn.close()

    (backup,) = backups(path)
    assert backup == f"{path}.bak-v{found}"
    assert rows_of(backup) == before
    assert (stamps(backup) if found else []) == old_stamps


@pytest.mark.sqlite_only
@pytest.mark.parametrize("version", [1, 2])
def test_version_fixtures_are_what_the_migrations_made(
        version: int, tmp_path: Path, make_store: Any,
        monkeypatch: pytest.MonkeyPatch) -> None:
    built = tmp_path / f"v{version}.db"
    UPGRADES[f"v{version}"][0](str(built))
    migrated = tmp_path / "legacy.db"
    legacy_schema.legacy(str(migrated))
    monkeypatch.setattr(migrations, "MIGRATIONS", migrations.MIGRATIONS[:version])
    assert make_store(migrated, migrate=False).migrate() == list(range(1, version + 1))
    # The baseline rebuilds a legacy table straight to the model's shape, so the columns
    # later migrations add are there already (and those migrations skip them).
    later = {c for v, tables in migrations.ADDED_COLUMNS.items() if v > version
             for c in tables.get("events", ())}
    schema = schema_of(migrated)
    schema["events"]["columns"] = [c for c in schema["events"]["columns"] if c[0] not in later]
    assert schema == schema_of(built)


@pytest.mark.sqlite_only
def test_legacy_events_gain_foreign_keys(legacy_file: Path, make_store: Any) -> None:
    def events_fks() -> list[tuple[str, str]]:
        return [fk[:2] for fk in schema_of(legacy_file)["events"]["foreign_keys"]]

    assert events_fks() == []
    make_store(legacy_file).close()
    assert events_fks() == [("batch_id", "batches"), ("command_id", "commands"),
                            ("story_id", "stories")]


@pytest.mark.sqlite_only
def test_init_db_adopts_legacy_file(legacy_file: Path, module_api: Any) -> None:
    before = rows_of(legacy_file)
    module_api.init_db(str(legacy_file))
    assert module_api.schema_version() == LATEST
    assert module_api.migrate() == []
    assert rows_of(legacy_file, columns={t: n for t, (n, _) in before.items()}) == before
    assert [v for v, _, _ in stamps(legacy_file)] == list(NAMES)


@pytest.mark.sqlite_only
def test_store_works_after_adoption(legacy_file: Path, make_store: Any, clock: Any) -> None:
    store = make_store(legacy_file)
    batch = store.create_batch(4)
    assert batch == 8  # after the legacy ids
    story = store.create_story(batch, "new-1", "new")
    command = store.create_command(story, "dev-story", "impl")
    event = store.create_event(batch, story, command, "new", "new-1", "dev-story", "impl",
                               "start", "ünïcode")
    assert [e["id"] for e in store.get_events_by_batch(batch)] == [event]
    assert [e["id"] for e in store.get_events_by_batch(1)] == [1, 2, 3, 4]
    assert store.get_story_by_key("été-🚀", 1)["id"] == 2
    for bad in ((999, None, None), (batch, 999, None), (batch, story, 999)):
        with pytest.raises(IntegrityError) as err:
            store.create_event(*bad, "e", "k", "c", "t", "s", None)
        assert isinstance(err.value, sqlite3.IntegrityError)
        assert isinstance(err.value, peewee.IntegrityError)
    assert len(store.get_events(limit=100)) == 8


@pytest.mark.sqlite_only
def test_version3_file_gets_the_filter_pair_indexes(tmp_path: Path, make_store: Any) -> None:
    path = tmp_path / "v3.db"
    legacy_schema.version3(str(path))
    assert not set(migrations.V4_INDEXES) & migrations.existing_indexes(
        make_store(path, migrate=False).database, "events")
    store = make_store(path)
    assert store.applied_migrations == [4, 5, 6]
    assert set(migrations.V4_INDEXES) <= migrations.existing_indexes(store.database, "events")
    sql = store._statements.event_page(("batch_id", "status"), True).sql
    plan = store.database.execute_sql("EXPLAIN QUERY PLAN " + sql, (1, "s", 10, 5)).fetchall()
    assert "idx_events_batch_status" in plan[0][3]
    assert [e["id"] for e in store.page_events(batch_id=1, status="start")["events"]] == [2, 1]


@pytest.mark.sqlite_only
def test_schema_version_values(tmp_path: Path, make_store: Any) -> None:
    for name, (build, found, _) in UPGRADES.items():
        path = tmp_path / f"{name}.db"
        build(str(path))
        assert make_store(path, migrate=False).schema_version() == found
    assert make_store(tmp_path / "new.db").schema_version() == LATEST


@pytest.mark.sqlite_only
def test_each_migration_is_one_transaction(tmp_path: Path, make_store: Any,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "v2.db"
    legacy_schema.version2(str(path))
    schema = schema_of(path)

    def half_done(database: peewee.Database, unit: str) -> None:
        migrations.create_missing_indexes(database, migrations.V3_INDEXES[:2])
        raise RuntimeError("migration 3 failed half way")

    broken = (*migrations.MIGRATIONS[:2], migrations.Migration(3, NAMES[3], half_done))
    monkeypatch.setattr(migrations, "MIGRATIONS", broken)
    store = make_store(path, migrate=False)
    with pytest.raises(RuntimeError, match="half way"):
        store.migrate()
    assert store.schema_version() == 2
    store.close()
    assert schema_of(path) == schema
    monkeypatch.undo()
    assert make_store(path, migrate=False).migrate() == [3, 4, 5, 6]


@pytest.mark.sqlite_only
def test_migrations_applied_in_order_and_logged(legacy_file: Path, make_store: Any,
                                                caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="sprint_runner")
    make_store(legacy_file)
    applied = [r.getMessage() for r in caplog.records
               if r.name == "sprint_runner" and "applied migration" in r.getMessage()]
    assert [m.split()[2] for m in applied] == ["1", "2", "3", "4", "5", "6"]


# -- SQLite files: backups ----------------------------------------------------------------

@pytest.mark.sqlite_only
def test_backup_taken_and_logged(legacy_file: Path, make_store: Any,
                                 caplog: pytest.LogCaptureFixture) -> None:
    before = rows_of(legacy_file)
    caplog.set_level(logging.INFO, logger="sprint_runner")
    make_store(legacy_file).close()
    backup = f"{legacy_file}.bak-v0"
    assert backups(legacy_file) == [backup]
    conn = _plain(backup)
    assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    conn.close()
    assert tables == set(DATA_TABLES)  # the file as it was: no schema_migrations
    assert rows_of(backup) == before
    assert schema_of(backup)["events"]["foreign_keys"] == []
    logged = [r for r in caplog.records if r.name == "sprint_runner" and backup in r.getMessage()]
    assert len(logged) == 1
    assert logged[0].levelno >= logging.INFO
    assert str(legacy_file) in logged[0].getMessage()
    assert "version 0" in logged[0].getMessage()


@pytest.mark.sqlite_only
def test_second_backup_at_same_version_gets_suffix(legacy_file: Path, make_store: Any,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    make_store(legacy_file).close()
    first = Path(f"{legacy_file}.bak-v0")
    first_bytes = first.read_bytes()
    for suffix in ("", "-wal", "-shm"):
        Path(f"{legacy_file}{suffix}").unlink(missing_ok=True)
    legacy_schema.build(str(legacy_file), legacy_schema.LEGACY_TABLES,
                        "INSERT INTO batches (id, started_at, max_cycles) VALUES (40, 1, 2);")
    caplog.set_level(logging.INFO, logger="sprint_runner")
    make_store(legacy_file).close()
    second = f"{legacy_file}.bak-v0.1"
    assert backups(legacy_file) == [str(first), second]
    assert first.read_bytes() == first_bytes
    assert [r[0][1] for r in rows_of(second)["batches"][1]] == [40]
    assert any(second in r.getMessage() for r in caplog.records if r.name == "sprint_runner")


@pytest.mark.sqlite_only
def test_existing_backup_name_is_not_overwritten(legacy_file: Path, make_store: Any) -> None:
    taken = Path(f"{legacy_file}.bak-v0")
    taken.write_bytes(b"someone else's file")
    make_store(legacy_file).close()
    assert taken.read_bytes() == b"someone else's file"
    assert backups(legacy_file) == [str(taken), f"{taken}.1"]


@pytest.mark.sqlite_only
def test_backup_never_writes_through_planted_names(legacy_file: Path, make_store: Any,
                                                   tmp_path: Path) -> None:
    victim = tmp_path / "victim.db"
    conn = sqlite3.connect(victim)
    conn.executescript("CREATE TABLE precious (x); INSERT INTO precious VALUES ('mine');")
    conn.close()
    victim_bytes = victim.read_bytes()
    base = f"{legacy_file}.bak-v0"
    planted = [base, f"{base}-journal", f"{base}.1-journal", f"{base}.part-{os.getpid()}"]
    for name in planted:
        os.symlink(victim, name)
    before = rows_of(legacy_file)
    make_store(legacy_file).close()
    assert victim.read_bytes() == victim_bytes
    assert [os.readlink(name) for name in planted] == [str(victim)] * len(planted)
    copy = f"{base}.2"  # the first name nothing occupies: .1 has a (planted) journal beside it
    assert os.path.isfile(copy) and not os.path.islink(copy)
    assert os.stat(copy).st_mode & 0o777 == 0o600
    assert rows_of(copy) == before


@pytest.mark.sqlite_only
def test_no_backup_without_data(tmp_path: Path, make_store: Any) -> None:
    empty_legacy = tmp_path / "empty-legacy.db"
    legacy_schema.legacy(str(empty_legacy), data=False)
    make_store(empty_legacy).close()
    fresh = tmp_path / "fresh.db"
    make_store(fresh).close()
    assert backups(empty_legacy) == backups(fresh) == []
    assert [v for v, _, _ in stamps(empty_legacy)] == list(NAMES)


# -- SQLite files: what is refused, and left byte-identical --------------------------------

@pytest.mark.sqlite_only
def test_future_version_file_untouched(tmp_path: Path, make_store: Any,
                                       module_api: Any) -> None:
    path = tmp_path / "future.db"
    store = make_store(path)
    store.create_batch(3)
    with store.get_connection() as conn:
        conn.execute("INSERT INTO schema_migrations VALUES (?, ?, ?)", (1_000_000, "x", 0))
    store.close()
    assert not os.path.exists(f"{path}-wal")
    fragments = ("1000000", f"({LATEST})", "Nothing was written")
    check_refused_untouched(path, lambda: make_store(path), *fragments)
    check_refused_untouched(path, lambda: make_store(path, migrate=False), *fragments)
    check_refused_untouched(path, lambda: module_api.init_db(str(path)), *fragments)


BROKEN = {
    "events": (legacy_schema.BROKEN_EVENTS,
               ("events ids 10 (batch_id", "events ids 11 (story_id", "events ids 12 (command_id")),
    "stories": ("INSERT INTO stories VALUES (20, 55, 'k', 'e', 's', 1, NULL);"
                "INSERT INTO stories VALUES (21, 56, 'k', 'e', 's', 1, NULL);",
                ("stories ids 20, 21 (batch_id",)),
    "commands": ("INSERT INTO commands VALUES (30, 66, 'c', 't', 1, NULL, 'running', NULL);",
                 ("commands ids 30 (story_id",)),
    "background_tasks": ("INSERT INTO background_tasks VALUES (40, 77, 'k', 't', 1, NULL, 'x');",
                         ("background_tasks ids 40 (batch_id",)),
}


@pytest.mark.sqlite_only
@pytest.mark.parametrize("table", list(BROKEN))
def test_broken_legacy_refused_untouched(table: str, tmp_path: Path, make_store: Any,
                                         module_api: Any) -> None:
    script, fragments = BROKEN[table]
    path = tmp_path / "broken.db"
    legacy_schema.build(str(path), legacy_schema.LEGACY_TABLES, legacy_schema.LEGACY_INDEXES,
                        legacy_schema.DATA, script)
    check_refused_untouched(path, lambda: make_store(path), *fragments)
    check_refused_untouched(path, lambda: make_store(path, migrate=False), *fragments)
    check_refused_untouched(path, lambda: module_api.init_db(str(path)), *fragments)


@pytest.mark.sqlite_only
def test_legacy_with_some_tables_refused(tmp_path: Path, make_store: Any) -> None:
    path = tmp_path / "partial.db"
    kept = [s for s in legacy_schema.LEGACY_TABLES.split(";\n")
            if "batches (" in s or "stories (" in s]
    legacy_schema.build(str(path), ";\n".join(kept) + ";")
    check_refused_untouched(path, lambda: make_store(path),
                            "commands, events, background_tasks", "Nothing was written")


@pytest.mark.sqlite_only
@pytest.mark.parametrize("content", [b"not a database\n" * 200, b"hello", b"\x00" * 4096,
                                     b"SQLite format 3\x00" + b"\xff" * 200])
def test_non_database_file_refused(content: bytes, tmp_path: Path, make_store: Any) -> None:
    path = tmp_path / "notes.txt"
    path.write_bytes(content)
    check_refused_untouched(path, lambda: make_store(path), str(path))


@pytest.mark.sqlite_only
def test_legacy_lacking_a_column_refused(tmp_path: Path, make_store: Any) -> None:
    path = tmp_path / "old.db"
    legacy_schema.build(str(path), legacy_schema.LEGACY_TABLES.replace(
        ", output_summary TEXT", ""))
    check_refused_untouched(path, lambda: make_store(path), "commands lacks columns output_summary")


@pytest.mark.sqlite_only
def test_legacy_unknown_column_a_rebuild_would_drop_refused(tmp_path: Path,
                                                            make_store: Any) -> None:
    path = tmp_path / "old.db"
    legacy_schema.build(str(path), legacy_schema.LEGACY_TABLES.replace(
        "message TEXT);", "message TEXT, severity INTEGER);"))
    check_refused_untouched(path, lambda: make_store(path), "events has unknown columns severity")


@pytest.mark.sqlite_only
def test_legacy_with_extra_tables_adopted(tmp_path: Path, make_store: Any,
                                          fresh_schema: dict[str, dict[str, Any]]) -> None:
    path = tmp_path / "extra.db"
    legacy_schema.build(str(path), legacy_schema.LEGACY_TABLES, legacy_schema.LEGACY_INDEXES,
                        legacy_schema.DATA,
                        "CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT);"
                        "CREATE INDEX idx_notes_body ON notes(body);"
                        "INSERT INTO notes VALUES (1, 'keep me'), (2, NULL);")
    before = rows_of(path, (*DATA_TABLES, "notes"))
    make_store(path).close()
    assert rows_of(path, (*DATA_TABLES, "notes"),
                   {t: n for t, (n, _) in before.items()}) == before
    assert schema_of(path) == fresh_schema


# -- processes starting together ------------------------------------------------------------

def _init_together(path: str, barrier: Any, results: Any) -> None:
    """A child process: wait for the others, then open the file with init_db()."""
    try:
        barrier.wait(timeout=60)
        db.init_db(path)
        results.put(("ok", db.schema_version()))
        db.get_store().close()
    except BaseException as exc:  # noqa: BLE001 - reported to the parent, which fails
        results.put(("error", f"{type(exc).__name__}: {exc}"))


def _run_together(path: str | Path) -> list[tuple[str, object]]:
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(PROCESSES)
    results = ctx.Queue()
    procs = [ctx.Process(target=_init_together, args=(str(path), barrier, results))
             for _ in range(PROCESSES)]
    for proc in procs:
        proc.start()
    try:
        return [results.get(timeout=120) for _ in procs]
    finally:
        for proc in procs:
            proc.join(timeout=30)
            if proc.is_alive():  # pragma: no cover - only on a hang
                proc.kill()


def _one_row_per_version(path: Path) -> None:
    conn = _plain(path)
    counts = conn.execute("SELECT version, COUNT(*) FROM schema_migrations "
                          "GROUP BY version ORDER BY version").fetchall()
    conn.close()
    assert counts == [(v, 1) for v in NAMES]


@pytest.mark.slow
def test_processes_opening_a_fresh_database_together(db_target: str, make_store: Any,
                                                     request: pytest.FixtureRequest) -> None:
    assert _run_together(db_target) == [("ok", LATEST)] * PROCESSES
    store = make_store(migrate=False)
    assert [v for v, _, _ in _schema_rows(store)] == list(NAMES)
    if store.backend == "sqlite":
        _one_row_per_version(Path(db_target))
        assert schema_of(db_target) == request.getfixturevalue("fresh_schema")
        assert backups(db_target) == []


@pytest.mark.sqlite_only
@pytest.mark.slow
def test_processes_adopting_a_legacy_file_together(legacy_file: Path,
                                                   fresh_schema: dict[str, Any]) -> None:
    before = rows_of(legacy_file)
    assert _run_together(legacy_file) == [("ok", LATEST)] * PROCESSES
    _one_row_per_version(legacy_file)
    assert rows_of(legacy_file, columns={t: n for t, (n, _) in before.items()}) == before
    assert schema_of(legacy_file) == fresh_schema
    (backup,) = backups(legacy_file)
    assert backup == f"{legacy_file}.bak-v0"
    assert rows_of(backup) == before


# -- regressions: each of these failed before its fix ------------------------------------

def test_caller_arriving_during_fresh_creation_waits(make_store: Any, db_target: str,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    creator = make_store(migrate=False)
    outcome: list[object] = []

    def arrive() -> None:
        try:
            late = Store(db_target)
            outcome.append(late.schema_version())
            late.close()
        except Exception as exc:  # noqa: BLE001 - the assertion below reports it
            outcome.append(exc)

    create_table = migrations.create_table
    late = threading.Thread(target=arrive)

    def create_then_let_another_arrive(database: Any, model: Any, *args: Any) -> None:
        create_table(database, model, *args)
        if threading.current_thread() is threading.main_thread() and not late.is_alive() \
                and not outcome:
            late.start()
            late.join(timeout=1.0)  # returns early if the late caller gives up at once

    monkeypatch.setattr(migrations, "create_table", create_then_let_another_arrive)
    assert creator.migrate() == list(NAMES)
    late.join(timeout=60)
    assert outcome == [LATEST]
    assert [v for v, _, _ in _schema_rows(creator)] == list(NAMES)


@pytest.mark.sqlite_only
def test_one_backup_when_a_caller_arrives_between_migrations(
        legacy_file: Path, make_store: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    first = make_store(legacy_file, migrate=False)
    execute_sql = first.database.execute_sql
    arrived: list[int] = []

    def between_migrations(sql: str, *args: Any, **kwargs: Any) -> Any:
        result = execute_sql(sql, *args, **kwargs)
        if sql == "PRAGMA foreign_keys = 1" and not arrived:  # migration 1 committed
            arrived.append(1)
            make_store(legacy_file).close()  # another process opens the file now
        return result

    monkeypatch.setattr(first.database, "execute_sql", between_migrations)
    first.migrate()
    assert first.schema_version() == LATEST
    assert backups(legacy_file) == [f"{legacy_file}.bak-v0"]


_CRASH_AFTER_WRITING = """
import os, sys
from sprint_runner import Store
store = Store(sys.argv[1])
store.create_batch(1)
with store.get_connection() as conn:
    conn.execute("INSERT INTO schema_migrations VALUES (1000000, 'future', 0)")
os._exit(0)  # like kill -9: the WAL keeps its frames, nobody checkpoints
"""


@pytest.mark.sqlite_only
def test_refused_file_with_wal_frames_untouched(tmp_path: Path, make_store: Any) -> None:
    path = tmp_path / "future-crashed.db"
    subprocess.run([sys.executable, "-c", _CRASH_AFTER_WRITING, str(path)], check=True,
                   timeout=60, env=subprocess_env())
    main, wal = path.read_bytes(), Path(f"{path}-wal").read_bytes()
    assert wal
    with pytest.raises(SchemaError, match="1000000"):
        make_store(path)
    assert path.read_bytes() == main
    assert Path(f"{path}-wal").read_bytes() == wal


@pytest.mark.sqlite_only
def test_locked_legacy_file_reports_a_lock(legacy_file: Path, make_store: Any) -> None:
    holder = sqlite3.connect(legacy_file, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")  # the old module, mid-write
    started = time.monotonic()
    try:
        with pytest.raises(peewee.OperationalError, match="locked"):
            make_store(legacy_file, busy_timeout=0.2)
        assert time.monotonic() - started < 4
    finally:
        holder.execute("ROLLBACK")
        holder.close()


@pytest.mark.sqlite_only
def test_legacy_with_a_view_over_events_adopted(legacy_file: Path, make_store: Any) -> None:
    legacy_schema.build(str(legacy_file), "CREATE VIEW failed_events AS "
                                          "SELECT id FROM events WHERE status = 'fail';")
    make_store(legacy_file).close()
    conn = _plain(legacy_file)
    assert conn.execute("SELECT id FROM failed_events").fetchall() == [(4,)]
    conn.close()


@pytest.mark.sqlite_only
def test_legacy_trigger_on_events_kept(legacy_file: Path, make_store: Any) -> None:
    legacy_schema.build(str(legacy_file),
                        "CREATE TABLE audit (event_id INTEGER);"
                        "CREATE TRIGGER audit_events AFTER INSERT ON events "
                        "BEGIN INSERT INTO audit VALUES (new.id); END;")
    store = make_store(legacy_file)
    event = store.create_event(1, None, None, "e", "k", "c", "t", "s", None)
    store.close()
    conn = _plain(legacy_file)
    assert conn.execute("SELECT event_id FROM audit").fetchall() == [(event,)]
    conn.close()


@pytest.mark.sqlite_only
def test_store_reports_the_migrations_it_applied(legacy_file: Path, make_store: Any) -> None:
    assert make_store(legacy_file, migrate=False).applied_migrations == []
    assert make_store(legacy_file).applied_migrations == list(NAMES)
    assert make_store(legacy_file).applied_migrations == []
