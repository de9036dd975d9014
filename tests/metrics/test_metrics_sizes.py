import numpy as np
import pytest

from slimkit.metrics import zipped_size
from slimkit.metrics.sizes import file_size

MB = 2**20


def test_zeros_zip_to_almost_nothing():
    assert zipped_size(bytes(MB)) < 5_000  # DEFLATE codes long runs of zeros in ~1 KB


def test_random_bytes_do_not_compress():
    data = np.random.default_rng(0).integers(0, 256, MB, dtype=np.uint8).tobytes()
    assert zipped_size(data) > 0.99 * MB  # random bytes: DEFLATE falls back to stored blocks


def test_path_and_bytes_give_the_same_archive_up_to_the_name(tmp_path):
    data = np.random.default_rng(1).normal(size=1000).astype(np.float32).tobytes()
    path = tmp_path / "weights.bin"
    path.write_bytes(data)
    assert file_size(path) == len(data)
    # The archive stores the entry name twice (local header and central directory):
    # "weights.bin" (11 chars) for the file, "data" (4) for bytes.
    assert zipped_size(path) - zipped_size(data) == 2 * (11 - 4)
    assert zipped_size(str(path)) == zipped_size(path)


def test_missing_file_and_wrong_type_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing.bin"):
        zipped_size(tmp_path / "nothing.bin")
    with pytest.raises(FileNotFoundError, match="nothing.bin"):
        file_size(tmp_path / "nothing.bin")
    with pytest.raises(TypeError, match="bytes, str or pathlib.Path, got int"):
        zipped_size(3)
