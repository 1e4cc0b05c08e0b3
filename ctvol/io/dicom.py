"""DICOM files: find them, read their headers, decode their pixels to HU.

Grouping headers into series and validating their geometry lives in
:mod:`ctvol.io._series`; this module only touches files. Each function here
runs inside a Dask task, so it takes plain paths and returns plain,
picklable records.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import DicomReadError, HounsfieldRangeError
from ._files import FILE_ID_PREFIX, dangling_link, file_id, find_files, open_file
from ._frames import frame_headers
from ._values import float_or_none as _float_or_none
from ._values import floats as _floats
from ._values import int_or_none as _int_or_none
from ._values import text as _str

__all__ = [
    "FileRecord",
    "FileRecords",
    "SliceHeader",
    "decode_hu",
    "find_files",
    "read_file",
    "read_header",
    "read_headers",
]

# SOP classes (DICOM PS3.4) that ctvol treats specially.
MEDIA_STORAGE_DIRECTORY = "1.2.840.10008.1.3.10"
SECONDARY_CAPTURE_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.7",  # Secondary Capture Image Storage
    "1.2.840.10008.5.1.4.1.1.7.1",  # Multi-frame Single Bit SC
    "1.2.840.10008.5.1.4.1.1.7.2",  # Multi-frame Grayscale Byte SC
    "1.2.840.10008.5.1.4.1.1.7.3",  # Multi-frame Grayscale Word SC
    "1.2.840.10008.5.1.4.1.1.7.4",  # Multi-frame True Color SC
}
LOCALIZER_TYPES = {"LOCALIZER", "SCOUT", "SURVIEW", "TOPOGRAM", "SCANOGRAM"}

PIXEL_DATA_TAG = b"\xe0\x7f\x10\x00"  # (7FE0,0010), little endian
SEQUENCE_DELIMITER = b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"  # (FFFE,E0DD), length 0
# Transfer syntaxes whose pixel data the pixel pass decodes straight from the
# value's offset with pydicom's decoders (little endian; native or encapsulated).
_FAST_SYNTAXES = {
    "1.2.840.10008.1.2",  # Implicit VR Little Endian
    "1.2.840.10008.1.2.1",  # Explicit VR Little Endian
    "1.2.840.10008.1.2.4.50",  # JPEG Baseline
    "1.2.840.10008.1.2.4.51",  # JPEG Extended (12 bit)
    "1.2.840.10008.1.2.4.57",  # JPEG Lossless
    "1.2.840.10008.1.2.4.70",  # JPEG Lossless SV1
    "1.2.840.10008.1.2.4.80",  # JPEG-LS Lossless
    "1.2.840.10008.1.2.4.81",  # JPEG-LS Near-lossless
    "1.2.840.10008.1.2.4.90",  # JPEG 2000 Lossless
    "1.2.840.10008.1.2.4.91",  # JPEG 2000
    "1.2.840.10008.1.2.5",  # RLE Lossless
}
#: Transfer syntaxes a header pass cannot locate PixelData in (deflated stream,
#: big-endian element headers): their files are read whole, in both passes.
_WHOLE_READ_SYNTAXES = {
    "1.2.840.10008.1.2.1.99",  # Deflated Explicit VR Little Endian
    "1.2.840.10008.1.2.2",  # Explicit VR Big Endian (retired, still exported)
}
#: Transfer syntaxes that may only hold lossy-compressed pixels (or, JPEG 2000,
#: JPEG-LS near-lossless, HTJ2K, usually do): flagged lossy unless the file says
#: LossyImageCompression "00".
LOSSY_SYNTAXES = {
    "1.2.840.10008.1.2.4.50",  # JPEG Baseline (8 bit)
    "1.2.840.10008.1.2.4.51",  # JPEG Extended (12 bit)
    "1.2.840.10008.1.2.4.81",  # JPEG-LS Near-lossless
    "1.2.840.10008.1.2.4.91",  # JPEG 2000 (lossy or lossless)
    "1.2.840.10008.1.2.4.93",  # JPEG 2000 Part 2 multi-component
    "1.2.840.10008.1.2.4.203",  # HTJ2K
}
INT16_MIN, INT16_MAX = int(np.iinfo(np.int16).min), int(np.iinfo(np.int16).max)


@dataclass(slots=True)
class SliceHeader:
    """What ctvol needs from one image's header (no pixel data).

    Positions and spacings are in mm, in the patient (LPS) frame. The driver
    holds one per input file until ingest ends, so it has slots (no
    ``__dict__``), and :func:`read_headers` makes values that repeat across a
    series (UIDs, geometry, codec options) one shared object: treat headers
    as read-only.
    """

    path: str
    sop_uid: str
    sop_class: str
    series_uid: str
    study_uid: str
    frame_of_reference_uid: str
    patient_id: str
    modality: str
    image_type: tuple[str, ...]
    position: tuple[float, float, float] | None
    orientation: tuple[float, ...] | None
    pixel_spacing: tuple[float, float] | None
    rows: int
    cols: int
    n_frames: int
    instance_number: int | None
    series_number: int | None
    series_description: str
    manufacturer: str
    model: str
    kernel: str
    slice_thickness: float | None
    gantry_tilt: float | None
    transfer_syntax: str
    pixel_padding: tuple[int, int | None] | None
    #: Where the PixelData value starts (bytes) and pydicom's decoding options
    #: (rows, columns, bits_allocated, ...): lets the pixel pass decode without
    #: re-parsing the header. None when the pixel pass must read the file whole.
    pixel_offset: int | None = None
    pixel_options: dict[str, Any] | None = None
    #: (RescaleSlope, RescaleIntercept); None when a Modality LUT Sequence applies.
    rescale: tuple[float, float] | None = None
    file_size: int = 0
    acquisition_number: int | None = None
    #: 1-based frame number in a multi-frame file; 0 for a single-frame file.
    frame: int = 0
    #: What separates stacks inside one multi-frame file (StackID and
    #: TemporalPositionIndex of the frame); "" for single-frame files.
    stack: str = ""
    #: LossyImageCompression "01", or a lossy transfer syntax.
    lossy: bool = False

    @property
    def slice_id(self) -> str:
        """Identity of this slice: the SOPInstanceUID (or the file's SHA-1 when
        the file has none), with ``#<frame>`` for a frame of a multi-frame file."""
        return self.sop_uid if not self.frame else f"{self.sop_uid}#{self.frame}"

    @property
    def sop_from_file(self) -> bool:
        """True when the file has no SOPInstanceUID and ``sop_uid`` is its SHA-1."""
        return self.sop_uid.startswith(FILE_ID_PREFIX)


@dataclass(slots=True)
class FileRecord:
    """The fate of one input file.

    ``status`` is ``"stored"`` (its slice is in series ``key``),
    ``"excluded"`` (with a ``reason`` code and a human ``detail``) or
    ``"pending"`` while ingest runs.
    """

    path: str
    status: str = "pending"
    reason: str = ""
    detail: str = ""
    key: str = ""
    header: SliceHeader | None = field(default=None, repr=False)
    #: Headers of every frame of a multi-frame file (:func:`read_file` makes
    #: one record of each); None for single-frame files.
    frames: list[SliceHeader] | None = field(default=None, repr=False)

    def exclude(self, reason: str, detail: str) -> FileRecord:
        self.status, self.reason, self.detail = "excluded", reason, detail
        return self

    def as_row(self) -> dict[str, Any]:
        h = self.header
        return {
            "path": self.path,
            "status": self.status,
            "reason": self.reason,
            "detail": self.detail,
            "key": self.key,
            "series_uid": h.series_uid if h else "",
            "sop_uid": h.sop_uid if h else "",
            "frame": h.frame if h else 0,
            "transfer_syntax": h.transfer_syntax if h else "",
            "lossy": bool(h.lossy) if h else False,
        }


# --------------------------------------------------------------------------- headers


def read_header(path: str) -> FileRecord:
    """Read one file's header and decide whether it can be a volume slice.

    Pixel data are not read, but their presence and length are checked, so
    that truncated files are caught here rather than half-way through a write.

    Parameters
    ----------
    path : str
        Local path or fsspec URL.

    Returns
    -------
    FileRecord
        ``status="pending"`` with a header when the file is a candidate CT
        slice; ``status="excluded"`` with a reason otherwise. Never raises for
        a bad file: every file gets a fate. For a multi-frame file, ``frames``
        holds one header per frame (:func:`read_file` makes them records).
    """
    import pydicom
    from pydicom.errors import InvalidDicomError

    rec = FileRecord(path=path)
    dangling = dangling_link(path)
    if dangling:
        return rec.exclude("dangling-link", dangling)
    try:
        # No warnings.catch_warnings() here: it swaps process-global filters
        # and is not thread-safe (concurrent tasks can leave "ignore" behind).
        with open_file(path) as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(0)
            ds = pydicom.dcmread(fh, stop_before_pixels=True)
            # pydicom stops with the file positioned at the pixel data tag.
            px_at = fh.tell()
            px_head = fh.read(12)
            meta = getattr(ds, "file_meta", None)
            ts = _str(meta.get("TransferSyntaxUID")) if meta is not None else ""
            tail = b""
            whole = None
            if ts in _WHOLE_READ_SYNTAXES:
                # Deflated or big endian: the stream position and the element
                # header bytes mean nothing here; read the file whole instead.
                fh.seek(0)
                whole = pydicom.dcmread(fh)
            elif _value_length(px_head, ts) == 0xFFFFFFFF:
                # Encapsulated pixel data: its end is checked by the closing
                # delimiter, so only then is the end of the file read.
                fh.seek(max(px_at, size - 1024))
                tail = fh.read()
    except InvalidDicomError as exc:
        return rec.exclude(
            "not-dicom", f"not a DICOM file ({exc}); if it is one, it lacks the 'DICM' preamble"
        )
    except Exception as exc:  # noqa: BLE001 - any parse failure is a recorded fate
        return rec.exclude(
            "unreadable", f"cannot parse DICOM: {type(exc).__name__}: {exc}; re-export the file"
        )

    sop_class = _str(ds.get("SOPClassUID") or (meta.get("MediaStorageSOPClassUID") if meta else ""))
    if sop_class == MEDIA_STORAGE_DIRECTORY or "DirectoryRecordSequence" in ds:
        return rec.exclude(
            "no-pixel-data", "media directory (DICOMDIR/DIRFILE): an index, no image"
        )
    if len(ds) == 0:
        return rec.exclude(
            "unreadable",
            "cannot parse DICOM: no data elements after the file meta (corrupt or not an "
            "image object); re-export the file",
        )
    has_pixels = "PixelData" in whole if whole is not None else px_head[:4] == PIXEL_DATA_TAG
    if not has_pixels:
        return rec.exclude(
            "no-pixel-data",
            f"no PixelData element (SOP class {sop_class or 'unknown'}): not an image",
        )
    if whole is not None:
        problem = _native_length_problem(ds, len(whole.PixelData))
    else:
        problem = _pixel_data_problem(ds, ts, px_at, px_head, size, tail)
    if problem:
        return rec.exclude("truncated", f"{problem}; re-copy or re-export the file")

    pad = ds.get("PixelPaddingValue")
    pad_lim = ds.get("PixelPaddingRangeLimit")
    options = {
        "rows": _int_or_none(ds.get("Rows")),
        "columns": _int_or_none(ds.get("Columns")),
        "samples_per_pixel": _int_or_none(ds.get("SamplesPerPixel")) or 1,
        "bits_allocated": _int_or_none(ds.get("BitsAllocated")),
        "bits_stored": _int_or_none(ds.get("BitsStored")),
        "pixel_representation": _int_or_none(ds.get("PixelRepresentation")),
        "photometric_interpretation": _str(ds.get("PhotometricInterpretation")),
        "number_of_frames": _int_or_none(ds.get("NumberOfFrames")) or 1,
        "pixel_keyword": "PixelData",
    }
    fast = all(v not in (None, "") for v in options.values()) and ts in _FAST_SYNTAXES
    slope = _float_or_none(ds.get("RescaleSlope"))
    intercept = _float_or_none(ds.get("RescaleIntercept"))
    rescale = None if "ModalityLUTSequence" in ds else (
        1.0 if slope is None else slope, 0.0 if intercept is None else intercept)
    header = SliceHeader(
        path=path,
        sop_uid=_str(ds.get("SOPInstanceUID")) or file_id(path),
        sop_class=sop_class,
        series_uid=_str(ds.get("SeriesInstanceUID")),
        study_uid=_str(ds.get("StudyInstanceUID")),
        frame_of_reference_uid=_str(ds.get("FrameOfReferenceUID")),
        patient_id=_str(ds.get("PatientID")),
        modality=_str(ds.get("Modality")).upper(),
        image_type=tuple(str(v).upper() for v in (ds.get("ImageType") or ())),
        position=_floats(ds.get("ImagePositionPatient"), 3),  # type: ignore[arg-type]
        orientation=_floats(ds.get("ImageOrientationPatient"), 6),
        pixel_spacing=_floats(ds.get("PixelSpacing"), 2),  # type: ignore[arg-type]
        rows=_int_or_none(ds.get("Rows")) or 0,
        cols=_int_or_none(ds.get("Columns")) or 0,
        n_frames=_int_or_none(ds.get("NumberOfFrames")) or 1,
        instance_number=_int_or_none(ds.get("InstanceNumber")),
        series_number=_int_or_none(ds.get("SeriesNumber")),
        series_description=_str(ds.get("SeriesDescription")),
        manufacturer=_str(ds.get("Manufacturer")),
        model=_str(ds.get("ManufacturerModelName")),
        kernel=_str(ds.get("ConvolutionKernel")),
        slice_thickness=_float_or_none(ds.get("SliceThickness")),
        gantry_tilt=_float_or_none(ds.get("GantryDetectorTilt")),
        transfer_syntax=ts,
        pixel_padding=(int(pad), _int_or_none(pad_lim)) if pad is not None else None,
        pixel_offset=px_at + _header_length(ts) if fast else None,
        pixel_options=options if fast else None,
        rescale=rescale,
        file_size=size,
        acquisition_number=_int_or_none(ds.get("AcquisitionNumber")),
        lossy=_is_lossy(ds, ts),
    )
    if header.n_frames > 1:
        frames = frame_headers(ds, header)
        if isinstance(frames, str):
            return rec.exclude("multi-frame", frames)
        rec.frames = frames
    rec.header = header
    return rec


def read_file(path: str) -> list[FileRecord]:
    """:func:`read_header`, with one record per frame of a multi-frame file.

    Every frame of an enhanced (or legacy converted enhanced) CT file becomes
    its own record, placed by its functional groups (``SliceHeader.frame`` is
    its 1-based number), so that each frame gets a fate in the catalog.
    """
    rec = read_header(path)
    if rec.frames is None:
        return [rec]
    return [FileRecord(path=path, header=h) for h in rec.frames]


def _is_lossy(ds: Any, ts: str) -> bool:
    """LossyImageCompression "01", or a lossy transfer syntax the file does not
    declare lossless ("00")."""
    flag = _str(ds.get("LossyImageCompression")).strip()
    return flag == "01" or (ts in LOSSY_SYNTAXES and flag != "00")


def _header_length(ts: str) -> int:
    """Bytes of a data element header: 8 in implicit VR, 12 for OB/OW in explicit VR."""
    return 8 if ts == "1.2.840.10008.1.2" else 12


def _value_length(head: bytes, ts: str) -> int | None:
    """The PixelData value length from its element header (None if cut short)."""
    hlen = _header_length(ts)
    return int.from_bytes(head[hlen - 4 : hlen], "little") if len(head) >= hlen else None


def _pixel_data_problem(
    ds: Any, ts: str, at: int, head: bytes, size: int, tail: bytes
) -> str | None:
    """Why the pixel data cannot be complete, from its element header alone."""
    hlen = _header_length(ts)
    length = _value_length(head, ts)
    if length is None:
        return f"truncated: the file ends inside the PixelData header (byte {at})"
    if length == 0xFFFFFFFF:  # encapsulated (compressed): fragments end with a delimiter
        if SEQUENCE_DELIMITER not in tail:
            return ("truncated: compressed PixelData has no sequence delimiter "
                    f"(file ends at byte {size})")
        return None
    if at + hlen + length > size:
        return (f"truncated: PixelData declares {length} bytes at offset {at + hlen} but the "
                f"file has {size} bytes")
    return _native_length_problem(ds, length)


def _native_length_problem(ds: Any, length: int) -> str | None:
    """Why ``length`` bytes of native pixel data cannot hold the declared frames."""
    frames = _int_or_none(ds.get("NumberOfFrames")) or 1
    needed = (
        (_int_or_none(ds.get("Rows")) or 0) * (_int_or_none(ds.get("Columns")) or 0)
        * (_int_or_none(ds.get("SamplesPerPixel")) or 1) * frames
        * (_int_or_none(ds.get("BitsAllocated")) or 16) // 8
    )
    if length < needed:
        return (f"truncated: PixelData holds {length} bytes but Rows x Columns x "
                f"BitsAllocated needs {needed}")
    return None


#: SliceHeader fields whose values repeat across the slices of a series.
_SHARED_FIELDS = (
    "sop_class", "series_uid", "study_uid", "frame_of_reference_uid", "patient_id", "modality",
    "image_type", "orientation", "pixel_spacing", "rows", "cols", "series_description",
    "manufacturer", "model", "kernel", "slice_thickness", "gantry_tilt", "transfer_syntax",
    "pixel_padding", "pixel_offset", "rescale", "file_size",
)


def _share(header: SliceHeader, memo: dict[Any, Any]) -> None:
    """Replace ``header``'s repeated values by the equal object already in ``memo``."""
    for name in _SHARED_FIELDS:
        value = getattr(header, name)
        setattr(header, name, memo.setdefault((name, value), value))
    if header.pixel_options is not None:
        key = ("pixel_options", tuple(header.pixel_options.items()))
        header.pixel_options = memo.setdefault(key, header.pixel_options)


class FileRecords(list[FileRecord]):
    """A batch of records, pickled as one object.

    distributed serializes a plain list element by element (each its own
    pickle), which would undo the sharing of :func:`read_headers`; a list
    subclass is pickled whole.
    """

    __slots__ = ()


def read_headers(paths: Sequence[str]) -> FileRecords:
    """:func:`read_header` over a batch of files (one Dask task).

    Equal values of the headers' series-level fields are made one object:
    pickle sends a shared object once, so the batch travels, and lives on
    the driver, at about a quarter of the size (one ~3.4 kB header per file
    becomes ~0.8 kB, measured on synthetic_cohort files).
    """
    memo: dict[Any, Any] = {}
    records = FileRecords(r for p in paths for r in read_file(p))
    for rec in records:
        if rec.header is not None:
            _share(rec.header, memo)
    return records


# --------------------------------------------------------------------------- pixels


def _padding_mask(raw: np.ndarray, padding: tuple[int, int | None]) -> np.ndarray:
    lo, hi = padding
    if hi is None:
        return raw == lo
    lo, hi = min(lo, hi), max(lo, hi)
    return (raw >= lo) & (raw <= hi)


def _decode_error(path: str, ts: str, exc: Exception) -> DicomReadError:
    import pydicom.uid

    uid = pydicom.uid.UID(ts) if ts else None
    if uid is not None and uid.is_compressed:
        fix = ("Install the pylibjpeg plugins (pip install pylibjpeg pylibjpeg-openjpeg "
               "pylibjpeg-libjpeg pylibjpeg-rle) or re-export the file uncompressed.")
    else:
        fix = "The pixel data are corrupt or disagree with Rows/Columns/Bits; re-export the file."
    return DicomReadError(
        f"{path}: cannot decode pixel data ({type(exc).__name__}: {exc}; transfer syntax "
        f"{uid.name if uid else 'unknown'}). {fix}"
    )


def _read_raw(path: str, header: SliceHeader | None) -> tuple[np.ndarray, Any]:
    """Raw stored pixels and the dataset (None on the fast path)."""
    import pydicom
    from pydicom.pixels import get_decoder

    if header is not None and header.pixel_options is not None and header.rescale is not None:
        # Fast path: decode the value the header pass located, with pydicom's
        # decoder for the transfer syntax; no second parse of the header.
        try:
            with open_file(path) as fh:
                fh.seek(0, os.SEEK_END)
                if fh.tell() != header.file_size:
                    raise DicomReadError(
                        f"{path}: the file changed size since the header pass "
                        f"({header.file_size} -> {fh.tell()} bytes); re-run ingest"
                    )
                fh.seek(header.pixel_offset)
                decoder = get_decoder(header.transfer_syntax)
                index = header.frame - 1 if header.frame else 0
                raw, _ = decoder.as_array(fh, index=index, **header.pixel_options)
        except DicomReadError:
            raise
        except Exception as exc:  # noqa: BLE001
            raise _decode_error(path, header.transfer_syntax, exc) from exc
        return raw, None
    try:
        with open_file(path) as fh:
            ds = pydicom.dcmread(fh)
            if header is not None and header.frame:
                ds.pixel_array_options(index=header.frame - 1)
            raw = ds.pixel_array
    except Exception as exc:  # noqa: BLE001
        meta = getattr(locals().get("ds"), "file_meta", None)
        raise _decode_error(path, str(getattr(meta, "TransferSyntaxUID", "") or ""), exc) from exc
    sop = header.sop_uid if header is not None and not header.sop_from_file else None
    if sop is not None and str(ds.get("SOPInstanceUID", "")) != sop:
        raise DicomReadError(
            f"{path}: SOPInstanceUID changed since the header pass "
            f"({sop} -> {ds.get('SOPInstanceUID')}); re-run ingest"
        )
    return raw, ds


def decode_hu(
    path: str,
    *,
    header: SliceHeader | None = None,
    padding_fill: int | None = -1024,
) -> tuple[np.ndarray, float]:
    """Decode one slice to Hounsfield units as int16.

    Parameters
    ----------
    path : str
        Local path or fsspec URL of a single-frame image.
    header : SliceHeader, optional
        What the header pass read from this file. With it, the pixel data are
        decoded straight from their offset (pydicom's decoder for the transfer
        syntax, the header's rescale), and a file that changed size or
        SOPInstanceUID since that pass is refused. Without it, or when a
        Modality LUT Sequence applies, the file is read whole.
    padding_fill : int or None, default -1024
        HU given to pixels flagged by PixelPaddingValue (and
        PixelPaddingRangeLimit); ``None`` keeps their modality-LUT value.

    Returns
    -------
    hu : numpy.ndarray
        (rows, columns) int16, values in HU.
    rounding : float
        Largest ``|hu - LUT value|`` introduced by rounding to whole HU (0.0
        when slope and intercept are integers).

    Raises
    ------
    DicomReadError
        The pixel data cannot be decoded (names the file and the codec).
    HounsfieldRangeError
        The HU values do not fit int16 (names the file and the range).
    """
    from pydicom import Dataset
    from pydicom.pixels import apply_modality_lut

    raw, ds = _read_raw(path, header)
    if header is not None and header.rescale is not None:
        # The header pass's rescale: for a frame of an enhanced CT it comes
        # from the functional groups, which the top level does not hold.
        slope, intercept = header.rescale
        padding = header.pixel_padding
    else:
        slope = float(ds.get("RescaleSlope", 1.0) or 1.0)
        intercept = float(ds.get("RescaleIntercept", 0.0) or 0.0)
        pad = ds.get("PixelPaddingValue")
        padding = (int(pad), _int_or_none(ds.get("PixelPaddingRangeLimit"))) if pad is not None \
            else None
    if (ds is None or "ModalityLUTSequence" not in ds) and slope == 1.0 \
            and float(intercept).is_integer():
        # Exact integer path: pydicom's apply_modality_lut computes the same
        # values in float64, ~3x slower (../shared/MEASURED.md); tested equal.
        hu = raw.astype(np.int32) + int(intercept)
        rounding = 0.0
    else:
        if ds is None or "ModalityLUTSequence" not in ds:  # the rescale found above
            ds = Dataset()
            ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
        lut = np.asarray(apply_modality_lut(raw, ds), dtype=np.float64)
        hu_f = np.rint(lut)
        rounding = float(np.max(np.abs(hu_f - lut))) if lut.size else 0.0
        hu = hu_f
    if padding is not None and padding_fill is not None:
        mask = _padding_mask(raw, padding)
        if mask.any():
            hu = np.where(mask, padding_fill, hu)
    lo, hi = (hu.min(), hu.max()) if hu.size else (0, 0)
    if lo < INT16_MIN or hi > INT16_MAX:
        raise HounsfieldRangeError(
            f"{path}: HU values {lo:g}..{hi:g} do not fit int16 ({INT16_MIN}..{INT16_MAX}) "
            f"after RescaleSlope={slope:g}, RescaleIntercept={intercept:g}; the file's rescale "
            "tags are probably wrong: fix them, or exclude the file"
        )
    return hu.astype(np.int16), rounding
