"""Multi-frame CT: one slice header per frame, placed by the functional groups.

Enhanced CT and Legacy Converted Enhanced CT files carry each frame's
position (and optionally orientation, pixel spacing, rescale) in the
Per-frame and Shared Functional Groups Sequences; ``docs/storage.md``
("Multi-frame CT") states the rules.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ._values import float_or_none, floats, text

if TYPE_CHECKING:
    from .dicom import SliceHeader

__all__ = ["frame_headers"]


def _item(seq: Any) -> Any:
    return seq[0] if seq else None


def _macro(groups: Sequence[Any], sequence: str) -> Any:
    """The first item of a functional group macro, per-frame before shared."""
    for g in groups:
        if g is not None and sequence in g:
            item = _item(g[sequence].value)
            if item is not None:
                return item
    return None


def frame_headers(ds: Any, header: SliceHeader) -> list[SliceHeader] | str:
    """One header per frame of a multi-frame file, or why its frames cannot be placed.

    Position, orientation, pixel spacing and rescale come from the Plane
    Position, Plane Orientation, Pixel Measures and Pixel Value
    Transformation functional groups (per-frame first, then shared); the top
    level is the fallback for rescale, orientation and spacing. Frames of
    different stacks (StackID) or temporal positions are told apart by
    ``stack``, so that planning splits them into parts.
    """
    import dataclasses

    n = header.n_frames
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    shared = _item(ds.get("SharedFunctionalGroupsSequence"))
    if per_frame is None and shared is None:
        return (f"{n} frames in one file without functional groups (Per-frame/Shared "
                "Functional Groups Sequence), so the frames cannot be placed in space; convert "
                "it to an enhanced CT or to single-frame images with the scanner's tools")
    if per_frame is not None and len(per_frame) != n:
        return (f"NumberOfFrames is {n} but the Per-frame Functional Groups Sequence has "
                f"{len(per_frame)} items: the file is inconsistent; re-export it")
    out = []
    for i in range(n):
        groups = ((per_frame[i] if per_frame is not None else None), shared)
        pos = _macro(groups, "PlanePositionSequence")
        ori = _macro(groups, "PlaneOrientationSequence")
        meas = _macro(groups, "PixelMeasuresSequence")
        pvt = _macro(groups, "PixelValueTransformationSequence")
        content = _macro(groups, "FrameContentSequence")
        position = floats(pos.get("ImagePositionPatient") if pos else None, 3)
        if position is None:
            return (f"frame {i + 1} of {n} has no ImagePositionPatient in its Plane Position "
                    "functional group: the frames cannot be placed in space; re-export the "
                    "series as single-frame images")
        orientation = floats(ori.get("ImageOrientationPatient") if ori else None, 6) \
            or header.orientation
        spacing = floats(meas.get("PixelSpacing") if meas else None, 2) or header.pixel_spacing
        rescale = header.rescale
        if pvt is not None and ("RescaleSlope" in pvt or "RescaleIntercept" in pvt):
            slope = float_or_none(pvt.get("RescaleSlope"))
            intercept = float_or_none(pvt.get("RescaleIntercept"))
            rescale = (1.0 if slope is None else slope, 0.0 if intercept is None else intercept)
        stack = ""
        if content is not None:
            stack = f"{text(content.get('StackID'))}/{text(content.get('TemporalPositionIndex'))}"
        thickness = float_or_none(meas.get("SliceThickness")) if meas else None
        out.append(dataclasses.replace(
            header, frame=i + 1, position=position,  # type: ignore[arg-type]
            orientation=orientation, pixel_spacing=spacing,  # type: ignore[arg-type]
            rescale=rescale, stack=stack,
            slice_thickness=header.slice_thickness if thickness is None else thickness,
        ))
    return out
