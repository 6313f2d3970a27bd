"""``python -m runcov``: the runcov command line."""

from __future__ import annotations

import sys

from runcov.cli import main

if __name__ == "__main__":
    sys.exit(main())
