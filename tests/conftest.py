"""Root conftest: the UML kernel-test harness (tests/uml/plugin.py) and its fixtures."""

import sys
from pathlib import Path

_TESTS_DIR = str(Path(__file__).resolve().parent)
if _TESTS_DIR not in sys.path:
    sys.path.insert(0, _TESTS_DIR)

from uml.plugin import *  # noqa: E402,F401,F403  (hooks and fixtures)
