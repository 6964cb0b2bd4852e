"""Training data: preprocessing onto a network grid, the HDF5 pair file, and a torch Dataset.

Preprocessing (the ONE code path shared by ``nephi-prep`` and feed-forward inference)
    For each pair a *network grid* is built from the FIXED image (:func:`network_grid`): the
    fixed image's axis directions, the target spacing (mm) and the target shape (voxels), centred
    on the centre of the fixed image's field of view (so a larger target shape pads, a smaller
    one crops, around that centre). Intensities are normalized on the source images
    (:func:`nephi.intensity.normalize`: a clamp window such as [-1000, 0] HU -> [0, 1], or
    percentiles), then both images are resampled linearly *in physical space* onto the network
    grid (zero outside their field of view). Masks and labels are resampled with nearest
    neighbour. With ``apply_mask`` each image is multiplied by its own resampled mask. Landmarks
    stay in RAS mm.

HDF5 layout (``format = "nephi-pairs"``, ``format_version = 1``)::

    /                      attrs: format, format_version, ndim, shape (d,), spacing (d,) mm,
                                  preprocessing (JSON of :class:`PrepConfig`), builder (text),
                                  nephi_version, n_pairs
    /split/train, /split/val        pair names (variable-length UTF-8 strings)
    /pairs/<name>/moving            float32 (*shape), preprocessed moving image (A)
    /pairs/<name>/fixed             float32 (*shape), preprocessed fixed image (B)
    /pairs/<name>/moving_mask       uint8 (*shape), optional, 1 inside
    /pairs/<name>/fixed_mask        uint8 (*shape), optional, 1 inside
    /pairs/<name>/moving_label      int16 (*shape), optional label map (0 = background)
    /pairs/<name>/fixed_label       int16 (*shape), optional
    /pairs/<name>/fixed_points      float64 (K, d), optional landmarks, RAS mm
    /pairs/<name>/moving_points     float64 (K, d), optional, row k corresponds to row k above
    /pairs/<name>                   attrs: affine ((d+1, d+1), network-grid voxel -> RAS mm),
                                    spacing (d,) mm, split ("train" | "val"),
                                    moving_path, fixed_path (sources, "" if generated),
                                    source (free text, e.g. generator and seed)

All pairs of one file share ``shape`` and ``spacing`` (their affines differ), so a batch of
pairs lives on one grid in normalized coordinates (the frame of :mod:`nephi.geometry`).
"""

from __future__ import annotations

import csv
import json
import os
from dataclasses import asdict, dataclass, field

import h5py
import numpy as np
import torch

from . import __version__
from .errors import NephiInputError
from .geometry import Grid, apply_affine_torch
from .imageio import Image
from .intensity import normalize
from .sampling import sample_image

FORMAT = "nephi-pairs"
FORMAT_VERSION = 1
SPLITS = ("train", "val")


@dataclass
class PrepConfig:
    """How images are brought to the network grid (stored in the HDF5 file and in checkpoints).

    ``spacing``: target voxel size per array axis in mm, one value for all axes or d values
    (None: the fixed image's spacing);
    ``shape``: target grid shape in voxels, one value or d values (None: just covers the fixed
    image's field of view);
    ``intensity``: ``{method, low, high, window}`` as in :func:`nephi.intensity.normalize`
    (e.g. method ``window`` with window [-1000, 0] HU maps that range linearly to [0, 1]);
    ``apply_mask``: multiply each image by its mask after resampling (needs masks).
    """

    spacing: list | None = None
    shape: list | None = None
    intensity: dict = field(default_factory=lambda: {"method": "percentile", "low": 1.0,
                                                     "high": 99.0, "window": [-1000.0, 0.0]})
    apply_mask: bool = False

    def to_dict(self) -> dict:
        return asdict(self)

    @staticmethod
    def from_dict(d: dict) -> "PrepConfig":
        known = set(PrepConfig.__dataclass_fields__)
        unknown = set(d) - known
        if unknown:
            raise NephiInputError(f"preprocessing: unknown keys {sorted(unknown)}")
        return PrepConfig(**d)


@dataclass
class PreparedPair:
    """A pair on its network grid: ``moving``, ``fixed`` float32 (*S); masks bool (*S) or None;
    labels int16 (*S) or None; landmarks (K, d) RAS mm or None."""

    grid: Grid
    moving: np.ndarray
    fixed: np.ndarray
    moving_mask: np.ndarray | None = None
    fixed_mask: np.ndarray | None = None
    moving_label: np.ndarray | None = None
    fixed_label: np.ndarray | None = None
    fixed_points: np.ndarray | None = None
    moving_points: np.ndarray | None = None
    moving_path: str = ""
    fixed_path: str = ""
    source: str = ""


def per_axis(values, d: int, what: str) -> np.ndarray:
    """One value for every axis (broadcast) or exactly d values -> float64 array (d,)."""
    arr = np.asarray(values, dtype=np.float64).reshape(-1)
    if arr.size == 1:
        return np.full(d, arr[0])
    if arr.size != d:
        raise NephiInputError(f"preprocessing: target {what} {arr.tolist()} needs 1 or {d} "
                              "values")
    return arr


def network_grid(fixed: Grid, spacing=None, shape=None) -> Grid:
    """The network grid of a pair, built from the fixed image's grid.

    Same axis directions as ``fixed``; voxel size ``spacing`` (d,) mm (default: the fixed
    spacing); ``shape`` (d,) voxels (default: the smallest shape covering the fixed field of
    view); its centre voxel sits at the centre of the fixed image's field of view.
    """
    d = fixed.ndim
    directions = fixed.affine[:d, :d] / fixed.spacing
    spacing = fixed.spacing if spacing is None else per_axis(spacing, d, "spacing")
    if np.any(spacing <= 0):
        raise NephiInputError(f"preprocessing: target spacing {list(spacing)} must be positive")
    if shape is None:
        extent = np.asarray(fixed.shape, dtype=np.float64) * fixed.spacing
        shape = np.maximum(np.ceil(extent / spacing - 1e-6), 2).astype(int)
    shape = tuple(int(s) for s in per_axis(shape, d, "shape"))
    if min(shape) < 2:
        raise NephiInputError(f"preprocessing: target shape {list(shape)} needs >= 2 voxels "
                              "per axis")
    centre = fixed.index_to_ras_points((np.asarray(fixed.shape, dtype=np.float64) - 1.0) / 2.0)
    affine = np.eye(d + 1)
    affine[:d, :d] = directions * spacing
    affine[:d, d] = centre - affine[:d, :d] @ ((np.asarray(shape, dtype=np.float64) - 1.0) / 2.0)
    return Grid(shape, affine)


def resample(data: np.ndarray, source: Grid, target: Grid, mode: str = "bilinear") -> np.ndarray:
    """Resample ``data`` (source.shape) onto ``target`` through physical space (RAS mm).

    ``mode``: ``bilinear`` (linear in 2-D and 3-D) or ``nearest``; zero outside the source.
    Returns float32 (target.shape); a copy of ``data`` when the grids coincide.
    """
    if target.same_as(source, tol=1e-6):
        return np.array(data, dtype=np.float32)
    pts = target.normalized_points().reshape(1, -1, target.ndim)
    pts = apply_affine_torch(target.frame_to(source), pts)
    vol = torch.as_tensor(np.asarray(data, dtype=np.float32)).reshape(1, 1, *source.shape)
    out = sample_image(vol, pts, mode=mode, padding="zeros")
    return out.reshape(target.shape).numpy().astype(np.float32)


def preprocess_pair(moving: Image, fixed: Image, prep: PrepConfig,
                    moving_mask: np.ndarray | None = None, fixed_mask: np.ndarray | None = None,
                    moving_label: np.ndarray | None = None,
                    fixed_label: np.ndarray | None = None) -> PreparedPair:
    """Bring a pair to its network grid (see the module docstring). Masks and labels lie on
    their own image's grid; returns a :class:`PreparedPair`."""
    if moving.ndim != fixed.ndim:
        raise NephiInputError(f"moving image {moving.path} is {moving.ndim}-D but fixed image "
                              f"{fixed.path} is {fixed.ndim}-D")
    if prep.apply_mask and (moving_mask is None or fixed_mask is None):
        raise NephiInputError("preprocessing applies masks (apply_mask): both a moving and a "
                              "fixed mask are needed")
    grid = network_grid(fixed.grid, prep.spacing, prep.shape)
    icfg = prep.intensity

    def image(img: Image, mask):
        values = normalize(img.data, icfg["method"], icfg["low"], icfg["high"], icfg["window"],
                           mask=mask)
        return resample(values, img.grid, grid)

    def binary(arr, img: Image):
        if arr is None:
            return None
        return resample(np.asarray(arr) > 0, img.grid, grid, mode="nearest") > 0.5

    def labels(arr, img: Image):
        if arr is None:
            return None
        return np.rint(resample(arr, img.grid, grid, mode="nearest")).astype(np.int16)

    out = PreparedPair(grid=grid, moving=image(moving, moving_mask), fixed=image(fixed, fixed_mask),
                       moving_mask=binary(moving_mask, moving), fixed_mask=binary(fixed_mask, fixed),
                       moving_label=labels(moving_label, moving),
                       fixed_label=labels(fixed_label, fixed),
                       moving_path=moving.path, fixed_path=fixed.path)
    if prep.apply_mask:
        out.moving = out.moving * out.moving_mask
        out.fixed = out.fixed * out.fixed_mask
    return out


def assign_splits(n: int, val_fraction: float, seed: int = 0) -> list:
    """'train' / 'val' per pair: ``round(n * val_fraction)`` pairs, chosen by a seeded
    permutation, go to validation (at least 1 when 0 < val_fraction and n > 1)."""
    if not 0.0 <= val_fraction < 1.0:
        raise NephiInputError(f"--val-fraction: must be in [0, 1), got {val_fraction}")
    n_val = int(round(n * val_fraction))
    if val_fraction > 0 and n > 1:
        n_val = max(n_val, 1)
    n_val = min(n_val, max(n - 1, 0))
    val = set(np.random.default_rng(seed).permutation(n)[:n_val].tolist())
    return ["val" if i in val else "train" for i in range(n)]


def read_pairs_csv(path: str) -> list:
    """Rows of a pairs CSV as dicts with absolute paths (relative ones are taken from the CSV's
    folder). Columns ``moving,fixed`` are required; ``moving_mask, fixed_mask, moving_points,
    fixed_points, moving_label, fixed_label, name`` are optional (empty cell = none)."""
    if not os.path.isfile(path):
        raise NephiInputError(f"pairs CSV {path}: file not found")
    base = os.path.dirname(os.path.abspath(path))
    optional = ("moving_mask", "fixed_mask", "moving_points", "fixed_points", "moving_label",
                "fixed_label")
    rows = []
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        cols = reader.fieldnames or []
        if "moving" not in cols or "fixed" not in cols:
            raise NephiInputError(f"pairs CSV {path}: needs a header with columns moving,fixed")
        unknown = set(cols) - {"moving", "fixed", "name", *optional}
        if unknown:
            raise NephiInputError(f"pairs CSV {path}: unknown columns {sorted(unknown)}")
        for line, row in enumerate(reader, start=2):
            item = {"line": line, "name": (row.get("name") or "").strip()}
            for key in ("moving", "fixed", *optional):
                value = (row.get(key) or "").strip()
                if not value:
                    if key in ("moving", "fixed"):
                        raise NephiInputError(f"pairs CSV {path}: line {line} has no {key}")
                    item[key] = None
                else:
                    item[key] = value if os.path.isabs(value) else os.path.join(base, value)
            rows.append(item)
    if not rows:
        raise NephiInputError(f"pairs CSV {path}: holds no pair")
    return rows


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
        if exc_type is None:
            self.close()
        else:
            self.abort()
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


class PairDataset(torch.utils.data.Dataset):
    """Pairs of one split as tensors: ``moving``, ``fixed`` (1, *S) float32, ``fixed_mask``
    (*S) bool when the file has masks, ``index`` (int). h5py opens lazily per worker."""

    def __init__(self, path: str, split: str = "train"):
        self.file = PairFile(path)
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}")
        self.split = split
        self.names = self.file.splits[split]

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, index: int) -> dict:
        arrays = self.file.read(self.names[index], ["moving", "fixed", "fixed_mask"])
        item = {"moving": torch.from_numpy(arrays["moving"]).unsqueeze(0),
                "fixed": torch.from_numpy(arrays["fixed"]).unsqueeze(0),
                "index": index}
        if "fixed_mask" in arrays:
            item["fixed_mask"] = torch.from_numpy(arrays["fixed_mask"] > 0)
        return item


__all__ = ["PrepConfig", "PreparedPair", "per_axis", "network_grid", "resample", "preprocess_pair",
           "assign_splits", "read_pairs_csv", "PairFileWriter", "PairFile", "PairDataset"]
