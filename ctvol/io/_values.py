"""DICOM element values as plain Python: tolerant parsers shared by the io modules.

Blank or malformed values become ``None`` (or ``""``): a missing tag and an
empty one mean the same to ingest.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["float_or_none", "floats", "int_or_none", "text"]


def floats(value: Any, n: int) -> tuple[float, ...] | None:
    if value is None:
        return None
    try:
        out = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        return None
    return out if len(out) == n and all(np.isfinite(out)) else None


def int_or_none(value: Any) -> int | None:
    try:
        return None if value in (None, "") else int(value)
    except (TypeError, ValueError):
        return None


def float_or_none(value: Any) -> float | None:
    try:
        return None if value in (None, "") else float(value)
    except (TypeError, ValueError):
        return None


def text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, list | tuple) or type(value).__name__ == "MultiValue":
        return "\\".join(str(v) for v in value)
    return str(value)
