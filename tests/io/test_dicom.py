"""Reading one file: header records and HU decoding (fast and full paths)."""

from __future__ import annotations

import pathlib

import numpy as np
import pytest

from ctvol.errors import DicomReadError
from ctvol.io.dicom import decode_hu, read_header
from ctvol.testing import head_phantom, write_dicom_series


@pytest.mark.parametrize("ts", ["explicit", "implicit", "jpeg2000", "rle"])
def test_fast_path_equals_full_read(ts: str, tmp_path: pathlib.Path) -> None:
    hu = head_phantom((2, 32, 32), seed=11)
    (path, _) = write_dicom_series(tmp_path, hu, transfer_syntax=ts, shuffle_names=False)
    rec = read_header(str(path))
    assert rec.status == "pending" and rec.header is not None
    assert rec.header.pixel_options is not None  # the fast path applies
    fast, _ = decode_hu(str(path), header=rec.header)
    full, _ = decode_hu(str(path))
    np.testing.assert_array_equal(fast, full)
    np.testing.assert_array_equal(fast, hu[0])


def test_file_changed_after_header_pass_is_refused(tmp_path: pathlib.Path) -> None:
    (path, _) = write_dicom_series(tmp_path, head_phantom((2, 16, 16)), shuffle_names=False)
    header = read_header(str(path)).header
    with open(path, "ab") as fh:
        fh.write(b"\0" * 10)
    with pytest.raises(DicomReadError, match="changed size since the header pass"):
        decode_hu(str(path), header=header)


def test_corrupt_native_pixels_say_so(tmp_path: pathlib.Path) -> None:
    (path, _) = write_dicom_series(tmp_path, head_phantom((2, 16, 16)), shuffle_names=False)
    header = read_header(str(path)).header
    assert header is not None and header.pixel_options is not None
    header.pixel_options["rows"] = 64  # the header lies about the matrix
    with pytest.raises(DicomReadError, match="corrupt or disagree with Rows"):
        decode_hu(str(path), header=header)
