"""The one way kegnet_pl writes a file: never half-written under its final name.

The content goes to a hidden temporary file beside the target (``.<name>.<pid>.tmp``), is flushed and synced to
disk, then renamed over the target in one step. A crash, a full disk or an exception leaves the previous file
intact and removes the temporary one. Checkpoints, metrics, results, configs and manifests all go through here.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any


@contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "w") -> Iterator[IO[Any]]:
    """Open a temporary file for writing (``"w"`` text or ``"wb"`` bytes) that replaces ``path`` when the block
    ends without an exception; the parent folder is created if needed."""
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_write writes whole files: mode 'w' or 'wb', got {mode!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with tmp.open(mode, **({"encoding": "utf-8"} if mode == "w" else {})) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` atomically (see :func:`atomic_write`); return the path."""
    with atomic_write(path) as handle:
        handle.write(text)
    return Path(path)
