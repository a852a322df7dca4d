"""Fuzzing the command line: every input parses or is a usage error (exit 2, one line
on stderr); never a traceback (issue 15, part 5)."""
from __future__ import annotations

import argparse
import contextlib
import io
import os
import tempfile

from hypothesis import given, settings
from hypothesis import strategies as st

from sprint_runner.cli import Moment, main, parse_duration, parse_moment

FUZZ = settings(max_examples=300, deadline=None, derandomize=True, database=None)

AGES = st.from_regex(r"\A[ ]?-?[0-9]{0,25}(\.[0-9]{0,3})?[smhdwSMHDW]?([0-9]{1,3}[smhdw])?[ ]?\Z")
ISO = st.datetimes().map(lambda d: d.isoformat()) | st.from_regex(
    r"\A[0-9]{4}-[0-9]{2}-[0-9]{2}(T[0-9]{2}:[0-9]{2}(:[0-9]{2})?)?(Z|[+-][0-9]{2}:[0-9]{2})?\Z")
TIMES = st.text(max_size=30) | AGES | ISO


@FUZZ
@given(text=TIMES)
def test_parse_moment_parses_or_refuses_cleanly(text: str) -> None:
    try:
        moment = parse_moment(text)
    except argparse.ArgumentTypeError as exc:
        assert str(exc) and "\n" not in str(exc).strip()
        return
    assert isinstance(moment, Moment)
    assert moment.seconds >= 0


@FUZZ
@given(text=TIMES)
def test_parse_duration_parses_or_refuses_cleanly(text: str) -> None:
    try:
        seconds = parse_duration(text)
    except argparse.ArgumentTypeError as exc:
        assert str(exc) and "\n" not in str(exc).strip()
        return
    assert isinstance(seconds, int) and 0 <= seconds < 2**63


COMMANDS = ["init", "status", "batches", "show", "events", "tail", "export", "prune",
            "backup", "recover", "migrate", "doctor", "demo", "nope", ""]
OPTIONS = ["--json", "--batch", "--story", "--command", "--cursor", "--dry-run",
           "--event-type", "--events", "--events-only", "--format", "--interval", "--limit",
           "--max-polls", "--older-than", "--since", "--stale-after", "--status",
           "--time-unit", "--until", "-n", "--lines", "--adopt-foreign", "-x", "--", "-"]
VALUES = st.sampled_from(["1", "0", "-3", "10m", "2d", "1w", "jsonl", "csv", "ms", "s",
                          "2024-05-01T12:00", "99999999999999999999", "nan", "1e9", " "]) \
    | st.text(max_size=12)
TOKENS = st.lists(st.sampled_from(OPTIONS) | VALUES, max_size=6)


@settings(max_examples=300, deadline=None, derandomize=True, database=None)
@given(command=st.sampled_from(COMMANDS), tokens=TOKENS)
def test_main_parses_or_exits_2_with_one_line(command: str, tokens: list[str]) -> None:
    argv = [command, *tokens] if command else tokens
    here = os.getcwd()
    with tempfile.TemporaryDirectory() as folder:
        out, err = io.StringIO(), io.StringIO()
        os.chdir(folder)  # anything written by a relative path lands here
        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                try:
                    code = main(["--db", os.path.join(folder, "fuzz.db"), *argv])
                except SystemExit as exc:
                    code = exc.code if isinstance(exc.code, int) else 1
        finally:
            os.chdir(here)
    text = err.getvalue()
    assert "Traceback" not in text, text
    assert code in (0, 1, 2), (code, text)
    if code == 2:
        assert text.count("\n") == 1 and text.endswith("\n"), text
        assert text.startswith("sprint-runner-db") and ": error: " in text, text
