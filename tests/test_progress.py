"""Progress bars: a log file (non-terminal stream) gets a few redraws, not one per update; a real
terminal (a pseudo-terminal) keeps tqdm's live bar; the interval is configurable; a long job of
the library (generation with verbose=True) writes log-friendly output."""

from __future__ import annotations

import io
import os
import time

import pytest

from monet_interp import HookedMONET
from monet_interp.progress import LOG_INTERVAL_S, log_interval, progress_bar


def redraws(text: str) -> int:
    """Bar states written: tqdm separates redraws with carriage returns (and ends with a newline)."""
    return len([part for part in text.replace("\n", "\r").split("\r") if part.strip()])


def run_bar(stream, n: int = 60, pause: float = 0.01) -> None:
    for _ in progress_bar(range(n), file=stream, desc="job"):
        time.sleep(pause)


def test_log_file_gets_a_few_lines_and_a_terminal_a_live_bar(monkeypatch):
    monkeypatch.delenv("MONET_PROGRESS_INTERVAL", raising=False)
    log = io.StringIO()
    run_bar(log)  # 0.6 s of updates: tqdm alone would redraw every 0.1 s
    out = log.getvalue()
    assert redraws(out) <= 2 and "60/60" in out and "job" in out
    assert all(ord(c) < 128 for c in out)  # ASCII bar in logs
    master, slave = os.openpty()  # a real terminal device
    try:
        with os.fdopen(slave, "w", closefd=False) as tty:
            assert tty.isatty()
            run_bar(tty)
            tty.flush()
        seen = os.read(master, 1 << 16).decode("utf-8", "replace")
    finally:
        os.close(master)
        os.close(slave)
    assert redraws(seen) >= 4  # live updates on a terminal


def test_interval_from_the_environment(monkeypatch):
    monkeypatch.setenv("MONET_PROGRESS_INTERVAL", "0")
    assert log_interval() == 0.0
    log = io.StringIO()
    run_bar(log, n=30)
    assert redraws(log.getvalue()) >= 4  # interval 0: tqdm's own minimum interval applies
    monkeypatch.setenv("MONET_PROGRESS_INTERVAL", "soon")
    with pytest.raises(ValueError, match="MONET_PROGRESS_INTERVAL must be a number"):
        log_interval()
    assert list(progress_bar(range(3), disable=True, file=io.StringIO())) == [0, 1, 2]  # a disabled bar never reads it
    monkeypatch.setenv("MONET_PROGRESS_INTERVAL", "-1")
    with pytest.raises(ValueError, match="must be >= 0"):
        log_interval()
    monkeypatch.delenv("MONET_PROGRESS_INTERVAL")
    assert log_interval() == LOG_INTERVAL_S


def test_library_job_writes_log_friendly_bars(capsys, monkeypatch):
    monkeypatch.delenv("MONET_PROGRESS_INTERVAL", raising=False)
    model = HookedMONET.from_pretrained("monet-vd-tiny")
    model.generate("def main():", max_new_tokens=40, do_sample=False, stop_at_eos=False, verbose=True)
    err = capsys.readouterr().err  # pytest's capture is not a terminal, like a log file
    assert "generate" in err and "40/40" in err and redraws(err) <= 2
