"""`python -m shared.cli` runs the same entry point as the installed `recstack` script."""

import sys

from shared.cli.app import main

sys.exit(main())
