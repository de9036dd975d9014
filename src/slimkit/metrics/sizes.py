"""On-disk size of an artifact, raw and zipped.

The zipped size is the figure TensorFlow Model Optimization quotes for pruned and clustered
models: the artifact put in a zip archive with DEFLATE at level 9. Zeros and repeated values
compress, so it shows what pruning and clustering buy when a model is shipped compressed.
"""

from __future__ import annotations

import io
import zipfile
from pathlib import Path


def file_size(path: str | Path) -> int:
    """Size of a file in bytes.

    Example:
        >>> from slimkit.metrics.sizes import file_size
        >>> file_size("model.onnx")  # doctest: +SKIP
        1204312
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"file_size: {path} does not exist or is not a regular file")
    return path.stat().st_size


def zipped_size(data: bytes | str | Path) -> int:
    """Size in bytes of a zip archive (DEFLATE, level 9) holding `data`, built in memory.

    `data` is either the bytes to archive or the path of a file (a `str` is read as a path).

    Example:
        >>> from slimkit.metrics import zipped_size
        >>> zipped_size(bytes(1_000_000)) < 5_000
        True
    """
    if isinstance(data, (bytes, bytearray, memoryview)):
        payload, arcname = bytes(data), "data"
    elif isinstance(data, (str, Path)):
        path = Path(data)
        if not path.is_file():
            raise FileNotFoundError(
                f"zipped_size: {path} does not exist; pass bytes or the path of a file"
            )
        payload, arcname = path.read_bytes(), path.name
    else:
        raise TypeError(
            f"zipped_size: data must be bytes, str or pathlib.Path, got {type(data).__name__}"
        )
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
        zf.writestr(arcname, payload)
    return buffer.getbuffer().nbytes
