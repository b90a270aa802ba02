"""``python -m hgattn``: the ``hgattn`` command line."""

import sys

from .cli import main

sys.exit(main())
