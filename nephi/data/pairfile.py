"""The HDF5 pair file of training data (layout in :mod:`nephi.data.preprocess`): writing it
atomically (:class:`PairFileWriter`), reading it (:class:`PairFile`) and a torch Dataset of one
split (:class:`PairDataset`).
"""

from __future__ import annotations

import json
import os

import h5py
import numpy as np
import torch

from nephi import __version__
from nephi.data.preprocess import PreparedPair, PrepConfig
from nephi.errors import NephiInputError, short_reason
from nephi.geometry.grid import Grid


FORMAT = "nephi-pairs"


FORMAT_VERSION = 1


SPLITS = ("train", "val")


class PairFileWriter:
    """Write a pair file atomically: everything goes to ``path + '.partial'``, renamed on
    :meth:`close` (``with`` block exit without error); an error removes the partial file."""

    def __init__(self, path: str, prep: PrepConfig, builder: str = ""):
        self.path = os.path.abspath(path)
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        self.tmp = self.path + ".partial"
        self.prep = prep
        self.h5 = h5py.File(self.tmp, "w")
        self.h5.attrs["format"] = FORMAT
        self.h5.attrs["format_version"] = FORMAT_VERSION
        self.h5.attrs["preprocessing"] = json.dumps(prep.to_dict())
        self.h5.attrs["builder"] = builder
        self.h5.attrs["nephi_version"] = __version__
        self.h5.create_group("pairs")
        self.names = {s: [] for s in SPLITS}
        self.shape = None
        self.spacing = None

    def add(self, name: str, pair: PreparedPair, split: str) -> None:
        """Append one pair; all pairs must share the grid shape and spacing."""
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        if self.shape is None:
            self.shape, self.spacing = pair.grid.shape, pair.grid.spacing
        elif pair.grid.shape != self.shape or not np.allclose(pair.grid.spacing, self.spacing,
                                                              rtol=1e-4):
            raise NephiInputError(
                f"pair {name}: network grid {pair.grid.shape} @ {pair.grid.spacing.round(3)} mm "
                f"differs from the file's {self.shape} @ {np.round(self.spacing, 3)} mm; give a "
                "target shape and spacing")
        g = self.h5["pairs"].create_group(name)
        opts = {"chunks": tuple(self.shape), "compression": "gzip", "compression_opts": 1,
                "shuffle": True}
        g.create_dataset("moving", data=pair.moving.astype(np.float32), **opts)
        g.create_dataset("fixed", data=pair.fixed.astype(np.float32), **opts)
        for key in ("moving_mask", "fixed_mask"):
            if getattr(pair, key) is not None:
                g.create_dataset(key, data=getattr(pair, key).astype(np.uint8), **opts)
        for key in ("moving_label", "fixed_label"):
            if getattr(pair, key) is not None:
                g.create_dataset(key, data=getattr(pair, key).astype(np.int16), **opts)
        for key in ("fixed_points", "moving_points"):
            if getattr(pair, key) is not None:
                g.create_dataset(key, data=np.asarray(getattr(pair, key), dtype=np.float64))
        g.attrs["affine"] = pair.grid.affine
        g.attrs["spacing"] = pair.grid.spacing
        g.attrs["split"] = split
        g.attrs["moving_path"] = pair.moving_path
        g.attrs["fixed_path"] = pair.fixed_path
        g.attrs["source"] = pair.source
        self.names[split].append(name)

    def close(self) -> None:
        if self.shape is None:
            self.abort()
            raise NephiInputError(f"{self.path}: no pair was written")
        self.h5.attrs["ndim"] = len(self.shape)
        self.h5.attrs["shape"] = np.asarray(self.shape, dtype=np.int64)
        self.h5.attrs["spacing"] = np.asarray(self.spacing, dtype=np.float64)
        self.h5.attrs["n_pairs"] = sum(len(v) for v in self.names.values())
        text = h5py.string_dtype()
        for split, names in self.names.items():
            self.h5.create_dataset(f"split/{split}", data=np.asarray(names, dtype=object),
                                   dtype=text)
        self.h5.close()
        os.replace(self.tmp, self.path)

    def abort(self) -> None:
        try:
            self.h5.close()
        finally:
            if os.path.exists(self.tmp):
                os.remove(self.tmp)

    def __enter__(self) -> "PairFileWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        try:
            if exc_type is None:
                self.close()
                return False
        except OSError as error:
            exc = error
        self.abort()
        if isinstance(exc, OSError):
            raise NephiInputError(f"{self.path}: cannot be written ({short_reason(exc)}); "
                                  "nothing was written") from None
        return False


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class PairFile:
    """Read access to a pair file (opened lazily, reopened in each process that uses it)."""

    def __init__(self, path: str):
        if not os.path.isfile(path):
            raise NephiInputError(f"dataset {path}: file not found")
        self.path = path
        self._h5 = None
        self._pid = None
        h5 = self.h5
        if _text(h5.attrs.get("format", "")) != FORMAT:
            raise NephiInputError(f"dataset {path}: not a nephi pair file (format attribute)")
        if int(h5.attrs["format_version"]) > FORMAT_VERSION:
            raise NephiInputError(f"dataset {path}: format version {h5.attrs['format_version']} "
                                  f"is newer than this nephi reads ({FORMAT_VERSION})")
        self.shape = tuple(int(s) for s in h5.attrs["shape"])
        self.spacing = np.asarray(h5.attrs["spacing"], dtype=np.float64)
        self.prep = PrepConfig.from_dict(json.loads(_text(h5.attrs["preprocessing"])))
        self.splits = {s: [_text(n) for n in h5[f"split/{s}"][()]] for s in SPLITS}
        first = next(iter(h5["pairs"].values()))
        self.has = {k: k in first for k in ("fixed_mask", "moving_mask", "fixed_label",
                                             "moving_label", "fixed_points")}

    @property
    def h5(self) -> h5py.File:
        if self._h5 is None or self._pid != os.getpid():
            self._h5 = h5py.File(self.path, "r")
            self._pid = os.getpid()
        return self._h5

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def canonical_grid(self) -> Grid:
        """A grid with the file's shape and spacing: its normalized frame is the frame of every
        pair (for batched losses; use :meth:`grid` for physical positions)."""
        return Grid(self.shape, np.diag([*self.spacing, 1.0]))

    def grid(self, name: str) -> Grid:
        return Grid(self.shape, np.asarray(self.h5["pairs"][name].attrs["affine"]))

    def read(self, name: str, keys=None) -> dict:
        """Arrays of one pair (all present datasets, or ``keys``) as numpy."""
        g = self.h5["pairs"][name]
        keys = list(g.keys()) if keys is None else [k for k in keys if k in g]
        return {k: g[k][()] for k in keys}

    def attrs(self, name: str) -> dict:
        return {k: (_text(v) if isinstance(v, (str, bytes)) else v)
                for k, v in self.h5["pairs"][name].attrs.items()}

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_h5"] = None
        state["_pid"] = None
        return state


POINT_KEYS = ("fixed_points", "moving_points")


class PairDataset(torch.utils.data.Dataset):
    """Pairs of one split as tensors: ``moving``, ``fixed`` (1, *S) float32, ``fixed_mask``
    (*S) bool when the file has masks, ``index`` (int); with ``points``, also
    ``fixed_points`` and ``moving_points`` (K, d) float32 in the normalized frame of the pair's
    grid ((0, d) for a pair without landmarks; batch them with :func:`collate_pairs`). h5py
    opens lazily per worker."""

    def __init__(self, path: str, split: str = "train", points: bool = False):
        self.file = PairFile(path)
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}")
        self.split = split
        self.names = self.file.splits[split]
        self.points = points

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, index: int) -> dict:
        name = self.names[index]
        keys = ["moving", "fixed", "fixed_mask"] + (list(POINT_KEYS) if self.points else [])
        arrays = self.file.read(name, keys)
        item = {"moving": torch.from_numpy(arrays["moving"]).unsqueeze(0),
                "fixed": torch.from_numpy(arrays["fixed"]).unsqueeze(0),
                "index": index}
        if "fixed_mask" in arrays:
            item["fixed_mask"] = torch.from_numpy(arrays["fixed_mask"] > 0)
        if self.points:
            grid = self.file.grid(name)
            for key in POINT_KEYS:
                ras = arrays.get(key, np.zeros((0, self.file.ndim)))
                item[key] = torch.as_tensor(grid.ras_to_normalized_points(ras),
                                            dtype=torch.float32)
        return item


def collate_pairs(items: list) -> dict:
    """Batch of :class:`PairDataset` items: torch's default collation, except the landmark
    sets, padded with NaN rows to the batch's largest count: (B, K, d)."""
    out = torch.utils.data.default_collate(
        [{k: v for k, v in item.items() if k not in POINT_KEYS} for item in items])
    if POINT_KEYS[0] in items[0]:
        count = max(item[POINT_KEYS[0]].shape[0] for item in items)
        for key in POINT_KEYS:
            out[key] = torch.stack([torch.nn.functional.pad(
                item[key], (0, 0, 0, count - item[key].shape[0]), value=float("nan"))
                for item in items])
    return out
