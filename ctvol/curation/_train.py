"""Training the slice classifier and the slice localizer from a cohort store.

Both reuse the project's training machinery: slices are read one at a time
straight from Zarr (never whole volumes), the paper's augmentation
(:func:`ctvol.training.random_affine`: rotation, shift, zoom, flip) runs
batch-wise in torch, and the epoch loop is the U-nets' (``ctvol.training``'s
engine: Adam, every draw of epoch ``e`` from ``(seed, e)``, an exact resume).
The checkpoint is the project's format (safetensors + JSON,
:mod:`ctvol.models._slice`). Series are assigned to train / validation / test
by :func:`ctvol.curation.partition_of`.

Output folder::

    out/model.safetensors, out/config.json   the epoch with the best validation
                                             loss (the last epoch without validation)
    out/last/                                the last epoch's checkpoint and optimiser
                                             state (train_state.*), for resume=True
    out/log.csv                              one row per epoch
"""

from __future__ import annotations

import os
import pathlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from .._deps import require
from ..errors import LabelError, OptionError
from ..intensity import HU_WINDOW
from ..io._handles import HuHandles
from ..io._layout import series_attrs, store_url
from ..io.store import open_series, open_store
from ..models._runtime import resolve_device
from ..models._slice import SliceModel, load_slice_model, prepare, save_slice_model, slice_net
from ..training._partition import partition_of
from ._localizer import landmark_locations

if TYPE_CHECKING:
    from ..training._engine import Kind

__all__ = ["read_slice_labels", "train_classifier", "train_localizer"]

LABEL_COLUMNS = ("series", "sop_uid | z_index", "label")


@dataclass(frozen=True)
class Item:
    key: str
    index: int
    target: float  # class index, or location


def _series_index(store: str, storage_options: Any) -> tuple[dict[str, dict[str, Any]], Any]:
    root = open_store(store, storage_options=storage_options)
    return series_attrs(root), root


def _keys_for(name: str, series: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """Store keys for a key or a SeriesInstanceUID (a UID may have several runs/parts)."""
    if name in series:
        return [name]
    return sorted(k for k, a in series.items() if a.get("series_uid") == name)


def read_slice_labels(
    store: str | os.PathLike[str],
    labels: Any,
    *,
    classes: Sequence[str] | None = None,
    storage_options: Mapping[str, Any] | None = None,
) -> tuple[list[Item], list[str]]:
    """Resolve a labels table against a store: one item per labelled slice.

    Parameters
    ----------
    labels : path to a CSV file, or pandas.DataFrame
        Columns ``series`` (store key or SeriesInstanceUID), ``sop_uid`` or
        ``z_index`` (0-based slice index in the store's z order), ``label``.
    classes : sequence of str, optional
        The label set, in output order; default: the labels found, sorted.

    Returns
    -------
    items, classes

    Raises
    ------
    LabelError
        Missing columns, unknown series, slices not in their series, labels
        not in ``classes``; the message names the offending rows.
    """
    import pandas as pd

    df = labels if isinstance(labels, pd.DataFrame) else pd.read_csv(
        labels, dtype={"series": str, "sop_uid": str, "label": str})
    cols = set(df.columns)
    if not {"series", "label"} <= cols or not cols & {"sop_uid", "z_index"}:
        raise LabelError(f"labels table needs columns {LABEL_COLUMNS} (one of sop_uid / z_index),"
                         f" got {sorted(cols)}")
    if df.empty:
        raise LabelError("labels table has no rows")
    df = df.assign(label=df["label"].astype(str))
    found = sorted(set(df["label"]))
    classes = list(classes) if classes is not None else found
    unknown_labels = sorted(set(found) - set(classes))
    if unknown_labels:
        raise LabelError(f"labels {unknown_labels} are not in classes {classes}; add them to "
                         "classes= or fix the table")
    series, root = _series_index(store_url(store), storage_options)
    items: list[Item] = []
    bad: list[str] = []
    sops_of: dict[str, np.ndarray] = {}
    for row in df.itertuples(index=False):
        r = row._asdict()
        keys = _keys_for(str(r["series"]), series)
        if not keys:
            bad.append(f"series {r['series']!r}: not in the store")
            continue
        target = float(classes.index(r["label"]))
        sop = r.get("sop_uid")
        if isinstance(sop, str) and sop:
            hit = None
            for k in keys:
                if k not in sops_of:
                    sops_of[k] = np.array([str(v) for v in root[f"series/{k}/sop_uid"][:]])
                where = np.flatnonzero(sops_of[k] == sop)
                if where.size:
                    hit = Item(k, int(where[0]), target)
                    break
            if hit is None:
                bad.append(f"series {r['series']!r}: no slice with SOPInstanceUID {sop}")
            else:
                items.append(hit)
            continue
        zi = r.get("z_index")
        n = int(root[f"series/{keys[0]}/hu"].shape[0])
        if len(keys) > 1:
            bad.append(f"series {r['series']!r} has several runs/parts ({keys}): give the store "
                       "key, or a sop_uid, with a z_index")
        elif zi is None or zi != zi or not 0 <= int(zi) < n:
            bad.append(f"series {r['series']!r}: z_index {zi!r} is not in 0..{n - 1}")
        else:
            items.append(Item(keys[0], int(zi), target))
    if bad:
        more = f" (and {len(bad) - 5} more)" if len(bad) > 5 else ""
        raise LabelError(f"{len(bad)} label row(s) name unknown slices: {'; '.join(bad[:5])}"
                         f"{more}. Series are store keys or SeriesInstanceUIDs "
                         f"(ctvol.list_series); slices are SOPInstanceUIDs or 0-based z indices")
    return items, classes


class SliceItems:
    """A torch-style Dataset of single slices read from Zarr, prepared for the network."""

    def __init__(self, store: str, items: Sequence[Item], *, size: int,
                 window: tuple[float, float], storage_options: Any = None) -> None:
        self.store, self.items, self.size, self.window = store, list(items), size, window
        self._hu = HuHandles(store, storage_options)

    def __len__(self) -> int:
        return len(self.items)

    def set_epoch(self, epoch: int) -> None:
        """Nothing to draw per epoch: the items are fixed (the epoch engine's hook)."""

    def __getitem__(self, i: int) -> tuple[Any, float]:
        it = self.items[i]
        x = prepare(self._hu(it.key)[it.index : it.index + 1], self.size, self.window)[0]
        return x, it.target


def _split_items(items: Sequence[Item], series: Mapping[str, Mapping[str, Any]],
                 parts: Sequence[str]) -> list[Item]:
    return [it for it in items
            if partition_of(str(series[it.key].get("series_uid") or it.key)) in parts]


def _kind(task: str) -> Kind:
    """What the epoch engine does for a slice model: its loss, accuracy (classifier)
    or mean absolute error (localizer), label targets, the best epoch in ``out``."""
    import torch

    from ..training._engine import Kind

    def loss(logits: Any, y: Any) -> Any:
        if task == "classify":
            return torch.nn.functional.cross_entropy(logits, y.long())
        # The method's regression: sigmoid output, mean squared error.
        return torch.nn.functional.mse_loss(torch.sigmoid(logits[:, 0]), y.float())

    def keep(x: Any, p: Any, y: Any) -> tuple[np.ndarray, ...]:
        return p.numpy(), y.numpy()

    metric = "val_accuracy" if task == "classify" else "val_mae"

    def measure(p: np.ndarray, y: np.ndarray) -> dict[str, float]:
        pt, yt = torch.from_numpy(p), torch.from_numpy(y)
        score = (float((pt.argmax(1) == yt.long()).float().mean()) if task == "classify"
                 else float((torch.sigmoid(pt[:, 0]) - yt.float()).abs().mean()))
        return {metric: score}

    return Kind(loss=loss, save=save_slice_model, metrics=[metric], keep=keep, measure=measure,
                describe=lambda m: f"{metric} {m[metric]:.4f}", loss_per_sample=True, digits=4,
                image_targets=False, best=".")


def _fit(store: Any, items: Sequence[Item], *, task: str, classes: Sequence[str], out: Any,
         epochs: int, batch_size: int, lr: float, input_size: int,
         architecture: Mapping[str, Any] | None, augment: bool, train_on: Sequence[str],
         validate_on: Sequence[str], device: str | None, seed: int, resume: bool,
         progress: bool, storage_options: Any, provenance: Mapping[str, Any]) -> Any:
    from ..models._slice import FORMAT
    from ..training._engine import check_out, fit, start

    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise OptionError(f"epochs must be a positive integer, got {epochs!r}")
    url = store_url(store)
    series, _ = _series_index(url, storage_options)
    train_items = _split_items(items, series, train_on)
    val_items = _split_items(items, series, validate_on) if validate_on else []
    if not train_items:
        raise LabelError(f"no labelled slices in partitions {list(train_on)} (series go to "
                         "train/val/test by ctvol.curation.partition_of); pass "
                         "train_on=('train', 'val', 'test') for a small cohort")

    def mismatch(have: dict[str, Any]) -> str | None:
        if (have.get("format") != FORMAT or have.get("task") != task
                or have.get("classes") != list(classes)):
            return (f"holds a checkpoint of another kind, task or class set "
                    f"({have.get('format')}, {have.get('task')}, {have.get('classes')})")
        return None

    out_dir = check_out(out, resume, mismatch, "resume=True")
    dev = resolve_device(device)
    arch = {"widths": (16, 32, 64, 128), "blocks": 1, **(architecture or {})}
    net, optimizer, done, best = start(
        lambda: slice_net(len(classes), **arch), seed=seed, dev=dev, lr=lr, resume=resume,
        last=out_dir / "last", load=lambda p: load_slice_model(p, task=task),
        channels_last=SliceModel.channels_last)
    model = SliceModel(net, task=task, classes=classes, input_size=input_size,
                       window=HU_WINDOW, provenance={
                           **provenance, "store": url, "lr": lr,
                           "batch_size": batch_size, "augment": augment, "seed": seed,
                           "train_on": list(train_on), "validate_on": list(validate_on),
                           "train_slices": len(train_items), "val_slices": len(val_items)})

    def data(its: Sequence[Item]) -> SliceItems:
        return SliceItems(url, its, size=input_size, window=HU_WINDOW,
                          storage_options=storage_options)

    fit(_kind(task), model, optimizer, data(train_items), data(val_items) if val_items else None,
        out_dir=out_dir, start=done, best=best, epochs=epochs, resume=resume,
        augment={} if augment else None, seed=seed, batch_size=batch_size, num_workers=0,
        dev=dev, amp=False, progress=progress)
    return load_slice_model(out_dir, task=task)


def train_classifier(
    store: str | os.PathLike[str],
    labels: Any,
    *,
    out: str | os.PathLike[str],
    classes: Sequence[str] | None = None,
    epochs: int = 20,
    batch_size: int = 32,
    lr: float = 1e-3,
    input_size: int = 128,
    architecture: Mapping[str, Any] | None = None,
    augment: bool = True,
    train_on: Sequence[str] = ("train",),
    validate_on: Sequence[str] = ("val",),
    device: str | None = None,
    seed: int = 0,
    resume: bool = False,
    progress: bool = False,
    storage_options: Mapping[str, Any] | None = None,
) -> Any:
    """Train a slice-level classifier (small ResNet, cross-entropy, Adam) from a labels CSV.

    Parameters
    ----------
    store : path or URL
        Cohort store (:func:`ctvol.ingest`).
    labels : path to CSV or pandas.DataFrame
        ``series, sop_uid | z_index, label`` (:func:`read_slice_labels`).
    out : path
        Output folder: the best epoch's checkpoint (``model.safetensors``,
        ``config.json``), ``log.csv`` (one row per epoch) and ``last/`` (the
        last epoch with the optimiser state, for ``resume``).
    classes : sequence of str, optional
        The label set in output order, e.g. :data:`ctvol.curation.PAPER_CLASSES`
        (blank, head, orbital, maxilla, mandible, neck); default: the labels found.
    epochs, batch_size, lr : int, int, float
    input_size : int, default 128
        Slices are resized to this square (after padding to a square).
    architecture : dict, optional
        ``widths`` (per stage) and ``blocks`` (per stage) of the network.
    augment : bool, default True
        The paper's augmentation (rotation, shift, zoom, flip).
    train_on, validate_on : sequences of {"train", "val", "test"}
        Partitions (:func:`ctvol.curation.partition_of`) to train and select on.
        Without validation slices the last epoch is kept.
    device, seed : str, int
        Default CUDA when available; ``seed`` seeds initialisation and every
        epoch's draws (shuffling, augmentation).
    resume : bool, default False
        Continue from ``out/last`` up to ``epochs`` in total, exactly as an
        uninterrupted run.

    Returns
    -------
    SliceModel
        The best checkpoint, loaded from ``out``; use it with
        :func:`ctvol.classify_slices`.

    Raises
    ------
    LabelError
        Bad labels table; no labelled slices in ``train_on``.
    FileExistsError
        ``out`` holds a training run (``out/last``) and ``resume`` is False.
    ValueError
        ``out/last`` holds a checkpoint of another task or class set.
    """
    require("torch", "ctvol.curation.train_classifier")
    items, classes = read_slice_labels(store, labels, classes=classes,
                                       storage_options=storage_options)
    return _fit(store, items, task="classify", classes=classes, out=out, epochs=epochs,
                batch_size=batch_size, lr=lr, input_size=input_size, architecture=architecture,
                augment=augment, train_on=train_on, validate_on=validate_on, device=device,
                seed=seed, resume=resume, progress=progress,
                storage_options=storage_options,
                provenance={"labels": str(labels) if not hasattr(labels, "columns")
                            else "DataFrame", "labelled_slices": len(items)})


def train_localizer(
    store: str | os.PathLike[str],
    annotations: Mapping[str, Any] | str | os.PathLike[str],
    *,
    out: str | os.PathLike[str],
    epochs: int = 20,
    batch_size: int = 32,
    lr: float = 1e-3,
    input_size: int = 128,
    architecture: Mapping[str, Any] | None = None,
    augment: bool = True,
    train_on: Sequence[str] = ("train",),
    validate_on: Sequence[str] = ("val",),
    device: str | None = None,
    seed: int = 0,
    resume: bool = False,
    progress: bool = False,
    storage_options: Mapping[str, Any] | None = None,
) -> Any:
    """Train the slice localizer (small ResNet, sigmoid output, MSE) on annotated series.

    Parameters
    ----------
    annotations : mapping or path to a JSON file
        Series (store key or SeriesInstanceUID) -> {landmark: SOPInstanceUID}
        (:data:`ctvol.curation.LANDMARKS` names). Every slice of an annotated
        series is a training sample; its target is
        :func:`ctvol.curation.landmark_locations`, clipped to [0, 1] (the
        sigmoid's range).

    Other parameters as :func:`train_classifier`.

    Returns
    -------
    SliceModel
        The best localizer; use it with :func:`ctvol.localize`.
    """
    require("torch", "ctvol.curation.train_localizer")
    import json

    if isinstance(annotations, str | os.PathLike):
        annotations = json.loads(pathlib.Path(annotations).read_text())
    if not isinstance(annotations, Mapping) or not annotations:
        raise LabelError("annotations must map series -> {landmark: SOPInstanceUID}")
    series, _ = _series_index(store_url(store), storage_options)
    items: list[Item] = []
    for name, marks in annotations.items():
        keys = _keys_for(str(name), series)
        if len(keys) != 1:
            what = "not in the store" if not keys else f"several runs/parts {keys}"
            raise LabelError(f"annotated series {name!r} is {what}; name one store key "
                             "(ctvol.list_series)")
        ds = open_series(store, keys[0], storage_options=storage_options)
        loc = np.clip(landmark_locations(ds, marks).values, 0.0, 1.0)
        items += [Item(keys[0], i, float(v)) for i, v in enumerate(loc)]
    return _fit(store, items, task="localize", classes=["location"], out=out, epochs=epochs,
                batch_size=batch_size, lr=lr, input_size=input_size, architecture=architecture,
                augment=augment, train_on=train_on, validate_on=validate_on, device=device,
                seed=seed, resume=resume, progress=progress,
                storage_options=storage_options,
                provenance={"annotated_series": len(annotations)})
