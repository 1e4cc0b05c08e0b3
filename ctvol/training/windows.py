"""Slice-pair windows sampled straight from a cohort store (a torch Dataset).

For factor k a window is built as the paper builds its data sets:

- stride k:  input = slices (i, i+k),  target = slices i+1 … i+k-1;
- stride 2k: input = slices (i, i+2k), target = slices i+2, i+4, … i+2k-2.

Only the slices a window needs are read from Zarr (never whole volumes).
Each DataLoader worker process opens its own store handles.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .._deps import available
from ..errors import DataError, OptionError
from ..intensity import HU_WINDOW, to_unit
from ..io._handles import HuHandles
from ..io._layout import series_attrs, store_url
from ..io.store import open_store
from ._partition import partition_of, split_of

__all__ = ["PairWindows", "Window", "check_blocks", "partition_of", "split_of"]

#: HU above which a pixel counts as body for ``body_fraction`` crops.
BODY_HU = -500


@dataclass(frozen=True)
class Window:
    """One training sample: series key, first slice index and stride (k or 2k)."""

    key: str
    start: int
    step: int  # distance between target slices: 1 (stride k) or 2 (stride 2k)

    def inputs(self, k: int) -> tuple[int, int]:
        return self.start, self.start + k * self.step

    def targets(self, k: int) -> list[int]:
        return [self.start + j * self.step for j in range(1, k)]


def check_blocks(blocks: Mapping[str, Mapping[str, Sequence[Sequence[int]]]],
                 guard: int) -> None:
    """Check that the blocks of every series are disjoint and ``guard`` slices apart.

    Raises ``ValueError`` naming the series and the two blocks that are closer.
    """
    for key, spec in blocks.items():
        spans = sorted((int(lo), int(hi), name) for name, rs in spec.items()
                       for lo, hi in rs)
        for (lo1, hi1, n1), (lo2, hi2, n2) in zip(spans, spans[1:], strict=False):
            if n1 != n2 and lo2 - hi1 < guard:
                raise OptionError(
                    f"series {key}: block {n1} [{lo1}, {hi1}) and block {n2} [{lo2}, {hi2}) "
                    f"are {lo2 - hi1} slices apart; leave a guard gap of at least {guard}")
            if lo2 < hi1:
                raise OptionError(f"series {key}: blocks [{lo1}, {hi1}) and [{lo2}, {hi2}) "
                                  "overlap")


#: zarr's codec pipeline backed by the zarrs Rust crate (``pip install zarrs``).
_ZARRS_PIPELINE = "zarrs.ZarrsCodecPipeline"


def _read_config(store: str) -> dict[str, Any]:
    """zarr config for the ``hu`` handles this process opens (docs/training.md).

    zarr-python's default pipeline schedules one coroutine and thread hop per
    inner chunk; on a local store that costs about twice the decompression
    itself for a 4-slice window. The zarrs pipeline reads the same bytes at
    about the cost of decompression. It is used only

    - inside a torch DataLoader worker: zarrs deadlocks in a process forked
      after its parent decoded a chunk (zarrs/zarrs-python#171), and workers
      never fork, while the main process may fork workers later;
    - for local stores (zarrs warns and falls back on fsspec stores);
    - when ``zarrs`` is installed (``pip install ctvol[fast]``).
    """
    if "://" in store or os.environ.get("CTVOL_ZARRS", "1") == "0":
        return {}
    if not available("zarrs"):
        return {}
    from torch.utils.data import get_worker_info

    if get_worker_info() is None:
        return {}
    return {"codec_pipeline.path": _ZARRS_PIPELINE}


def _blank_slices(root: Any, key: str) -> np.ndarray | None:
    """Boolean (z,) of slices labelled blank by ``ctvol curate``, or None without labels."""
    group = root[f"series/{key}"]
    if "label" not in group:
        return None
    label = group["label"]
    classes = list(label.attrs.get("classes", []))
    if "blank" not in classes:
        return None
    return np.asarray(label[:]) == classes.index("blank")


class PairWindows:
    """A torch-style Dataset of slice-pair windows over a cohort store.

    Parameters
    ----------
    store : path or URL
        Cohort store written by :func:`ctvol.ingest`.
    factor : int
        Re-slice factor k (>= 2).
    split : {"train", "val", "test", "all"}, default "train"
        Series are split by a hash of their SeriesInstanceUID, so no series
        feeds two sides. A store with a single series is split into
        contiguous z-blocks instead, with guard gaps of 2k slices between
        blocks, never by random slices.
    partitions : {"train-val", "train-val-test"}, default "train-val"
        ``"train-val"``: 70/30 (``val_fraction``), SHA-1 of the UID (the
        paper's set-up). ``"train-val-test"``: 70/20/10 by
        :func:`ctvol.curation.partition_of` (SHA-256 mod 10), so the epoch can
        be chosen on validation and the test set stays unseen; a single
        series becomes blocks of 70/20/10 % of its slices.
    strides : sequence of {1, 2}, default (1, 2)
        1: windows (i, i+k); 2: the doubled-stride windows (i, i+2k).
    crop : int, optional
        Random square crop (pixels) of every sample, the same for all its
        channels; None returns whole slices.
    keys : sequence of str, optional
        Only these series.
    seed : int, default 0
        Crops are drawn from ``(seed, epoch, index)``: reproducible, and
        independent of the number of DataLoader workers.
    val_fraction : float, default 0.3
        Validation share with ``partitions="train-val"``.
    skip_blank : bool, default True
        When the store holds curation labels (``ctvol curate``), leave out
        every window that touches a slice labelled blank (the paper trains
        on non-blank slices only).
    blocks : mapping, optional
        Explicit contiguous z-blocks per series, overriding ``partitions``:
        ``{series_uid_or_key: {"train": [[lo, hi], ...], "val": [...],
        "test": [...]}}`` with slice index ranges ``[lo, hi)``. A window lies
        entirely inside one block; series not listed feed no split.
        :func:`check_blocks` validates the guard gaps. This is how the
        bundled models were trained (``pipelines/default_models.json``).
    body_fraction : float, default 0
        A random crop must have at least this fraction of its pixels above
        -500 HU in the first input slice (the body, not the air around it);
        up to ``crop_tries`` draws, then the draw with the most body is kept.

    Each item is ``(x, y)``: float32 arrays (2, H, W) and (k-1, H, W) in
    [0, 1] (HU clipped to [-1024, 1024]).

    Inside DataLoader workers, local stores are read through the zarrs codec
    pipeline when it is installed (``pip install ctvol[fast]``), about twice
    as cheap per window as zarr's own; the main process never uses it, as a
    process that decoded with zarrs cannot safely fork workers. Set the
    environment variable ``CTVOL_ZARRS=0`` to opt out (docs/training.md).

    Raises
    ------
    ValueError
        No series long enough for the factor in the requested split.
    """

    def __init__(
        self,
        store: str | os.PathLike[str],
        factor: int,
        *,
        split: str = "train",
        strides: Sequence[int] = (1, 2),
        crop: int | None = None,
        keys: Sequence[str] | None = None,
        seed: int = 0,
        val_fraction: float = 0.3,
        partitions: str = "train-val",
        skip_blank: bool = True,
        window: tuple[float, float] = HU_WINDOW,
        storage_options: dict[str, Any] | None = None,
        blocks: Mapping[str, Mapping[str, Sequence[Sequence[int]]]] | None = None,
        body_fraction: float = 0.0,
        crop_tries: int = 8,
    ) -> None:
        if isinstance(factor, bool) or not isinstance(factor, int) or factor < 2:
            raise OptionError(f"factor must be an integer >= 2, got {factor!r}")
        if partitions not in ("train-val", "train-val-test"):
            raise OptionError(f"partitions must be 'train-val' or 'train-val-test', "
                              f"got {partitions!r}")
        valid = ("train", "val", "test", "all") \
            if partitions == "train-val-test" or blocks is not None else ("train", "val", "all")
        if split not in valid:
            raise OptionError(f"split must be one of {valid} with partitions={partitions!r}, "
                              f"got {split!r}")
        self.partitions = partitions
        if not set(strides) <= {1, 2} or not strides:
            raise OptionError(f"strides must be a non-empty subset of (1, 2), got {strides!r}")
        self.store, self.factor, self.split = store_url(store), factor, split
        self.crop, self.seed, self.window = crop, seed, window
        self.storage_options = storage_options
        self.epoch = 0
        self.body_fraction, self.crop_tries = float(body_fraction), int(crop_tries)
        self.blocks = None if blocks is None else {str(k): v for k, v in blocks.items()}
        root = open_store(store, storage_options=storage_options)
        series = series_attrs(root)
        if keys is not None:
            series = {k: v for k, v in series.items() if k in set(keys)}
        self.shapes = {k: tuple(root[f"series/{k}/hu"].shape) for k in series}
        single = len(series) == 1
        windows: list[Window] = []
        too_short = []
        self.blank_skipped = 0
        for key, attrs in sorted(series.items()):
            n = self.shapes[key][0]
            uid = attrs.get("series_uid", key)
            if self.blocks is not None:
                ranges = self._block_ranges(key, uid, n, split)
            else:
                ranges = [self._z_range(n, split, single, uid, val_fraction)]
            found = [Window(key, i, s) for lo, hi in ranges for s in strides
                     for i in range(lo, hi - factor * s)]
            blank = _blank_slices(root, key) if skip_blank else None
            if blank is not None:
                kept = [w for w in found
                        if not blank[w.start:w.start + factor * w.step + 1].any()]
                self.blank_skipped += len(found) - len(kept)
                found = kept
            if not found:
                too_short.append(f"{key} ({n} slices)")
            windows.extend(found)
        if not windows:
            raise DataError(
                f"no {split} windows for factor {factor} in {self.store}: a window needs "
                f"{factor * min(strides) + 1} contiguous slices "
                f"(series: {', '.join(too_short) or 'none in this split'}); "
                "use a smaller factor, more series, or split='all'"
            )
        self.windows = windows
        self._hu = HuHandles(self.store, storage_options, config=_read_config)

    def _block_ranges(self, key: str, uid: str, n: int, split: str) -> list[tuple[int, int]]:
        """The ``[lo, hi)`` blocks of one series in ``split`` (``blocks=``)."""
        assert self.blocks is not None
        spec = self.blocks.get(uid, self.blocks.get(key))
        if spec is None:
            return []
        names = ("train", "val", "test") if split == "all" else (split,)
        out = []
        for name in names:
            for lo, hi in spec.get(name, []):
                if not 0 <= lo < hi <= n:
                    raise OptionError(f"block {name} [{lo}, {hi}) of series {key} is outside "
                                      f"its {n} slices; fix the blocks file")
                out.append((int(lo), int(hi)))
        return out

    def _z_range(self, n: int, split: str, single: bool, uid: str,
                 val_fraction: float) -> tuple[int, int]:
        """Slices [lo, hi) of a series that belong to the split."""
        if split == "all":
            return 0, n
        three = self.partitions == "train-val-test"
        if not single:
            side = partition_of(uid) if three else split_of(uid, val_fraction)
            return (0, n) if side == split else (0, 0)
        guard = 2 * self.factor
        if not three:
            cut = int(round(n * (1 - val_fraction)))
            return (0, max(0, cut - guard)) if split == "train" else (cut, n)
        c1, c2 = int(round(n * 0.7)), int(round(n * 0.9))
        return {"train": (0, max(0, c1 - guard)), "val": (c1, max(c1, c2 - guard)),
                "test": (c2, n)}[split]

    def __len__(self) -> int:
        return len(self.windows)

    def set_epoch(self, epoch: int) -> None:
        """New random crops each epoch (call before iterating)."""
        self.epoch = int(epoch)

    def _array(self, key: str) -> Any:
        return self._hu(key)

    def read(self, w: Window) -> tuple[np.ndarray, np.ndarray]:
        """The HU slices of one window: inputs (2, H, W), targets (k-1, H, W), int16."""
        arr = self._array(w.key)
        k = self.factor
        a, b = w.inputs(k)
        span = arr[a : b + 1 : w.step]  # one read: inputs and targets, nothing else
        return span[[0, -1]], span[1:-1]

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        w = self.windows[index]
        x, y = self.read(w)
        if self.crop is not None:
            h, wd = x.shape[-2:]
            c = min(self.crop, h, wd)
            rng = np.random.default_rng((self.seed, self.epoch, index))
            # Draws stop at the first crop with enough body (at once without
            # body_fraction); otherwise the one with the most body is kept.
            best = (-1.0, 0, 0)
            for _ in range(max(1, self.crop_tries)):
                r0, c0 = int(rng.integers(0, h - c + 1)), int(rng.integers(0, wd - c + 1))
                frac = float(np.mean(x[0, r0 : r0 + c, c0 : c0 + c] > BODY_HU)) \
                    if self.body_fraction > 0 else 1.0
                if frac > best[0]:
                    best = (frac, r0, c0)
                if frac >= self.body_fraction:
                    break
            _, r0, c0 = best
            x, y = x[:, r0 : r0 + c, c0 : c0 + c], y[:, r0 : r0 + c, c0 : c0 + c]
        return to_unit(x, self.window), to_unit(y, self.window)
