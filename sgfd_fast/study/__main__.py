"""``python -m sgfd_fast.study``."""

import sys

from .cli import main

sys.exit(main())
