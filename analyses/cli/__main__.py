"""``python -m monet_interp.analyses.cli``."""

import sys

from monet_interp.analyses.cli import main

sys.exit(main())
