"""What ``predict`` can be in :func:`ctvol.shift_interleave`, on the client and on workers.

* a **callable** ``block -> block`` (or, with ``per_slice=True``, ``block ->
  (n,)`` / ``(n, C)``) travels as one graph key and runs as given;
* a **model** -- a :class:`ctvol.models.SegmentModel` (block -> probabilities of
  the same shape), a :class:`ctvol.curation.SliceModel` (slices -> (n, C) class
  probabilities, or (n, 1) locations), or a path to either's checkpoint --
  travels as its checkpoint path (or one graph key named by its weights digest,
  :func:`ctvol.models._runtime.graph_model`) and is loaded once per worker process
  and per device through :func:`ctvol.models._runtime.cached_model`, like
  :func:`ctvol.reslice`'s models. Models run on ``device`` (default: CUDA when
  the worker sees one), with optional bf16 autocast (``amp``) on CUDA.

:func:`resolve` checks everything on the client (nothing computed; a checkpoint
path is read once, on the CPU, for its kind, classes and digest);
:func:`on_worker` turns the task argument back into a function of a block.
"""

from __future__ import annotations

import functools
import os
import pathlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import ModelError, ModelNotFoundError, OptionError, OptionTypeError
from .models import RESLICE_FORMAT, SEGMENT_FORMAT, SLICE_FORMAT, SegmentModel, load_segmenter
from .models._checkpoint import read_checkpoint
from .models._runtime import cached_model, graph_model, resolve_device
from .models._slice import SliceModel, load_slice_model

__all__ = ["Predictor", "on_worker", "resolve"]

#: A model predictor's kind → its checkpoint format (``ctvol.models.FORMATS``).
KIND_FORMAT = {"segment": SEGMENT_FORMAT, "slice": SLICE_FORMAT}
_FORMAT_KIND = {f: k for k, f in KIND_FORMAT.items()}


@dataclass(frozen=True)
class Predictor:
    """A checked ``predict`` argument.

    ``kind`` is ``"callable"``, ``"segment"`` or ``"slice"``; ``source`` is the
    task argument (a delayed callable, a checkpoint path, or a delayed model);
    ``outputs`` is None for block -> same-shape predictors, ``()`` for one value
    per slice and ``(C,)`` for C values per slice; ``classes`` names the C
    values when known; ``labels`` asks a model for labels instead of
    probabilities.
    """

    kind: str
    source: Any
    outputs: tuple[int, ...] | None
    classes: tuple[str, ...] | None
    labels: bool
    description: str
    digest: str | None

    @property
    def is_model(self) -> bool:
        return self.kind != "callable"

    @property
    def per_slice(self) -> bool:
        return self.outputs is not None


def load_segment(path: str) -> Any:
    return load_segmenter(path)


def load_slice(path: str) -> Any:
    return load_slice_model(path)


def _cached(kind: str, source: Any, device: str) -> Any:
    """The ``kind`` model for ``source`` on ``device``, once per process. A path is read
    with this module's :func:`load_segment` / :func:`load_slice` (looked up per call:
    tests count loads through them)."""
    return cached_model(source, device, KIND_FORMAT[kind],
                        load=load_segment if kind == "segment" else load_slice)


def _load_checkpoint(path: str) -> tuple[str, Any]:
    """(kind, model) for a checkpoint folder, read on the CPU once per process."""
    found = read_checkpoint(pathlib.Path(path))
    if found is None:
        raise ModelNotFoundError(
            f"no model checkpoint at {path!r}: predict as a path must be a folder with "
            "config.json and model.safetensors, written by ctvol.models.save_segmenter (a "
            "segmenter) or ctvol.curation.save_slice_model (a slice classifier)"
        )
    cfg, cfg_path = found
    fmt = cfg.get("format")
    kind = _FORMAT_KIND.get(str(fmt))
    if kind is None:
        hint = ("; reslice U-nets generate slices: use ctvol.reslice"
                if fmt == RESLICE_FORMAT else "")
        raise ModelError(
            f"{cfg_path} holds a {fmt!r} checkpoint; shift_interleave runs "
            f"{SEGMENT_FORMAT!r} (segmenters) and {SLICE_FORMAT!r} (slice classifiers){hint}"
        )
    return kind, _cached(kind, path, "cpu")


def _check_device(device: str | None) -> None:
    if device is None:
        return
    import torch

    try:
        torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise OptionError(f"device must be a torch device such as 'cpu', 'cuda' or 'cuda:1' "
                          f"(or None: CUDA when available), got {device!r}") from err


def _check_classes(classes: Any) -> tuple[tuple[int, ...], tuple[str, ...] | None]:
    if classes is None:
        return (), None
    if isinstance(classes, bool) or isinstance(classes, str | bytes):
        raise OptionError(f"classes must be a count or a sequence of names, got {classes!r}")
    if isinstance(classes, int | np.integer):
        if classes < 1:
            raise OptionError(f"classes must be >= 1, got {classes!r}")
        return (int(classes),), None
    names = tuple(str(c) for c in classes)
    if not names or len(set(names)) != len(names):
        raise OptionError(f"classes must name distinct classes, got {classes!r}")
    return (len(names),), names


def resolve(predict: Any, *, per_slice: bool | None = None, classes: Any = None,
            labels: bool = False, device: str | None = None, amp: bool = False) -> Predictor:
    """Check ``predict`` and the options that go with it; see the module docstring.

    Raises
    ------
    TypeError
        ``predict`` is neither a callable, a model nor a path.
    FileNotFoundError
        A path that is not a checkpoint folder.
    ValueError
        A checkpoint of another kind; options that do not fit the predictor
        (``device``/``amp``/``labels`` for a plain callable, ``per_slice`` /
        ``classes`` that contradict a model, a localizer asked for labels).
    """
    if isinstance(predict, os.PathLike):
        predict = os.fspath(predict)
    if isinstance(predict, str):
        path = predict if "://" in predict else os.path.abspath(predict)
        kind, model = _load_checkpoint(path)
        source: Any = path
    elif isinstance(predict, SegmentModel | SliceModel):
        kind = "segment" if isinstance(predict, SegmentModel) else "slice"
        model = predict
        source = graph_model(model, kind)  # its path, or one key named by its digest
    elif callable(predict):
        if device is not None or amp or labels:
            raise OptionError(
                "device, amp and labels apply to ctvol models (a SegmentModel, a SliceModel or "
                "a checkpoint path); predict is a plain callable: place and run it yourself"
            )
        outputs, names = _check_classes(classes)
        if per_slice is None:
            per_slice = classes is not None
        if not per_slice and classes is not None:
            raise OptionError("classes describe per-slice outputs: pass per_slice=True (or no "
                              "classes for a block -> block predictor)")
        import dask

        name = getattr(predict, "__qualname__", None) or type(predict).__qualname__
        return Predictor(
            kind="callable", source=dask.delayed(predict, pure=True),
            outputs=outputs if per_slice else None, classes=names, labels=False,
            description=f"{getattr(predict, '__module__', '?')}.{name}", digest=None)
    else:
        raise OptionTypeError(
            "predict must be a callable (block -> block), a SegmentModel or SliceModel, or a "
            f"checkpoint path, got {type(predict).__name__}")

    _check_device(device)
    where = model.path or f"in-memory, digest {model.digest[:12]}"
    if kind == "segment":
        if per_slice or classes is not None:
            raise ModelError(f"{model!r} maps a block to a block of probabilities of the same "
                             "shape: per_slice and classes do not apply")
        return Predictor(kind=kind, source=source, outputs=None, classes=None,
                         labels=bool(labels), description=f"segmenter {where}",
                         digest=model.digest)
    if per_slice is False:
        raise ModelError(f"{model!r} gives one row per slice: per_slice=False does not apply")
    names = tuple(model.classes)
    if classes is not None:
        raise ModelError(f"{model!r} names its classes ({list(names)}): leave classes unset")
    if labels and model.task != "classify":
        raise ModelError(f"labels=True takes the most probable class, but {model!r} is a "
                         f"{model.task!r} model")
    return Predictor(kind=kind, source=source, outputs=() if labels else (len(names),),
                     classes=names, labels=bool(labels),
                     description=f"slice {model.task} model {where}", digest=model.digest)


def _segment_fn(model: Any, amp: bool, labels: bool, block: np.ndarray) -> np.ndarray:
    prob = model.predict(block, amp=amp)
    return (prob > 0.5).astype(np.uint8) if labels else prob  # type: ignore[no-any-return]


def _slice_fn(model: Any, amp: bool, labels: bool, block: np.ndarray) -> np.ndarray:
    prob = model.predict(block, amp=amp)
    return prob.argmax(axis=1).astype(np.uint8) if labels else prob  # type: ignore[no-any-return]


def on_worker(kind: str, source: Any, *, device: str | None, amp: bool,
              labels: bool) -> Callable[[np.ndarray], np.ndarray]:
    """The block function for a task argument (models: cached per process and device)."""
    if kind == "callable":
        return source  # type: ignore[no-any-return]

    # Resolved here, on the worker: the GPU is where the task runs, not where
    # the graph was built.
    dev = resolve_device(device)
    model = _cached(kind, source, dev)
    fn = _segment_fn if kind == "segment" else _slice_fn
    return functools.partial(fn, model, amp, labels)
