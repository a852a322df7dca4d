"""Text from the database is agent output: show it to people and write it for machines safely.

An agent can print anything, and whatever it printed comes back out of the events,
summaries, keys and owners this package stores. Three outputs need three guards:

- a terminal obeys control sequences (``ESC ] 0 ; title BEL`` retitles it, ``ESC [ 2 J``
  clears it) and a newline inside a value forges a whole line of output, so every
  control and bidi-override character is shown as a visible ``\\xNN``/``\\uNNNN`` escape;
- JSON stays lossless, but the characters JSON would pass through raw (DEL, C1, bidi
  overrides, line and paragraph separators) are written as ``\\uNNNN`` escapes, so a
  viewer that prints the JSON shows them as text too;
- a spreadsheet runs a CSV cell that starts with ``=``, ``+``, ``-``, ``@``, tab or CR as
  a formula, so such a cell gets a leading ``'``.
"""
from __future__ import annotations

import json
import re

# C0 (newline and tab included), DEL, C1; the bidi embeddings, overrides, isolates and
# marks (Trojan Source, CVE-2021-42574); the line and paragraph separators.
_BIDI = "\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069\u2028\u2029"
_TERMINAL_UNSAFE = re.compile(f"[\x00-\x1f\x7f-\x9f{_BIDI}]")
# json.dumps already escapes C0 as \\u00NN; these are the ones it leaves raw.
_JSON_UNSAFE = re.compile(f"[\x7f-\x9f{_BIDI}]")
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def for_terminal(value: object) -> str:
    """Return ``value`` as text that stays on its line and sends a terminal no command."""
    text = value if isinstance(value, str) else str(value)
    if text.isascii() and text.isprintable():
        return text  # the common case, decided without a regular expression
    return _TERMINAL_UNSAFE.sub(_escape, text)


def json_text(value: object, *, indent: int | None = None) -> str:
    """Return ``value`` as JSON in which every control and bidi character is a ``\\u`` escape.

    Lossless: ``json.loads`` gives back exactly ``value``.
    """
    text = json.dumps(value, ensure_ascii=False, indent=indent)
    if text.isascii() and "\x7f" not in text:
        return text  # the common case, decided without a regular expression
    return _JSON_UNSAFE.sub(_json_escape, text)


def _json_escape(match: re.Match[str]) -> str:
    # Only inside string literals can these characters occur in JSON text, and there
    # a \\uNNNN escape means the same character.
    return f"\\u{ord(match.group()):04x}"


def csv_cell(value: object) -> object:
    """Return ``value`` as a CSV cell that a spreadsheet shows rather than runs."""
    if isinstance(value, str) and value.startswith(_FORMULA_START):
        return "'" + value
    return value
