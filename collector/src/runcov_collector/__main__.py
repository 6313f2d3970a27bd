"""``python -m runcov_collector``: the same as the ``runcov-collector`` command."""

from __future__ import annotations

import sys

from runcov_collector.cli import main

if __name__ == "__main__":
    sys.exit(main())
