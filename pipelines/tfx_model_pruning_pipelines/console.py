"""What a local run shows on the terminal: one line per component, its time and key figure.

TFX, Beam, TensorFlow and Google's client libraries log a great deal; by default all of it goes
to the run's log file and only this goes to the terminal:

    Run penguin-pruning-20261201T1829-ab12cd34 (log: runs/penguin-pruning/logs/penguin-pruning-....log)
      done  ImportExampleGen     1.1 s
      done  Trainer             12.9 s
      done  PruneComponent       2.4 s  sparsity 0.80 (1,193 of 4,675 weights non-zero)
      ...

``verbose`` leaves every library's output on the terminal as well (and the log file as it is).
Component starts and finishes are read from LocalDagRunner's own log lines; key figures and
progress from ``tfx_model_pruning.engine.progress``. Colour only on a terminal.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import time
from typing import IO, Optional

from tqdm import tqdm

from tfx_model_pruning.engine import progress

_STARTED = re.compile(r"Component (\S+) is running\.")
_FINISHED = re.compile(r"Component (\S+) is finished\.")
_COLOURS = {"red": "\033[31m", "green": "\033[32m", "bold": "\033[1m"}


def paint(text: str, colour: str, stream: IO) -> str:
    """``text`` in ``colour`` where ``stream`` is a terminal (and NO_COLOR is unset), else as is."""
    if not getattr(stream, "isatty", lambda: False)() or os.environ.get("NO_COLOR"):
        return text
    return f"{_COLOURS[colour]}{text}\033[0m"


def mute_terminal_handlers(saved: list) -> None:
    """Every handler that writes to the terminal (absl's, TensorFlow's, a library's basicConfig)
    stops at CRITICAL; ``saved`` collects ``(handler, level)`` to restore."""
    from absl import logging as absl_logging

    loggers = [
        logging.getLogger(),
        *(v for v in logging.root.manager.loggerDict.values() if isinstance(v, logging.Logger)),
    ]
    handlers = {id(h): h for logger in loggers for h in logger.handlers}
    handlers[id(absl_logging.get_absl_handler())] = absl_logging.get_absl_handler()
    for handler in handlers.values():
        if isinstance(handler, (logging.StreamHandler, absl_logging.ABSLHandler)) and not isinstance(
            handler, (logging.FileHandler, _StepLines)
        ):
            if handler.level < logging.CRITICAL:
                saved.append((handler, handler.level))
                handler.setLevel(logging.CRITICAL)


class _StepLines(logging.Handler):
    """Prints a line as each component finishes, with its time and its last key figure."""

    def __init__(self, stream: IO):
        super().__init__(logging.INFO)
        self.stream = stream
        self.running: Optional[str] = None
        self.started = 0.0
        self.figure = ""
        self.bar: Optional[tqdm] = None
        self.mute: Optional[list] = None  # where muted handlers are recorded, when muting

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if record.name == progress.LOGGER_NAME:
            if getattr(record, "figure", None):
                self.figure = record.figure
            elif getattr(record, "progress", None):
                self._advance(*record.progress)
            return
        started, finished = _STARTED.match(message), _FINISHED.match(message)
        if started:
            if self.mute is not None:
                mute_terminal_handlers(self.mute)  # handlers a library added since
            self.running, self.started, self.figure = started.group(1), time.monotonic(), ""
            if self.stream.isatty():
                self.stream.write(f"  ....  {self.running}\r")
                self.stream.flush()
        elif finished and finished.group(1) == self.running:
            self.line("done")

    def _advance(self, done: int, total: int) -> None:
        if self.bar is None:
            self.bar = tqdm(
                total=total,
                desc=f"        {self.running}",
                file=self.stream,
                leave=False,
                disable=not self.stream.isatty(),
            )
        self.bar.update(done - self.bar.n)

    def line(self, verdict: str) -> None:
        if self.running is None:
            return
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        elapsed = time.monotonic() - self.started
        refused = self.figure.startswith("NOT ") or self.figure.startswith("not ")
        text = f"  {verdict:<5} {self.running:<20} {elapsed:6.1f} s" + (f"  {self.figure}" if self.figure else "")
        colour = "red" if verdict != "done" or refused else None
        self.stream.write("\033[K" if self.stream.isatty() else "")
        self.stream.write((paint(text, colour, self.stream) if colour else text) + "\n")
        self.stream.flush()
        self.running = None


class RunConsole:
    """For the length of a local run: library output to ``log_path`` only, step lines to ``stream``.

    Example::

        with RunConsole(sys.stdout, "runs/penguin-pruning/logs/run-1.log", verbose=False):
            run_locally(pipeline, "run-1")
    """

    def __init__(self, stream: IO, log_path: str, verbose: bool = False, steps: bool = True):
        self.stream, self.log_path, self.verbose, self.steps = stream, log_path, verbose, steps
        self._saved: list = []
        self._saved_fds: Optional[tuple[int, int]] = None

    def __enter__(self) -> RunConsole:
        from absl import logging as absl_logging

        os.makedirs(os.path.dirname(self.log_path), exist_ok=True)
        root = logging.getLogger()
        self.file = logging.FileHandler(self.log_path, encoding="utf-8")
        self.file.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        self.step_lines = _StepLines(self.stream)
        if not self.verbose:
            self.step_lines.mute = self._saved
        self._saved = [(root, root.level)]
        self._absl_verbosity = absl_logging.get_verbosity()
        if not self.verbose:
            mute_terminal_handlers(self._saved)
            logging.captureWarnings(True)  # to the log file, not the terminal
        root.setLevel(logging.INFO)
        # Through absl's flag, not the logger: TensorFlow saves a model with the verbosity lowered
        # and then restores the flag's value, which would otherwise drop INFO for the rest of the run.
        absl_logging.set_verbosity(absl_logging.INFO)
        root.addHandler(self.file)
        logging.getLogger("py.warnings").addHandler(self.file)  # it may not propagate (see the CLI)
        if self.steps:
            root.addHandler(self.step_lines)
        if not self.verbose:
            self._redirect_descriptors()
        return self

    def _redirect_descriptors(self) -> None:
        """Points file descriptors 1 and 2 at the log file, so what writes to them directly (the
        wheel build and pip install TFX runs for a Trainer module file, a Trainer's own prints,
        TensorFlow's C++ logs) lands there too; the step lines keep a copy of the terminal."""
        try:
            terminal_fd = self.stream.fileno()
        except (AttributeError, OSError, ValueError):
            return  # not a real file (a test's capture): nothing to redirect
        if terminal_fd != 1:
            return
        sys.stdout.flush()
        sys.stderr.flush()
        self._saved_fds = (os.dup(1), os.dup(2))
        self.step_lines.stream = os.fdopen(os.dup(1), "w", buffering=1)
        log_fd = os.open(self.log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        os.dup2(log_fd, 1)
        os.dup2(log_fd, 2)
        os.close(log_fd)

    def _restore_descriptors(self) -> None:
        if self._saved_fds is None:
            return
        sys.stdout.flush()
        sys.stderr.flush()
        for target, saved in zip((1, 2), self._saved_fds, strict=True):
            os.dup2(saved, target)
            os.close(saved)
        self.step_lines.stream.close()
        self._saved_fds = None

    def __exit__(self, kind, value, traceback) -> None:
        if kind is not None:
            self.step_lines.line("FAIL")
        self._restore_descriptors()
        root = logging.getLogger()
        for handler in (self.file, self.step_lines):
            root.removeHandler(handler)
        logging.getLogger("py.warnings").removeHandler(self.file)
        self.file.close()
        for owner, level in self._saved:
            owner.setLevel(level)
        from absl import logging as absl_logging

        absl_logging.set_verbosity(self._absl_verbosity)
        if not self.verbose:
            logging.captureWarnings(False)


def log_path_for(output_dir: str, run_id: str) -> str:
    return os.path.join(output_dir, "logs", f"{run_id}.log")
