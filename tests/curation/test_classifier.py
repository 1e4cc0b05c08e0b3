"""The trainable slice classifier: labels CSV, training, classify_slices with a model."""

from __future__ import annotations

import json
import pathlib

import numpy as np
import pandas as pd
import pytest

import ctvol
from ctvol.curation import PAPER_CLASSES, read_slice_labels
from ctvol.errors import LabelError, NoInputError, OptionError, OutputExistsError
from ctvol.testing import head_phantom, raise_if_dask_computes, write_dicom_series

N, BLANK = 10, 3  # slices per series; the first BLANK are air


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> str:
    tmp = tmp_path_factory.mktemp("clf")
    for s in range(2):
        hu = head_phantom((N, 32, 32), seed=s)
        hu[:BLANK] = -1000
        write_dicom_series(tmp / f"in{s}", hu, series_number=s + 1, seed=s)
    return ctvol.ingest([tmp / "in0", tmp / "in1"], tmp / "c.zarr").store


def table(store: str) -> pd.DataFrame:
    """Series 1 labelled by SOPInstanceUID, series 2 by UID and z index."""
    k1, k2 = ctvol.list_series(store)
    sops = ctvol.open_series(store, k1).sop_uid.values
    uid2 = ctvol.open_series(store, k2).attrs["series_uid"]
    rows = [{"series": k1, "sop_uid": str(sops[i]), "label": "blank" if i < BLANK else "head"}
            for i in range(N)]
    rows += [{"series": uid2, "z_index": i, "label": "blank" if i < BLANK else "head"}
             for i in range(N)]
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def trained(store: str, tmp_path_factory: pytest.TempPathFactory) -> tuple[object, pathlib.Path]:
    out = tmp_path_factory.mktemp("clf-out") / "model"
    csv = out.parent / "labels.csv"
    table(store).to_csv(csv, index=False)
    model = ctvol.train_classifier(
        store, csv, out=out, classes=PAPER_CLASSES, epochs=20, batch_size=8, input_size=32, lr=3e-3,
        architecture={"widths": (8, 16)}, train_on=("train", "val", "test"), validate_on=())
    return model, out


def test_labels_resolve_to_slices(store: str) -> None:
    items, classes = read_slice_labels(store, table(store))
    assert classes == ["blank", "head"]
    assert len(items) == 2 * N and {it.index for it in items} == set(range(N))
    assert [it.target for it in items[:N]] == [0.0] * BLANK + [1.0] * (N - BLANK)


def test_classifier_learns_a_separable_label_set(store: str, trained) -> None:  # noqa: ANN001
    model, out = trained
    assert model.classes == list(PAPER_CLASSES)  # six outputs, two of them used
    log = np.genfromtxt(out / "log.csv", delimiter=",", names=True)
    assert log["train_loss"][-1] < log["train_loss"][0] / 2
    for key in ctvol.list_series(store):
        ds = ctvol.open_series(store, key)
        with raise_if_dask_computes():
            labels = ctvol.classify_slices(ds, model, batch_size=4)
        got = labels.compute()
        names = [got.attrs["classes"][c] for c in got.values]
        assert names == ["blank"] * BLANK + ["head"] * (N - BLANK)
        probs = np.stack([got[f"p_{c}"].values for c in PAPER_CLASSES], axis=1)
        np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)
        np.testing.assert_array_equal(probs.argmax(axis=1), got.values)
    # The checkpoint on disk gives the same answer, and curate can use it.
    ds = ctvol.open_series(store, ctvol.list_series(store)[0])
    clean = ctvol.curate(ds, model=str(out))
    assert clean.sizes["z"] == N - BLANK and clean.attrs["curation"]["labels"] == f"model({out})"


@pytest.mark.parametrize(("edit", "match"), [
    (lambda t: t.drop(columns=["label"]), "needs columns"),
    (lambda t: t.assign(series="1.2.3.nope"), "series '1.2.3.nope': not in the store"),
    (lambda t: t.assign(sop_uid=t.sop_uid.where(t.sop_uid.isna(), "9.9.9")),
     "no slice with SOPInstanceUID 9.9.9"),
    (lambda t: t.assign(z_index=t.z_index + 5), r"z_index 10(\.0)? is not in 0..9"),
    (lambda t: t.iloc[:0], "no rows"),
])
def test_labels_naming_unknown_slices(store: str, edit, match: str) -> None:  # noqa: ANN001
    with pytest.raises(LabelError, match=match):
        read_slice_labels(store, edit(table(store)))


def test_labels_outside_the_class_set(store: str) -> None:
    with pytest.raises(LabelError, match=r"labels \['head'\] are not in classes \['blank'\]"):
        read_slice_labels(store, table(store), classes=["blank"])


# The epoch loop (ctvol.training's engine, shared with the U-nets): one log row
# per epoch, the best validation epoch kept in out/, an exact resume from out/last.

ALL = ("train", "val", "test")


def small(store: str, out: pathlib.Path, epochs: int, **kw: object) -> object:
    opts: dict = {"classes": PAPER_CLASSES, "epochs": epochs, "batch_size": 8, "input_size": 32,
                  "lr": 3e-3, "architecture": {"widths": (8, 16)}, "train_on": ALL, **kw}
    return ctvol.train_classifier(store, table(store), out=out, **opts)


def weights(folder: pathlib.Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    return load_file(str(folder / "model.safetensors"))


def test_best_epoch_is_the_lowest_validation_loss(store: str, tmp_path: pathlib.Path) -> None:
    out = tmp_path / "clf"
    model = small(store, out, 4, validate_on=ALL, lr=0.3)  # validates on its training slices
    log = pd.read_csv(out / "log.csv")
    assert list(log.columns) == ["epoch", "train_loss", "val_loss", "val_accuracy", "seconds"]
    assert log["epoch"].tolist() == [1, 2, 3, 4]
    best = int(log["val_loss"].idxmin()) + 1
    assert model.provenance["epochs"] == best  # type: ignore[attr-defined]
    assert model.provenance["val_loss"] == log["val_loss"][best - 1]  # type: ignore[attr-defined]
    state = json.loads((out / "last" / "train_state.json").read_text())
    assert state["epoch"] == 4 and state["best_val_loss"] == log["val_loss"].min()
    # out/ holds the weights of that epoch: those of a run stopped there
    again = tmp_path / "again"
    small(store, again, best, validate_on=ALL, lr=0.3)
    for k, v in weights(again / "last").items():
        np.testing.assert_array_equal(weights(out)[k], v)


def test_without_validation_the_last_epoch_is_kept(store: str, tmp_path: pathlib.Path) -> None:
    out = tmp_path / "clf"
    model = small(store, out, 2, validate_on=())
    log = pd.read_csv(out / "log.csv")
    assert log["epoch"].tolist() == [1, 2] and log[["val_loss", "val_accuracy"]].isna().all().all()
    assert model.provenance["epochs"] == 2  # type: ignore[attr-defined]
    for k, v in weights(out / "last").items():
        np.testing.assert_array_equal(weights(out)[k], v)


def test_resume_continues_exactly(store: str, tmp_path: pathlib.Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    small(store, a, 3, validate_on=ALL)
    small(store, b, 1, validate_on=ALL)
    assert json.loads((b / "last" / "train_state.json").read_text())["epoch"] == 1
    resumed = small(store, b, 3, validate_on=ALL, resume=True)
    log_a, log_b = pd.read_csv(a / "log.csv"), pd.read_csv(b / "log.csv")
    assert log_b["epoch"].tolist() == [1, 2, 3]  # one row per epoch, header once
    pd.testing.assert_frame_equal(log_a.drop(columns="seconds"), log_b.drop(columns="seconds"))
    for folder in (pathlib.Path("."), pathlib.Path("last")):
        wa, wb = weights(a / folder), weights(b / folder)
        assert wa.keys() == wb.keys()
        for k in wa:
            np.testing.assert_array_equal(wa[k], wb[k])
    assert resumed.digest == ctvol.curation.load_slice_model(a).digest  # type: ignore[attr-defined]


def test_output_folder_checks(store: str, tmp_path: pathlib.Path) -> None:
    out = tmp_path / "clf"
    with pytest.raises(NoInputError, match="nothing to resume"):
        small(store, out, 1, validate_on=(), resume=True)
    small(store, out, 1, validate_on=())
    with pytest.raises(OutputExistsError, match=r"epoch 1\); pass resume=True"):
        small(store, out, 2, validate_on=())
    with pytest.raises(OptionError, match="another kind, task or class set"):
        small(store, out, 2, validate_on=(), classes=["blank", "head"], resume=True)
