"""Writing files so that a crash, a kill or a full disk never leaves a broken one under the final name.

Each file is written under a temporary name **in its destination directory** and renamed into place
(``os.replace``, atomic on one file system). A temporary file elsewhere (``/tmp`` on a node-local disk, a
run directory on a shared one) would make the final move a copy over the old file, which a kill or a full
disk can leave truncated. On failure the temporary file is removed and the previous file stays.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yields a temporary path beside ``path``; when the block ends without error the file written there
    is flushed to disk and renamed to ``path``, else removed (``path`` is left as it was)."""
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        yield tmp
        with open(tmp, "rb+") as f:  # what was written reaches the disk before the rename makes it visible
            os.fsync(f.fileno())
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text(path: str | os.PathLike, text: str) -> None:
    """``Path(path).write_text(text)``, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)
