"""Group slice headers into series plans and decide every file's fate.

Runs on the driver, on headers only (a few pixel reads to compare
duplicates). The rules are those of ``docs/storage.md``; every file that does
not end up in a plan is excluded with a reason code and a sentence.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..geometry import plan_stack, slice_normal
from .dicom import LOCALIZER_TYPES, SECONDARY_CAPTURE_CLASSES, FileRecord, SliceHeader, decode_hu

__all__ = ["REASONS", "SeriesPlan", "plan_series", "series_key"]

#: Every reason code a file or series can be excluded with, and what it means.
REASONS: dict[str, str] = {
    "not-dicom": "not a DICOM file",
    "dangling-link": "a symlink whose target does not exist (or links that loop)",
    "unreadable": "a DICOM file that cannot be parsed",
    "truncated": "pixel data shorter than the header declares",
    "no-pixel-data": "no image: a DICOMDIR/DIRFILE or another non-image object",
    "multi-frame": "multi-frame image whose frames cannot be placed (no functional groups)",
    "modality": "modality not selected for ingest (default: CT only)",
    "localizer": "localizer/scout image (ImageType), not part of a volume",
    "secondary-capture": "secondary capture / screen capture, not a volume",
    "missing-tag": "a tag needed to place the slice in space is missing",
    "non-axial": "slice normal more than the allowed angle away from the patient z axis",
    "duplicate": "a second copy of a slice already kept (same position and pixels)",
    "single-slice": "a lone slice (alone in its series or cut off by gaps): not a volume",
    "series-refused": "its series has geometry ctvol will not stack",
    "decode-failed": "pixel data could not be decoded or did not fit int16 HU",
}

_SAFE = re.compile(r"[^A-Za-z0-9._-]+")


def series_key(series_uid: str, part: int | None = None, run: int | None = None) -> str:
    """Store key of a series: its SeriesInstanceUID, plus part/run suffixes.

    ``_p<i>`` numbers the parts of a UID split by orientation, matrix, pixel
    spacing or ImageType; ``_r<j>`` numbers contiguous runs split at gaps.
    Both are 1-based and stable for the same input.
    """
    key = _SAFE.sub("_", series_uid).strip("._") or "unknown"
    if part is not None:
        key += f"_p{part}"
    if run is not None:
        key += f"_r{run}"
    return key


@dataclass
class SeriesPlan:
    """One series to write: its slices in z order and its measured geometry.

    Attributes
    ----------
    key : str
        Store key (:func:`series_key`).
    headers : list of SliceHeader
        The slices, sorted by position along the normal.
    z : numpy.ndarray
        Position of each slice along the normal, in mm (increasing).
    spacing : tuple of float
        (dz, dy, dx) in mm; dz measured from positions.
    tilt_deg : float
        Gantry tilt measured from the positions (0 for orthogonal stacks).
    warnings : list of str
        What the user should know (tilt, splits, instance-number order).
    """

    key: str
    headers: list[SliceHeader]
    z: np.ndarray
    spacing: tuple[float, float, float]
    tilt_deg: float = 0.0
    warnings: list[str] = field(default_factory=list)
    split: str = ""
    #: The warnings (also in ``warnings``) about made-up identities: no
    #: SeriesInstanceUID, or slices identified by their file's SHA-1.
    identity_warnings: list[str] = field(default_factory=list)

    @property
    def first(self) -> SliceHeader:
        return self.headers[0]

    @property
    def shape(self) -> tuple[int, int, int]:
        return (len(self.headers), self.first.rows, self.first.cols)


@dataclass
class RefusedGroup:
    """A series (or part) that was not written, and why."""

    key: str
    series_uid: str
    reason: str
    detail: str
    n_files: int
    description: str = ""


def _describe(uid: str, h: SliceHeader) -> str:
    num = f"#{h.series_number} " if h.series_number is not None else ""
    desc = f"'{h.series_description}' " if h.series_description else ""
    return f"series {num}{desc}({uid})"


def _file_exclusion(
    h: SliceHeader, modalities: Sequence[str], max_obliquity_deg: float
) -> tuple[str, str] | None:
    missing = [
        name
        for name, value in (
            ("ImagePositionPatient (0020,0032)", h.position),
            ("ImageOrientationPatient (0020,0037)", h.orientation),
            ("PixelSpacing (0028,0030)", h.pixel_spacing),
            ("Rows (0028,0010)", h.rows),
            ("Columns (0028,0011)", h.cols),
        )
        if not value
    ]
    if modalities and h.modality not in modalities:
        return "modality", (
            f"Modality {h.modality or '(missing)'} is not in {list(modalities)}; "
            "pass modalities=... to ingest it"
        )
    if h.sop_class in SECONDARY_CAPTURE_CLASSES:
        kind = "\\".join(h.image_type) or "no ImageType"
        return "secondary-capture", (
            f"Secondary Capture image ({kind}, '{h.series_description}'): a screen "
            "capture, not an acquired slice"
        )
    loc = LOCALIZER_TYPES.intersection(h.image_type)
    if loc:
        return "localizer", (
            f"ImageType {'/'.join(h.image_type)} marks a {sorted(loc)[0].lower()}: "
            "a projection image, not a slice of the volume"
        )
    if missing:
        return "missing-tag", (
            f"missing {', '.join(missing)}: the slice cannot be placed in space; "
            "fix the export or exclude the file"
        )
    if h.orientation is not None and max_obliquity_deg < 90:
        try:
            n = slice_normal(h.orientation)
        except ValueError as exc:
            return "missing-tag", f"invalid ImageOrientationPatient: {exc}"
        angle = float(np.degrees(np.arccos(min(1.0, abs(n[2])))))
        if angle > max_obliquity_deg:
            return "non-axial", (
                f"slice normal is {angle:.1f} deg from the patient z axis "
                f"(limit {max_obliquity_deg:g} deg): a sagittal/coronal or oblique image; "
                "pass max_obliquity_deg=90 to keep it"
            )
    return None


def _same_pixels(a: SliceHeader, b: SliceHeader) -> bool:
    """Whether two slices (files or frames) hold the same HU."""
    if (a.rows, a.cols) != (b.rows, b.cols):
        return False
    hu_a, _ = decode_hu(a.path, header=a, padding_fill=None)
    hu_b, _ = decode_hu(b.path, header=b, padding_fill=None)
    return bool(np.array_equal(hu_a, hu_b))


#: What a series is grouped by when it has no SeriesInstanceUID (as dcm2niix:
#: study, frame of reference, series and acquisition numbers, then the
#: geometry and ImageType that split a series into parts anyway).
_NO_UID_GROUPING = ("StudyInstanceUID", "FrameOfReferenceUID", "PatientID", "SeriesNumber",
                    "AcquisitionNumber", "orientation", "matrix", "pixel spacing", "ImageType")


def _group_id(h: SliceHeader) -> str:
    """The series a slice belongs to: its SeriesInstanceUID, or, without one, a
    deterministic key from what dcm2niix groups by (:data:`_NO_UID_GROUPING`)."""
    if h.series_uid:
        return h.series_uid
    import hashlib

    what = (h.study_uid, h.frame_of_reference_uid, h.patient_id, h.series_number,
            h.acquisition_number, *_variant(h))
    num = f"{h.series_number}-" if h.series_number is not None else ""
    return f"nouid-{num}{hashlib.sha1(repr(what).encode()).hexdigest()[:16]}"


def _variant(h: SliceHeader) -> tuple[Any, ...]:
    assert h.orientation is not None and h.pixel_spacing is not None
    return (
        tuple(np.round(h.orientation, 3) + 0.0),
        (h.rows, h.cols),
        tuple(np.round(h.pixel_spacing, 4) + 0.0),
        h.image_type,
        h.stack,
    )


_VARIANT_NAMES = ("orientation", "matrix size", "pixel spacing", "ImageType",
                  "stack (StackID/TemporalPositionIndex of multi-frame files)")


def plan_series(
    records: Iterable[FileRecord],
    *,
    modalities: Sequence[str] = ("CT",),
    split_gaps: bool = True,
    max_obliquity_deg: float = 45.0,
) -> tuple[list[SeriesPlan], list[RefusedGroup]]:
    """Decide every record's fate and build the series to write.

    Parameters
    ----------
    records : iterable of FileRecord
        Output of :func:`ctvol.io.dicom.read_headers`; updated in place
        (``status``, ``reason``, ``detail``, ``key``).
    modalities : sequence of str, default ("CT",)
        Modalities to ingest; others are excluded with reason ``modality``.
    split_gaps : bool, default True
        Split a series with gaps into contiguous runs (each its own series);
        if False, refuse such a series.
    max_obliquity_deg : float, default 45
        Largest angle between the slice normal and the patient z axis that
        still counts as axial (gantry tilts are ~0-30 deg).

    Returns
    -------
    plans : list of SeriesPlan
    refused : list of RefusedGroup
    """
    records = list(records)
    modalities = tuple(m.upper() for m in modalities)
    candidates: list[FileRecord] = []
    for rec in records:
        if rec.status != "pending":
            continue
        assert rec.header is not None
        why = _file_exclusion(rec.header, modalities, max_obliquity_deg)
        if why:
            rec.exclude(*why)
        else:
            candidates.append(rec)

    refused: list[RefusedGroup] = []
    group_of = {id(rec): _group_id(rec.header) for rec in candidates}  # type: ignore[arg-type]
    # The same SOPInstanceUID (and frame) twice: a copy (drop it) or a conflict (refuse).
    by_sop: dict[str, list[FileRecord]] = defaultdict(list)
    for rec in candidates:
        by_sop[rec.header.slice_id].append(rec)  # type: ignore[union-attr]
    conflicted_series: dict[str, str] = {}
    for sop, recs in by_sop.items():
        if len(recs) < 2:
            continue
        kept = recs[0]
        for other in recs[1:]:
            if _same_pixels(kept.header, other.header):  # type: ignore[arg-type]
                other.exclude("duplicate", f"same SOPInstanceUID {sop} and pixels as {kept.path}")
            else:
                conflicted_series[group_of[id(kept)]] = (
                    f"files {kept.path} and {other.path} share SOPInstanceUID {sop} but their "
                    "pixel data differ: the series is ambiguous; remove the wrong file"
                )
    candidates = [r for r in candidates if r.status == "pending"]

    by_uid: dict[str, list[FileRecord]] = defaultdict(list)
    for rec in candidates:
        by_uid[group_of[id(rec)]].append(rec)

    plans: list[SeriesPlan] = []
    for uid in sorted(by_uid):
        recs = by_uid[uid]
        desc = _describe(uid, recs[0].header)  # type: ignore[arg-type]
        if uid in conflicted_series:
            detail = conflicted_series[uid]
            for r in recs:
                r.exclude("series-refused", f"{desc}: {detail}")
            refused.append(RefusedGroup(series_key(uid), uid, "series-refused", detail, len(recs),
                                        desc))
            continue
        variants: dict[tuple[Any, ...], list[FileRecord]] = defaultdict(list)
        for r in recs:
            variants[_variant(r.header)].append(r)  # type: ignore[arg-type]
        split_note = ""
        if len(variants) > 1:
            keys = list(variants)
            differ = [
                name for i, name in enumerate(_VARIANT_NAMES) if len({k[i] for k in keys}) > 1
            ]
            split_note = (
                f"{desc} mixes {' and '.join(differ)} ({len(variants)} kinds): "
                "split into one part per kind"
            )
        ordered = sorted(variants.items(), key=lambda kv: (-len(kv[1]), kv[1][0].path))
        for p, (_, part_recs) in enumerate(ordered, start=1):
            part = p if len(variants) > 1 else None
            new = _plan_part(uid, part, part_recs, desc, split_note, split_gaps, refused)
            for plan in new:
                _note_identity(plan, recs)
            plans.extend(new)
    return plans, refused


def _note_identity(plan: SeriesPlan, recs: list[FileRecord]) -> None:
    """Warn (on the series and its files) when UIDs had to be made up."""
    notes = []
    first = plan.first
    if not first.series_uid:
        notes.append(
            f"{_describe(plan.key, first)} has no SeriesInstanceUID: its files were grouped by "
            f"{', '.join(_NO_UID_GROUPING)} (as dcm2niix) under key {plan.key}; check that "
            "no two series were merged, or restore the UIDs"
        )
    n_no_sop = sum(h.sop_from_file for h in plan.headers)
    if n_no_sop:
        notes.append(
            f"{_describe(plan.key, first)}: {n_no_sop} of {len(plan.headers)} slices have no "
            "SOPInstanceUID: each is identified by the SHA-1 of its file ('sha1:...' in sop_uid)"
        )
    if not notes:
        return
    plan.identity_warnings = notes
    plan.warnings[:0] = notes
    for r in recs:
        if r.key == plan.key:
            r.detail = " | ".join(notes)


def _plan_part(
    uid: str,
    part: int | None,
    recs: list[FileRecord],
    desc: str,
    split_note: str,
    split_gaps: bool,
    refused: list[RefusedGroup],
) -> list[SeriesPlan]:
    headers = [r.header for r in recs]
    first = headers[0]
    assert first is not None and first.orientation is not None and first.pixel_spacing is not None
    positions = np.array([h.position for h in headers], dtype=np.float64)  # type: ignore[union-attr]
    geo = plan_stack(positions, first.orientation)
    sorted_recs = [recs[i] for i in geo.order]
    base_key = series_key(uid, part)
    if part is not None:
        desc = f"{desc} part {part}"

    # Duplicate positions: identical pixels -> keep one; different -> refuse.
    for group in geo.duplicates:
        kept = sorted_recs[group[0]]
        for i in group[1:]:
            other = sorted_recs[i]
            if _same_pixels(kept.header, other.header):  # type: ignore[arg-type]
                other.exclude("duplicate", f"same position z={geo.z[i]:.3f} mm and pixels as "
                              f"{kept.path}")
                continue
            all_one_position = len(geo.duplicates) == 1 and len(group) == len(recs)
            derived = {"DERIVED", "SECONDARY"} <= set(first.image_type)
            if all_one_position and derived:
                reason, detail = "secondary-capture", (
                    f"{desc}: {len(recs)} DERIVED/SECONDARY images all at one position "
                    "with different pixels: captures, not a volume"
                )
            else:
                reason, detail = "series-refused", (
                    f"{desc}: slices at the same position z={geo.z[i]:.3f} mm have different "
                    f"pixel data ({kept.path}, {other.path}); it is not one volume. Split the "
                    "export (e.g. by AcquisitionNumber) or remove the extra images"
                )
            for r in recs:
                r.exclude(reason, detail)
            refused.append(RefusedGroup(base_key, uid, reason, detail, len(recs), desc))
            return []

    runs = geo.runs
    gap_note = ""
    if len(runs) > 1:
        gaps = "; ".join(
            f"{g['step']:.3g} mm step between z={g['z0']:.2f} and z={g['z1']:.2f} mm"
            for g in geo.gaps[:5]
        )
        more = f" and {len(geo.gaps) - 5} more" if len(geo.gaps) > 5 else ""
        expected = geo.gaps[0]["expected"]
        gap_note = (
            f"{desc} has uneven spacing (expected {expected:.4g} mm): {gaps}{more}"
        )
        if not split_gaps:
            detail = gap_note + ". Pass split_gaps=True to keep the contiguous runs, or re-export."
            for r in recs:
                if r.status == "pending":
                    r.exclude("series-refused", detail)
            refused.append(RefusedGroup(base_key, uid, "series-refused", detail, len(recs), desc))
            return []

    plans = []
    for j, run in enumerate(runs, start=1):
        run_key = series_key(uid, part, j if len(runs) > 1 else None)
        run_recs = [sorted_recs[i] for i in run]
        z = geo.z[run]
        if len(run_recs) < 2:
            where = f" (cut off by gaps: {gap_note})" if gap_note else ""
            detail = f"{desc}: a single slice at z={z[0]:.2f} mm{where}"
            run_recs[0].exclude("single-slice", detail)
            refused.append(RefusedGroup(run_key, uid, "single-slice", detail, 1, desc))
            continue
        dz = float((z[-1] - z[0]) / (len(z) - 1))
        dy, dx = first.pixel_spacing
        warnings: list[str] = []
        if split_note:
            warnings.append(split_note)
        if gap_note:
            warnings.append(f"{gap_note}: split into {len(runs)} runs; this is run {j}")
        if geo.tilt_deg:
            hdr = (f", GantryDetectorTilt {first.gantry_tilt:g} deg"
                   if first.gantry_tilt is not None else "")
            warnings.append(
                f"{desc}: gantry tilt {geo.tilt_deg:.2f} deg{hdr}: slices are sheared; "
                f"spacing along the normal is {dz:.4g} mm; not resampled"
            )
        numbers = [r.header.instance_number for r in run_recs]  # type: ignore[union-attr]
        if all(n is not None for n in numbers) and len(set(numbers)) == len(numbers):
            d = np.diff(np.asarray(numbers, dtype=np.int64))
            if not (np.all(d > 0) or np.all(d < 0)):
                warnings.append(
                    f"{desc}: InstanceNumber order disagrees with spatial order; "
                    "slices were ordered by ImagePositionPatient"
                )
        for r in run_recs:
            r.status, r.reason, r.detail, r.key = "pending", "", "", run_key
        plans.append(
            SeriesPlan(
                key=run_key,
                headers=[r.header for r in run_recs],  # type: ignore[misc]
                z=z,
                spacing=(dz, float(dy), float(dx)),
                tilt_deg=geo.tilt_deg,
                warnings=warnings,
                split=("part" if part else "") + ("run" if len(runs) > 1 else ""),
            )
        )
    return plans
