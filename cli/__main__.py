"""`python -m cli` runs the same entry point as the installed `recstack` script."""

import sys

from cli.app import main

sys.exit(main())
