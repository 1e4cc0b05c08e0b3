"""Linear x3 reslice against the tight numpy loop a user would write (issue 18).

Not an asv benchmark (asv's ``LinearThroughput`` and ``LinearStoreThroughput``
in ``reslice.py`` track the same ratios); a script that prints both cases of
the issue from one run, the calls alternating, best of ``--repeats``:

    python benchmarks/linear_overhead.py [--slices 129] [--repeats 5]

- ``values``: ``ctvol.reslice(ds, 3, method="linear").hu.values`` on the
  threaded scheduler with 1 thread, against :func:`reslice.linear_loop`.
- ``store``: ``ctvol.write(ctvol.reslice(...), store, key)`` (1 dask thread),
  against the loop followed by the same write a user would make with zarr
  alone: one array with ctvol's layout (chunks of one slice, shards of 32,
  lz4 + bit-shuffle), ``arr[:] = out`` (:func:`reslice.zarr_write`). Both
  outputs are compared bit for bit.
"""

from __future__ import annotations

import argparse
import pathlib
import shutil
import sys
import tempfile

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from reslice import (  # noqa: E402
    FACTOR,
    _dataset,
    _tile,
    best_alternating,
    linear_loop,
    zarr_write,
)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--slices", type=int, default=129)
    p.add_argument("--repeats", type=int, default=5)
    a = p.parse_args()

    import dask
    import zarr

    import ctvol
    from ctvol.testing import head_phantom

    hu = _tile(head_phantom((64, 512, 512), seed=0), a.slices)
    ds = _dataset(hu)
    new = (a.slices - 1) * (FACTOR - 1)
    tmp = pathlib.Path(tempfile.mkdtemp(prefix="ctvol-linear-"))

    def engine_values() -> np.ndarray:
        with dask.config.set(scheduler="threads", num_workers=1):
            return ctvol.reslice(ds, FACTOR, method="linear").hu.values

    def loop_store() -> None:
        zarr_write(linear_loop(hu), str(tmp / "loop.zarr"))

    def engine_store() -> None:
        with dask.config.set(scheduler="threads", num_workers=1):
            ctvol.write(ctvol.reslice(ds, FACTOR, method="linear"), tmp / "engine.zarr", "s")

    try:
        expected = linear_loop(hu)
        if not np.array_equal(engine_values(), expected):
            raise SystemExit("reslice(method='linear') differs from the loop")
        loop_store()
        engine_store()
        stored = zarr.open_array(str(tmp / "engine.zarr"), path="series/s/hu")[:]
        if not np.array_equal(stored, zarr.open_array(str(tmp / "loop.zarr"))[:]):
            raise SystemExit("the stored outputs differ")
        t = best_alternating({"loop": lambda: linear_loop(hu), "values": engine_values,
                              "loop+zarr": loop_store, "write": engine_store}, a.repeats)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"{a.slices} input slices of 512^2, x{FACTOR}: {new} new slices, best of {a.repeats}")
    for name, s in t.items():
        print(f"  {name:10s} {s:7.3f} s  {new / s:7.1f} new slices/s")
    print(f"ratio to .values: {t['loop'] / t['values']:.2f}   "
          f"ratio to a store: {t['loop+zarr'] / t['write']:.2f}")


if __name__ == "__main__":
    main()
