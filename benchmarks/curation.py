"""Blank-slice classification throughput: ``ctvol.classify_slices`` vs a bare loop.

Data (``setup_cache``, untimed): ``ctvol.testing.head_phantom((64, 512, 512))``
at 0.5 mm pixels, int16 HU, tiled forward/reversed to ``SLICES`` = 128 slices,
with every 8th slice replaced by air (-1000 HU) so both classes occur.

- Dask path: ``classify_slices(ds).values`` (the default rule) on a volume
  chunked by ``CHUNK`` = 32 slices (the store's shard), threaded scheduler with
  1 and 2 threads: one task per block, each running the rule on its slices.
- Bare loop: the same rule (``ctvol.curation.body_fraction`` on one slice, then
  the threshold), slice by slice, one thread: what a user would write without
  ctvol's graph.

``setup`` checks both give the same labels. ``track_*`` report slices/s (best
of ``REPEATS``); ``track_ratio_dask_vs_loop`` times both alternately in one
call so the ratio survives a noisy machine (``../shared/MEASURED.md``).
"""

import time
from pathlib import Path

import numpy as np

SLICES = 128
CHUNK = 32
PIXEL_MM = 0.5
THREADS = [1, 2]
REPEATS = 3


def _write_data():
    from ctvol.testing import head_phantom

    base = head_phantom((64, 512, 512), seed=0)
    hu = np.concatenate([base, base[::-1]])[:SLICES]
    hu[::8] = -1000
    path = Path("curation-512.npy").resolve()
    np.save(path, hu)
    return str(path)


_write_data.timeout = 300


def _elapsed(fn):
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _best(fn):
    return min(_elapsed(fn) for _ in range(REPEATS))


def bare_loop(hu, pixel_mm=PIXEL_MM):
    """The rule slice by slice, no graph: labels (1 = body) as int8."""
    from ctvol.curation import body_fraction
    from ctvol.curation._blank import MIN_FRACTION

    out = np.empty(hu.shape[0], dtype=np.int8)
    for i in range(hu.shape[0]):
        out[i] = body_fraction(hu[i : i + 1], (pixel_mm, pixel_mm))[0] >= MIN_FRACTION
    return out


class ClassifyThroughput:
    """Slices/s of the blank rule through the Dask path (1 or 2 threads) and the bare loop."""

    setup_cache = staticmethod(_write_data)
    params = [THREADS]
    param_names = ["threads"]
    unit = "slices/s"
    timeout = 600

    def setup(self, path, threads):
        import xarray as xr

        self.hu = np.load(path)
        z = np.arange(SLICES, dtype=float)
        self.ds = xr.Dataset(
            {"hu": (("z", "y", "x"), self.hu)}, coords={"z": z},
            attrs={"spacing": [1.0, PIXEL_MM, PIXEL_MM]},
        ).chunk({"z": CHUNK})
        expected = bare_loop(self.hu)
        if not np.array_equal(self.classify(threads), expected):
            raise RuntimeError("classify_slices differs from the bare loop")

    def classify(self, threads):
        import dask

        import ctvol

        with dask.config.set(scheduler="threads", num_workers=threads):
            return ctvol.classify_slices(self.ds).values

    def track_dask(self, path, threads):
        return SLICES / _best(lambda: self.classify(threads))

    def track_loop(self, path, threads):
        return SLICES / _best(lambda: bare_loop(self.hu))

    def track_ratio_dask_vs_loop(self, path, threads):
        """Dask slices/s (``threads`` threads) over the 1-thread bare loop's, timed alternately."""
        loop, dsk = [], []
        for _ in range(REPEATS):
            loop.append(_elapsed(lambda: bare_loop(self.hu)))
            dsk.append(_elapsed(lambda: self.classify(threads)))
        return min(loop) / min(dsk)

    track_ratio_dask_vs_loop.unit = "ratio"


class ClassifyPeakMem:
    """Peak memory of classifying a lazily tiled volume of 128, 512, 2048 slices.

    The volume is dask views of the 128-slice base (no copies), classified
    block by block; only the (z,) labels are kept, so the peak must stay flat
    as the length grows (asv: the process's peak RSS; compare lengths).
    """

    setup_cache = staticmethod(_write_data)
    params = [[128, 512, 2048]]
    param_names = ["slices"]
    timeout = 600

    def setup(self, path, slices):
        import dask.array as da
        import xarray as xr

        import ctvol.curation  # noqa: F401  (imported before the peak is measured)

        base = da.from_array(np.load(path), chunks=(CHUNK, -1, -1))
        reps = -(-slices // SLICES)
        hu = da.concatenate([base if i % 2 == 0 else base[::-1] for i in range(reps)])
        self.ds = xr.Dataset(
            {"hu": (("z", "y", "x"), hu[:slices].rechunk({0: CHUNK}))},
            coords={"z": np.arange(slices, dtype=float)},
            attrs={"spacing": [1.0, PIXEL_MM, PIXEL_MM]},
        )

    def peakmem_classify(self, path, slices):
        import dask

        import ctvol

        with dask.config.set(scheduler="threads", num_workers=2):
            ctvol.classify_slices(self.ds).values  # noqa: B018
