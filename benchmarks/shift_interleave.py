"""Shift-and-interleave throughput: ``ctvol.shift_interleave`` against a bare loop, same run.

Data (built in ``setup``, untimed): ``ctvol.testing.head_phantom((SLICES, SIZE, SIZE))``,
int16 HU, as a Dataset chunked ``CHUNK`` slices along z (4 blocks).

Both sides refine the same predictor (:func:`predict`: in-plane Gaussian,
sigma 1 pixel, then HU > 300 as uint8 labels -- per slice, so it needs no
``predict_depth``) by ``FACTOR`` along z, pure interleave, order 1:
``(SLICES - 1) * FACTOR + 1`` output slices from ``FACTOR`` predictor runs over
the volume. The baseline (:func:`bare_loop`) is the loop a user would write on
the whole in-memory volume, one thread: for each shift j,
``scipy.ndimage.shift(order=1, mode="nearest")`` to float32, ``predict``,
strided assignment into the output. ``setup`` checks that both give the same
labels, bit for bit.

``track_*`` report output slices/s, best of ``REPEATS`` calls; ``track_ratio``
times both sides alternately in one call (``../shared/MEASURED.md``: compare
ratios measured in one run). The Dask side runs on the threaded scheduler with
1 and 2 threads (graph, halos, block assembly, ``.values`` concatenation
included).
"""

import time

import numpy as np

FACTOR = 5
SLICES = 32
SIZE = 256
CHUNK = 8
THREADS = [1, 2]
REPEATS = 3


def predict(block):
    """Bone labels: in-plane Gaussian (sigma 1 px), HU > 300."""
    from scipy import ndimage

    return (ndimage.gaussian_filter(block, sigma=(0, 1, 1)) > 300).astype(np.uint8)


def bare_loop(hu, k=FACTOR):
    """The baseline: every shifted copy of the whole volume, predicted, interleaved."""
    from scipy import ndimage

    n = hu.shape[0]
    out = np.empty(((n - 1) * k + 1, *hu.shape[1:]), dtype=np.uint8)
    x = hu.astype(np.float32)
    for j in range(k):
        copy = x if j == 0 else ndimage.shift(x, (-j / k, 0, 0), output=np.float32, order=1,
                                              mode="nearest")
        out[j::k] = predict(copy)[: out[j::k].shape[0]]
    return out


def _elapsed(fn):
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _best(fn):
    return min(_elapsed(fn) for _ in range(REPEATS))


class ShiftInterleave:
    """Output slices per second: Dask graph (1, 2 threads) vs the bare loop."""

    params = [THREADS]
    param_names = ["threads"]
    unit = "slices/s"
    timeout = 300

    def setup(self, threads):
        import xarray as xr

        from ctvol.testing import head_phantom

        self.hu = head_phantom((SLICES, SIZE, SIZE), seed=0)
        z = 5.0 * np.arange(SLICES)
        self.ds = xr.Dataset({"hu": (("z", "y", "x"), self.hu)},
                             coords={"z": z}).chunk({"z": CHUNK})
        self.n_out = (SLICES - 1) * FACTOR + 1
        if not np.array_equal(self.refine(threads), bare_loop(self.hu)):
            raise RuntimeError("shift_interleave differs from the bare loop")

    def refine(self, threads):
        import dask

        import ctvol

        with dask.config.set(scheduler="threads", num_workers=threads):
            return ctvol.shift_interleave(self.ds, predict, FACTOR, axis="z",
                                          dtype=np.uint8).values

    def track_shift_interleave(self, threads):
        return self.n_out / _best(lambda: self.refine(threads))

    def track_bare_loop(self, threads):
        return self.n_out / _best(lambda: bare_loop(self.hu))

    def track_ratio(self, threads):
        """Dask (``threads`` threads) slices/s over the 1-thread bare loop's, timed alternately."""
        loop, dsk = [], []
        for _ in range(REPEATS):
            loop.append(_elapsed(lambda: bare_loop(self.hu)))
            dsk.append(_elapsed(lambda: self.refine(threads)))
        return min(loop) / min(dsk)

    track_ratio.unit = "ratio"


if __name__ == "__main__":  # one direct run: python benchmarks/shift_interleave.py
    for t in THREADS:
        b = ShiftInterleave()
        b.setup(t)
        loop, dsk = [], []
        for _ in range(REPEATS):
            loop.append(_elapsed(lambda b=b: bare_loop(b.hu)))
            dsk.append(_elapsed(lambda b=b, t=t: b.refine(t)))
        print(f"threads={t}: loop {b.n_out / min(loop):.1f} slices/s, dask "
              f"{b.n_out / min(dsk):.1f} slices/s, ratio {min(loop) / min(dsk):.2f} "
              f"({SLICES}x{SIZE}x{SIZE} int16 -> {b.n_out} slices, k={FACTOR}, "
              f"z-chunk {CHUNK})", flush=True)
