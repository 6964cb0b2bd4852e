"""Atomic writing: the one way nephi writes files and folders a user will read.

* :class:`AtomicDir`: a result folder; everything goes to a hidden sibling folder first and is
  moved into place at the end, so an interrupted or failed run leaves no half-written folder.
* :func:`write_file`: one file, written to a hidden sibling and renamed onto its path, with write
  failures reported as one :class:`~nephi.errors.NephiInputError` naming the option and file.
* :func:`check_output_dir`, :func:`check_output_path`: checks made before any work starts.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from typing import Callable

from nephi.errors import NephiInputError


__all__ = ["AtomicDir", "write_file", "check_output_dir", "check_output_path"]


def _nearest_existing(path: str) -> str:
    """The nearest existing ancestor folder of ``path`` (where a staged sibling would live)."""
    ancestor = os.path.dirname(os.path.abspath(path))
    while not os.path.exists(ancestor):
        up = os.path.dirname(ancestor)
        if up == ancestor:
            break
        ancestor = up
    return ancestor


def check_output_dir(path: str, option: str = "--out") -> None:
    """Fail early (NephiInputError) when ``path`` cannot become a result folder.

    Creates nothing: the folder (and missing parents) are made only when results are written.
    """
    if not path or not str(path).strip():
        raise NephiInputError(f"{option}: empty folder name")
    if os.path.exists(path) and not os.path.isdir(path):
        raise NephiInputError(f"{option} {path}: exists and is not a folder")
    # The nearest existing ancestor must be a writable folder (the result is staged beside it).
    ancestor = _nearest_existing(path)
    if not os.path.isdir(ancestor):
        raise NephiInputError(f"{option} {path}: {ancestor} is not a folder")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise NephiInputError(f"{option} {path}: folder {ancestor} is not writable")
    if os.path.isdir(path) and not os.access(path, os.W_OK | os.X_OK):
        raise NephiInputError(f"{option} {path}: folder is not writable")


class AtomicDir:
    """Context manager yielding a temporary folder that becomes ``path`` on success.

    If ``path`` does not exist, the temporary folder is renamed to it. If it exists, each file
    is moved in with ``os.replace`` (each file appears whole). On error the temporary folder is
    removed and ``path`` is left as it was; an error of the file system itself (no space left,
    read-only, no permission: an OSError with an errno) becomes one NephiInputError naming
    ``option`` and the folder.
    """

    def __init__(self, path: str, option: str = "--out"):
        self.path = os.path.abspath(path)
        self.option = option
        self.tmp = None

    def _failed(self, exc: OSError):
        return NephiInputError(f"{self.option} {self.path}: cannot be written "
                               f"({exc.strerror or exc}); nothing was written")

    def __enter__(self) -> str:
        parent = os.path.dirname(self.path)
        try:
            os.makedirs(parent, exist_ok=True)
            self.tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(self.path)}.partial-",
                                        dir=parent)
        except OSError as exc:
            raise self._failed(exc) from None
        return self.tmp

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            if isinstance(exc, OSError) and exc.errno is not None:
                raise self._failed(exc) from None
            return False
        try:
            if not os.path.exists(self.path):
                os.rename(self.tmp, self.path)
                return False
            for name in os.listdir(self.tmp):
                dest = os.path.join(self.path, name)
                if os.path.isdir(dest) and not os.path.islink(dest):
                    shutil.rmtree(dest)  # a sub-folder is replaced whole
                os.replace(os.path.join(self.tmp, name), dest)
            os.rmdir(self.tmp)
        except OSError as exc:
            shutil.rmtree(self.tmp, ignore_errors=True)
            raise self._failed(exc) from None
        return False


def check_output_path(path: str, option: str = "--out", suffixes: tuple | None = None) -> None:
    """An output file path: not empty, not a folder, ending in one of ``suffixes`` (when given),
    in a folder that exists and is writable or can be created."""
    if not path:
        raise NephiInputError(f"{option}: empty file name")
    if suffixes and not path.endswith(tuple(suffixes)):
        raise NephiInputError(f"{option} {path}: must end in {' or '.join(suffixes)}")
    if os.path.isdir(path):
        raise NephiInputError(f"{option} {path}: is a folder")
    ancestor = _nearest_existing(path)
    if not os.path.isdir(ancestor) or not os.access(ancestor, os.W_OK | os.X_OK):
        raise NephiInputError(f"{option} {path}: folder {ancestor} is not writable")


def write_file(path: str, write: Callable[[str], None], option: str = "--out") -> None:
    """Call ``write(tmp)`` on a temporary sibling of ``path`` (same extension, so writers that go
    by the name, like nibabel's, pick the right format), then move it onto ``path``.

    Missing folders are created. Any OSError becomes a NephiInputError; the temporary file
    never stays behind.
    """
    folder = os.path.dirname(os.path.abspath(path))
    base = os.path.basename(path)
    ext = ".nii.gz" if base.endswith(".nii.gz") else os.path.splitext(base)[1]
    tmp = os.path.join(folder, f".{base[:len(base) - len(ext)]}.partial-{os.getpid()}{ext}")
    try:
        os.makedirs(folder, exist_ok=True)
        write(tmp)
        os.replace(tmp, path)
    except OSError as exc:
        raise NephiInputError(f"{option} {path}: cannot be written "
                              f"({exc.strerror or exc})") from None
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
