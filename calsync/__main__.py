"""Run calsync as ``python -m calsync``."""

import sys

from calsync.cli import main

sys.exit(main())
