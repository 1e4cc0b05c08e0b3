"""The cohort store's layout: its constants, URLs, opening the root, and the
series a store holds (``docs/storage.md``). Shared by the readers
(:mod:`ctvol.io.store`), the write path (:mod:`ctvol.io._write`), ingest and
training; names here are public within ``ctvol``."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping, Sequence
from typing import Any, Literal

from ..errors import OptionError, StoreError, StoreNotFoundError, StoreWriteError

FORMAT_VERSION = 1


#: Slices per shard: each Dask write task owns whole shards (zarr-python#3682).
SHARD_SLICES = 32


#: ``catalog(store)`` columns, in this order (docs/storage.md); ``ctvol info``
#: prints them under the same names.
SERIES_COLUMNS = [
    "key", "status", "last_run", "reason", "detail", "series_uid", "series_number",
    "description", "n_files", "n_slices", "rows", "cols", "dz", "dy", "dx", "tilt_deg",
    "warnings", "transfer_syntax", "lossy",
]


#: ``catalog(store, level="files")`` columns, in this order.
FILE_COLUMNS = ["path", "status", "reason", "detail", "key", "series_uid", "sop_uid", "frame",
                "transfer_syntax", "lossy"]


#: Lossless codecs for ``hu``, measured on the Philips head CT (512^2 int16
#: slices; numcodecs Blosc, one slice per call, this machine, same run):
#: lz4 + bit-shuffle 2.26-2.29x at ~840 slices/s; zstd level 1 + bit-shuffle
#: 2.66x at ~280 slices/s (level 3: 2.70x at ~180/s). lz4 keeps compression
#: from dominating ingest (decode runs at ~300 slices/s); zstd saves ~15 %
#: more space for archives.
COMPRESSORS: dict[str, dict[str, Any]] = {
    "lz4": {"cname": "lz4", "clevel": 5, "shuffle": "bitshuffle"},
    "zstd": {"cname": "zstd", "clevel": 1, "shuffle": "bitshuffle"},
}


def hu_codec(compressor: str | Any = "lz4") -> Any:
    """The zarr codec for ``hu``: a name from :data:`COMPRESSORS` or a zarr codec."""
    import zarr.codecs

    if not isinstance(compressor, str):
        return compressor
    if compressor not in COMPRESSORS:
        raise OptionError(
            f"compressor must be one of {sorted(COMPRESSORS)} or a zarr codec, got {compressor!r}"
        )
    return zarr.codecs.BloscCodec(**COMPRESSORS[compressor])


def store_url(store: str | os.PathLike[str]) -> str:
    s = os.fspath(store)
    return s if "://" in s else os.path.abspath(os.path.expanduser(s))


def open_root(
    store: str, mode: Literal["r", "r+", "a", "w"], storage_options: Mapping[str, Any] | None
) -> Any:
    import zarr

    return zarr.open_group(
        store_url(store), mode=mode, zarr_format=3,
        storage_options=dict(storage_options or {}) or None,
    )


def check_store_path(store: str | os.PathLike[str], *, create: bool = False) -> None:
    """Refuse a local path that is not (and cannot become) a cohort store, without
    creating anything: a file, a folder holding something else, or (``create``)
    a new store under a path that is not a writable folder.

    Raises
    ------
    StoreError
        The path exists and is not a Zarr store.
    StoreWriteError
        ``create`` and the store could not be created there (names why).
    """
    url = store_url(store)
    if "://" in url:
        return
    fix = "; choose a new output path" if create else ""
    if os.path.exists(url):
        if not os.path.isdir(url):
            raise StoreError(f"{url} is a file, not a cohort store{fix}")
        entries = [e for e in os.listdir(url) if not e.startswith(".")]
        if entries and "zarr.json" not in entries:
            raise StoreError(
                f"{url} exists and is not a Zarr store (it holds {', '.join(sorted(entries)[:3])}"
                f"{', ...' if len(entries) > 3 else ''}){fix}"
            )
        return
    if not create:
        return
    parent = os.path.dirname(url)
    while parent and not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if parent and not os.path.isdir(parent):
        raise StoreWriteError(f"cannot create the cohort store {url}: {parent} is not a "
                              "folder; choose an output path in a writable folder")
    if parent and not os.access(parent, os.W_OK):
        raise StoreWriteError(f"cannot create the cohort store {url}: {parent} is not "
                              "writable; choose an output path in a writable folder")


def list_incomplete(
    store: str | os.PathLike[str], *, storage_options: Mapping[str, Any] | None = None
) -> tuple[list[str], bool]:
    """What an interrupted run left: the keys of series whose write started and
    never finished (not flagged ``complete``; readers do not see them), sorted,
    and whether an ingest started and never wrote its catalog."""
    root = open_store(store, storage_options=storage_options)
    running = bool(root.attrs.get("ctvol", {}).get("ingest_running"))
    if "series" not in root:
        return [], running
    return sorted(name for name, group in root["series"].groups()
                  if group.attrs.get("complete") is not True), running


def open_store(
    store: str | os.PathLike[str],
    *,
    create: bool = False,
    storage_options: Mapping[str, Any] | None = None,
) -> Any:
    """Open (or create) the root group of a cohort store, refusing anything else.

    Raises
    ------
    StoreError
        The path exists but is not a ctvol cohort store (a non-Zarr folder, a
        file, or a Zarr group written by something else).
    FileNotFoundError
        ``create=False`` and there is no store at the path.
    """
    import zarr
    from zarr.errors import GroupNotFoundError

    url = store_url(store)
    check_store_path(url, create=create)
    if create and "://" not in url:
        try:  # a path that cannot be a folder fails here, with its reason, not in zarr
            os.makedirs(url, exist_ok=True)
        except OSError as exc:
            raise StoreWriteError(
                f"cannot create the cohort store {url}: {exc.strerror or exc}; choose an "
                "output path in a writable folder") from exc
    try:
        root = open_root(url, "r+" if not create else "a", storage_options)
    except (GroupNotFoundError, FileNotFoundError) as exc:
        if create:  # a URL whose bucket (or container) does not exist
            raise StoreWriteError(
                f"cannot create the cohort store {url}: {exc}; create the bucket first, or "
                "check the URL and its storage_options (endpoint, credentials)") from exc
        raise StoreNotFoundError(f"no cohort store at {url}; create one with ctvol.ingest") from exc
    except (zarr.errors.ContainsArrayError, ValueError) as exc:
        raise StoreError(f"{url} is not a ctvol cohort store: {exc}") from exc
    info = root.attrs.get("ctvol")
    if info is None:
        if create and not list(root.keys()) and not dict(root.attrs):
            root.attrs["ctvol"] = {"format_version": FORMAT_VERSION}
            return root
        raise StoreError(
            f"{url} is a Zarr group but not a ctvol cohort store (no 'ctvol' attribute)"
            + ("; choose a new output path" if create else "")
        )
    if int(info.get("format_version", 0)) > FORMAT_VERSION:
        raise StoreError(
            f"{url} has ctvol format {info.get('format_version')}, newer than this ctvol "
            f"({FORMAT_VERSION}); upgrade ctvol"
        )
    return root


def sop_digest(sop_uids: Sequence[str]) -> str:
    """SHA-1 of the ordered SOPInstanceUIDs: identifies a series' exact content."""
    return hashlib.sha1("\n".join(sop_uids).encode()).hexdigest()


def series_attrs(root: Any) -> dict[str, dict[str, Any]]:
    if "series" not in root:
        return {}
    out = {}
    for name, group in root["series"].groups():
        attrs = dict(group.attrs)
        if attrs.get("complete") is True:
            out[name] = attrs
    return out
