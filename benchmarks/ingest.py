"""Ingest throughput: ``ctvol.ingest`` against the bare decode loop, same files, same run.

Data (written once by ``setup_cache``, untimed):

- ``phantom-32``, ``phantom-512``: synthetic head-phantom series, 512 x 512,
  Explicit VR LE, shuffled file names, written with :mod:`ctvol.testing`.
  Compare ``peakmem_ingest`` across the two: ingest streams 32-slice shards,
  so its peak memory must not grow with series length (the decode loop's does).
- ``philips-30``: the real Philips head CT bundled in ``data/sample`` (30
  slices plus a DIRFILE index, which ingest excludes); always present.
- ``philips-140``: the full 140-slice series from ``../shared/data`` when it
  exists (skipped otherwise).

The baseline is the bare decode loop a user would write: ``pydicom.dcmread`` +
``apply_modality_lut`` + ``np.stack`` over the same slice files, in memory,
nothing written. ``track_*`` report slices/s (higher is better: asv compare
shows a drop as an "improvement"); ``track_ratio_ingest_vs_baseline`` times
both alternately in one call, so the ratio survives a noisy machine
(``../shared/MEASURED.md``: compare ratios measured in one run).

Every ingest call writes a fresh store under a per-setup temporary folder:
ingest skips complete, identical series, so re-using a store would time a
no-op. ``number = 1`` and asv re-runs ``setup``/``teardown`` between samples.
"""

import itertools
import os
import shutil
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "data" / "sample" / "dcm_qa_ct_philips" / "S21570" / "S2020"
FULL = REPO.parent / "shared" / "data" / "dcm_qa_ct_philips" / "S21570" / "S2020"

SYNTHETIC = (32, 512)  # 512: fixed per-run costs (catalog, store) amortised
PHANTOM_SLICES = 64  # head_phantom at 512^2 takes ~4 s per 64 slices: tile it
SERIES = [f"phantom-{n}" for n in SYNTHETIC] + ["philips-30", "philips-140"]
WORKERS = [1, 2]
REPEATS = 3  # timed calls per track_* value (best of)


def _write_data():
    """Write the synthetic series into asv's cache folder (the cwd); list every series."""
    from ctvol.io.dicom import find_files, read_headers
    from ctvol.testing import head_phantom, write_dicom_series

    base = head_phantom((PHANTOM_SLICES, 512, 512), seed=0)
    folders = {}
    for n in SYNTHETIC:
        # Alternate forward and reversed copies so neighbouring slices stay related.
        reps = -(-n // PHANTOM_SLICES)
        hu = np.concatenate([base if i % 2 == 0 else base[::-1] for i in range(reps)])[:n]
        folder = Path(f"phantom-{n}").resolve()
        write_dicom_series(folder, hu, spacing=(1.0, 0.5, 0.5), series_number=n, seed=n)
        folders[f"phantom-{n}"] = folder
    for name, folder in (("philips-30", SAMPLE), ("philips-140", FULL)):
        if folder.is_dir():
            folders[name] = folder
    data = {}
    for name, folder in folders.items():
        # The baseline reads the same slices ingest stores (not the DIRFILE).
        records = read_headers(find_files(folder))
        slices = [r.path for r in records if r.status == "pending"]
        data[name] = {"folder": str(folder), "slices": slices}
    return data


_write_data.timeout = 900  # seconds; asv reads setup_cache's own timeout attribute


def _preload():
    # Import the stack up front, so the first timed call does not pay for it.
    import dask.array  # noqa: F401
    import pandas  # noqa: F401
    import pydicom  # noqa: F401
    import pydicom.pixels  # noqa: F401
    import xarray  # noqa: F401
    import zarr  # noqa: F401

    import ctvol._ingest  # noqa: F401
    import ctvol.io.store  # noqa: F401


def decode_loop(paths):
    """The baseline: read + modality LUT + stack, one file after another."""
    import pydicom
    from pydicom.pixels import apply_modality_lut

    return np.stack([apply_modality_lut(ds.pixel_array, ds) for ds in map(pydicom.dcmread, paths)])


def _elapsed(fn):
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


class _Series:
    setup_cache = staticmethod(_write_data)
    timeout = 600
    params = [SERIES]
    param_names = ["series"]

    def setup(self, data, series, *params):
        if series not in data:
            raise NotImplementedError(f"{series}: data not available ({FULL} is absent)")
        self.folder = data[series]["folder"]
        self.slices = data[series]["slices"]
        self.n = len(self.slices)
        self.tmp = tempfile.mkdtemp(prefix="ctvol-bench-")
        self._stores = itertools.count()
        _preload()

    def teardown(self, data, series, *params):
        shutil.rmtree(self.tmp, ignore_errors=True)

    def ingest(self, workers):
        """One ingest into a store path never used before, on ``workers`` threads."""
        import dask

        from ctvol import ingest

        store = os.path.join(self.tmp, f"cohort-{next(self._stores)}.zarr")
        # workers=None: whatever scheduler is active (a distributed Client).
        config = {} if workers is None else {"scheduler": "threads", "num_workers": workers}
        with dask.config.set(config):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                report = ingest(self.folder, store, progress=False)
        if len(report.written) != 1:  # a skipped or failed series would time nothing
            raise RuntimeError(f"ingest wrote {report.written!r}:\n{report.summary()}")
        return report

    def best(self, fn):
        return min(_elapsed(fn) for _ in range(REPEATS))


class IngestThroughput(_Series):
    """Slices per second, best of ``REPEATS`` calls each (plus one same-run ratio)."""

    unit = "slices/s"

    def track_baseline_decode_loop(self, data, series):
        return self.n / self.best(lambda: decode_loop(self.slices))

    def track_ingest_1thread(self, data, series):
        return self.n / self.best(lambda: self.ingest(1))

    def track_ingest_2threads(self, data, series):
        return self.n / self.best(lambda: self.ingest(2))

    def track_ingest_2processes(self, data, series):
        """On a dask.distributed LocalCluster of 2 single-threaded worker processes.

        This is what the CLI runs by default: pydicom's parsing holds the GIL,
        so scaling comes from processes, not threads. Cluster start-up is not
        timed; a warm-up ingest imports the stack in the workers first.
        """
        from distributed import Client, LocalCluster

        with (
            LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                         dashboard_address=":0") as cluster,
            Client(cluster),
        ):
            self.ingest(None)
            return self.n / self.best(lambda: self.ingest(None))

    def track_read_headers(self, data, series):
        from ctvol.io.dicom import read_headers

        return self.n / self.best(lambda: read_headers(self.slices))

    def track_ratio_ingest_vs_baseline(self, data, series):
        """Ingest (1 thread) slices/s over baseline slices/s, timed alternately in one call.

        1 thread on both sides: the ratio is the cost of ingest's work beyond
        decoding (int16 cast, compression, Zarr writes, catalog) per slice.
        """
        base, ing = [], []
        for _ in range(REPEATS):
            base.append(_elapsed(lambda: decode_loop(self.slices)))
            ing.append(_elapsed(lambda: self.ingest(1)))
        return min(base) / min(ing)

    track_ratio_ingest_vs_baseline.unit = "ratio"


class IngestTime(_Series):
    """Wall time and peak memory of one ingest into a fresh store."""

    params = [SERIES, WORKERS]
    param_names = ["series", "workers"]
    number = 1
    repeat = (3, 10, 30.0)

    def time_ingest(self, data, series, workers):
        self.ingest(workers)

    def peakmem_ingest(self, data, series, workers):
        self.ingest(workers)


class DecodeBaseline(_Series):
    """The baseline and the header pass alone, for scale."""

    number = 1
    repeat = (3, 10, 30.0)

    def time_decode_loop(self, data, series):
        decode_loop(self.slices)

    def peakmem_decode_loop(self, data, series):
        decode_loop(self.slices)

    def time_read_headers(self, data, series):
        from ctvol.io.dicom import read_headers

        read_headers(self.slices)
