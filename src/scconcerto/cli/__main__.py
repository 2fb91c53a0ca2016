"""``python -m scconcerto.cli``."""

import sys

from . import main

sys.exit(main())
