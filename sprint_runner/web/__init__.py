"""The read-only web dashboard (issue 14): ``create_app(target)`` returns an aiohttp
application serving the pages ``/``, ``/batches``, ``/batches/{id}``, ``/events``, the
JSON API under ``/api/``, the Server-Sent Events stream ``/api/stream``, ``/healthz``
and ``/metrics``. Needs aiohttp (``pip install 'sprint-runner[web]'``);
``import sprint_runner`` does not load this package.
"""
from __future__ import annotations

from .app import (
    DEFAULT_HEARTBEAT,
    DEFAULT_POLL_INTERVAL,
    STATIC,
    create_app,
    is_loopback,
)

__all__ = ["DEFAULT_HEARTBEAT", "DEFAULT_POLL_INTERVAL", "STATIC", "create_app", "is_loopback"]
