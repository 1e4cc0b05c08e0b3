"""Training input pipeline and step time (issue 4).

- Window sampling (``PairWindows``, 512² slices, factor 3, stride k, whole
  slices, no crop, batch 4) with 0 and 2 DataLoader workers. Goal: the Zarr
  store gives >= 50 % of the in-memory windows/s with workers.

  Two in-memory references, timed alternately with the store in one call (the
  ratios survive a noisy machine, ``../shared/MEASURED.md``):

  * ``track_ratio_store_vs_memory``: the same ``PairWindows`` code through the
    same DataLoader, its volumes held in numpy arrays: only the source of the
    slices differs. This is the goal's ratio.
  * ``track_ratio_store_vs_memory_loop``: a plain Python loop over the numpy
    volume, no DataLoader (the original reference). It also charges the
    store side with batching and the worker-to-parent transfer of float32
    batches, which no store can remove (docs/training.md).

  ``pipeline``: ``"zarr"`` forces zarr-python's default codec pipeline,
  ``"zarrs"`` lets DataLoader workers use the zarrs pipeline (only workers use
  it, so ``workers=0`` with ``"zarrs"`` is skipped; skipped too when zarrs is
  not installed).
- One Adam step of the default architecture (4 levels, 16 filters) on CPU,
  128² crops, batch 4.

Data (``setup_cache``): the real Philips head CT bundled in ``data/sample`` (30
slices), tiled forwards and backwards to 160 slices (5 shards) so that it
compresses like real CT (lz4 + bit-shuffle ~2.3x; the smooth head phantom
compresses ~4.4x and decodes faster than real data).
"""

import os
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "data" / "sample" / "dcm_qa_ct_philips" / "S21570" / "S2020"
N_SLICES = 160
N_WINDOWS = 96
REPEATS = 3  # timed passes per value (best of)


def _write_store():
    import ctvol

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        real = ctvol.ingest(SAMPLE, Path("sample.zarr").resolve()).store
        ds = ctvol.open_series(real, ctvol.list_series(real)[0])
        n = ds.sizes["z"]
        cycle = np.concatenate([np.arange(n), np.arange(n)[::-1]])
        order = np.resize(cycle, N_SLICES)  # neighbours stay neighbours
        tiled = ds[["hu"]].isel(z=order).assign_coords(z=np.arange(N_SLICES) * 1.0)
        tiled = tiled.drop_vars([c for c in tiled.coords if c not in ("z", "y", "x")])
        store = str(Path("train.zarr").resolve())
        ctvol.write(tiled, store, "philips-tiled")
        return store


_write_store.timeout = 900


def _elapsed(fn):
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


class WindowSampling:
    """Windows/s from Zarr (0 or 2 loader workers) vs the same windows from memory."""

    unit = "windows/s"
    setup_cache = staticmethod(_write_store)
    params = [[0, 2], ["zarr", "zarrs"]]
    param_names = ["workers", "pipeline"]
    timeout = 900

    def setup(self, store, workers, pipeline):
        import importlib.util

        import zarr

        from ctvol.training import PairWindows

        if pipeline == "zarrs" and (workers == 0 or importlib.util.find_spec("zarrs") is None):
            raise NotImplementedError("zarrs is used by DataLoader workers only, when installed")
        # Read by _read_config in each (forked) worker: "0" forces zarr's default pipeline.
        os.environ["CTVOL_ZARRS"] = "1" if pipeline == "zarrs" else "0"
        self.windows = PairWindows(store, 3, split="all", strides=(1,))
        self.index = np.random.default_rng(0).permutation(len(self.windows))[:N_WINDOWS]
        volumes = {k: zarr.open_array(self.windows.store, path=f"series/{k}/hu", mode="r")[:]
                   for k in self.windows.shapes}

        class InMemory(PairWindows):
            def _array(self, key):
                return volumes[key]

        self.memory = InMemory(store, 3, split="all", strides=(1,))
        self.volumes = volumes

    def teardown(self, store, workers, pipeline):
        os.environ.pop("CTVOL_ZARRS", None)

    def _load(self, dataset, workers):
        from torch.utils.data import DataLoader, Subset

        loader = DataLoader(Subset(dataset, self.index.tolist()), batch_size=4,
                            num_workers=workers)
        for _ in loader:
            pass

    def _from_store(self, workers):
        self._load(self.windows, workers)

    def _from_memory(self, workers):
        self._load(self.memory, workers)

    def _from_memory_loop(self):
        from ctvol.intensity import to_unit

        for i in self.index:
            w = self.windows.windows[int(i)]
            a, b = w.inputs(3)
            span = self.volumes[w.key][a : b + 1]
            to_unit(span[[0, -1]]), to_unit(span[1:-1])

    def _best(self, *fns):
        """Best-of-REPEATS seconds for each of ``fns``, timed alternately."""
        best = [float("inf")] * len(fns)
        for _ in range(REPEATS):
            for i, fn in enumerate(fns):
                best[i] = min(best[i], _elapsed(fn))
        return best

    def track_store_windows_per_s(self, store, workers, pipeline):
        return N_WINDOWS / self._best(lambda: self._from_store(workers))[0]

    def track_memory_windows_per_s(self, store, workers, pipeline):
        return N_WINDOWS / self._best(lambda: self._from_memory(workers))[0]

    def track_ratio_store_vs_memory(self, store, workers, pipeline):
        sto, mem = self._best(lambda: self._from_store(workers),
                              lambda: self._from_memory(workers))
        return mem / sto

    def track_ratio_store_vs_memory_loop(self, store, workers, pipeline):
        sto, mem = self._best(lambda: self._from_store(workers), self._from_memory_loop)
        return mem / sto

    track_ratio_store_vs_memory.unit = "ratio"
    track_ratio_store_vs_memory_loop.unit = "ratio"


class TrainingStep:
    """Seconds per Adam step: default U-net, 128² crops, batch 4, CPU, channels_last."""

    def setup(self):
        import torch

        from ctvol.models.unet import UNet

        os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", tempfile.mkdtemp())
        torch.manual_seed(0)
        self.net = UNet(3).to(memory_format=torch.channels_last)
        self.opt = torch.optim.Adam(self.net.parameters(), lr=1e-3)
        self.x = torch.rand(4, 2, 128, 128).contiguous(memory_format=torch.channels_last)
        self.y = torch.rand(4, 2, 128, 128)
        self._step()  # warm-up

    def _step(self):
        import torch

        self.opt.zero_grad(set_to_none=True)
        loss = torch.nn.functional.l1_loss(self.net(self.x), self.y)
        loss.backward()
        self.opt.step()

    def time_step_128_batch4(self):
        self._step()


if __name__ == "__main__":
    # Without asv: python benchmarks/training.py [rounds] -- the ratios, same run.
    import sys

    os.chdir(tempfile.mkdtemp())
    store = _write_store()
    for r in range(int(sys.argv[1]) if len(sys.argv) > 1 else 3):
        for workers, pipeline in ((0, "zarr"), (2, "zarr"), (2, "zarrs")):
            b = WindowSampling()
            try:
                b.setup(store, workers, pipeline)
            except NotImplementedError:
                continue
            loader = b.track_ratio_store_vs_memory(store, workers, pipeline)
            loop = b.track_ratio_store_vs_memory_loop(store, workers, pipeline)
            b.teardown(store, workers, pipeline)
            print(f"round {r} workers={workers} pipeline={pipeline}: store/memory "
                  f"same loader {loader:.2f}, vs plain loop {loop:.2f}", flush=True)
