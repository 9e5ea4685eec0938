"""Imported first by the DDP scripts the tests run: when ``ARRCOC_TEST_WATCHDOG`` is set (seconds), a process
still running after that long prints the stack of every thread to stderr and exits (code 1), and so does every
process it started (another rank, DataLoader workers: forked or started after this import, they print too). A
hang then fails with its location in the test's message instead of a bare timeout.

Two timers: a Python one that first asks the child processes for their stacks (SIGUSR2, which ``faulthandler``
answers from C in every process that imported this module or was forked from one), then dumps its own and exits;
and ``faulthandler``'s own C timer a few seconds later, which needs no Python thread to run (a hang that holds the
GIL stops the first)."""

import faulthandler
import os
import signal
import sys
import threading
import time

_seconds = int(os.environ.get("ARRCOC_TEST_WATCHDOG", "0"))


def _children(pid: int) -> list[int]:
    """Every process below ``pid`` (Linux /proc; nothing elsewhere)."""
    found, todo = [], [pid]
    while todo:
        parent = todo.pop()
        try:
            tasks = os.listdir(f"/proc/{parent}/task")
        except OSError:
            continue
        for task in tasks:
            try:
                with open(f"/proc/{parent}/task/{task}/children") as f:
                    kids = [int(k) for k in f.read().split()]
            except OSError:
                continue
            found += kids
            todo += kids
    return found


def _expire() -> None:
    me = os.getpid()
    print(f"\nhang_watchdog: pid {me} still running after {_seconds} s; stacks follow", file=sys.stderr, flush=True)
    for child in _children(me):
        try:
            os.kill(child, signal.SIGUSR2)
        except OSError:
            pass
    time.sleep(2)  # let them print
    faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
    sys.stderr.flush()
    os._exit(1)


if _seconds > 0:
    faulthandler.register(signal.SIGUSR2, file=sys.stderr, all_threads=True)  # kept across fork
    timer = threading.Timer(_seconds, _expire)
    timer.daemon = True
    timer.start()
    faulthandler.dump_traceback_later(_seconds + 15, exit=True, file=sys.stderr)
