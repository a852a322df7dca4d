"""Schema versions: the ordered migrations, fresh creation, and legacy adoption.

A database records every applied migration in ``schema_migrations``. A fresh
database is created straight from the models at the newest version and stamped
with every version. An older one gets the pending migrations, each in its own
transaction under the store's migration lock, so processes starting together
apply each migration exactly once. A SQLite file made by the old module (the
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
from dataclasses import dataclass

import peewee
from playhouse.migrate import SchemaMigrator

from .clock import Clock
from .connect import backend_of
from .errors import SchemaError
from .executor import _MIGRATION_LOCK, Executor
from .models import INDEXES, MODELS, BaseModel, SchemaMigration

logger = logging.getLogger("sprint_runner")

SCHEMA_TABLES: tuple[str, ...] = tuple(m._meta.table_name for m in MODELS)
_MIGRATIONS_TABLE = SchemaMigration._meta.table_name


@dataclass(frozen=True)
class Migration:
    """One schema change: its version, a name, and the function that applies it."""

    version: int
    name: str
    apply: Callable[[peewee.Database], None]


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
    """Create every table and index of the newest schema (a fresh database)."""
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
ADDED_COLUMNS: dict[int, dict[str, tuple[str, ...]]] = {
    2: {"batches": ("owner", "heartbeat_at")},
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
        "SELECT sql FROM sqlite_master WHERE type = 'index' AND tbl_name = ? "
        "AND sql IS NOT NULL", (table,)).fetchall()]
    present = {row[1] for row in database.execute_sql(f'PRAGMA table_info("{table}")')}
    columns = ", ".join(f'"{c}"' for c in legacy_columns(table) if c in present)
    create_table(database, model, temporary)
    database.execute_sql(f'INSERT INTO "{temporary}" ({columns}) SELECT {columns} FROM "{table}"')
    database.execute_sql(f'DROP TABLE "{table}"')
    database.execute_sql(f'ALTER TABLE "{temporary}" RENAME TO "{table}"')
    for sql in index_sql:
        database.execute_sql(sql)
    violations = database.execute_sql(f'PRAGMA foreign_key_check("{table}")').fetchall()
    if violations:
        raise SchemaError(f"rebuilding {table} found rows breaking foreign keys: {violations[:10]}")
    logger.info("rebuilt table %s with its foreign keys", table)


def _baseline(database: peewee.Database) -> None:
    """Version 1: adopt a legacy file (foreign keys everywhere, the baseline indexes)."""
    if backend_of(database) == "sqlite":
        for model in MODELS:
            table = model._meta.table_name
            if not _foreign_keys(model) <= _sqlite_declared_foreign_keys(database, table):
                _rebuild_sqlite_table(database, model)
    created = create_missing_indexes(database, V1_INDEXES)
    if created:
        logger.info("created indexes %s", ", ".join(created))


def _batch_owner_heartbeat(database: peewee.Database) -> None:
    """Version 2: ``batches.owner`` (host:pid) and ``batches.heartbeat_at``."""
    migrator = SchemaMigrator.from_database(database)
    for table, columns in ADDED_COLUMNS[2].items():
        model = _model(table)
        present = {c.name for c in database.get_columns(table)}
        by_column = {f.column_name: f for f in model._meta.sorted_fields}
        for column in columns:
            if column not in present:
                migrator.add_column(table, column, by_column[column]).run()


def _event_history_indexes(database: peewee.Database) -> None:
    """Version 3: indexes for paging and filtering the event history, for the
    foreign-key checks that deleting stories and commands makes, and for finding
    finished batches to prune."""
    create_missing_indexes(database, V3_INDEXES)


MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "baseline", _baseline),
    Migration(2, "batch_owner_heartbeat", _batch_owner_heartbeat),
    Migration(3, "event_history_indexes", _event_history_indexes),
)
LATEST_VERSION = MIGRATIONS[-1].version


# -- reading a database's state -----------------------------------------------------------

@dataclass(frozen=True)
class SchemaState:
    """What a database holds: its version (0 if unversioned) and what kind it is."""

    kind: str  # "fresh", "versioned" or "legacy"
    version: int
    has_data: bool = False


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


def inspect_sqlite_file(path: str) -> SchemaState:
    """Read a SQLite file's schema state on a plain connection that writes nothing.

    Raises :class:`SchemaError` for a file this package must refuse (a newer
    version, an unadoptable or broken legacy file), leaving it byte-identical:
    this runs before any pragma (WAL included) touches the file.
    """
    if not os.path.exists(path) or os.path.getsize(path) == 0:
        return SchemaState("fresh", 0)
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA query_only = 1")
        try:
            tables = {r[0] for r in conn.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table'")}
        except sqlite3.DatabaseError as exc:
            raise SchemaError(f"{path} is not a readable SQLite database: {exc}") from exc
        if _MIGRATIONS_TABLE in tables:
            row = conn.execute(f'SELECT MAX(version) FROM "{_MIGRATIONS_TABLE}"').fetchone()
            version = int(row[0] or 0)
            _refuse_future(version, path)
            return SchemaState("versioned", version,
                               _has_rows(tables, lambda sql: conn.execute(sql).fetchall()))
        if not tables & set(SCHEMA_TABLES):
            return SchemaState("fresh", 0)

        def columns(table: str) -> set[str]:
            return {r[1] for r in conn.execute(f'PRAGMA table_info("{table}")')}

        def fks(table: str) -> set[tuple[str, str]]:
            return {(r[3], r[2]) for r in conn.execute(f'PRAGMA foreign_key_list("{table}")')}

        has_data = _check_legacy(tables, columns, lambda sql: conn.execute(sql).fetchall(),
                                 path, fks)
        return SchemaState("legacy", 0, has_data)
    finally:
        conn.close()


def read_state(database: peewee.Database, location: str) -> SchemaState:
    """Read the schema state through the store's own connection (any backend)."""
    tables = set(database.get_tables())
    if _MIGRATIONS_TABLE in tables:
        table = _quoted(database, _MIGRATIONS_TABLE)
        row = database.execute_sql(f"SELECT MAX(version) FROM {table}").fetchone()
        version = int(row[0] or 0)
        _refuse_future(version, location)
        return SchemaState("versioned", version, _has_rows(
            tables, lambda sql: list(database.execute_sql(sql).fetchall()), database.quote))
    if not tables & set(SCHEMA_TABLES):
        return SchemaState("fresh", 0)
    if backend_of(database) != "sqlite":
        raise SchemaError(
            f"{location} has sprint-runner tables but no schema_migrations table; only "
            "unversioned SQLite files made by the old module are adopted. Nothing was written."
        )

    def columns(table: str) -> set[str]:
        return {c.name for c in database.get_columns(table)}

    has_data = _check_legacy(
        tables, columns, lambda sql: list(database.execute_sql(sql).fetchall()), location,
        lambda table: _sqlite_declared_foreign_keys(database, table))
    return SchemaState("legacy", 0, has_data)


def _quoted(database: peewee.Database, name: str) -> str:
    return name.join(database.quote)


# -- applying ----------------------------------------------------------------------------

def pending_migrations(state: SchemaState) -> list[Migration]:
    """Return the migrations a database in ``state`` still needs (all, if fresh)."""
    return [m for m in MIGRATIONS if m.version > state.version]


def _stamp(database: peewee.Database, migrations: Sequence[Migration], now: int) -> None:
    create_table(database, SchemaMigration)
    table = _quoted(database, _MIGRATIONS_TABLE)
    p = database.param
    for m in migrations:
        database.execute_sql(
            f"INSERT INTO {table} ({_quoted(database, 'version')}, {_quoted(database, 'name')}, "
            f"{_quoted(database, 'applied_at')}) VALUES ({p}, {p}, {p})",
            (m.version, m.name, now))


def _backup_path(path: str, version: int) -> str:
    base = f"{path}.bak-v{version}"
    candidate, n = base, 0
    while True:
        try:
            fd = os.open(candidate, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
        except FileExistsError:
            n += 1
            candidate = f"{base}.{n}"
            continue
        os.close(fd)
        return candidate


def backup_sqlite_file(path: str, version: int) -> str:
    """Copy a SQLite file to ``<path>.bak-v<version>`` (never overwriting); return the copy."""
    dest = _backup_path(path, version)
    source = sqlite3.connect(path)
    try:
        target = sqlite3.connect(dest)
        try:
            source.backup(target)
        finally:
            target.close()
    finally:
        source.close()
    logger.warning("backed up %s to %s before migrating it from schema version %d",
                   path, dest, version)
    return dest


def migrate(executor: Executor, clock: Clock) -> list[int]:
    """Bring the database to the newest schema; return the versions applied here.

    Each step takes the migration lock and re-reads the version, so concurrent
    callers never apply a migration twice. SQLite files holding data are backed
    up once, by the caller that finds them at the version it first saw.
    """
    database = executor.database
    sqlite = executor.backend == "sqlite"
    first = read_state(database, executor.location)
    applied: list[int] = []
    backed_up = False
    while True:
        if sqlite:
            # Must precede BEGIN: SQLite ignores this pragma inside a transaction.
            database.execute_sql("PRAGMA foreign_keys = 0")
        try:
            with executor.transaction(lock=_MIGRATION_LOCK):
                state = read_state(database, executor.location)
                todo = pending_migrations(state)
                if not todo:
                    break
                if state.kind == "fresh":
                    create_schema(database)
                    _stamp(database, todo, clock())
                    logger.info("created %s at schema version %d", executor.location,
                                LATEST_VERSION)
                    applied.extend(m.version for m in todo)
                    break
                step = todo[0]
                if (sqlite and state.has_data and not backed_up
                        and state.version == first.version):
                    backup_sqlite_file(str(database.database), state.version)
                    backed_up = True
                step.apply(database)
                if sqlite:
                    violations = database.execute_sql("PRAGMA foreign_key_check").fetchall()
                    if violations:
                        raise SchemaError(f"migration {step.version} ({step.name}) left rows "
                                          f"breaking foreign keys: {violations[:10]}")
                _stamp(database, [step], clock())
                logger.info("applied migration %d (%s) to %s", step.version, step.name,
                            executor.location)
                applied.append(step.version)
        finally:
            if sqlite:
                database.execute_sql("PRAGMA foreign_keys = 1")
    return applied


def schema_version(executor: Executor) -> int:
    """Return the database's schema version (0 for none or a legacy file)."""
    return read_state(executor.database, executor.location).version
