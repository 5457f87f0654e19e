"""Progress bars that stay readable in log files.

``progress_bar(...)`` is ``tqdm`` with the same arguments, except when its output stream is not a
terminal (a log file, a pipe, CI): then it redraws at most every ``LOG_INTERVAL_S`` seconds
(``MONET_PROGRESS_INTERVAL`` overrides it), with a fixed width and ASCII characters, so a long job
leaves a few lines in its log instead of one carriage-return update per step::

    from monet_interp.progress import progress_bar

    for batch in progress_bar(batches, desc="stats", unit="batch"):
        ...
    # python job.py > log.txt 2>&1   ->  a handful of "stats:  40%|####      | 4/10 [...]" lines
"""

from __future__ import annotations

import os
import sys
from typing import Any

from tqdm.auto import tqdm

LOG_INTERVAL_S = 30.0  # seconds between redraws when the stream is not a terminal


def _is_terminal(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # closed or exotic streams
        return False


def log_interval() -> float:
    """Seconds between redraws of a bar written to a non-terminal (env ``MONET_PROGRESS_INTERVAL``)."""
    value = os.environ.get("MONET_PROGRESS_INTERVAL")
    if value is None:
        return LOG_INTERVAL_S
    try:
        seconds = float(value)
    except ValueError:
        raise ValueError(f"MONET_PROGRESS_INTERVAL must be a number of seconds, got {value!r}") from None
    if seconds < 0:
        raise ValueError(f"MONET_PROGRESS_INTERVAL must be >= 0, got {value!r}")
    return seconds


def progress_bar(iterable: Any = None, *args: Any, **kwargs: Any) -> tqdm:
    """``tqdm(iterable, *args, **kwargs)``; on a non-terminal stream, redraws at most every
    :func:`log_interval` seconds (``mininterval``/``maxinterval``), 100 columns, ASCII."""
    stream = kwargs.get("file") or sys.stderr
    if not kwargs.get("disable") and not _is_terminal(stream):
        interval = log_interval()
        kwargs["mininterval"] = max(float(kwargs.get("mininterval", 0.1)), interval)
        kwargs["maxinterval"] = max(float(kwargs.get("maxinterval", 10.0)), interval)
        kwargs.pop("dynamic_ncols", None)
        kwargs.setdefault("ncols", 100)
        kwargs.setdefault("ascii", True)
    return tqdm(iterable, *args, **kwargs)


__all__ = ["LOG_INTERVAL_S", "log_interval", "progress_bar"]
