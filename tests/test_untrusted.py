"""Agent text is untrusted: escaped for terminals, lossless JSON, guarded CSV (issue 10, 7-8)."""
from __future__ import annotations

import csv
import io
import json
import re
from typing import Any

import pytest
from conftest import run_cli

from sprint_runner import Store, cli
from sprint_runner.cli import main
from sprint_runner.untrusted import csv_cell, for_terminal, json_text

ESCAPES = "\x1b]0;pwned\x07\x1b[2J"
HOSTILE = (ESCAPES + "\x9b31m\x9d0;t\x9c" + "\u202egnp.exe" + "\x7f\r\tend"
           + "\nok: nothing needs attention")
# What no line printed for people may hold: C0 (tab, CR, ESC, BEL...), DEL, C1, bidi.
RAW = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069"
                 "\u2028\u2029]")
# What JSON may not pass through raw (it escapes C0 itself).
JSON_RAW = re.compile("[\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069\u2028\u2029]")


@pytest.mark.parametrize(("text", "shown"), [
    ("plain text", "plain text"),
    ("café ✓", "café ✓"),
    ("\x1b[2J", "\\x1b[2J"),
    ("a\nb\r\tc", "a\\x0ab\\x0d\\x09c"),
    ("\x00\x7f\x9b\x85", "\\x00\\x7f\\x9b\\x85"),
    ("\u202eabc\u2066\u200f\u061c\u2028", "\\u202eabc\\u2066\\u200f\\u061c\\u2028"),
    (42, "42"),
])
def test_for_terminal(text: object, shown: str) -> None:
    assert for_terminal(text) == shown
    assert for_terminal(for_terminal(text)) == shown  # escapes are plain printable text


def test_json_text_is_lossless_and_escaped() -> None:
    value = {"message": HOSTILE, "key\u202e": ["\x85", "\u2029", "ok"], "n": 5}
    text = json_text(value, indent=2)
    assert not JSON_RAW.search(text) and "\x1b" not in text
    assert "\\u009b" in text and "\\u202e" in text
    assert json.loads(text) == value


@pytest.mark.parametrize(("value", "cell"), [
    ("=HYPERLINK(\"http://x\")", "'=HYPERLINK(\"http://x\")"),
    ("+1", "'+1"), ("-2+3", "'-2+3"), ("@SUM(A1)", "'@SUM(A1)"), ("\tx", "'\tx"),
    ("\rx", "'\rx"), ("plain", "plain"), ("a=b", "a=b"), ("", ""), (7, 7), (None, None),
])
def test_csv_cell(value: object, cell: object) -> None:
    assert csv_cell(value) == cell


@pytest.fixture
def hostile(store: Store, clock: Any) -> dict[str, int]:
    """A running batch whose every text field holds control sequences and a forged line."""
    batch = store.create_batch(2)
    store.update_batch(batch, owner="host\x1b[31m:1\nforged owner")
    story = store.create_story(batch, "2a-1\x1b[2J\nok: nothing needs attention", "2a\x07")
    command = store.create_command(story, "dev\x9bstory", "task\u202e")
    store.update_command(command, output_summary=HOSTILE)
    done = store.create_command(story, "review", "t")
    store.update_command(done, status="failed", ended_at=clock.now, output_summary=HOSTILE)
    store.create_background_task(batch, "2a-1\x1b]0;x\x07", "refresh\x9d")
    store.create_event(batch, story, command, "2a\x1b", "k\x1b[1A\r", "c\x85", "t\x07",
                       "s\u202e", HOSTILE)
    store.create_event(batch, None, None, "=1+1", "@k", "-c", "t", "+s", "=HYPERLINK(\"x\")")
    clock.advance(30)
    return {"batch": batch, "story": story}


@pytest.mark.parametrize("argv", [
    ["status"], ["batches"], ["show", "BATCH"], ["events"], ["events", "--story", "@k"],
    ["tail", "--max-polls", "1"], ["doctor"], ["recover", "--dry-run", "--stale-after", "1"],
])
def test_people_output_shows_agent_text_escaped(capsys: pytest.CaptureFixture[str],
                                                db_target: str, hostile: dict[str, int],
                                                monkeypatch: pytest.MonkeyPatch,
                                                argv: list[str]) -> None:
    # Issue 10, item 7: the message retitled and cleared the operator's terminal, and
    # newlines in keys forged whole lines of output.
    monkeypatch.setattr(cli, "_sleep", lambda s: None)
    argv = [str(hostile["batch"]) if a == "BATCH" else a for a in argv]
    code, out, err = run_cli(capsys, "--db", db_target, *argv)
    assert code in (0, 1), err
    assert out
    assert not RAW.search(out), repr(RAW.search(out))
    assert not RAW.search(err)
    assert "ok: nothing needs attention" not in out.splitlines()
    assert "forged owner" not in [line.strip() for line in out.splitlines()]


@pytest.mark.parametrize("argv", [["status"], ["show", "BATCH"], ["events"], ["batches"],
                                  ["tail", "--max-polls", "1"], ["export"]])
def test_machine_output_is_lossless_and_escaped(capsys: pytest.CaptureFixture[str],
                                                db_target: str, store: Store,
                                                hostile: dict[str, int],
                                                monkeypatch: pytest.MonkeyPatch,
                                                argv: list[str]) -> None:
    # JSON passed C1 controls (U+009B, U+009D) and bidi overrides (U+202E) raw.
    monkeypatch.setattr(cli, "_sleep", lambda s: None)
    argv = [str(hostile["batch"]) if a == "BATCH" else a for a in argv]
    code, out, err = run_cli(capsys, "--db", db_target, "--json", *argv)
    assert (code, err) == (0, "")
    assert not JSON_RAW.search(out) and "\x1b" not in out
    documents = ([json.loads(line) for line in out.splitlines()]
                 if argv[0] in ("tail", "export") else [json.loads(out)])
    expected = "host\x1b[31m:1\nforged owner" if argv[0] == "batches" else HOSTILE
    assert expected in set(_strings(documents))


def _strings(value: object) -> Any:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)


def test_csv_export_guards_formula_cells(capsys: pytest.CaptureFixture[str], db_target: str,
                                         store: Store, hostile: dict[str, int],
                                         tmp_path: Any) -> None:
    # Issue 10, item 8: cells starting with =, +, -, @, tab or CR were written verbatim.
    path = tmp_path / "events.csv"
    code, _, err = run_cli(capsys, "--db", db_target, "export", "--format", "csv", "-o", str(path))
    assert (code, err) == (0, "")
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    formula = next(r for r in rows if r["message"].endswith("HYPERLINK(\"x\")"))
    assert formula["message"] == "'=HYPERLINK(\"x\")"
    assert (formula["epic_id"], formula["story_key"], formula["command"], formula["status"]) == (
        "'=1+1", "'@k", "'-c", "'+s")
    for row in rows:
        for value in row.values():
            assert not value.startswith(("=", "+", "-", "@", "\t", "\r")), value
    # Everything else is kept exactly: the hostile message survives the round trip.
    assert any(r["message"] == HOSTILE for r in rows)


def test_csv_export_to_a_terminal_is_escaped(db_target: str, hostile: dict[str, int],
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    out = Terminal()
    monkeypatch.setattr("sys.stdout", out)
    assert main(["--db", db_target, "export", "--format", "csv"]) == 0
    assert not RAW.search(out.getvalue().replace("\r\n", ""))
    assert "\\x1b]0;pwned\\x07" in out.getvalue()


def test_error_messages_are_escaped(capsys: pytest.CaptureFixture[str],
                                    db_target: str, store: Store) -> None:
    code, out, err = run_cli(capsys, "--db", db_target, "events", "--story", "k\x1b[2J\x9b")
    assert (code, out) == (0, "no events match\n")
    code, _, err = run_cli(capsys, "--db", db_target, "events", "--cursor", "\x1b[2J")
    assert code == 2 and err.count("\n") == 1 and "\x1b" not in err and "\\x1b" in err
