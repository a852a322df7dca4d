"""The store's notion of "now": whole Unix seconds from an injectable callable."""
from __future__ import annotations

import time
from collections.abc import Callable

Clock = Callable[[], int]
"""A callable returning the current time as whole Unix seconds."""


def system_clock() -> int:
    """Return the current Unix time in whole seconds, read at call time.

    ``time.time`` is looked up on every call, so freezegun's ``freeze_time``
    reaches every timestamp the store writes.
    """
    return int(time.time())
