"""Per-slice metric throughput: ``ctvol.metrics`` through Dask vs a scikit-image loop.

Data (written once by ``setup_cache``, untimed): ``head_phantom((32, 512, 512))``
int16 HU as the truth and, as the test volume, each slice replaced by the
mean of its two neighbours (the linear inter-slice estimate, so differences
are realistic edges, not noise).

Dask path (what ``ctvol.evaluate`` runs): :func:`ctvol.metrics.map_slice_metrics`
over z-chunks of ``CHUNK`` slices, computed on the threaded scheduler with 1
and 2 threads; PSNR, SSIM and MSE of every slice on the paper's [0, 1] scale
(clip to [-1024, 1024] HU, data range 1.0). Baseline: the loop a user would
write, ``ctvol.intensity.to_unit`` on each slice pair and
``skimage.metrics.peak_signal_noise_ratio`` / ``structural_similarity`` /
``mean_squared_error``, one thread. ``setup`` checks both agree to 1e-6.

``track_*`` report slices/s, best of ``REPEATS``; ``track_ratio_*`` times both
sides alternately in one call (same-run ratio; goal from the issue: >= 1 on
one thread, higher with two).
"""

import time
from pathlib import Path

import numpy as np

SLICES = 32
SIZE = 512
CHUNK = 8
THREADS = [1, 2]
REPEATS = 3


def _write_data():
    from ctvol.testing import head_phantom

    truth = head_phantom((SLICES + 2, SIZE, SIZE), seed=1)
    test = ((truth[:-2].astype(np.int32) + truth[2:]) // 2).astype(np.int16)
    path = Path("metrics-512.npz").resolve()
    np.savez(path, truth=truth[1:-1], test=test)
    return str(path)


_write_data.timeout = 300


def skimage_loop(truth, test):
    from skimage.metrics import mean_squared_error, peak_signal_noise_ratio, structural_similarity

    from ctvol.intensity import to_unit

    rows = []
    for a, b in zip(truth, test, strict=True):
        a, b = to_unit(a), to_unit(b)
        rows.append((peak_signal_noise_ratio(a, b, data_range=1.0),
                     structural_similarity(a, b, data_range=1.0), mean_squared_error(a, b)))
    return np.array(rows)


def _elapsed(fn):
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


class MetricsThroughput:
    """PSNR + SSIM + MSE per 512^2 slice: Dask path on 1 and 2 threads vs the skimage loop."""

    setup_cache = staticmethod(_write_data)
    timeout = 300
    params = [THREADS]
    param_names = ["threads"]
    unit = "slices/s"

    def setup(self, path, threads):
        import dask.array as da

        data = np.load(path)
        self.truth, self.test = data["truth"], data["test"]
        self.dtruth = da.from_array(self.truth, chunks=(CHUNK, -1, -1))
        self.dtest = da.from_array(self.test, chunks=(CHUNK, -1, -1))
        got = self.dask_path(threads)[:, 0, :]
        if not np.allclose(got, skimage_loop(self.truth, self.test), rtol=0, atol=1e-6):
            raise RuntimeError("ctvol.metrics disagrees with scikit-image")

    def dask_path(self, threads):
        import dask

        from ctvol.metrics import map_slice_metrics

        with dask.config.set(scheduler="threads", num_workers=threads):
            return map_slice_metrics(self.dtruth, self.dtest).compute()

    def track_dask_metrics(self, path, threads):
        return SLICES / min(_elapsed(lambda: self.dask_path(threads)) for _ in range(REPEATS))

    def track_ratio_dask_vs_skimage_loop(self, path, threads):
        """Dask path (``threads``) slices/s over the 1-thread skimage loop's, timed alternately."""
        loop, ours = [], []
        for _ in range(REPEATS):
            loop.append(_elapsed(lambda: skimage_loop(self.truth, self.test)))
            ours.append(_elapsed(lambda: self.dask_path(threads)))
        return min(loop) / min(ours)

    track_ratio_dask_vs_skimage_loop.unit = "ratio"


class SkimageLoop:
    """The baseline loop alone, for scale."""

    setup_cache = staticmethod(_write_data)
    timeout = 300
    unit = "slices/s"

    def setup(self, path):
        data = np.load(path)
        self.truth, self.test = data["truth"], data["test"]

    def track_skimage_loop(self, path):
        return SLICES / min(_elapsed(lambda: skimage_loop(self.truth, self.test))
                            for _ in range(REPEATS))


class MetricsPeakMem:
    """Peak memory of per-slice metrics reduced with Dask, growing series length.

    The truth is a lazy tiling (dask views) of the 32-slice volume to 64, 256
    and 1024 slices; the test volume is the truth shifted by one slice. Only
    the mean PSNR/SSIM/MSE is computed, so the per-block work is freed as soon
    as it is reduced: the peak must not grow with length (asv reports the
    process's peak RSS; compare lengths, not absolute values).
    """

    setup_cache = staticmethod(_write_data)
    params = [[64, 256, 1024]]
    param_names = ["slices"]
    timeout = 600

    def setup(self, path, slices):
        import dask.array as da

        import ctvol.metrics  # noqa: F401  (imported before the peak is measured)

        base = da.from_array(np.load(path)["truth"], chunks=(CHUNK, -1, -1))
        reps = -(-(slices + 1) // base.shape[0])
        hu = da.concatenate([base if i % 2 == 0 else base[::-1] for i in range(reps)])
        self.truth = hu[:slices].rechunk({0: CHUNK})
        self.test = hu[1:slices + 1].rechunk({0: CHUNK})

    def peakmem_dask_metrics_mean(self, path, slices):
        import dask

        from ctvol.metrics import map_slice_metrics

        with dask.config.set(scheduler="threads", num_workers=2):
            map_slice_metrics(self.truth, self.test).mean(axis=0).compute()
