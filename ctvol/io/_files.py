"""Input files: find them (local folders through symlinks, or fsspec URLs), open them,
and name the ones that cannot be opened. Rules: ``docs/storage.md`` ("Which files
are read").
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

from ..errors import NoInputError

__all__ = ["FILE_ID_PREFIX", "dangling_link", "file_id", "find_files", "is_local", "open_file",
           "split_protocol"]

#: ``sop_uid`` of a file without SOPInstanceUID: this prefix and the file's SHA-1
#: (a UID holds only digits and dots, so the two never collide).
FILE_ID_PREFIX = "sha1:"


def split_protocol(path: str) -> tuple[Any, str]:
    import fsspec.core

    fs, root = fsspec.core.url_to_fs(path)
    return fs, root


def is_local(path: str) -> bool:
    return "://" not in str(path) or str(path).startswith("file://")


def _walk_local(top: str, found: set[str]) -> None:
    """Every file under ``top``, following symlinked folders, each real folder once.

    Paths are kept as the user's tree shows them (through the links, never
    resolved). A folder already visited -- a link cycle, or a link back into
    a folder walked under another name -- is not walked again, so its files
    are listed once, under the first path in sorted order. Symlinked files
    and dangling links are listed like files (the header pass gives a
    dangling link its own fate).
    """
    seen: set[tuple[int, int]] = set()
    for dirpath, dirs, files in os.walk(top, followlinks=True):
        st = os.stat(dirpath)
        if (st.st_dev, st.st_ino) in seen:  # reached again through a link
            dirs[:] = []
            continue
        seen.add((st.st_dev, st.st_ino))
        keep = []
        for d in sorted(dirs):
            try:
                sd = os.stat(os.path.join(dirpath, d))
            except OSError:  # vanished, or unreadable: os.walk reports nothing either
                continue
            if (sd.st_dev, sd.st_ino) not in seen:
                keep.append(d)
        dirs[:] = keep  # sorted: the first name of a folder wins, deterministically
        found.update(os.path.join(dirpath, f) for f in files)


def find_files(inputs: str | os.PathLike[str] | Iterable[str | os.PathLike[str]]) -> list[str]:
    """Every file under the given folders and files, sorted, without duplicates.

    Parameters
    ----------
    inputs : path, URL or iterable of them
        Folders are searched recursively (hidden files included: they get a
        fate like any other). Local folders are walked through symlinked
        folders, each real folder once (a link cycle ends); symlinked files
        and dangling links are listed under their link path. Local paths and
        fsspec URLs (``s3://...``) are accepted; URLs list what the file
        system's ``find`` returns.

    Returns
    -------
    list of str
        Absolute paths, not resolved through links (or full URLs).

    Raises
    ------
    FileNotFoundError
        When an input does not exist.
    """
    if isinstance(inputs, str | os.PathLike):
        inputs = [inputs]
    found: set[str] = set()
    for item in inputs:
        item = os.fspath(item)
        if is_local(item):
            local = item.removeprefix("file://")
            path = os.path.abspath(os.path.expanduser(local))
            if os.path.isdir(path):
                _walk_local(path, found)
            elif os.path.isfile(path) or os.path.islink(path):
                found.add(path)  # a dangling link given by name gets a fate too
            else:
                raise NoInputError(
                    f"input {item!r} does not exist; pass DICOM folders or files"
                )
        else:
            fs, root = split_protocol(item)
            proto = item.split("://", 1)[0]
            if fs.isdir(root):
                found.update(f"{proto}://{p}" for p in fs.find(root))
            elif fs.isfile(root):
                found.add(item)
            else:
                raise NoInputError(f"input {item!r} does not exist")
    return sorted(found)


def open_file(path: str) -> Any:
    if is_local(path):
        return open(path.removeprefix("file://"), "rb")
    import fsspec

    return fsspec.open(path, "rb").open()


def file_id(path: str) -> str:
    """A stable identity for a file without SOPInstanceUID: SHA-1 of its bytes."""
    import hashlib

    h = hashlib.sha1()
    with open_file(path) as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return FILE_ID_PREFIX + h.hexdigest()


def dangling_link(path: str) -> str | None:
    """Why a local symlink leads to no file (None for anything else)."""
    if not is_local(path):
        return None
    local = path.removeprefix("file://")
    if not os.path.islink(local) or os.path.exists(local):
        return None
    try:
        target = os.readlink(local)
    except OSError:
        target = "?"
    return (f"dangling symlink: {local} points to {target}, which does not exist (or the "
            "links loop); fix or remove the link")
