"""Files written whole or not at all: the one atomic-write helper (outputs, reports, weights, caches, exports)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

PARTIAL_SUFFIX = ".partial"


def partial_path(path: str | Path) -> Path:
    """Where ``path`` is written until it is complete: ``<path>.partial``, beside it."""
    path = Path(path)
    return path.with_name(path.name + PARTIAL_SUFFIX)


@contextlib.contextmanager
def atomic_write(path: str | Path) -> Iterator[Path]:
    """The partial path to write ``path`` to: it replaces ``path`` when the block ends and is removed when the
    block raises (Ctrl-C and SIGTERM included), so ``path`` is never left half written. Its data reaches the disk
    before the rename (fsync): a full disk otherwise shows only later, as an empty file where the output was."""
    partial = partial_path(path)
    try:
        yield partial
        _sync(partial)
        partial.replace(path)
    finally:
        with contextlib.suppress(OSError):  # e.g. a read-only folder: the error that matters is already raised
            partial.unlink(missing_ok=True)


def _sync(path: Path) -> None:
    """Flush a written file's data to its disk (raising what the disk reports, e.g. ENOSPC)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
