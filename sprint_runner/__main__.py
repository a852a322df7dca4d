"""``python -m sprint_runner``: the ``sprint-runner-db`` command line."""
from __future__ import annotations

from .cli import main

if __name__ == "__main__":
    raise SystemExit(main())
