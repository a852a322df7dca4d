"""The tail that never skips: every committed event exactly once, in id order.

A server hands out ids before commit, so an event can commit after one with a higher
id, and a poller that passed the higher id would never see it. The tail therefore
holds back at the first gap in the ids below the rows it read (a gap of the whole
table, not of the filtered rows: another batch's event is not a gap) until the gap
is settled: the backend's executor says no transaction that could fill it is still
open (:meth:`~sprint_runner.executor.Executor.gap_settled`), or ``gap_timeout``
seconds have passed since the gap was first seen (an id whose insert rolled back,
or that a failed insert burnt, never appears). After a gap is settled the rows are
read once more, so a writer that committed while the check ran is not skipped (the rows
returned always come from a read made after the gaps were listed).

SQLite commits one writer at a time, so ids appear in order there
(``ids_commit_in_order``) and the rows are returned as read. On a server the common
cases cost nothing extra either: no new rows, or ids consecutive from ``after_id``.
"""
from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .executor import Executor, Row
from .queries import Statements

logger = logging.getLogger("sprint_runner")

DEFAULT_GAP_TIMEOUT = 5.0
MAX_GAPS = 1024
"""How many gaps a store remembers (the oldest first seen are forgotten first)."""
GAPS_PER_POLL = 64
"""How many gaps one poll lists; rows above the last listed are left to the next poll."""


def check_gap_timeout(value: object) -> float:
    """Return ``value`` as seconds if it is a number >= 0 (infinity: never skip)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"gap_timeout must be a number of seconds, not {value!r}")
    if math.isnan(value) or value < 0:
        raise ValueError(f"gap_timeout must be >= 0 seconds, got {value!r}")
    return float(value)


@dataclass
class _Gap:
    last: int
    first_seen: float
    writers: frozenset[Any] | None
    """The transactions open just after the gap was first seen (None: unknown)."""
    warned: bool = False


class Tail:
    """One store's tail: the gaps it has seen (first id -> when, and who was open)."""

    def __init__(self, executor: Executor, statements: Statements, gap_timeout: float,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self.gap_timeout = gap_timeout
        self.monotonic = monotonic
        self._executor = executor
        self._statements = statements
        self._gaps: dict[int, _Gap] = {}
        self._lock = threading.Lock()

    def settle(self, rows: list[Row], after_id: int, read: Callable[[], list[Row]]) -> list[Row]:
        """Return the prefix of ``rows`` (read by ``read()``: ids > ``after_id``, in
        order) that no event still to commit can precede."""
        executor = self._executor
        if executor.ids_commit_in_order or not rows:
            return rows
        after = max(after_id, 0)  # ids start at 1
        top = rows[-1]["id"]
        if top - after == len(rows):
            return rows  # every id from after_id + 1 to the last: no gap
        statement = self._statements.tail_gaps
        gaps = executor.all(statement, statement.bind(
            {"after": after, "top": top, "limit": GAPS_PER_POLL}))
        # The gaps were read after the rows: an id that committed in between is no gap
        # any more but is not among the rows either. So whatever the gaps say, the rows
        # returned come from a read made after them (and after any check below).
        if not gaps:
            return [row for row in read() if row["id"] <= top]
        bound = top + 1 if len(gaps) < GAPS_PER_POLL else gaps[-1]["last"] + 1
        # Inside the caller's transaction a second read may not see later commits (a
        # snapshot), and a locking read would keep its locks: only time settles a gap.
        checkable = not executor.database.in_transaction()
        now = self.monotonic()
        writers_now: list[frozenset[Any] | None] = []  # listed once per poll, when needed

        def open_writers() -> frozenset[Any] | None:
            if not writers_now:
                writers_now.append(executor.open_writers() if checkable else None)
            return writers_now[0]

        for gap in gaps:
            first, last = gap["first"], gap["last"]
            seen = self._seen(first, last, now, open_writers)
            if now - seen.first_seen >= self.gap_timeout:
                if not seen.warned:
                    seen.warned = True
                    logger.warning("tail: ids %d..%d of %s did not commit within "
                                   "gap_timeout=%gs; going past them", first, last,
                                   executor.location, self.gap_timeout)
            elif not (checkable and executor.gap_settled(
                    self._statements.tail_gap_rows, first, last, seen.writers,
                    open_writers())):
                bound = first
                break
        return [row for row in read() if row["id"] < bound]

    def _seen(self, first: int, last: int, now: float,
              open_writers: Callable[[], frozenset[Any] | None]) -> _Gap:
        """Return the gap first..last as first seen: the earliest sighting of any part of
        it (a gap shrinks as its writers commit), with everyone open at any of them."""
        with self._lock:
            parts = [g for start, g in self._gaps.items() if start <= last and g.last >= first]
        if not parts:
            gap = _Gap(last, now, open_writers())
            with self._lock:
                self._gaps[first] = gap
                while len(self._gaps) > MAX_GAPS:
                    del self._gaps[next(iter(self._gaps))]
            return gap
        if len(parts) == 1:
            return parts[0]
        writers: frozenset[Any] | None = frozenset()
        for part in parts:
            writers = None if writers is None or part.writers is None else writers | part.writers
        return _Gap(last, min(p.first_seen for p in parts), writers,
                    warned=all(p.warned for p in parts))
