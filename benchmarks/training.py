"""Training input pipeline and step time (issue 4).

- Window sampling from a cohort store (``PairWindows``, 512² slices, factor 3,
  whole slices, no crop) with 0 and 2 DataLoader workers, against sampling the
  same windows from an in-memory numpy array, in the same suite
  (``track_ratio_*`` times both alternately in one call). Goal: >= 50 % of
  in-memory with workers.
- One Adam step of the default architecture (4 levels, 16 filters) on CPU,
  128² crops, batch 4.

Data (``setup_cache``): 48 synthetic 512² slices ingested once.
"""

import os
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

N_WINDOWS = 64


def _write_store():
    import ctvol
    from ctvol.testing import head_phantom, write_dicom_series

    folder = Path("train-src").resolve()
    write_dicom_series(folder, head_phantom((48, 512, 512), seed=0), spacing=(1.0, 0.5, 0.5))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return ctvol.ingest(folder, Path("train.zarr").resolve()).store


_write_store.timeout = 900


def _elapsed(fn):
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


class WindowSampling:
    """Windows/s from Zarr (0 or 2 loader workers) vs from memory."""

    unit = "windows/s"
    setup_cache = staticmethod(_write_store)
    params = [[0, 2]]
    param_names = ["workers"]
    timeout = 600

    def setup(self, store, workers):
        import ctvol
        from ctvol.training import PairWindows

        self.windows = PairWindows(store, 3, split="all", strides=(1,))
        self.index = np.random.default_rng(0).permutation(len(self.windows))[:N_WINDOWS]
        key = ctvol.list_series(store)[0]
        self.volume = ctvol.open_series(store, key).hu.values  # the in-memory reference

    def _from_store(self, workers):
        from torch.utils.data import DataLoader, Subset

        loader = DataLoader(Subset(self.windows, self.index.tolist()), batch_size=4,
                            num_workers=workers)
        for _ in loader:
            pass

    def _from_memory(self):
        from ctvol.intensity import to_unit

        for i in self.index:
            w = self.windows.windows[int(i)]
            a, b = w.inputs(3)
            span = self.volume[a : b + 1]
            to_unit(span[[0, -1]]), to_unit(span[1:-1])

    def track_store_windows_per_s(self, store, workers):
        return N_WINDOWS / min(_elapsed(lambda: self._from_store(workers)) for _ in range(2))

    def track_memory_windows_per_s(self, store, workers):
        return N_WINDOWS / min(_elapsed(self._from_memory) for _ in range(3))

    def track_ratio_store_vs_memory(self, store, workers):
        mem = min(_elapsed(self._from_memory) for _ in range(3))
        sto = min(_elapsed(lambda: self._from_store(workers)) for _ in range(2))
        return mem / sto

    track_ratio_store_vs_memory.unit = "ratio"


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
