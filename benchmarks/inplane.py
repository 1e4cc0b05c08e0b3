"""In-plane throughput: ``ctvol.upsample_inplane`` and BA/TA through Dask vs bare loops.

Data (written once by ``setup_cache``, untimed): ``head_phantom((32, 256, 256))``
int16 HU, the low-resolution input (256² → 512² at factor 2, the size of the
S2020 experiment).

Bilinear (``method="bilinear"``, factor 2): the 32 slices in z-chunks of
``CHUNK``, whole graph computed (``.hu.values``) on the threaded scheduler with
1 and 2 threads. Baseline (:func:`bilinear_loop`): the loop a user would
write, ``torch.nn.functional.interpolate(mode="bilinear",
align_corners=False)`` per slice, ``np.rint``, int16, into one output array,
one thread. ``setup`` checks both give the same int16 volume.

U-net (in-memory ``InplaneModel`` with random weights, ``InplaneUNet(2,
depth=4, base=16)``, batch 4, cpu): ``UNET_SLICES`` slices, one z-block.
Baseline (:func:`bare_forward`): the network alone on the same slices,
already upsampled and normalised, channels_last, ``torch.inference_mode()``.
The ratio is the framework's overhead (graph, bilinear, normalisation,
HU rounding). Both sides use ``torch.set_num_threads(TORCH_THREADS)`` and a
1-thread dask scheduler.

BA/TA (:func:`ctvol.morphometry.ba_ta`, σ = 1.2 px, 300 HU, tissue -500 HU) on
the 512² volume (32 slices, chunks of ``CHUNK``) vs a loop of
``scipy.ndimage.gaussian_filter`` + thresholds per slice, one thread.

``track_ratio_*`` time both sides alternately in one call (same-run ratios on
a noisy machine, ``../shared/MEASURED.md``); > 1 means the Dask path is faster.
"""

import time
from pathlib import Path

import numpy as np

FACTOR = 2
SLICES = 32
SIZE = 256
CHUNK = 8
THREADS = [1, 2]
REPEATS = 3
UNET_SLICES = 8
UNET_BATCH = 4
TORCH_THREADS = 2
SIGMA, BONE, TISSUE = 1.2, 300.0, -500.0


def _write_data():
    from ctvol.testing import head_phantom

    path = Path(f"inplane-{SIZE}.npy").resolve()
    np.save(path, head_phantom((SLICES, SIZE, SIZE), seed=0))
    return str(path)


_write_data.timeout = 300


def _dataset(hu, chunk=CHUNK):
    import xarray as xr

    n, h, w = hu.shape
    return xr.Dataset({"hu": (("z", "y", "x"), hu)},
                      coords={"z": np.arange(n, dtype=float), "y": 0.9 * np.arange(h),
                              "x": 0.9 * np.arange(w)}).chunk({"z": chunk})


def bilinear_loop(hu, f=FACTOR):
    """One slice at a time through torch's bilinear, rounded into one int16 array."""
    import torch
    import torch.nn.functional as F

    n, h, w = hu.shape
    out = np.empty((n, h * f, w * f), dtype=np.int16)
    with torch.inference_mode():
        for i in range(n):
            t = torch.from_numpy(hu[i].astype(np.float32))[None, None]
            out[i] = np.rint(F.interpolate(t, scale_factor=f, mode="bilinear",
                                           align_corners=False)[0, 0].numpy())
    return out


def bare_forward(net, x, batch_size=UNET_BATCH):
    import torch

    with torch.inference_mode():
        return [net(x[s : s + batch_size]) for s in range(0, x.shape[0], batch_size)]


def ba_ta_loop(hu):
    from scipy.ndimage import gaussian_filter

    out = np.empty(hu.shape[0])
    for i, s in enumerate(hu):
        b = gaussian_filter(s.astype(np.float64), SIGMA)
        out[i] = np.count_nonzero(b >= BONE) / np.count_nonzero(b >= TISSUE)
    return out


def _elapsed(fn):
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _best(fn):
    return min(_elapsed(fn) for _ in range(REPEATS))


def _ratio(baseline, ours):
    a, b = [], []
    for _ in range(REPEATS):
        a.append(_elapsed(baseline))
        b.append(_elapsed(ours))
    return min(a) / min(b)


class Bilinear:
    """Upsampled slices per second, bilinear: Dask path vs the per-slice loop."""

    setup_cache = staticmethod(_write_data)
    params = [THREADS]
    param_names = ["threads"]
    unit = "slices/s"
    timeout = 300

    def setup(self, path, threads):
        self.hu = np.load(path)
        self.ds = _dataset(self.hu)
        if not np.array_equal(self.upsample(threads), bilinear_loop(self.hu)):
            raise RuntimeError("upsample_inplane(method='bilinear') differs from the loop")

    def upsample(self, threads):
        import dask

        import ctvol

        with dask.config.set(scheduler="threads", num_workers=threads):
            return ctvol.upsample_inplane(self.ds, FACTOR, method="bilinear").hu.values

    def track_upsample_bilinear(self, path, threads):
        return SLICES / _best(lambda: self.upsample(threads))

    def track_ratio_bilinear_vs_loop(self, path, threads):
        return _ratio(lambda: bilinear_loop(self.hu), lambda: self.upsample(threads))

    track_ratio_bilinear_vs_loop.unit = "ratio"


class UNet:
    """Slices per second through the in-plane U-net: upsample_inplane vs the bare forward."""

    setup_cache = staticmethod(_write_data)
    unit = "slices/s"
    timeout = 300

    def setup(self, path):
        import torch

        from ctvol._inplane import bilinear, normalise
        from ctvol.models.inplane import InplaneModel
        from ctvol.models.inplane_unet import InplaneUNet

        torch.set_num_threads(TORCH_THREADS)
        torch.manual_seed(0)
        self.model = InplaneModel(InplaneUNet(FACTOR, depth=4, base=16)).to("cpu")
        hu = np.load(path)[:UNET_SLICES]
        self.ds = _dataset(hu, chunk=UNET_SLICES)
        x = normalise(bilinear(hu, FACTOR), -1024.0, 1024.0)[:, None]
        self.x = torch.from_numpy(x).contiguous(memory_format=torch.channels_last)
        bare_forward(self.model.net, self.x)  # warm-up
        self.upsample()

    def upsample(self):
        import dask

        import ctvol

        with dask.config.set(scheduler="threads", num_workers=1):
            return ctvol.upsample_inplane(self.ds, FACTOR, model=self.model,
                                          batch_size=UNET_BATCH, device="cpu").hu.values

    def track_upsample_unet(self, path):
        return UNET_SLICES / _best(self.upsample)

    def track_bare_forward(self, path):
        return UNET_SLICES / _best(lambda: bare_forward(self.model.net, self.x))

    def track_ratio_unet_vs_bare(self, path):
        return _ratio(lambda: bare_forward(self.model.net, self.x), self.upsample)

    track_ratio_unet_vs_bare.unit = "ratio"


class BaTa:
    """BA/TA slices per second: the Dask map vs a gaussian_filter loop (512² slices)."""

    setup_cache = staticmethod(_write_data)
    params = [THREADS]
    param_names = ["threads"]
    unit = "slices/s"
    timeout = 300

    def setup(self, path, threads):
        import ctvol

        with __import__("dask").config.set(scheduler="threads"):
            self.hu = ctvol.upsample_inplane(_dataset(np.load(path)), FACTOR,
                                             method="bilinear").hu.values
        self.ds = _dataset(self.hu)
        if not np.allclose(self.ba_ta(threads), ba_ta_loop(self.hu), rtol=0, atol=0):
            raise RuntimeError("ba_ta differs from the loop")

    def ba_ta(self, threads):
        import dask

        from ctvol.morphometry import ba_ta

        with dask.config.set(scheduler="threads", num_workers=threads):
            return ba_ta(self.ds, sigma=SIGMA, threshold=BONE, tissue=TISSUE).values

    def track_ba_ta(self, path, threads):
        return SLICES / _best(lambda: self.ba_ta(threads))

    def track_ratio_ba_ta_vs_loop(self, path, threads):
        return _ratio(lambda: ba_ta_loop(self.hu), lambda: self.ba_ta(threads))

    track_ratio_ba_ta_vs_loop.unit = "ratio"
