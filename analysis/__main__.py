"""``python -m analysis`` is the ``prunescope`` command."""

import sys

from analysis.cli import main

sys.exit(main())
