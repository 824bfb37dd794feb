"""``python -m sgfd_fast`` is ``python -m sgfd_fast.info``."""

import sys

from .info import main

sys.exit(main())
