"""Per-dataset writer lock.

Lance rebases a stale *append* onto the newest version instead of refusing it, so a writer that
prepared its lineage (content hash of base + new rows) against version N could land as N+2 with a hash
that describes the wrong table. Writers of one dataset therefore take an exclusive flock on
`<catalog>/_locks/<name>.lock` while they read the base version and commit; Lance's own conflict check
still guards the commit itself. flock is released by the kernel when the holder dies (kill -9), so a
crashed writer never leaves the dataset locked. Readers never lock: Lance versions are immutable."""
from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from prefdata.errors import CommitConflict


@contextmanager
def writer_lock(lock_dir: Path, name: str, timeout_s: float) -> Iterator[None]:
    lock_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock_dir / f"{name}.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        deadline = time.monotonic() + timeout_s
        delay = 0.005
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise CommitConflict(name, f"another writer held the dataset for more than {timeout_s:g}s; "
                                               "retries exhausted") from None
                time.sleep(delay)
                delay = min(delay * 2, 0.1)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
