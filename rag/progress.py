"""One line on standard error per slow step of a first run, so a user sees what is being built and why."""

from __future__ import annotations

import sys
import time


def step(message: str) -> None:
    """Say what is starting (building a model once per machine, measuring runtimes), with the time of day.

    Plain lines, not a progress bar: they also read well in CI logs and in `run.sh`'s output."""
    sys.stderr.write(f"[{time.strftime('%H:%M:%S')}] {message}\n")
    sys.stderr.flush()
