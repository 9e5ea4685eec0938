"""Imported first by the DDP scripts the tests run: when ``ARRCOC_TEST_WATCHDOG`` is set (seconds), a process
still running after that long prints the stack of every thread to stderr and exits (code 1). A hang then fails
with its location in the test's message instead of a bare timeout."""

import faulthandler
import os
import sys

_seconds = int(os.environ.get("ARRCOC_TEST_WATCHDOG", "0"))
if _seconds > 0:
    faulthandler.dump_traceback_later(_seconds, exit=True, file=sys.stderr)
