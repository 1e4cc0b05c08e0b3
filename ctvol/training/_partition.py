"""Deterministic partitions of series, for every split in ctvol (training windows,
the in-plane training set, curation's classifiers).

Every series is assigned to one side by a hash of its SeriesInstanceUID, so all
slices of a series land on one side and the assignment never changes when the
cohort grows (as in the slice-localizer method). Two schemes, both kept for
the splits already recorded in checkpoints: :func:`partition_of` (train / val /
test 70 / 20 / 10, SHA-256 mod 10) and :func:`split_of` (train / val at a
chosen fraction, SHA-1).
"""

from __future__ import annotations

import hashlib

from ..errors import OptionTypeError

__all__ = ["PARTITIONS", "partition_of", "split_of"]

#: Partition of each residue of SHA-256(SeriesInstanceUID) mod 10: 70 / 20 / 10 %.
PARTITIONS: tuple[str, ...] = ("train",) * 7 + ("val",) * 2 + ("test",)


def partition_of(series_uid: str) -> str:
    """``"train"``, ``"val"`` or ``"test"`` for a series, from SHA-256 of its UID mod 10.

    Residues 0-6 are train (70 %), 7-8 validation (20 %), 9 test (10 %).

    Parameters
    ----------
    series_uid : str
        SeriesInstanceUID (not the store key: runs and parts of one series
        share their UID and so their partition).

    Raises
    ------
    TypeError
        ``series_uid`` is not a non-empty string.

    Examples
    --------
    >>> from ctvol.curation import partition_of
    >>> import hashlib
    >>> uid = "1.2.840.113619.2.55.3"
    >>> int.from_bytes(hashlib.sha256(uid.encode()).digest(), "big") % 10
    2
    >>> partition_of(uid)
    'train'
    """
    if not isinstance(series_uid, str) or not series_uid:
        raise OptionTypeError(f"series_uid must be a non-empty string, got {series_uid!r}")
    digest = hashlib.sha256(series_uid.encode("utf-8")).digest()
    return PARTITIONS[int.from_bytes(digest, "big") % 10]


def split_of(series_uid: str, val_fraction: float = 0.3) -> str:
    """``"train"`` or ``"val"`` from a stable hash of the SeriesInstanceUID."""
    h = int(hashlib.sha1(series_uid.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
    return "val" if h < val_fraction else "train"
