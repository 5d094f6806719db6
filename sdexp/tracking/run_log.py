"""``run.log``: what the terminal showed for one run, and the traceback when the run failed.

    with run_log(run_dir / "run.log"):
        ...  # prints, warnings, progress bars and log records also go to run.log

A run that failed in a sweep of fifty is read afterwards, from its folder: the terminal has scrolled
away, and the one-line error in the study says what, not where. So for the length of the block:

- ``sys.stdout``/``sys.stderr`` are teed: the terminal still gets every byte, the file gets them
  as lines: ANSI colours stripped, a progress bar redrawn with ``\\r`` kept at its last state;
- logging handlers that write to those streams (Hydra's console, Optuna's, transformers') are
  pointed at the tees; a WARNING+ record that no handler would show reaches the file alone, and one
  that Python's last-resort handler would print is printed through the tee, as before. Each record
  lands once; a ``FileHandler`` already writing the same file (Hydra's ``<job>.log``: ``run.log``
  for run.py) is detached meanwhile;
- an exception leaving the block (any, KeyboardInterrupt included) ends the file with its traceback.

The original streams and handlers come back when the block ends, however it ends. Blocks nest: an
inner block on the same file does nothing (a sweep trial's block around ``train_run``'s); on another
file it tees the outer block's tees, so each file gets each line once. Python-level only: output a
C library writes straight to file descriptor 1 or 2 reaches the terminal, not the file.
"""

from __future__ import annotations

import logging
import re
import sys
import threading
import traceback
from pathlib import Path

RUN_LOG = "run.log"
ANSI = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)|\x1b[@-Z\\-_]")
_ACTIVE: list[RunLog] = []  # open blocks, innermost last


class _LineFile:
    """The log file, written in whole lines, one partial line per source stream, thread-safe."""

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(path, "a", encoding="utf-8", errors="replace")
        self._lock = threading.Lock()
        self._partial: dict[str, str] = {}

    def write(self, source: str, text: str) -> None:
        with self._lock:
            if self._file.closed:
                return
            lines = (self._partial.pop(source, "") + ANSI.sub("", text)).replace("\r\n", "\n").split("\n")
            self._partial[source] = _last_drawing(lines.pop())
            if lines:
                self._file.write("".join(_shown(line) + "\n" for line in lines))
                self._file.flush()  # a killed process still leaves what it printed

    def close(self, tail: str = "") -> None:
        with self._lock:
            if self._file.closed:
                return
            rest = "".join(_shown(p) + "\n" for p in self._partial.values() if _shown(p))
            self._file.write(rest + tail)
            self._file.close()


def _last_drawing(partial: str) -> str:
    """A partial line cut to what can still show (a bar redrawn for an hour stays one drawing)."""
    if "\r" not in partial:
        return partial
    return _shown(partial) + ("\r" if partial.endswith("\r") else "")


def _shown(line: str) -> str:
    """What a terminal line redrawn with carriage returns ends up showing: its last drawing."""
    drawings = [d for d in line.split("\r") if d]
    return drawings[-1] if drawings else ""


class _Tee:
    """A text stream that writes to ``stream`` and copies to the log file (until that is closed)."""

    def __init__(self, stream, log: _LineFile, source: str):
        self._stream, self._log, self._source = stream, log, source

    def write(self, text: str) -> int:
        written = self._stream.write(text)
        self._log.write(self._source, text)
        return written

    def writelines(self, lines) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        self._stream.flush()

    def isatty(self) -> bool:  # progress bars and colours behave as on the terminal itself
        return self._stream.isatty()

    def __getattr__(self, name: str):  # fileno, encoding, errors, buffer, ...: the real stream's
        return getattr(self._stream, name)


class _RecordHandler(logging.Handler):
    """WARNING+ handler on the root and on every non-propagating logger, for the records no other
    handler shows through the tees."""

    def __init__(self, owner: RunLog):
        super().__init__(logging.WARNING)
        self.owner = owner
        self.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            others = _other_handlers(record)
            if not others:  # Python would have used its last-resort handler: print as it would
                if _ACTIVE and self.owner is _ACTIVE[-1] and logging.lastResort is not None:
                    if record.levelno >= logging.lastResort.level:
                        sys.stderr.write(record.getMessage() + "\n")
                    return
                if logging.lastResort is not None:
                    return  # the innermost block prints it, through this block's tee
            tees = {id(t) for log in _ACTIVE for t in log.tees}
            if not any(id(getattr(h, "stream", None)) in tees for h in others):
                self.owner.file.write("log", self.format(record) + "\n")
        except Exception:  # logging must never take the run down
            self.handleError(record)


def _other_handlers(record: logging.LogRecord) -> list[logging.Handler]:
    """The handlers, ours aside, that ``Logger.callHandlers`` gives ``record`` to."""
    found, logger = [], logging.getLogger(record.name) if record.name != "root" else logging.root
    while logger is not None:
        found += [
            h for h in logger.handlers if not isinstance(h, _RecordHandler) and record.levelno >= h.level
        ]
        logger = logger.parent if logger.propagate else None
    return found


def _loggers() -> list[logging.Logger]:
    manager = logging.Logger.manager
    return [logging.root, *(lg for lg in manager.loggerDict.values() if isinstance(lg, logging.Logger))]


class RunLog:
    """The context manager behind ``run_log``; ``path`` is the log file."""

    def __init__(self, path: str | Path):
        self.path = Path(path).resolve()
        self.active = False  # False for an inner block on a file an outer block already writes
        self.tees: tuple[_Tee, ...] = ()

    def __enter__(self) -> RunLog:
        if any(log.path == self.path for log in _ACTIVE):
            return self
        self.file = _LineFile(self.path)
        self._streams = sys.stdout, sys.stderr
        self.tees = (_Tee(sys.stdout, self.file, "out"), _Tee(sys.stderr, self.file, "err"))
        self._swapped: list[tuple[logging.StreamHandler, object]] = []
        self._detached: list[tuple[logging.Logger, logging.Handler]] = []
        self._tops: list[logging.Logger] = []
        self._handler = _RecordHandler(self)
        try:
            self._redirect_logging()
            _ACTIVE.append(self)
            sys.stdout, sys.stderr = self.tees
        except BaseException:
            self._restore()
            self.file.close()
            raise
        self.active = True
        return self

    def _redirect_logging(self) -> None:
        for logger in _loggers():
            if logger is logging.root or not logger.propagate:  # the tops of the trees records climb
                logger.addHandler(self._handler)
                self._tops.append(logger)
            for handler in list(logger.handlers):
                if handler is logging.lastResort:  # it writes to whatever sys.stderr is
                    continue
                if isinstance(handler, logging.FileHandler):
                    if Path(handler.baseFilename).resolve() == self.path:
                        logger.removeHandler(handler)
                        self._detached.append((logger, handler))
                elif isinstance(handler, logging.StreamHandler):
                    for stream, tee in zip(self._streams, self.tees):
                        if handler.stream is stream:
                            self._swapped.append((handler, handler.setStream(tee)))

    def _restore(self) -> None:
        sys.stdout, sys.stderr = self._streams
        for logger in self._tops:
            logger.removeHandler(self._handler)
        for handler, stream in reversed(self._swapped):
            if handler.stream in self.tees:
                handler.setStream(stream)
        for logger, handler in self._detached:
            logger.addHandler(handler)
        if self in _ACTIVE:
            _ACTIVE.remove(self)

    def __exit__(self, kind, error, tb) -> None:
        if not self.active:
            return
        self.active = False
        try:
            self._restore()
        finally:
            failed = error is not None and not (isinstance(error, SystemExit) and error.code in (0, None))
            tail = "\n" + "".join(traceback.format_exception(kind, error, tb)) if failed else ""
            self.file.close(tail)


def run_log(path: str | Path) -> RunLog:
    """Tee this process's terminal output and log records into ``path`` for the ``with`` block;
    append the traceback of an exception that leaves it."""
    return RunLog(path)
