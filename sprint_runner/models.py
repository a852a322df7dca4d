"""The schema, written once: the deferred database and the five peewee models.

Every table, column, default, foreign key and index the store uses is declared
here. DDL for fresh databases, the columns migrations add and every cached
statement in :mod:`sprint_runner.store` are generated from these classes.
The models stay bound to the deferred ``SqliteDatabase(None)``; a store renders
their queries with its own database's SQL context, so stores on different files
or servers coexist in one process without rebinding anything global.
"""
from __future__ import annotations

from typing import Any

from peewee import (
    SQL,
    BigAutoField,
    BigIntegerField,
    CharField,
    ForeignKeyField,
    IntegerField,
    Model,
    SqliteDatabase,
    TextField,
)

database = SqliteDatabase(None)
"""The deferred database the models are declared against (never opened itself)."""

KEY_LENGTH = 255
"""Longest key-like text (keys, names, statuses): indexable as VARCHAR on MySQL."""

BATCH_STATUSES = ("running", "completed", "stopped", "error")
COMMAND_STATUSES = ("running", "completed", "failed")
BACKGROUND_TASK_STATUSES = ("running", "completed", "failed", "error")


def _key(**kwargs: Any) -> Any:
    return CharField(max_length=KEY_LENGTH, **kwargs)


def _status(default: str, choices: tuple[str, ...] | None = None) -> Any:
    return _key(
        default=default,
        constraints=[SQL(f"DEFAULT '{default}'")],
        choices=[(c, c) for c in choices] if choices else None,
    )


def _fk(model: type[Model], column: str, *, null: bool = False) -> Any:
    # index=False: indexes are declared below with the names the schema promises.
    options: dict[str, Any] = {"field": "id", "column_name": column, "null": null,
                               "index": False, "backref": "+"}
    return ForeignKeyField(model, **options)


class BaseModel(Model):
    class Meta:
        database = database
        legacy_table_names = False


class Batch(BaseModel):
    id = BigAutoField()
    started_at = BigIntegerField()
    ended_at = BigIntegerField(null=True)
    max_cycles = BigIntegerField()
    cycles_completed = BigIntegerField(null=True, default=0, constraints=[SQL("DEFAULT 0")])
    status = _status("running", BATCH_STATUSES)
    owner = TextField(null=True)
    heartbeat_at = BigIntegerField(null=True)

    class Meta:
        table_name = "batches"


class Story(BaseModel):
    id = BigAutoField()
    batch = _fk(Batch, "batch_id")
    story_key = _key()
    epic_id = _key()
    status = _status("in-progress")
    started_at = BigIntegerField()
    ended_at = BigIntegerField(null=True)

    class Meta:
        table_name = "stories"


class Command(BaseModel):
    id = BigAutoField()
    story = _fk(Story, "story_id")
    command = _key()
    task_id = _key()
    started_at = BigIntegerField()
    ended_at = BigIntegerField(null=True)
    status = _status("running", COMMAND_STATUSES)
    output_summary = TextField(null=True)

    class Meta:
        table_name = "commands"


class Event(BaseModel):
    id = BigAutoField()
    batch = _fk(Batch, "batch_id")
    story = _fk(Story, "story_id", null=True)
    command = _fk(Command, "command_id", null=True)
    timestamp = BigIntegerField()
    epic_id = _key()
    story_key = _key()
    # The column is "command" while the foreign key above owns that attribute name.
    command_name = _key(column_name="command")
    task_id = _key()
    status = _key()
    message = TextField(null=True)
    # Last, in the order migration 5 adds them, so every database has one column order.
    # "command:start", "batch:end", ...; "" for the events of callers that send none.
    event_type = _key(default="", constraints=[SQL("DEFAULT ''")])
    # A JSON object as text, exactly as stored (rows of adopted files keep their own).
    payload_json = TextField(null=True)

    class Meta:
        table_name = "events"


class BackgroundTask(BaseModel):
    id = BigAutoField()
    batch = _fk(Batch, "batch_id")
    story_key = _key()
    task_type = _key()
    spawned_at = BigIntegerField()
    completed_at = BigIntegerField(null=True)
    status = _status("running", BACKGROUND_TASK_STATUSES)

    class Meta:
        table_name = "background_tasks"


class Setting(BaseModel):
    """What a database records about itself beyond its schema (its ``time_unit``)."""

    name = _key(primary_key=True)
    value = TextField()

    class Meta:
        table_name = "sprint_runner_settings"


class SchemaMigration(BaseModel):
    version = IntegerField(primary_key=True)
    name = TextField(null=True)
    applied_at = BigIntegerField(null=True)

    class Meta:
        table_name = "schema_migrations"


MODELS: tuple[type[BaseModel], ...] = (Batch, Story, Command, Event, BackgroundTask)
"""The five data tables, parents before children (``schema_migrations`` and
``sprint_runner_settings`` stand apart)."""

TIMESTAMP_COLUMNS: dict[type[BaseModel], tuple[str, ...]] = {
    model: tuple(f.column_name for f in model._meta.sorted_fields
                 if f.column_name == "timestamp" or f.column_name.endswith("_at"))
    for model in MODELS}
"""Each data table's timestamps: all in the database's one unit."""

# (name, model, column names). The first eight names are the ones the old module's
# users know; the rest serve the store's own queries. Migrations refer to them by name.
INDEXES: tuple[tuple[str, type[BaseModel], tuple[str, ...]], ...] = (
    ("idx_stories_batch_id", Story, ("batch_id",)),
    ("idx_stories_story_key", Story, ("story_key",)),
    ("idx_stories_batch_key", Story, ("batch_id", "story_key")),
    ("idx_commands_story_id", Command, ("story_id",)),
    ("idx_events_batch_id", Event, ("batch_id",)),
    ("idx_events_timestamp", Event, ("timestamp",)),
    ("idx_background_tasks_batch_id", BackgroundTask, ("batch_id",)),
    ("idx_background_tasks_status", BackgroundTask, ("status",)),
    ("idx_batches_status", Batch, ("status",)),
    ("idx_events_batch_timestamp", Event, ("batch_id", "timestamp")),
    ("idx_background_tasks_batch_status", BackgroundTask, ("batch_id", "status", "spawned_at")),
    ("idx_events_story_id", Event, ("story_id",)),
    ("idx_events_command_id", Event, ("command_id",)),
    ("idx_events_story_key", Event, ("story_key",)),
    ("idx_events_command", Event, ("command",)),
    ("idx_events_status", Event, ("status",)),
    ("idx_batches_status_ended", Batch, ("status", "ended_at", "started_at")),
    # A page of one batch's events filtered by one more key, walked in id order.
    ("idx_events_batch_story_key", Event, ("batch_id", "story_key", "id")),
    ("idx_events_batch_command", Event, ("batch_id", "command", "id")),
    ("idx_events_batch_status", Event, ("batch_id", "status", "id")),
    ("idx_events_event_type", Event, ("event_type",)),
    ("idx_events_batch_event_type", Event, ("batch_id", "event_type", "id")),
)


def _declare_indexes() -> None:
    for name, model, columns in INDEXES:
        by_column = {f.column_name: f for f in model._meta.sorted_fields}
        model.add_index(*(by_column[c] for c in columns), name=name)


_declare_indexes()
