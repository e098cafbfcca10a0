"""Progress of `prefdata train`'s phases before the training bar (making the tiny model, loading models, the
reference pass), on stderr: stdout carries only the final summary (or `--json`).

On a terminal a phase is a spinner (or a bar when it has a count) and leaves one `… done in N s` line; in a
log (stderr not a terminal, where rich draws no live display) it prints a line when it starts, one at each
quarter of a counted phase, and one when it ends, so a 65 s reference pass is never silent."""
from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator

from rich.console import Console


def _console() -> Console:
    return Console(stderr=True, highlight=False, soft_wrap=True)


def _took(t0: float) -> str:
    return f"{time.perf_counter() - t0:.1f} s"


@contextlib.contextmanager
def phase(label: str, *, enabled: bool = True) -> Iterator[None]:
    """A phase without a count (loading a model, making the tiny model)."""
    if not enabled:
        yield
        return
    con, t0 = _console(), time.perf_counter()
    if con.is_terminal:
        with con.status(label + " …", spinner="dots"):
            yield
    else:
        con.print(label + " …")
        yield
    con.print(f"{label}: done in {_took(t0)}")


class Counter:
    """`advance(n, total)` of a counted phase; `note` (set by the caller) replaces the closing line's count, e.g.
    when the phase found its work already done."""

    def __init__(self, advance: Callable[[int, int], None] | None = None):
        self.advance, self.note = advance, None

    def __call__(self, n: int, total: int) -> None:
        if self.advance is not None:
            self.advance(n, total)


@contextlib.contextmanager
def counted(label: str, unit: str, *, enabled: bool = True) -> Iterator[Counter]:
    """A phase with a count; yields a Counter called as `advance(n, total)` (total: the phase's whole count,
    known once it starts)."""
    if not enabled:
        yield Counter()
        return
    con, t0 = _console(), time.perf_counter()
    done = [0, 0]                          # count so far, total
    counter = Counter()
    if con.is_terminal:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
        with Progress(TextColumn(f"[bold]{label}"), BarColumn(), MofNCompleteColumn(), TextColumn(unit),
                      TimeRemainingColumn(), console=con, transient=True) as bar:
            task = bar.add_task(label, total=None)

            def advance(n: int, total: int) -> None:
                done[0], done[1] = done[0] + n, total
                bar.update(task, advance=n, total=total)
            counter.advance = advance
            yield counter
    else:
        con.print(label + " …")

        def advance(n: int, total: int) -> None:
            before = done[0]
            done[0], done[1] = done[0] + n, total
            if total and n and done[0] < total and 4 * done[0] // total > 4 * before // total:
                con.print(f"{label}: {done[0]}/{total} {unit} ({_took(t0)})")
        counter.advance = advance
        yield counter
    con.print(f"{label}: {counter.note or f'done, {done[0]} {unit}'} in {_took(t0)}")


def quiet_library_bars() -> None:
    """In a log (stderr not a terminal), turn off transformers' tqdm bars ("Loading weights", "Writing model
    shards"): there they are the only output left and say less than the phase lines above."""
    import sys

    if not sys.stderr.isatty():
        from transformers.utils import logging as hf_logging
        hf_logging.disable_progress_bar()
