"""The epoch engine every trainer uses (ctvol.training._engine), on a tiny slice model
whose validation loss is made to rise or fall: the best epoch kept, one log row per
epoch, no validation, and a bad selection metric."""

from __future__ import annotations

import json
import pathlib

import numpy as np
import pandas as pd
import pytest
import torch

from ctvol.curation import SliceModel, load_slice_model, save_slice_model, slice_net
from ctvol.errors import OptionError
from ctvol.training._engine import Kind, fit, start


class Constant:
    """n random 8×8 images, every target ``value`` (a location in [0, 1])."""

    def __init__(self, n: int, value: float, seed: int) -> None:
        self.x = torch.rand(n, 1, 8, 8, generator=torch.Generator().manual_seed(seed))
        self.value = value
        self.epochs: list[int] = []

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> tuple[object, float]:
        return self.x[i], self.value

    def set_epoch(self, epoch: int) -> None:
        self.epochs.append(epoch)


def mse(logits: object, y: object) -> object:
    return torch.nn.functional.mse_loss(torch.sigmoid(logits[:, 0]), y.float())  # type: ignore[index, union-attr]


KIND = Kind(loss=mse, save=save_slice_model, metrics=["val_mean", "val_spread"],
            keep=lambda x, p, y: (torch.sigmoid(p[:, 0]).numpy(),),
            measure=lambda p: {"val_mean": float(p.mean()), "val_spread": float(p.std())},
            describe=lambda m: f"mean {m['val_mean']:.3f}", loss_per_sample=True, digits=4,
            image_targets=False, best=".")


def run(out: pathlib.Path, val_target: float | None, epochs: int = 3, **kw: object) -> Constant:
    net, opt, done, best = start(lambda: slice_net(1, widths=(4,)), seed=0, dev="cpu", lr=0.05,
                                 resume=False, last=out / "last", load=load_slice_model,
                                 channels_last=False)
    model = SliceModel(net, task="localize", classes=["location"], input_size=8)
    train_set = Constant(8, 0.0, seed=1)
    val_set = None if val_target is None else Constant(4, val_target, seed=2)
    fit(KIND, model, opt, train_set, val_set, out_dir=out, start=done, best=best, epochs=epochs,
        resume=False, augment=None, seed=0, batch_size=4, num_workers=0, dev="cpu", amp=False,
        progress=False, **kw)  # type: ignore[arg-type]
    return train_set


def saved_epoch(folder: pathlib.Path) -> int:
    return int(json.loads((folder / "config.json").read_text())["provenance"]["epochs"])


@pytest.mark.parametrize(("val_target", "best"), [(1.0, 1), (0.0, 3)])
def test_the_best_epoch_is_kept(tmp_path: pathlib.Path, val_target: float, best: int) -> None:
    """Training pulls every output to 0: validation against 1 gets worse each epoch
    (the first is best), against 0 better (the last is best)."""
    train_set = run(tmp_path, val_target)
    assert train_set.epochs == [0, 1, 2]
    log = pd.read_csv(tmp_path / "log.csv")
    assert list(log.columns) == ["epoch", "train_loss", "val_loss", "val_mean", "val_spread",
                                 "seconds"]
    assert log["epoch"].tolist() == [1, 2, 3]
    assert int(log["val_loss"].idxmin()) + 1 == best
    assert saved_epoch(tmp_path) == best and saved_epoch(tmp_path / "last") == 3
    state = json.loads((tmp_path / "last" / "train_state.json").read_text())
    assert state == {**state, "epoch": 3, "best_val_loss": log["val_loss"].min()}


def test_select_keeps_the_highest_metric(tmp_path: pathlib.Path) -> None:
    """Validation against 0 improves the loss every epoch while the mean output falls:
    selecting on the mean keeps the first epoch."""
    run(tmp_path, 0.0, select="val_mean")
    log = pd.read_csv(tmp_path / "log.csv")
    assert int(log["val_mean"].idxmax()) == 0 and int(log["val_loss"].idxmin()) == 2
    assert saved_epoch(tmp_path) == 1


def test_without_validation_the_last_epoch_is_kept(tmp_path: pathlib.Path) -> None:
    run(tmp_path, None)
    log = pd.read_csv(tmp_path / "log.csv")
    assert log["epoch"].tolist() == [1, 2, 3]
    assert log[["val_loss", "val_mean", "val_spread"]].isna().all().all()
    assert saved_epoch(tmp_path) == 3
    best, last = (load_slice_model(f).net.state_dict() for f in (tmp_path, tmp_path / "last"))
    for k, v in last.items():
        np.testing.assert_array_equal(best[k].numpy(), v.numpy())


def test_select_names_a_metric(tmp_path: pathlib.Path) -> None:
    with pytest.raises(OptionError, match=r"select must be None or one of \['val_mean', "):
        run(tmp_path, 0.0, select="psnr")
