"""Schema versions: the ordered migrations, fresh creation, and legacy adoption.

A database records every applied migration in ``schema_migrations``. A fresh
database is created straight from the models at the newest version and stamped
with every version. An older one gets the pending migrations in one transaction
that holds the store's migration lock, each migration in its own savepoint, so
processes starting together apply each migration exactly once and a failing one
leaves the database as it was. (MySQL commits every DDL statement; there the lock
still makes each migration run once.) A SQLite file made by the old module (the
five tables, no ``schema_migrations``) is version 0: migration 1 adopts it.

Adding a schema change: change the model, then append one ``Migration`` whose
function brings an older database to the same shape (add the column or index
the model now declares). Migrations must be idempotent where that is cheap
(create only what is missing), because the baseline rebuild of a legacy table
already produces the model's current shape for that table.
"""
from __future__ import annotations

import logging
import os
import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import peewee

from .clock import TIME_UNITS, Clock
from .connect import backend_of, connect_sqlite_readonly
from .errors import LockTimeout, SchemaError
from .executor import MIGRATION_LOCK, Executor
from .models import (
    INDEXES,
    MODELS,
    TIMESTAMP_COLUMNS,
    BaseModel,
    SchemaMigration,
    Setting,
)
from .sqlite_executor import is_busy, permission_problem, sqlite_integrity_problems
from .statements import Slot, compile_query

logger = logging.getLogger("sprint_runner")

SCHEMA_TABLES: tuple[str, ...] = tuple(m._meta.table_name for m in MODELS)
_MIGRATIONS_TABLE = SchemaMigration._meta.table_name
_SETTINGS_TABLE = Setting._meta.table_name
_OURS = frozenset({*SCHEMA_TABLES, _MIGRATIONS_TABLE, _SETTINGS_TABLE})
MS_FROM = 10**11
"""A timestamp at or above this is in milliseconds (10^11 seconds is the year 5138;
10^11 milliseconds is March 1973)."""


@dataclass(frozen=True)
class Migration:
    """One schema change: its version, a name, and the function that applies it."""

    version: int
    name: str
    apply: Callable[[peewee.Database, str], None]
    """Applies it to a database; the second argument is the time unit an empty database
    takes (only migration 6 needs it)."""


# -- DDL derived from the models ------------------------------------------------------

def _model(table: str) -> type[BaseModel]:
    for model in MODELS:
        if model._meta.table_name == table:
            return model
    raise KeyError(table)


def _renamed(model: type[BaseModel], table_name: str) -> type[BaseModel]:
    meta = type("Meta", (), {"table_name": table_name})
    return type(model.__name__ + "Rebuild", (model,), {"Meta": meta, "__module__": __name__})


def create_table(database: peewee.Database, model: type[BaseModel],
                 table_name: str | None = None) -> None:
    """Create ``model``'s table (under ``table_name`` if given) as the model declares it."""
    target = _renamed(model, table_name) if table_name else model
    # _create_table() returns the statement unexecuted, so MySQL options can follow it.
    manager = peewee.SchemaManager(target, database)
    ctx = manager._create_table(safe=table_name is None)  # type: ignore[attr-defined]
    if backend_of(database) == "mysql":
        ctx.literal(_mysql_table_options(database))
    database.execute(ctx)


def _mysql_table_options(database: peewee.Database) -> str:
    # A binary, NO PAD collation: keys compare exactly, case and trailing spaces
    # included, as they do on SQLite and PostgreSQL.
    (version,) = database.execute_sql("SELECT VERSION()").fetchone()
    if "mariadb" in version.lower():
        collation = "utf8mb4_nopad_bin"
    elif int(version.split(".")[0]) >= 8:
        collation = "utf8mb4_0900_bin"
    else:  # pragma: no cover - MySQL 5.7 has no NO PAD binary collation
        collation = "utf8mb4_bin"
    return f" ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE={collation}"


def existing_indexes(database: peewee.Database, table: str) -> set[str]:
    """Return the names of the indexes on ``table``."""
    return {index.name for index in database.get_indexes(table)}


def create_missing_indexes(database: peewee.Database, names: Sequence[str]) -> list[str]:
    """Create the model indexes named in ``names`` that the database lacks; return them."""
    created = []
    for name, model, _columns in INDEXES:
        if name not in names:
            continue
        if name in existing_indexes(database, model._meta.table_name):
            continue
        index = next(i for i in model._meta.indexes if getattr(i, "_name", None) == name)
        manager = peewee.SchemaManager(model, database)
        database.execute(manager._create_index(index, safe=False))  # type: ignore[attr-defined]
        created.append(name)
    return created


def create_schema(database: peewee.Database) -> None:
    """Create every table and index of the newest schema (a fresh database).

    Idempotent (only what is missing), so an interrupted creation can be finished.
    """
    create_table(database, SchemaMigration)
    create_table(database, Setting)
    for model in MODELS:
        create_table(database, model)
    create_missing_indexes(database, [name for name, _, _ in INDEXES])


# -- the migrations ----------------------------------------------------------------------

V1_INDEXES = (
    "idx_stories_batch_id", "idx_stories_story_key", "idx_stories_batch_key",
    "idx_commands_story_id", "idx_events_batch_id", "idx_events_timestamp",
    "idx_background_tasks_batch_id", "idx_background_tasks_status", "idx_batches_status",
    "idx_events_batch_timestamp", "idx_background_tasks_batch_status",
)
V3_INDEXES = (
    "idx_events_story_id", "idx_events_command_id", "idx_events_story_key",
    "idx_events_command", "idx_events_status", "idx_batches_status_ended",
)
V4_INDEXES = ("idx_events_batch_story_key", "idx_events_batch_command", "idx_events_batch_status")
V5_INDEXES = ("idx_events_event_type", "idx_events_batch_event_type")
ADDED_COLUMNS: dict[int, dict[str, tuple[str, ...]]] = {
    2: {"batches": ("owner", "heartbeat_at")},
    5: {"events": ("event_type", "payload_json")},
}
"""Columns each migration adds, so adoption knows which ones a legacy file lacks."""


def legacy_columns(table: str) -> list[str]:
    """Return the columns a table had in the old module (the model minus later additions)."""
    added = {c for changes in ADDED_COLUMNS.values() for c in changes.get(table, ())}
    return [f.column_name for f in _model(table)._meta.sorted_fields
            if f.column_name not in added]


def _foreign_keys(model: type[BaseModel]) -> set[tuple[str, str]]:
    return {(f.column_name, f.rel_model._meta.table_name)
            for f in model._meta.sorted_fields if isinstance(f, peewee.ForeignKeyField)}


def _sqlite_declared_foreign_keys(database: peewee.Database, table: str) -> set[tuple[str, str]]:
    rows = database.execute_sql(f'PRAGMA foreign_key_list("{table}")').fetchall()
    return {(row[3], row[2]) for row in rows}


def _rebuild_sqlite_table(database: peewee.Database, model: type[BaseModel]) -> None:
    """Rebuild one table to the model's shape (SQLite's documented 12-step way).

    Runs inside the migration's transaction, on a connection whose foreign keys
    were switched off before the transaction began (SQLite ignores the pragma
    inside one); ``PRAGMA foreign_key_check`` afterwards must come back empty.
    """
    table = model._meta.table_name
    temporary = table + "__rebuild"
    index_sql = [row[0] for row in database.execute_sql(
        "SELECT sql FROM sqlite_master WHERE type IN ('index', 'trigger') AND tbl_name = ? "
        "AND sql IS NOT NULL", (table,)).fetchall()]
    present = {row[1] for row in database.execute_sql(f'PRAGMA table_info("{table}")')}
    # Every column the model and the table share, later additions a file may already
    # hold included (the transition's payload_json): nothing the table holds is lost.
    columns = ", ".join(f'"{f.column_name}"' for f in model._meta.sorted_fields
                        if f.column_name in present)
    create_table(database, model, temporary)
    database.execute_sql(f'INSERT INTO "{temporary}" ({columns}) SELECT {columns} FROM "{table}"')
    database.execute_sql("PRAGMA legacy_alter_table = ON")
    try:
        database.execute_sql(f'DROP TABLE "{table}"')
        database.execute_sql(f'ALTER TABLE "{temporary}" RENAME TO "{table}"')
    finally:
        database.execute_sql("PRAGMA legacy_alter_table = OFF")
    for sql in index_sql:
        database.execute_sql(sql)
    violations = database.execute_sql(f'PRAGMA foreign_key_check("{table}")').fetchall()
    if violations:
        raise SchemaError(f"rebuilding {table} found rows breaking foreign keys: {violations[:10]}")
    logger.info("rebuilt table %s with its foreign keys", table)


def _baseline(database: peewee.Database, _unit: str) -> None:
    """Version 1: adopt a legacy file (foreign keys everywhere, the baseline indexes)."""
    if backend_of(database) == "sqlite":
        for model in MODELS:
            table = model._meta.table_name
            if not _foreign_keys(model) <= _sqlite_declared_foreign_keys(database, table):
                _rebuild_sqlite_table(database, model)
    created = create_missing_indexes(database, V1_INDEXES)
    if created:
        logger.info("created indexes %s", ", ".join(created))


def _add_missing_columns(database: peewee.Database, version: int) -> None:
    """Add the columns migration ``version`` adds that a table lacks, as the model
    declares them (a NOT NULL column with its DEFAULT, in one statement)."""
    for table, columns in ADDED_COLUMNS[version].items():
        model = _model(table)
        present = {c.name for c in database.get_columns(table)}
        by_column = {f.column_name: f for f in model._meta.sorted_fields}
        for column in columns:
            if column in present:
                continue
            ctx = database.get_sql_context()
            ctx.literal("ALTER TABLE ").sql(peewee.Entity(table)).literal(" ADD COLUMN ")
            ctx.sql(by_column[column].ddl(ctx))
            database.execute(ctx)


def _batch_owner_heartbeat(database: peewee.Database, _unit: str) -> None:
    """Version 2: ``batches.owner`` (host:pid) and ``batches.heartbeat_at``."""
    _add_missing_columns(database, 2)


def _event_history_indexes(database: peewee.Database, _unit: str) -> None:
    """Version 3: indexes for paging and filtering the event history, for the
    foreign-key checks that deleting stories and commands makes, and for finding
    finished batches to prune."""
    create_missing_indexes(database, V3_INDEXES)


def _event_filter_pair_indexes(database: peewee.Database, _unit: str) -> None:
    """Version 4: indexes for a page of one batch's events that also filters by story,
    command or status (issue 10, item 12): in id order within the batch and the key,
    where the batch's own index made such a page test every event of the batch."""
    create_missing_indexes(database, V4_INDEXES)


def _typed_events(database: peewee.Database, _unit: str) -> None:
    """Version 5: ``events.event_type`` (text, ``''`` by default) and
    ``events.payload_json`` (a JSON object as text), as the later module writes them;
    an index for ``event_type`` filters."""
    _add_missing_columns(database, 5)
    create_missing_indexes(database, V5_INDEXES)


def record_time_unit(database: peewee.Database, unit: str) -> None:
    """Record ``unit`` as the database's time unit."""
    insert = compile_query(database, Setting.insert(
        {Setting.name: Slot("name"), Setting.value: Slot("value")}), expect=("name", "value"))
    database.execute_sql(insert.sql, ("time_unit", unit))


def _time_unit(database: peewee.Database, unit: str) -> None:
    """Version 6: ``sprint_runner_settings``, recording the unit of the database's
    timestamps: the unit its rows are in (the later module wrote milliseconds), or
    the requested one for a database without any."""
    create_table(database, Setting)
    query, columns = _readers(database)
    found = _time_unit_of("the database", set(database.get_tables()), query, columns,
                          database.quote)
    if not query(f"SELECT 1 FROM {_SETTINGS_TABLE.join(database.quote)} "
                 "WHERE name = 'time_unit'"):
        record_time_unit(database, found or unit)


def _readers(database: peewee.Database) -> tuple[Callable[[str], list[tuple[Any, ...]]],
                                                 Callable[[str], set[str]]]:
    """Return a query runner and a table's column names, on the store's connection."""
    return (lambda sql: list(database.execute_sql(sql).fetchall()),
            lambda table: {c.name for c in database.get_columns(table)})


MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "baseline", _baseline),
    Migration(2, "batch_owner_heartbeat", _batch_owner_heartbeat),
    Migration(3, "event_history_indexes", _event_history_indexes),
    Migration(4, "event_filter_pair_indexes", _event_filter_pair_indexes),
    Migration(5, "typed_events", _typed_events),
    Migration(6, "time_unit", _time_unit),
)
LATEST_VERSION = MIGRATIONS[-1].version


# -- reading a database's state -----------------------------------------------------------

@dataclass(frozen=True)
class SchemaState:
    """What a database holds: its version (0 if unversioned) and what kind it is."""

    kind: str  # "fresh", "versioned" or "legacy"
    version: int
    has_data: bool = False
    tables: frozenset[str] = frozenset()  # every table it holds, sprint-runner's or not
    time_unit: str | None = None  # recorded, else read off its rows; None: no timestamps


def _refuse_future(version: int, location: str) -> None:
    if version > LATEST_VERSION:
        raise SchemaError(
            f"{location} has schema version {version}, newer than this sprint-runner "
            f"knows ({LATEST_VERSION}); upgrade sprint-runner to open it. Nothing was written."
        )


def _check_legacy(tables: set[str], columns: Callable[[str], set[str]],
                  query: Callable[[str], list[tuple[object, ...]]], location: str,
                  sqlite_fks: Callable[[str], set[tuple[str, str]]] | None) -> bool:
    """Check an unversioned database can be adopted; return whether it holds rows."""
    missing = [t for t in SCHEMA_TABLES if t not in tables]
    if missing:
        raise SchemaError(
            f"{location} has some sprint-runner tables but not {', '.join(missing)}; "
            "it is not a database this package can adopt. Nothing was written."
        )
    problems = []
    for table in SCHEMA_TABLES:
        present = columns(table)
        lacking = [c for c in legacy_columns(table) if c not in present]
        if lacking:
            problems.append(f"{table} lacks columns {', '.join(lacking)}")
        model = _model(table)
        extra = present - {f.column_name for f in model._meta.sorted_fields}
        needs_rebuild = sqlite_fks is not None and not _foreign_keys(model) <= sqlite_fks(table)
        if extra and needs_rebuild:
            problems.append(f"{table} has unknown columns {', '.join(sorted(extra))} "
                            "that rebuilding it would drop")
    if problems:
        raise SchemaError(f"cannot adopt {location}: {'; '.join(problems)}. Nothing was written.")
    broken = []
    for model in MODELS:
        table = model._meta.table_name
        for column, parent in sorted(_foreign_keys(model)):
            rows = query(
                f'SELECT c.id FROM "{table}" c WHERE c."{column}" IS NOT NULL AND NOT EXISTS '
                f'(SELECT 1 FROM "{parent}" p WHERE p.id = c."{column}") ORDER BY c.id LIMIT 21')
            if rows:
                ids = ", ".join(str(r[0]) for r in rows[:20]) + (", ..." if len(rows) > 20 else "")
                broken.append(f"{table} ids {ids} ({column} -> missing {parent} rows)")
    if broken:
        raise SchemaError(
            f"cannot adopt {location}: rows break foreign keys: {'; '.join(broken)}. "
            "Fix or delete those rows; the file was left unchanged."
        )
    return _has_rows(tables, query)


def _has_rows(tables: set[str], query: Callable[[str], list[tuple[object, ...]]],
              quote: str = '""') -> bool:
    return any(query(f"SELECT 1 FROM {t.join(quote)} LIMIT 1")
               for t in SCHEMA_TABLES if t in tables)


def _classify(location: str, tables: set[str], query: Callable[[str], list[tuple[Any, ...]]],
              columns: Callable[[str], set[str]],
              sqlite_fks: Callable[[str], set[tuple[str, str]]] | None,
              quote: str = '""') -> SchemaState:
    """Tell a fresh, versioned or legacy database apart; refuse what cannot be used."""
    state = _kind_of(location, tables, query, columns, sqlite_fks, quote)
    unit = None if state.kind == "fresh" else _time_unit_of(location, tables, query, columns,
                                                             quote)
    return replace(state, tables=frozenset(tables), time_unit=unit)


def _time_unit_of(location: str, tables: set[str], query: Callable[[str], list[tuple[Any, ...]]],
                  columns: Callable[[str], set[str]], quote: str) -> str | None:
    """Return the unit the database records, else the one its timestamps are in (None
    without any); refuse a database whose timestamps mix seconds and milliseconds."""
    if _SETTINGS_TABLE in tables:
        rows = query(f"SELECT value FROM {_SETTINGS_TABLE.join(quote)} "
                     "WHERE name = 'time_unit'")
        if rows and rows[0][0] in TIME_UNITS:
            return str(rows[0][0])
        if rows:
            raise SchemaError(f"{location} records an unknown time unit {rows[0][0]!r}; "
                              "expected 's' or 'ms'. Nothing was written.")
    low = high = None
    for model, names in TIMESTAMP_COLUMNS.items():
        table = model._meta.table_name
        if table not in tables:
            continue
        present = columns(table)
        for name in names:
            if name not in present:
                continue
            column, quoted = name.join(quote), table.join(quote)
            lo, hi = query(f"SELECT MIN({column}), MAX({column}) FROM {quoted} "
                           f"WHERE {column} > 0")[0]
            if lo is not None:
                low = lo if low is None else min(low, lo)
                high = hi if high is None else max(high, hi)
    if low is None or high is None:
        return None
    if low < MS_FROM <= high:
        raise SchemaError(
            f"{location} mixes timestamps in seconds and in milliseconds (from {low} to "
            f"{high}); it cannot be adopted without guessing which is which. Nothing was "
            "written.")
    return "ms" if high >= MS_FROM else "s"


def _kind_of(location: str, tables: set[str], query: Callable[[str], list[tuple[Any, ...]]],
             columns: Callable[[str], set[str]],
             sqlite_fks: Callable[[str], set[tuple[str, str]]] | None,
             quote: str = '""') -> SchemaState:
    stamped = _MIGRATIONS_TABLE in tables
    if stamped:
        row = query(f"SELECT MAX(version) FROM {_MIGRATIONS_TABLE.join(quote)}")[0]
        version = int(row[0] or 0)
        _refuse_future(version, location)
        if version:
            return SchemaState("versioned", version, _has_rows(tables, query, quote))
    if not tables & set(SCHEMA_TABLES):
        return SchemaState("fresh", 0)
    if sqlite_fks is None:
        if stamped:
            # MySQL commits each CREATE TABLE: an empty stamp table means a creation
            # was interrupted before its stamp, and finishing it is safe.
            return SchemaState("fresh", 0)
        raise SchemaError(
            f"{location} has sprint-runner tables but no schema_migrations table; only "
            "unversioned SQLite files made by the old module are adopted. Nothing was written."
        )
    return SchemaState("legacy", 0, _check_legacy(tables, columns, query, location, sqlite_fks))


_SQLITE_MAGIC = b"SQLite format 3\x00"


def _check_header(path: str) -> None:
    """Refuse a non-empty file that is not a whole SQLite database (garbage, zeros, cut
    short), reading only its first 100 bytes."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        header = f.read(100)
    refused = f"{path} is not a readable SQLite database: file is not a database"
    if not header.strip(b"\x00"):
        raise SchemaError(f"{refused} (its first {len(header)} bytes are all zero: zero-filled "
                          "or never written); nothing was written, restore a backup")
    if not header.startswith(_SQLITE_MAGIC[:len(header)]):
        raise SchemaError(refused)
    if len(header) < 100:
        raise SchemaError(f"{refused} (truncated: {size} bytes, shorter than a SQLite "
                          "header); nothing was written, restore a backup")
    page_size = int.from_bytes(header[16:18], "big")
    page_size = 65536 if page_size == 1 else page_size
    pages = int.from_bytes(header[28:32], "big")
    counted = header[24:28] == header[92:96]  # the header's page count is valid
    wal = path + "-wal"
    if counted and pages and not (os.path.exists(wal) and os.path.getsize(wal)) \
            and size < pages * page_size:
        raise SchemaError(
            f"{path} is not a readable SQLite database: truncated, {size} bytes where its "
            f"header says {pages} pages of {page_size} bytes ({pages * page_size}); nothing "
            "was written, restore a backup or salvage it with sqlite3's .recover")


def _refuse_foreign(path: str, state: SchemaState) -> None:
    others = sorted(t for t in state.tables if not t.startswith("sqlite_"))
    if state.kind == "fresh" and others and not set(others) & _OURS:
        shown = ", ".join(others[:5]) + (", ..." if len(others) > 5 else "")
        raise SchemaError(
            f"{path} is another program's SQLite database (tables {shown}; none of "
            "sprint-runner's); refusing to add tables to it. Nothing was written. Use a new "
            "file, or adopt it on purpose: Store(..., adopt_foreign=True) or "
            "`init --adopt-foreign`.")


def inspect_sqlite_file(path: str, busy_timeout: float = 30.0, *,
                        adopt_foreign: bool = True) -> SchemaState:
    """Read a SQLite file's schema state on a plain connection that writes nothing.

    Raises :class:`SchemaError` for a file this package must refuse (a newer
    version, an unadoptable or broken legacy file, a damaged file, a file it may not
    read, and unless ``adopt_foreign`` another program's database), leaving it
    byte-identical: this runs before any pragma (WAL included) touches the file.
    Raises :class:`LockTimeout` if another process keeps it locked past ``busy_timeout``.
    """
    if not os.path.exists(path) or os.path.getsize(path) == 0:
        return SchemaState("fresh", 0)
    denied = permission_problem(path, write=False)
    if denied is not None:
        raise SchemaError(f"cannot open {path}: {denied}. Nothing was written.")
    _check_header(path)
    conn = connect_sqlite_readonly(path, busy_timeout)
    try:
        try:
            tables = {r[0] for r in conn.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table'")}
        except sqlite3.DatabaseError as exc:
            if is_busy(exc):
                raise LockTimeout(f"{path} is locked by another process: {exc}") from exc
            denied = permission_problem(path, write=True)
            if denied is not None:  # a WAL file needs its -shm even to be read
                raise peewee.OperationalError(
                    f"cannot open {path} for writing: {denied} ({exc})") from exc
            raise SchemaError(f"{path} is not a readable SQLite database: {exc}") from exc
        state = _classify(
            path, tables, lambda sql: conn.execute(sql).fetchall(),
            lambda table: {r[1] for r in conn.execute(f'PRAGMA table_info("{table}")')},
            lambda table: {(r[3], r[2])
                           for r in conn.execute(f'PRAGMA foreign_key_list("{table}")')})
    except sqlite3.DatabaseError as exc:
        if is_busy(exc):
            raise LockTimeout(f"{path} is locked by another process: {exc}") from exc
        raise SchemaError(f"{path} is not a readable SQLite database: {exc}") from exc
    finally:
        conn.close()
    if not adopt_foreign:
        _refuse_foreign(path, state)
    return state


def check_sqlite_file(path: str, busy_timeout: float = 30.0) -> list[str]:
    """Run SQLite's integrity checks on a read-only connection: nothing is written."""
    conn = connect_sqlite_readonly(path, busy_timeout)
    try:
        return sqlite_integrity_problems(lambda sql: conn.execute(sql).fetchall())
    finally:
        conn.close()


def schema_problems(state: SchemaState) -> list[str]:
    """Return what is wrong with the schema of a database in ``state`` (pending migrations)."""
    pending = pending_migrations(state)
    if not pending:
        return []
    return [f"schema is at version {state.version}, {len(pending)} migration(s) pending"]


def read_state(database: peewee.Database, location: str) -> SchemaState:
    """Read the schema state through the store's own connection (any backend)."""
    sqlite = backend_of(database) == "sqlite"
    query, columns = _readers(database)
    return _classify(
        location, set(database.get_tables()), query, columns,
        (lambda table: _sqlite_declared_foreign_keys(database, table)) if sqlite else None,
        database.quote)


# -- applying ----------------------------------------------------------------------------

def pending_migrations(state: SchemaState) -> list[Migration]:
    """Return the migrations a database in ``state`` still needs (all, if fresh)."""
    return [m for m in MIGRATIONS if m.version > state.version]


def _stamp(database: peewee.Database, migrations: Sequence[Migration], now: int) -> None:
    create_table(database, SchemaMigration)
    insert = compile_query(database, SchemaMigration.insert({
        SchemaMigration.version: Slot("version"), SchemaMigration.name: Slot("name"),
        SchemaMigration.applied_at: Slot("applied_at")}),
        expect=("version", "name", "applied_at"))
    for m in migrations:
        database.execute_sql(insert.sql, (m.version, m.name, now))


def migrate(executor: Executor, clock: Clock, time_unit: str = "s") -> list[int]:
    """Bring the database to the newest schema; return the versions applied here.

    The state is read only under the migration lock, so concurrent callers never
    apply a migration twice; a SQLite file holding data is backed up once, first.
    A new database (or one without timestamps) records ``time_unit``.
    """
    database = executor.database
    executor.connect()  # through the executor, which retries a busy first connection
    applied: list[int] = []
    with executor.migration_session(), executor.transaction(lock=MIGRATION_LOCK):
        state = read_state(database, executor.location)
        todo = pending_migrations(state)
        if not todo:
            return applied
        if state.kind == "fresh":
            create_schema(database)
            record_time_unit(database, time_unit)
            _stamp(database, todo, clock())
            logger.info("created %s at schema version %d", executor.location, LATEST_VERSION)
            return [m.version for m in todo]
        executor.before_migrating(state.version, state.has_data)
        for step in todo:
            with executor.migration_step():
                step.apply(database, time_unit)
                violations = executor.foreign_key_violations()
                if violations:
                    raise SchemaError(f"migration {step.version} ({step.name}) left rows "
                                      f"breaking foreign keys: {violations[:10]}")
                _stamp(database, [step], clock())
            logger.info("applied migration %d (%s) to %s", step.version, step.name,
                        executor.location)
            applied.append(step.version)
    return applied


def schema_version(executor: Executor) -> int:
    """Return the database's schema version (0 for none or a legacy file)."""
    return read_state(executor.database, executor.location).version
