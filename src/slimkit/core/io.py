"""Atomic file writes: a file appears complete or not at all.

Example:
    >>> with atomic_path("model.onnx") as tmp:
    ...     torch.onnx.export(model, x, tmp)     # raise here and model.onnx is untouched
    >>> write_text("result.json", json.dumps(data))
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path


def _umask() -> int:
    """The process umask (reading it means setting it, so put it straight back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None):
    """Yield a temporary path beside ``path``; move it into place only if the block succeeds.

    Any exception, including KeyboardInterrupt, removes the temporary file and leaves
    ``path`` as it was.
    """
    path = Path(path)
    if not path.parent.exists():
        raise FileNotFoundError(f"the directory of {str(path)!r} does not exist")
    fd, tmp = tempfile.mkstemp(
        prefix=f".{path.name}.", suffix=suffix if suffix is not None else ".tmp", dir=path.parent
    )
    os.close(fd)
    try:
        yield Path(tmp)
        # mkstemp creates the file 0600; a plain open() would give 0666 less the umask, which
        # is what a serving container or another user needs to read the artifact.
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` atomically (UTF-8); returns the path."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)
