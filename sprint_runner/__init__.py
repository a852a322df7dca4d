"""sprint-runner: the persistent state store of an AI-agent sprint orchestrator.

``Store`` is the facade; ``sprint_runner.db`` keeps the old module's functions
over one default store.
"""
from __future__ import annotations

from .clock import Clock, system_clock
from .errors import (
    ConnectionLost,
    IntegrityError,
    LockTimeout,
    SchemaError,
    StorageFull,
)
from .store import Store

__version__ = "0.1.0"

__all__ = [
    "Clock",
    "ConnectionLost",
    "IntegrityError",
    "LockTimeout",
    "SchemaError",
    "StorageFull",
    "Store",
    "__version__",
    "system_clock",
]
