"""`python -m ipvsync` entry point."""

import sys

from ipvsync.cli import main

sys.exit(main())
