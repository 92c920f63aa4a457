"""One benchmark figure per fresh process: its output, wall time and peak RSS."""

from __future__ import annotations

import os
import subprocess
import tempfile
import time
from dataclasses import dataclass


@dataclass(frozen=True)
class ChildRun:
    stdout: str
    seconds: float
    peak_rss_mib: float  # of that process alone (``wait4``), not the largest child so far


def run_child(command: list[str], ok_exit_codes: tuple[int, ...] = (0,)) -> ChildRun:
    """Runs ``command`` to its end; raises with the end of its stderr when it fails."""
    with tempfile.TemporaryFile("w+") as stdout, tempfile.TemporaryFile("w+") as stderr:
        start = time.perf_counter()
        process = subprocess.Popen(command, stdout=stdout, stderr=stderr, text=True)
        _, status, usage = os.wait4(process.pid, 0)
        seconds = time.perf_counter() - start
        stdout.seek(0)
        stderr.seek(0)
        if os.waitstatus_to_exitcode(status) not in ok_exit_codes:
            raise RuntimeError(f"{' '.join(command)} failed:\n{stderr.read()[-3000:]}")
        return ChildRun(stdout.read(), seconds, usage.ru_maxrss / 1024)
