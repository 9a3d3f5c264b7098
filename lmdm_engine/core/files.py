"""Files written whole or not at all: the one atomic-write helper (outputs, reports, weights, caches, exports)."""

from __future__ import annotations

import contextlib
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
    block raises (Ctrl-C and SIGTERM included), so ``path`` is never left half written."""
    partial = partial_path(path)
    try:
        yield partial
        partial.replace(path)
    finally:
        with contextlib.suppress(OSError):  # e.g. a read-only folder: the error that matters is already raised
            partial.unlink(missing_ok=True)
