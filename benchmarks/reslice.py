"""Reslice throughput: ``ctvol.reslice`` against the bare loops, same data, same run.

Data (written once by ``setup_cache`` into asv's cache folder, untimed):

- ``phantom-512.npy``: ``ctvol.testing.head_phantom((64, 512, 512))``, int16
  HU, tiled forward/reversed (as in ``ingest.py``) to the lengths below.
- ``phantom-256-peak.npy``: the same at 256 x 256, for the peak-memory runs
  (its own ``setup_cache``, so those runs load 8 MB and nothing else).

Linear (``method="linear"``, factor 3): ``LINEAR_SLICES`` = 129 input slices
in z-chunks of 32 (4 full blocks + the last slice, so 2 threads share the
work evenly) -> 385 output slices, 256 of them new. The whole graph is
computed (``.hu.values``: output blocks concatenated into one array) on the
threaded scheduler with 1 and 2 threads. The baseline is the tight loop a
user would write (:func:`linear_loop`): for each pair, float32
``a + (b - a) * w`` in place, ``np.rint``, cast to int16 into a
preallocated output, one thread. ``setup`` checks that both give the same
int16 volume, bit for bit.

U-net (``method="unet"``, factor 3, in-memory ``ResliceModel`` with random
weights, ``UNet(3, depth=4, base=16)``, batch 4, device cpu): 9 input slices
at 512 x 512 = 8 pairs, one z-block. The baseline is the bare forward loop
(:func:`bare_forward`): ``model.net(x[s:s+4])`` over the same pairs, already
windowed to [0, 1] and in channels_last, under ``torch.inference_mode()``.
The ratio is therefore the framework's overhead: graph, windowing, pair
stacking, layout conversion, HU rounding, block assembly. Both sides run with
``torch.set_num_threads(TORCH_THREADS)`` (2, the machine's cores) and the
reslice side on a 1-thread dask scheduler, so torch's intra-op threads are
the only parallelism on either side.

``track_*`` report new slices/s (linear) or pairs/s (U-net), best of
``REPEATS`` calls (higher is better: asv compare shows a drop as an
"improvement"). The ``track_ratio_*`` benchmarks time both sides alternately
in one call, so the ratio survives a noisy machine (``../shared/MEASURED.md``:
compare ratios measured in one run, not absolute figures).
"""

import time
from pathlib import Path

import numpy as np

FACTOR = 3
CHUNK = 32  # z-chunk of the input (acquired slices per block)
PHANTOM_SLICES = 64  # head_phantom at 512^2 takes ~4 s per 64 slices: tile it
LINEAR_SLICES = 129  # 4 blocks of 32 pairs + the last slice: 256 new slices
THREADS = [1, 2]
REPEATS = 3  # timed calls per track_* value (best of)

UNET_SLICES = 9  # 8 pairs, one block: ~1.5-3 s per call at 3-5 pairs/s
UNET_BATCH = 4
UNET_BASE = 16  # the paper-like default (1.94 M parameters)
TORCH_THREADS = 2

PEAK_SIZE = 256  # in-plane size of the peak-memory volumes
PEAK_LENGTHS = [64, 256, 1024]  # input slices


def _write_data():
    """Write the 512^2 base phantom into asv's cache folder (the cwd); return its path."""
    from ctvol.testing import head_phantom

    path = Path("phantom-512.npy").resolve()
    np.save(path, head_phantom((PHANTOM_SLICES, 512, 512), seed=0))
    return {512: str(path)}


_write_data.timeout = 300  # seconds; asv reads setup_cache's own timeout attribute


def _tile(base, n):
    """``n`` slices: forward and reversed copies of ``base``, so neighbours stay related."""
    reps = -(-n // base.shape[0])
    return np.concatenate([base if i % 2 == 0 else base[::-1] for i in range(reps)])[:n]


def _dataset(hu):
    """A volume as ``ctvol.reslice`` takes it: ``hu`` (z, y, x), z in mm, chunked along z."""
    import xarray as xr

    z = 3.0 * np.arange(hu.shape[0])
    return xr.Dataset({"hu": (("z", "y", "x"), hu)}, coords={"z": z}).chunk({"z": CHUNK})


def linear_loop(hu, k=FACTOR):
    """The linear baseline: one pair at a time, float32 in place, into one output array.

    Same arithmetic as ``ctvol.inference.generate_linear`` (``a + (b - a) * w``,
    ``w = float32(j) / float32(k)``), so the result is bit-identical.
    """
    n = hu.shape[0]
    out = np.empty(((n - 1) * k + 1, *hu.shape[1:]), dtype=np.int16)
    out[::k] = hu
    weights = [np.float32(j) / np.float32(k) for j in range(1, k)]
    a = np.empty(hu.shape[1:], dtype=np.float32)
    d = np.empty_like(a)
    tmp = np.empty_like(a)
    for i in range(n - 1):
        a[...] = hu[i]
        np.subtract(hu[i + 1], a, out=d)
        for j, w in enumerate(weights, start=1):
            np.multiply(d, w, out=tmp)
            tmp += a
            np.rint(tmp, out=tmp)
            out[i * k + j] = tmp  # the cast to int16
    return out


def bare_forward(net, pairs, batch_size=UNET_BATCH):
    """The U-net baseline: the network alone over pre-windowed channels_last pairs."""
    import torch

    with torch.inference_mode():
        return [net(pairs[s : s + batch_size]) for s in range(0, pairs.shape[0], batch_size)]


def _elapsed(fn):
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _best(fn):
    return min(_elapsed(fn) for _ in range(REPEATS))


def best_alternating(fns, repeats=None):
    """Best time of each callable in ``fns`` (name -> fn), the calls alternating
    ``repeats`` times (default ``REPEATS``), so that the machine's load drifts
    alike for all of them (also used by ``linear_overhead.py`` and
    ``unet_overhead.py``)."""
    times = {name: [] for name in fns}
    for _ in range(REPEATS if repeats is None else repeats):
        for name, fn in fns.items():
            times[name].append(_elapsed(fn))
    return {name: min(v) for name, v in times.items()}


def _ratio_alternating(num, den):
    """Best time of ``num`` over best time of ``den``, the two called alternately."""
    t = best_alternating({"num": num, "den": den})
    return t["num"] / t["den"]


class _Linear:
    setup_cache = staticmethod(_write_data)
    timeout = 300

    def setup(self, data, *params):
        self.hu = _tile(np.load(data[512]), LINEAR_SLICES)
        self.ds = _dataset(self.hu)
        self.new = (LINEAR_SLICES - 1) * (FACTOR - 1)
        # Warm-up (imports, first-touch of the input) and the same-output check.
        expected = linear_loop(self.hu)
        if not np.array_equal(self.reslice(1), expected):
            raise RuntimeError("reslice(method='linear') differs from the baseline loop")

    def reslice(self, threads):
        """The whole graph of one linear reslice, computed on ``threads`` threads."""
        import dask

        import ctvol

        with dask.config.set(scheduler="threads", num_workers=threads):
            return ctvol.reslice(self.ds, FACTOR, method="linear").hu.values


class LinearThroughput(_Linear):
    """New 512^2 slices per second, best of ``REPEATS`` calls (plus one same-run ratio)."""

    params = [THREADS]
    param_names = ["threads"]
    unit = "slices/s"

    def track_reslice_linear(self, data, threads):
        return self.new / _best(lambda: self.reslice(threads))

    def track_ratio_linear_vs_loop(self, data, threads):
        """Reslice (``threads`` threads) slices/s over the 1-thread loop's, timed alternately.

        Goal (issue): >= 0.7 on 1 thread, more on 2.
        """
        return _ratio_alternating(lambda: linear_loop(self.hu), lambda: self.reslice(threads))

    track_ratio_linear_vs_loop.unit = "ratio"


class LinearLoop(_Linear):
    """The baseline loop alone, for scale (one thread: it is a plain numpy loop)."""

    unit = "slices/s"
    number = 1
    repeat = (3, 10, 20.0)

    def track_loop_linear(self, data):
        return self.new / _best(lambda: linear_loop(self.hu))

    def time_loop_linear(self, data):
        linear_loop(self.hu)


class LinearTime(_Linear):
    """Wall time of one linear reslice (whole graph, ``.hu.values``)."""

    params = [THREADS]
    param_names = ["threads"]
    number = 1
    repeat = (3, 10, 20.0)

    def time_reslice_linear(self, data, threads):
        self.reslice(threads)


def zarr_write(out, path):
    """The loop's output written as ctvol lays out ``hu``, with zarr alone: chunks
    of one slice, shards of 32, lz4 + bit-shuffle (``ctvol.io._layout``)."""
    import zarr

    from ctvol.io._layout import SHARD_SLICES, hu_codec

    arr = zarr.create_array(path, shape=out.shape, dtype=np.int16,
                            chunks=(1, *out.shape[1:]), shards=(SHARD_SLICES, *out.shape[1:]),
                            compressors=hu_codec("lz4"), overwrite=True)
    arr[:] = out


class LinearStoreThroughput(_Linear):
    """Linear x3 written to a store: ``ctvol.write(ctvol.reslice(...))`` on one dask
    thread against the loop plus the same zarr write a user would make
    (:func:`zarr_write`), timed alternately. Goal (issue 18): >= 0.7."""

    unit = "ratio"

    def setup(self, data):
        import tempfile

        super().setup(data)
        self.tmp = Path(tempfile.mkdtemp(prefix="ctvol-bench-"))

    def teardown(self, data):
        import shutil

        shutil.rmtree(self.tmp, ignore_errors=True)

    def loop_store(self):
        zarr_write(linear_loop(self.hu), str(self.tmp / "loop.zarr"))

    def write(self):
        import dask

        import ctvol

        with dask.config.set(scheduler="threads", num_workers=1):
            ctvol.write(ctvol.reslice(self.ds, FACTOR, method="linear"), self.tmp / "e.zarr", "s")

    def track_ratio_linear_store_vs_loop(self, data):
        return _ratio_alternating(self.loop_store, self.write)


class UNetThroughput:
    """Slice pairs per second through the U-net, reslice vs the bare forward loop."""

    setup_cache = staticmethod(_write_data)
    timeout = 300
    unit = "pairs/s"

    def setup(self, data):
        import torch

        from ctvol.intensity import to_unit
        from ctvol.models import ResliceModel
        from ctvol.models.unet import UNet

        torch.set_num_threads(TORCH_THREADS)
        torch.manual_seed(0)
        self.model = ResliceModel(UNet(FACTOR, depth=4, base=UNET_BASE)).to("cpu")
        hu = np.load(data[512])[:UNET_SLICES]
        self.ds = _dataset(hu)
        self.pairs_n = UNET_SLICES - 1
        pairs = np.stack([to_unit(hu[:-1]), to_unit(hu[1:])], axis=1)
        self.pairs = torch.from_numpy(pairs).contiguous(memory_format=torch.channels_last)
        # Warm-up: oneDNN primitives, ctvol's model cache (weights digest, layout).
        bare_forward(self.model.net, self.pairs)
        self.reslice()

    def reslice(self):
        import dask

        import ctvol

        # One dask thread: torch's TORCH_THREADS intra-op threads do the parallel work.
        with dask.config.set(scheduler="threads", num_workers=1):
            return ctvol.reslice(self.ds, FACTOR, method="unet", model=self.model,
                                 batch_size=UNET_BATCH, device="cpu").hu.values

    def bare(self):
        return bare_forward(self.model.net, self.pairs)

    def track_unet_pairs_per_s(self, data):
        return self.pairs_n / _best(self.reslice)

    def track_bare_model_pairs_per_s(self, data):
        return self.pairs_n / _best(self.bare)

    def track_ratio_unet_vs_bare(self, data):
        """Reslice pairs/s over bare-forward pairs/s, timed alternately. Goal (issue): >= 0.9."""
        return _ratio_alternating(self.bare, self.reslice)

    track_ratio_unet_vs_bare.unit = "ratio"


def _write_peak_data():
    """Only the 256^2 base, so setup loads 8 MB and the peak is reslice's own."""
    from ctvol.testing import head_phantom

    path = Path(f"phantom-{PEAK_SIZE}-peak.npy").resolve()
    np.save(path, head_phantom((PHANTOM_SLICES, PEAK_SIZE, PEAK_SIZE), seed=0))
    return str(path)


_write_peak_data.timeout = 120


class LinearPeakMem:
    """Peak memory of a linear reslice whose output is reduced blockwise (2 threads).

    ``peakmem_reslice_linear`` computes ``out.hu.max()``: each output block is
    reduced as soon as it is made, so the whole output never exists and the
    peak must not grow with the series length (compare 64, 256, 1024 slices;
    64 slices are only 2 blocks, so 2 threads do not fill the pipeline there).
    The input is lazy too: dask views of one in-memory 64-slice base, tiled
    forward/reversed, so input size does not grow with length either.
    ``peakmem_reslice_linear_values`` materialises the output (``.values``)
    for contrast: its peak grows with length (the output is 3 x 128 kB per
    input slice, held twice while the blocks are concatenated).
    asv reports the whole process's peak RSS, imports included: compare the
    lengths, not the absolute values.
    """

    setup_cache = staticmethod(_write_peak_data)
    params = [PEAK_LENGTHS]
    param_names = ["slices"]
    timeout = 120

    def setup(self, path, slices):
        import dask.array as da
        import xarray as xr

        import ctvol  # noqa: F401  (imported before the peak is measured)

        # One from_array (dask copies a numpy input once per call), tiled lazily.
        base = da.from_array(np.load(path), chunks=(CHUNK, -1, -1))
        reps = -(-slices // base.shape[0])
        hu = da.concatenate([base if i % 2 == 0 else base[::-1] for i in range(reps)])
        hu = hu[:slices].rechunk({0: CHUNK})
        z = 3.0 * np.arange(slices)
        self.ds = xr.Dataset({"hu": (("z", "y", "x"), hu)}, coords={"z": z})

    def _out(self):
        import ctvol

        return ctvol.reslice(self.ds, FACTOR, method="linear").hu

    def peakmem_reslice_linear(self, path, slices):
        import dask

        with dask.config.set(scheduler="threads", num_workers=2):
            self._out().max().compute()

    def peakmem_reslice_linear_values(self, path, slices):
        import dask

        with dask.config.set(scheduler="threads", num_workers=2):
            self._out().values  # noqa: B018


class AutoSelfCheckCost:
    """What ``method="auto"`` adds: its self-check against the U-net reslice itself.

    The self-check runs both methods on pairs (i, i+k) of the series' own
    slices, about (N-1)/k U-net pairs, so its cost should be ~1/k of the
    reslice's (N-1) pairs (docs/reslice.md).
    """

    setup_cache = staticmethod(_write_data)
    timeout = 600

    def setup(self, data):
        import torch

        from ctvol.models import ResliceModel
        from ctvol.models.unet import UNet

        torch.set_num_threads(TORCH_THREADS)
        torch.manual_seed(0)
        self.model = ResliceModel(UNet(FACTOR, depth=4, base=UNET_BASE, output="residual"))
        self.ds = _dataset(np.load(data[512])[: 3 * UNET_SLICES + 1])

    def unet(self):
        import dask

        import ctvol

        with dask.config.set(scheduler="threads", num_workers=1):
            return ctvol.reslice(self.ds, FACTOR, method="unet", model=self.model,
                                 batch_size=UNET_BATCH, device="cpu").hu.values

    def check(self):
        import dask

        import ctvol

        with dask.config.set(scheduler="threads", num_workers=1):
            return ctvol.self_check(self.ds, FACTOR, model=self.model, batch_size=UNET_BATCH,
                                    device="cpu")

    def track_ratio_selfcheck_vs_unet_reslice(self, data):
        """Self-check time over U-net reslice time, timed alternately (expect ~1/k)."""
        return 1.0 / _ratio_alternating(self.unet, self.check)

    track_ratio_selfcheck_vs_unet_reslice.unit = "ratio"
