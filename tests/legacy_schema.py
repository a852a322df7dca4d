"""SQL text for the fixture databases of tests/test_migrations.py (no binary files).

``LEGACY_*`` is exactly what the old module created (schema version 0); ``V1_*``,
``V2_*`` and ``V3_*`` are what earlier versions of this package left behind; ``DATA`` fills every
table with several rows, NULLs and unicode included.
"""
from __future__ import annotations

import sqlite3

LEGACY_TABLES = """
CREATE TABLE IF NOT EXISTS batches (id INTEGER PRIMARY KEY, started_at INTEGER NOT NULL, ended_at INTEGER, max_cycles INTEGER NOT NULL, cycles_completed INTEGER DEFAULT 0, status TEXT NOT NULL DEFAULT 'running');
CREATE TABLE IF NOT EXISTS stories (id INTEGER PRIMARY KEY, batch_id INTEGER NOT NULL, story_key TEXT NOT NULL, epic_id TEXT NOT NULL, status TEXT NOT NULL DEFAULT 'in-progress', started_at INTEGER NOT NULL, ended_at INTEGER, FOREIGN KEY (batch_id) REFERENCES batches(id));
CREATE TABLE IF NOT EXISTS commands (id INTEGER PRIMARY KEY, story_id INTEGER NOT NULL, command TEXT NOT NULL, task_id TEXT NOT NULL, started_at INTEGER NOT NULL, ended_at INTEGER, status TEXT NOT NULL DEFAULT 'running', output_summary TEXT, FOREIGN KEY (story_id) REFERENCES stories(id));
CREATE TABLE IF NOT EXISTS events (id INTEGER PRIMARY KEY, batch_id INTEGER NOT NULL, story_id INTEGER, command_id INTEGER, timestamp INTEGER NOT NULL, epic_id TEXT NOT NULL, story_key TEXT NOT NULL, command TEXT NOT NULL, task_id TEXT NOT NULL, status TEXT NOT NULL, message TEXT);
CREATE TABLE IF NOT EXISTS background_tasks (id INTEGER PRIMARY KEY, batch_id INTEGER NOT NULL, story_key TEXT NOT NULL, task_type TEXT NOT NULL, spawned_at INTEGER NOT NULL, completed_at INTEGER, status TEXT NOT NULL DEFAULT 'running', FOREIGN KEY (batch_id) REFERENCES batches(id));
"""

LEGACY_INDEXES = """
CREATE INDEX IF NOT EXISTS idx_stories_batch_id ON stories(batch_id);
CREATE INDEX IF NOT EXISTS idx_stories_story_key ON stories(story_key);
CREATE INDEX IF NOT EXISTS idx_commands_story_id ON commands(story_id);
CREATE INDEX IF NOT EXISTS idx_events_batch_id ON events(batch_id);
CREATE INDEX IF NOT EXISTS idx_events_timestamp ON events(timestamp);
CREATE INDEX IF NOT EXISTS idx_background_tasks_batch_id ON background_tasks(batch_id);
CREATE INDEX IF NOT EXISTS idx_background_tasks_status ON background_tasks(status);
"""

# Version 1 (baseline): the legacy tables, events with its three foreign keys, the
# baseline indexes, and the schema_migrations table stamped with version 1.
V1_TABLES = LEGACY_TABLES.replace(
    "task_id TEXT NOT NULL, status TEXT NOT NULL, message TEXT);",
    "task_id TEXT NOT NULL, status TEXT NOT NULL, message TEXT, "
    "FOREIGN KEY (batch_id) REFERENCES batches(id), "
    "FOREIGN KEY (story_id) REFERENCES stories(id), "
    "FOREIGN KEY (command_id) REFERENCES commands(id));",
)
V1_EXTRA_INDEXES = """
CREATE INDEX idx_stories_batch_key ON stories(batch_id, story_key);
CREATE INDEX idx_batches_status ON batches(status);
CREATE INDEX idx_events_batch_timestamp ON events(batch_id, timestamp);
CREATE INDEX idx_background_tasks_batch_status ON background_tasks(batch_id, status, spawned_at);
"""
V1_STAMP = """
CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, name TEXT, applied_at INTEGER);
INSERT INTO schema_migrations VALUES (1, 'baseline', 1690000000);
"""
V2_CHANGES = """
ALTER TABLE batches ADD COLUMN owner TEXT;
ALTER TABLE batches ADD COLUMN heartbeat_at INTEGER;
INSERT INTO schema_migrations VALUES (2, 'batch_owner_heartbeat', 1690000100);
"""
V3_CHANGES = """
CREATE INDEX idx_events_story_id ON events(story_id);
CREATE INDEX idx_events_command_id ON events(command_id);
CREATE INDEX idx_events_story_key ON events(story_key);
CREATE INDEX idx_events_command ON events(command);
CREATE INDEX idx_events_status ON events(status);
CREATE INDEX idx_batches_status_ended ON batches(status, ended_at, started_at);
INSERT INTO schema_migrations VALUES (3, 'event_history_indexes', 1690000200);
"""
V2_DATA = """
UPDATE batches SET owner = 'hôte-1:4242', heartbeat_at = 1700010500 WHERE id = 2;
UPDATE batches SET owner = '' WHERE id = 3;
"""

DATA = """
INSERT INTO batches (id, started_at, ended_at, max_cycles, cycles_completed, status) VALUES
    (1, 1700000000, 1700003600, 5, 5, 'completed'),
    (2, 1700010000, NULL, 3, 0, 'running'),
    (3, 1700020000, NULL, 10, NULL, 'stopped'),
    (7, 1700030000, 1700030001, 1, 1, 'error');
INSERT INTO stories VALUES (1, 1, '2a-1', '2a', 'done', 1700000010, 1700000500);
INSERT INTO stories VALUES (2, 1, 'été-🚀', 'épopée', 'in-progress', 1700000600, NULL);
INSERT INTO stories VALUES (3, 2, '日本語-1', '日本', 'blocked', 1700010010, NULL);
INSERT INTO stories VALUES (9, 7, '', 'x', 'in-progress', 1700030000, NULL);
INSERT INTO commands VALUES (1, 1, 'create-story', 'setup', 1700000020, 1700000100, 'completed', 'ok');
INSERT INTO commands VALUES (2, 1, 'dev-story', 'impl', 1700000110, NULL, 'running', NULL);
INSERT INTO commands VALUES (3, 2, 'code-review', 'review', 1700000700, 1700000800, 'failed', 'naïve ✗ «quoted» ''single''');
INSERT INTO commands VALUES (5, 3, 'dev-story', '🚀', 1700010020, NULL, 'running', '');
INSERT INTO events VALUES (1, 1, NULL, NULL, 1700000000, '2a', '', 'batch', 'start', 'start', 'batch started');
INSERT INTO events VALUES (2, 1, 1, NULL, 1700000010, '2a', '2a-1', 'create-story', 'setup', 'start', NULL);
INSERT INTO events VALUES (3, 1, 1, 1, 1700000020, '2a', '2a-1', 'create-story', 'setup', 'end', 'done ✓');
INSERT INTO events VALUES (4, 1, 2, 3, 1700000700, 'épopée', 'été-🚀', 'code-review', 'review', 'fail', 'ça ne marche pas');
INSERT INTO events VALUES (5, 2, NULL, NULL, 1700010000, '日本', '日本語-1', 'batch', 'start', 'start', '');
INSERT INTO events VALUES (8, 2, 3, 5, 1700010020, '日本', '日本語-1', 'dev-story', '🚀', 'progress', NULL);
INSERT INTO events VALUES (9, 7, NULL, NULL, 1700030000, 'x', '', 'batch', 'stop', 'error', 'multi
line');
INSERT INTO background_tasks VALUES (1, 1, '2a-1', 'review', 1700000030, 1700000090, 'completed');
INSERT INTO background_tasks VALUES (2, 1, 'été-🚀', 'lint', 1700000040, NULL, 'running');
INSERT INTO background_tasks VALUES (3, 2, '日本語-1', 'test', 1700010030, NULL, 'failed');
INSERT INTO background_tasks VALUES (4, 7, '', 'build', 1700030000, 1700030000, 'error');
"""

# Rows the new foreign keys reject: events 10 and 11 name a batch, a story, a command
# that do not exist (the old module never switched foreign keys on).
BROKEN_EVENTS = """
INSERT INTO events VALUES (10, 99, NULL, NULL, 1700040000, 'x', 'k', 'c', 't', 's', NULL);
INSERT INTO events VALUES (11, 1, 42, NULL, 1700040001, 'x', 'k', 'c', 't', 's', NULL);
INSERT INTO events VALUES (12, 1, 1, 77, 1700040002, 'x', 'k', 'c', 't', 's', NULL);
"""

DATA_TABLES = ("batches", "stories", "commands", "events", "background_tasks")


def build(path: str, *scripts: str) -> None:
    """Create the SQLite file ``path`` by running ``scripts`` on a plain connection."""
    conn = sqlite3.connect(path)
    try:
        for script in scripts:
            conn.executescript(script)
        conn.commit()
    finally:
        conn.close()


def legacy(path: str, *, indexes: bool = True, data: bool = True) -> None:
    """A file the old module made (version 0), with its indexes and rows if asked."""
    build(path, LEGACY_TABLES, *([LEGACY_INDEXES] if indexes else []), *([DATA] if data else []))


def version1(path: str, *, data: bool = True) -> None:
    """A file at this package's schema version 1."""
    build(path, V1_TABLES, LEGACY_INDEXES, V1_EXTRA_INDEXES, V1_STAMP, *([DATA] if data else []))


def version2(path: str, *, data: bool = True) -> None:
    """A file at this package's schema version 2."""
    build(path, V1_TABLES, LEGACY_INDEXES, V1_EXTRA_INDEXES, V1_STAMP, V2_CHANGES,
          *([DATA, V2_DATA] if data else []))


def version3(path: str, *, data: bool = True) -> None:
    """A file at this package's schema version 3."""
    build(path, V1_TABLES, LEGACY_INDEXES, V1_EXTRA_INDEXES, V1_STAMP, V2_CHANGES, V3_CHANGES,
          *([DATA, V2_DATA] if data else []))


# The later module's files (issue 12). Kind 2, the transition: the old tables plus
# events.payload_json added by ALTER TABLE (no event_type), the (batch_id, story_key)
# index, timestamps in milliseconds.
KIND2_CHANGES = """
ALTER TABLE events ADD COLUMN payload_json TEXT;
CREATE INDEX IF NOT EXISTS idx_stories_batch_key ON stories(batch_id, story_key);
"""
# Kind 3, made fresh by the later module: events with event_type and payload_json and a
# foreign key on batch_id only; the other tables as the old module made them.
KIND3_TABLES = LEGACY_TABLES.replace(
    "CREATE TABLE IF NOT EXISTS events (id INTEGER PRIMARY KEY, batch_id INTEGER NOT NULL, "
    "story_id INTEGER, command_id INTEGER, timestamp INTEGER NOT NULL, epic_id TEXT NOT NULL, "
    "story_key TEXT NOT NULL, command TEXT NOT NULL, task_id TEXT NOT NULL, "
    "status TEXT NOT NULL, message TEXT);",
    "CREATE TABLE IF NOT EXISTS events (id INTEGER PRIMARY KEY, batch_id INTEGER NOT NULL, "
    "story_id INTEGER, command_id INTEGER, timestamp INTEGER NOT NULL, event_type TEXT NOT NULL, "
    "epic_id TEXT NOT NULL, story_key TEXT NOT NULL, command TEXT NOT NULL, "
    "task_id TEXT NOT NULL, status TEXT NOT NULL, message TEXT, payload_json TEXT, "
    "FOREIGN KEY (batch_id) REFERENCES batches(id));",
)
assert KIND3_TABLES != LEGACY_TABLES
# Payload text kept byte for byte: spaces, key order and escapes as the later module wrote.
MS_DATA = """
INSERT INTO batches (id, started_at, ended_at, max_cycles, cycles_completed, status) VALUES
    (1, 1769253352553, 1769256952553, 3, 3, 'completed'),
    (2, 1769260000000, NULL, 2, 0, 'running');
INSERT INTO stories VALUES (1, 1, '5-sr-2', '5', 'done', 1769253352600, 1769253999000);
INSERT INTO stories VALUES (2, 2, 'été-🚀', 'é', 'in-progress', 1769260000100, NULL);
INSERT INTO commands VALUES (1, 1, 'dev-story', 'impl', 1769253352700, 1769253352900, 'completed', 'ok');
INSERT INTO commands VALUES (2, 2, 'code-review-2', 'review', 1769260000200, NULL, 'running', NULL);
INSERT INTO background_tasks VALUES (1, 1, '', 'context-refresh', 1769253353000, NULL, 'running');
"""
KIND2_EVENTS = """
INSERT INTO events VALUES (1, 1, NULL, NULL, 1769253352553, '', '', 'batch', '', 'start', 'batch started', NULL);
INSERT INTO events VALUES (2, 1, 1, 1, 1769253352700, '5', '5-sr-2', 'dev-story', 'impl', 'start', NULL, '{"a": 1, "z": [1, 2]}');
INSERT INTO events VALUES (5, 2, 2, 2, 1769260000300, 'é', 'été-🚀', 'code-review-2', 'review', 'progress', 'ligne', '{"texte":"ça \\u00e9","n":null}');
"""
KIND3_EVENTS = """
INSERT INTO events VALUES (1, 1, NULL, NULL, 1769253352553, 'batch:start', '', '', 'batch', '', 'start', 'batch started', NULL);
INSERT INTO events VALUES (2, 1, 1, 1, 1769253352700, 'command:start', '5', '5-sr-2', 'dev-story', 'impl', 'start', NULL, '{"a": 1, "z": [1, 2]}');
INSERT INTO events VALUES (3, 1, 1, 1, 1769253352900, 'command:end', '5', '5-sr-2', 'dev-story', 'impl', 'end', 'done', '{"ok":true}');
INSERT INTO events VALUES (6, 2, 2, 2, 1769260000300, 'command:progress', 'é', 'été-🚀', 'code-review-2', 'review', 'progress', 'ligne', '{"texte":"ça \\u00e9","n":null}');
"""
# A file whose timestamps mix seconds and milliseconds: refused, untouched.
MIXED_DATA = """
INSERT INTO batches (id, started_at, ended_at, max_cycles, cycles_completed, status) VALUES
    (1, 1700000000, 1700003600, 1, 1, 'completed'),
    (2, 1769260000000, NULL, 1, 0, 'running');
"""


def kind2(path: str, *, data: bool = True) -> None:
    """A file of the transition: payload_json added, no event_type, milliseconds."""
    build(path, LEGACY_TABLES, LEGACY_INDEXES, KIND2_CHANGES,
          *([MS_DATA, KIND2_EVENTS] if data else []))


def kind3(path: str, *, data: bool = True) -> None:
    """A file the later module made fresh: typed events, milliseconds."""
    build(path, KIND3_TABLES, LEGACY_INDEXES, *([MS_DATA, KIND3_EVENTS] if data else []))


def mixed_units(path: str) -> None:
    """A legacy file whose batches' timestamps are in seconds and in milliseconds."""
    build(path, LEGACY_TABLES, LEGACY_INDEXES, MIXED_DATA)
