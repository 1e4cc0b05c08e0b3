"""U-net reslice against a bare ``model(batch)`` loop over the same pairs (issue 18).

Not an asv benchmark (asv's ``UNetThroughput`` in ``reslice.py`` tracks the same
ratio); a script for the cases the issue names, same run, alternating calls:

    python benchmarks/unet_overhead.py PAIRS BATCH   # e.g. 16 4, 16 16, 128 4, 128 16
    python benchmarks/unet_overhead.py --block       # one 32-pair block: engine vs composition
"""

from __future__ import annotations

import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from reslice import best_alternating  # noqa: E402


def main(argv: list[str]) -> None:
    import dask
    import numpy as np
    import torch
    import xarray as xr

    import ctvol
    from ctvol.inference import reslice_block
    from ctvol.intensity import from_unit, to_hu_int16, to_unit
    from ctvol.models import ResliceModel
    from ctvol.models.unet import UNet
    from ctvol.testing import head_phantom

    torch.set_num_threads(2)
    torch.manual_seed(0)
    model = ResliceModel(UNet(3, depth=4, base=16)).to("cpu")
    if argv[:1] == ["--block"]:
        cur, after, batch = head_phantom((32, 512, 512), seed=1), head_phantom((1, 512, 512),
                                                                               seed=2), 4
        nxt = np.concatenate([cur[1:], after])
        pairs = torch.from_numpy(np.stack([to_unit(cur), to_unit(nxt)], axis=1)).contiguous(
            memory_format=torch.channels_last)

        def bare() -> None:
            with torch.inference_mode():
                for s in range(0, 32, batch):
                    model.net(pairs[s : s + batch])

        def composition() -> np.ndarray:  # the public functions, one after another
            x = np.stack([to_unit(cur, model.window), to_unit(nxt, model.window)], axis=1)
            return to_hu_int16(from_unit(model.predict(x, batch_size=batch), model.window))

        def engine() -> np.ndarray:
            return reslice_block(cur, after, k=3, last=False, method="unet", model=model,
                                 batch_size=batch)

        assert np.array_equal(engine()[1::3], composition()[:, 0])
        t = best_alternating({"bare": bare, "composition": composition, "engine": engine}, 5)
        print(f"one block of 32 pairs of 512², batch {batch}: bare {t['bare']:.2f} s, "
              f"composition {t['composition']:.2f} s ({t['bare'] / t['composition']:.3f}), "
              f"engine {t['engine']:.2f} s ({t['bare'] / t['engine']:.3f})")
        return
    n_pairs, batch = int(argv[0]), int(argv[1])
    hu = np.concatenate([head_phantom((32, 512, 512), seed=s)
                         for s in range(n_pairs // 32 + 1)])[: n_pairs + 1]
    ds = xr.Dataset({"hu": (("z", "y", "x"), hu)},
                    coords={"z": 3.0 * np.arange(hu.shape[0])}).chunk({"z": 32})
    pairs = torch.from_numpy(np.stack([to_unit(hu[:-1]), to_unit(hu[1:])], axis=1)).contiguous(
        memory_format=torch.channels_last)

    def bare_loop() -> None:
        with torch.inference_mode():
            for s in range(0, n_pairs, batch):
                model.net(pairs[s : s + batch])

    def reslice() -> np.ndarray:
        with dask.config.set(scheduler="threads", num_workers=1):
            return ctvol.reslice(ds, 3, method="unet", model=model, batch_size=batch,
                                 device="cpu").hu.values

    bare_loop()
    reslice()
    t = best_alternating({"bare": bare_loop, "reslice": reslice}, 3)
    print(f"pairs {n_pairs} batch {batch}: bare {n_pairs / t['bare']:.2f} pairs/s, reslice "
          f"{n_pairs / t['reslice']:.2f} pairs/s, ratio {t['bare'] / t['reslice']:.3f}")


if __name__ == "__main__":
    main(sys.argv[1:])
