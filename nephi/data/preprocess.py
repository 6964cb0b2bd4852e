"""Training data: preprocessing onto a network grid, the HDF5 pair file, and a torch Dataset.

Preprocessing (the ONE code path shared by ``nephi-prep`` and feed-forward inference)
    For each pair a *network grid* is built from the FIXED image (:func:`network_grid`): the
    fixed image's axis directions, the target spacing (mm) and the target shape (voxels), centred
    on the centre of the fixed image's field of view (so a larger target shape pads, a smaller
    one crops, around that centre). Intensities are normalized on the source images
    (:func:`nephi.io.intensity.normalize`: a clamp window such as [-1000, 0] HU -> [0, 1], or
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
pairs lives on one grid in normalized coordinates (the frame of :mod:`nephi.geometry.grid`).
"""

from __future__ import annotations

import csv
import os
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from nephi.config.validate import ALIGN_MODES
from nephi.errors import NephiInputError
from nephi.geometry.grid import Grid, apply_affine_torch
from nephi.geometry.sampling import sample_image
from nephi.io.images import Image
from nephi.io.intensity import normalize
from nephi.records import from_mapping


@dataclass
class PrepConfig:
    """How images are brought to the network grid (stored in the HDF5 file and in checkpoints).

    ``spacing``: target voxel size per array axis in mm, one value for all axes or d values
    (None: the fixed image's spacing);
    ``shape``: target grid shape in voxels, one value or d values (None: just covers the fixed
    image's field of view);
    ``intensity``: ``{method, low, high, window}`` as in :func:`nephi.io.intensity.normalize`
    (e.g. method ``window`` with window [-1000, 0] HU maps that range linearly to [0, 1]);
    ``apply_mask``: multiply each image by its mask after resampling (needs masks);
    ``align``: ``none``, ``rigid`` or ``affine``: the global alignment of ``nephi-infer``
    (:func:`nephi.optim.align.align`, the pairwise defaults' ``align`` section) runs before the
    moving image is resampled, so the network learns (and, with a checkpoint, ``nephi-infer``
    by default predicts) what is left after it (:func:`align_moving`).
    """

    spacing: list | None = None
    shape: list | None = None
    intensity: dict = field(default_factory=lambda: {"method": "percentile", "low": 1.0,
                                                     "high": 99.0, "window": [-1000.0, 0.0]})
    apply_mask: bool = False
    align: str = "none"

    def to_dict(self) -> dict:
        return asdict(self)

    @staticmethod
    def from_dict(d: dict) -> "PrepConfig":
        prep = from_mapping(PrepConfig, d, "preprocessing")
        if prep.align not in ALIGN_MODES:
            raise NephiInputError(f"preprocessing align: {prep.align!r} is not one of "
                                  f"{', '.join(ALIGN_MODES)}")
        return prep


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
    alignment: np.ndarray | None = None  # (d+1, d+1) fixed -> moving RAS, when prep aligned


def align_moving(moving: Image, fixed: Image, prep: PrepConfig,
                 moving_mask: np.ndarray | None = None,
                 fixed_mask: np.ndarray | None = None) -> tuple:
    """The moving image seen through the global alignment ``prep.align`` -> (Image, matrix).

    The alignment A (fixed -> moving RAS mm, :func:`nephi.optim.align.align` on the
    normalized images with the pairwise defaults' ``align`` section) is put into the moving
    image's header (:func:`seen_through`), so masks and labels on its grid follow. A moving
    point p lies at A^-1(p).
    """
    from nephi.config.loader import load_defaults
    from nephi.optim.align import align

    cfg = load_defaults("pairwise")
    cfg["align"]["mode"] = prep.align
    icfg = prep.intensity

    def norm(img: Image) -> np.ndarray:
        return normalize(img.data, icfg["method"], icfg["low"], icfg["high"], icfg["window"])

    affine, _ = align(norm(fixed), fixed.grid, norm(moving), moving.grid, cfg["align"],
                      fixed_mask=fixed_mask, moving_mask=moving_mask, seed=0, progress=False,
                      lncc_window=int(cfg["io"]["lncc_window"]))
    return seen_through(moving, affine.matrix), affine.matrix


def seen_through(moving: Image, matrix: np.ndarray) -> Image:
    """The moving image with the affine ``matrix`` (fixed -> moving RAS mm, (d+1, d+1)) put into
    its header: voxel i lies at A^-1(M i), so resampling it anywhere gives moving(A(x))."""
    return Image(moving.data, Grid(moving.grid.shape, np.linalg.inv(matrix) @ moving.grid.affine),
                 moving.path)


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


def _read_csv(path: str, kind: str, required: tuple, optional: tuple, text: tuple) -> list:
    """Rows of a ``kind`` CSV ("pairs", "scans") as dicts: ``line``, the ``text`` columns
    (stripped, "" when empty) and the path columns ``required`` + ``optional`` (absolute;
    relative ones are taken from the CSV's folder; None when an optional cell is empty)."""
    if not os.path.isfile(path):
        raise NephiInputError(f"{kind} CSV {path}: file not found")
    base = os.path.dirname(os.path.abspath(path))
    rows = []
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        cols = reader.fieldnames or []
        if any(c not in cols for c in required):
            raise NephiInputError(f"{kind} CSV {path}: needs a header with columns "
                                  f"{','.join(required)}")
        unknown = set(cols) - {*required, *optional, *text}
        if unknown:
            raise NephiInputError(f"{kind} CSV {path}: unknown columns {sorted(unknown)}")
        for line, row in enumerate(reader, start=2):
            item = {"line": line, **{k: (row.get(k) or "").strip() for k in text}}
            for key in (*required, *optional):
                value = (row.get(key) or "").strip()
                if not value:
                    if key in required:
                        raise NephiInputError(f"{kind} CSV {path}: line {line} has no {key}")
                    item[key] = None
                else:
                    item[key] = value if os.path.isabs(value) else os.path.join(base, value)
            rows.append(item)
    if not rows:
        raise NephiInputError(f"{kind} CSV {path}: holds no {kind[:-1]}")
    return rows


def read_pairs_csv(path: str) -> list:
    """Rows of a pairs CSV as dicts with absolute paths (relative ones are taken from the CSV's
    folder). Columns ``moving,fixed`` are required; ``moving_mask, fixed_mask, moving_points,
    fixed_points, moving_label, fixed_label, name`` are optional (empty cell = none)."""
    return _read_csv(path, "pairs", ("moving", "fixed"),
                     ("moving_mask", "fixed_mask", "moving_points", "fixed_points",
                      "moving_label", "fixed_label"), ("name",))


def read_scans_csv(path: str) -> list:
    """Rows of a scans CSV (unpaired scans) as dicts with absolute paths: column ``image``
    required; ``mask, points, label`` (paths) and ``name, subject`` (text) optional. Every
    file named must exist."""
    rows = _read_csv(path, "scans", ("image",), ("mask", "points", "label"),
                     ("name", "subject"))
    for row in rows:
        for key in ("image", "mask", "points", "label"):
            if row[key] is not None and not os.path.exists(row[key]):
                raise NephiInputError(f"scans CSV {path}: line {row['line']}: {key} "
                                      f"{row[key]}: file not found")
    return rows
