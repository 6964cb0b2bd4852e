"""Convert the DIR-LAB lung CT benchmarks to NIfTI images and RAS landmark CSVs.

DIR-LAB (the Deformable Image Registration Laboratory) distributes two lung CT sets with 300
expert landmark pairs per case:

* **4DCT** (``case1`` ... ``case10``): ``CaseNPack/Images/caseN_T00_s.img`` (end inhale) and
  ``caseN_T50_s.img`` (end exhale) with landmarks ``ExtremePhases/CaseN_300_T00_xyz.txt`` and
  ``..._T50_xyz.txt``. Some downloads differ (``Case8Deploy``, ``extremePhases``,
  ``case10_T00.img``, ``caseN_T00-ssm.img``, ``case8_dirLab300_T00_xyz.txt``); files are found by
  a recursive, case-insensitive search of ROOT for these name patterns.
* **COPDGene** (``copd1`` ... ``copd10``): ``copdN_iBHCT.img`` (breath-hold inhale),
  ``copdN_eBHCT.img`` (breath-hold exhale), ``copdN_300_iBH_xyz_r1.txt``,
  ``copdN_300_eBH_xyz_r1.txt``.

Raw images
    Headerless little-endian int16, x (column) varying fastest, then y (row), then z (slice):
    ``np.fromfile(path, '<i2').reshape(nz, ny, nx)``. Shape and voxel size are not in the file;
    they come from the published per-case tables :data:`FOURDCT_TABLE` and :data:`COPD_TABLE`
    (override with a CSV, see :func:`load_table`). This module hands arrays around in
    ``(X, Y, Z)`` axis order: ``volume[i, j, k]`` is column ``i``, row ``j``, slice ``k``.

Landmarks
    One landmark per line, ``x y z`` separated by whitespace or tabs: 1-based voxel indices
    (x = column, y = row, z = slice), integers in the distributed files (floats are accepted).
    Line ``n`` of the inhale file and line ``n`` of the exhale file are the same anatomical point.

Orientation (the one convention of this module)
    The DIR-LAB images are axial CT slices in the usual radiological storage: the column index
    increases towards the patient's left, the row index towards posterior, and the slice index
    towards inferior (slice 1 is the most superior one: the ordering found by published mappings
    of the COPD landmarks onto the original DICOM series, assumed for the 4DCT set as well). The NIfTI affine therefore maps 0-based voxel ``(i, j, k)`` to RAS millimetres
    as ``(x, y, z) = (-sx * i, -sy * j, -sz * k)``: a diagonal affine with all three entries
    negative (orientation code ``LPI``) and voxel ``(0, 0, 0)`` at the origin. See
    :func:`dirlab_affine`. The voxel array is written unchanged (no flips); the orientation lives
    only in the affine. A landmark's RAS coordinate is ``affine @ (file_value - 1)`` with the
    affine of the very image it annotates. Because inhale and exhale share one affine and the
    affine is diagonal with entries of magnitude equal to the spacing, inhale-exhale distances in
    mm equal the voxel differences times the spacing whatever the sign of each axis: a wrong
    guess about the slice order would mirror images and points together and leave every
    landmark error unchanged.

Intensities
    Written values are ``raw + hu_offset`` (int16 when the result fits, else int32). Published
    DIR-LAB loaders treat the files of both sets as CT numbers shifted by +1024 (air near 0,
    water near 1024) and subtract 1024 to get Hounsfield units, so the default for both sets is
    ``hu_offset = -1024``. Pass ``hu_offset=0`` to keep the raw
    values. A case whose raw minimum is below -100 (already in HU) triggers a warning under a
    non-zero offset.

Outputs of :func:`convert_dirlab` (``OUT`` is the output folder)
    ``OUT/<case>/<case>_inhale.nii.gz``, ``<case>_exhale.nii.gz``: the volumes, shape (X, Y, Z).
    ``OUT/<case>/<case>_inhale_points.csv``, ``<case>_exhale_points.csv``: header ``x,y,z``, RAS
    mm with 4 decimals, row ``n`` of one file corresponds to row ``n`` of the other.
    ``OUT/pairs.csv``: ``moving,fixed,moving_points,fixed_points`` with paths relative to
    ``OUT``; moving = exhale, fixed = inhale.
    ``OUT/initial_errors.csv``: per case, the identity-registration landmark error (mean and
    population standard deviation over the landmarks, mm) next to the published mean.
"""

from __future__ import annotations

import csv
import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np


__all__ = [
    "CaseGeometry",
    "FOURDCT_TABLE",
    "COPD_TABLE",
    "DIRLAB_TABLE",
    "PUBLISHED_INITIAL_ERROR_MM",
    "PUBLISHED_SET_MEAN_INITIAL_ERROR_MM",
    "DEFAULT_HU_OFFSET",
    "case_set",
    "normalize_case_name",
    "load_table",
    "dirlab_affine",
    "read_dirlab_img",
    "read_dirlab_points",
    "points_to_ras",
    "initial_error_mm",
    "find_case_files",
    "convert_dirlab",
]


@dataclass(frozen=True)
class CaseGeometry:
    """Geometry of one DIR-LAB case.

    ``shape_xyz``: voxels (nx, ny, nz) = (columns, rows, slices).
    ``spacing_xyz``: voxel size in mm along the same three axes.
    """

    shape_xyz: tuple
    spacing_xyz: tuple


def _geom(nx, ny, nz, sx, sy, sz) -> CaseGeometry:
    return CaseGeometry((int(nx), int(ny), int(nz)), (float(sx), float(sy), float(sz)))


FOURDCT_TABLE = {
    "case1": _geom(256, 256, 94, 0.97, 0.97, 2.5),
    "case2": _geom(256, 256, 112, 1.16, 1.16, 2.5),
    "case3": _geom(256, 256, 104, 1.15, 1.15, 2.5),
    "case4": _geom(256, 256, 99, 1.13, 1.13, 2.5),
    "case5": _geom(256, 256, 106, 1.10, 1.10, 2.5),
    "case6": _geom(512, 512, 128, 0.97, 0.97, 2.5),
    "case7": _geom(512, 512, 136, 0.97, 0.97, 2.5),
    "case8": _geom(512, 512, 128, 0.97, 0.97, 2.5),
    "case9": _geom(512, 512, 128, 0.97, 0.97, 2.5),
    "case10": _geom(512, 512, 120, 0.97, 0.97, 2.5),
}
"""DIR-LAB 4DCT cases (Castillo et al. 2009): image size and voxel size (mm), x/y/z order."""


COPD_TABLE = {
    "copd1": _geom(512, 512, 121, 0.625, 0.625, 2.5),
    "copd2": _geom(512, 512, 102, 0.645, 0.645, 2.5),
    "copd3": _geom(512, 512, 126, 0.652, 0.652, 2.5),
    "copd4": _geom(512, 512, 126, 0.590, 0.590, 2.5),
    "copd5": _geom(512, 512, 131, 0.647, 0.647, 2.5),
    "copd6": _geom(512, 512, 119, 0.633, 0.633, 2.5),
    "copd7": _geom(512, 512, 112, 0.625, 0.625, 2.5),
    "copd8": _geom(512, 512, 115, 0.586, 0.586, 2.5),
    "copd9": _geom(512, 512, 116, 0.664, 0.664, 2.5),
    "copd10": _geom(512, 512, 135, 0.742, 0.742, 2.5),
}
"""DIR-LAB COPDGene cases (Castillo et al. 2013): image size and voxel size (mm), x/y/z order."""


DIRLAB_TABLE = {**FOURDCT_TABLE, **COPD_TABLE}
"""Both built-in tables, keyed by canonical case name (``case1``..``case10``, ``copd1``..)."""


PUBLISHED_INITIAL_ERROR_MM = {
    "case1": 3.89,
    "case2": 4.34,
    "case3": 6.94,
    "case4": 9.83,
    "case5": 7.48,
    "case6": 10.89,
    "case7": 11.03,
    "case8": 14.99,
    "case9": 7.92,
    "case10": 7.30,
    "copd1": 26.34,
    "copd2": 21.79,
    "copd3": 12.64,
    "copd4": 29.58,
    "copd5": 30.08,
    "copd6": 28.46,
    "copd7": 21.60,
    "copd8": 26.46,
    "copd9": 14.86,
    "copd10": 21.81,
}
"""Published mean landmark distance (mm) between inhale and exhale before registration."""


PUBLISHED_SET_MEAN_INITIAL_ERROR_MM = {"4dct": 8.46, "copd": 23.36}
"""Mean over the ten cases of :data:`PUBLISHED_INITIAL_ERROR_MM`, per set (mm)."""


DEFAULT_HU_OFFSET = {"4dct": -1024, "copd": -1024}
"""Offset added to the raw values by default, per set: both store CT number + 1024."""


_CASE_RE = re.compile(r"^(case|copd)0*(\d+)$", re.IGNORECASE)


_FOURDCT_IMG_RE = re.compile(r"^case0*(\d+)_t(00|50)(?:_s|-ssm|_ssm)?\.img$", re.IGNORECASE)


_FOURDCT_PTS_RE = re.compile(r"^case0*(\d+)_(?:dirlab)?300_t(00|50)_xyz\.txt$", re.IGNORECASE)


_COPD_IMG_RE = re.compile(r"^copd0*(\d+)_([ie])bhct\.img$", re.IGNORECASE)


_COPD_PTS_RE = re.compile(r"^copd0*(\d+)_300_([ie])bh_xyz(?:_r\d+)?\.txt$", re.IGNORECASE)


_FOURDCT_PHASE = {"00": "inhale", "50": "exhale"}


_COPD_PHASE = {"i": "inhale", "e": "exhale"}


def normalize_case_name(name: str) -> str:
    """Canonical case name: ``'Case01'`` -> ``'case1'``, ``'COPD3'`` -> ``'copd3'``."""
    match = _CASE_RE.match(str(name).strip())
    if match is None:
        raise ValueError(f"not a DIR-LAB case name: {name!r} (expected caseN or copdN)")
    return f"{match.group(1).lower()}{int(match.group(2))}"


def case_set(case: str) -> str:
    """``'4dct'`` for ``caseN`` and ``'copd'`` for ``copdN``."""
    return "copd" if normalize_case_name(case).startswith("copd") else "4dct"


def load_table(path) -> dict:
    """Read a geometry table CSV and return ``{case: CaseGeometry}``.

    The CSV needs a header with the columns ``case,nx,ny,nz,sx,sy,sz`` (any order, extra columns
    ignored): case name (``case1``, ``copd3``, ...), image size in voxels along x (columns),
    y (rows), z (slices), and voxel size in mm along the same axes. Raises ``ValueError`` naming
    the file and line on a missing column or a bad value.
    """
    path = Path(path)
    required = ("case", "nx", "ny", "nz", "sx", "sy", "sz")
    table = {}
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        fields = [f.strip().lower() for f in (reader.fieldnames or [])]
        missing = [c for c in required if c not in fields]
        if missing:
            raise ValueError(f"{path}: table header lacks column(s) {', '.join(missing)}; "
                             f"expected {','.join(required)}")
        reader.fieldnames = fields
        for row in reader:
            line = reader.line_num
            if not any((v or "").strip() for v in row.values()):
                continue
            try:
                case = normalize_case_name(row["case"])
                shape = tuple(int(row[k]) for k in ("nx", "ny", "nz"))
                spacing = tuple(float(row[k]) for k in ("sx", "sy", "sz"))
            except (TypeError, ValueError) as exc:
                raise ValueError(f"{path}, line {line}: cannot parse table row ({exc})") from None
            if min(shape) < 1 or min(spacing) <= 0:
                raise ValueError(f"{path}, line {line}: sizes and spacings must be positive")
            table[case] = CaseGeometry(shape, spacing)
    return table


def dirlab_affine(spacing_xyz) -> np.ndarray:
    """The 4x4 voxel -> RAS affine of a DIR-LAB volume stored as (X, Y, Z).

    ``diag(-sx, -sy, -sz, 1)``: +i (column) points to patient left, +j (row) to posterior,
    +k (slice) to inferior; voxel (0, 0, 0) sits at RAS (0, 0, 0). Units: mm.
    """
    sx, sy, sz = (float(s) for s in spacing_xyz)
    return np.diag([-sx, -sy, -sz, 1.0])


def read_dirlab_img(path, shape_xyz, dtype="<i2") -> np.ndarray:
    """Read a headerless DIR-LAB ``.img`` volume.

    ``shape_xyz`` = (nx, ny, nz). The file holds ``nx * ny * nz`` values of ``dtype``
    (little-endian int16 by default) with x varying fastest. Returns an array of shape
    (nx, ny, nz) indexed ``[x, y, z]`` (0-based column, row, slice), raw values unchanged.
    Raises ``ValueError`` naming the file when its size does not match the shape.
    """
    path = Path(path)
    nx, ny, nz = (int(n) for n in shape_xyz)
    dtype = np.dtype(dtype)
    expected = nx * ny * nz * dtype.itemsize
    actual = path.stat().st_size
    if actual != expected:
        hint = ""
        if actual % (nx * ny * dtype.itemsize) == 0:
            hint = f" (the file would fit {actual // (nx * ny * dtype.itemsize)} slices of {nx}x{ny})"
        raise ValueError(
            f"{path}: file size {actual} bytes does not match the expected shape "
            f"{nx}x{ny}x{nz} of {dtype} ({expected} bytes){hint}; "
            "check the case's geometry table entry (--table)"
        )
    data = np.fromfile(path, dtype=dtype).reshape(nz, ny, nx)
    return data.transpose(2, 1, 0)


def read_dirlab_points(path) -> np.ndarray:
    """Read a DIR-LAB landmark file and return a float64 (N, 3) array of 1-based x, y, z indices.

    Blank lines are skipped. Every other line must hold exactly three numbers separated by
    whitespace or tabs; anything else raises ``ValueError`` naming the file and line number.
    """
    path = Path(path)
    rows = []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            fields = line.split()
            if not fields:
                continue
            if len(fields) != 3:
                raise ValueError(f"{path}, line {number}: expected 3 values 'x y z', "
                                 f"got {len(fields)}: {line.strip()!r}")
            try:
                values = [float(v) for v in fields]
            except ValueError:
                raise ValueError(f"{path}, line {number}: non-numeric landmark "
                                 f"{line.strip()!r}") from None
            if not np.all(np.isfinite(values)):
                raise ValueError(f"{path}, line {number}: non-finite landmark {line.strip()!r}")
            rows.append(values)
    if not rows:
        raise ValueError(f"{path}: no landmarks found")
    return np.asarray(rows, dtype=np.float64)


def points_to_ras(points_1based: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """Map (N, 3) 1-based DIR-LAB voxel indices to (N, 3) RAS mm: ``affine @ (points - 1)``."""
    index = np.asarray(points_1based, dtype=np.float64) - 1.0
    affine = np.asarray(affine, dtype=np.float64)
    return index @ affine[:3, :3].T + affine[:3, 3]


def initial_error_mm(fixed_points, moving_points) -> np.ndarray:
    """Per-landmark Euclidean distance (N,) in mm between two (N, 3) point sets in mm.

    With the inhale (fixed) and exhale (moving) landmarks this is the landmark error of the
    identity registration; its mean is the published "initial" error.
    """
    fixed = np.asarray(fixed_points, dtype=np.float64)
    moving = np.asarray(moving_points, dtype=np.float64)
    if fixed.shape != moving.shape or fixed.ndim != 2 or fixed.shape[1] != 3:
        raise ValueError(f"point sets must both be (N, 3), got {fixed.shape} and {moving.shape}")
    return np.linalg.norm(fixed - moving, axis=1)


def _classify(name: str):
    """(case, kind, phase, priority) for a DIR-LAB file name, or None. kind: 'img' / 'pts'."""
    match = _FOURDCT_IMG_RE.match(name)
    if match:
        priority = 0 if re.search(r"_s\.img$", name, re.IGNORECASE) else 1
        return f"case{int(match.group(1))}", "img", _FOURDCT_PHASE[match.group(2)], priority
    match = _FOURDCT_PTS_RE.match(name)
    if match:
        return f"case{int(match.group(1))}", "pts", _FOURDCT_PHASE[match.group(2)], 0
    match = _COPD_IMG_RE.match(name)
    if match:
        return f"copd{int(match.group(1))}", "img", _COPD_PHASE[match.group(2).lower()], 0
    match = _COPD_PTS_RE.match(name)
    if match:
        priority = 0 if re.search(r"_r1\.txt$", name, re.IGNORECASE) else 1
        return f"copd{int(match.group(1))}", "pts", _COPD_PHASE[match.group(2).lower()], priority
    return None


def find_case_files(root) -> dict:
    """Search ``root`` recursively (file names matched case-insensitively) for DIR-LAB files.

    Returns ``{case: {(kind, phase): [paths, best first]}}`` with ``kind`` in ``'img'``/``'pts'``
    and ``phase`` in ``'inhale'``/``'exhale'``. For 4DCT images ``*_s.img`` is preferred over
    other spellings; for COPD landmarks ``*_r1.txt`` over other readers.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"DIR-LAB root {root} is not a directory")
    found: dict = {}
    for folder, _, files in os.walk(root):
        for name in files:
            info = _classify(name)
            if info is None:
                continue
            case, kind, phase, priority = info
            found.setdefault(case, {}).setdefault((kind, phase), []).append(
                (priority, str(Path(folder) / name)))
    return {case: {key: [Path(p) for _, p in sorted(items)] for key, items in slots.items()}
            for case, slots in found.items()}


def _case_sort_key(case: str):
    return (case_set(case) != "4dct", int(re.sub(r"\D", "", case)))


def _pick_image(candidates, geometry: CaseGeometry) -> Path:
    """The first candidate whose size matches the geometry, else the first one."""
    expected = int(np.prod(geometry.shape_xyz)) * 2
    for path in candidates:
        if path.stat().st_size == expected:
            return path
    return candidates[0]


def _apply_offset(raw: np.ndarray, offset: int) -> np.ndarray:
    if offset == 0:
        return np.ascontiguousarray(raw)
    shifted = raw.astype(np.int32) + int(offset)
    info = np.iinfo(np.int16)
    if shifted.min() >= info.min and shifted.max() <= info.max:
        return shifted.astype(np.int16)
    return shifted


def _write_nifti(volume: np.ndarray, affine: np.ndarray, path: Path) -> None:
    image = nib.Nifti1Image(volume, affine)
    image.set_sform(affine, code=1)
    image.set_qform(affine, code=1)
    image.header.set_xyzt_units("mm")
    nib.save(image, str(path))


def _write_points(points_mm: np.ndarray, path: Path) -> None:
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["x", "y", "z"])
        for x, y, z in points_mm:
            writer.writerow([f"{x:.4f}", f"{y:.4f}", f"{z:.4f}"])


def _check_bounds(points: np.ndarray, shape_xyz, path: Path) -> None:
    low = points < 1
    high = points > np.asarray(shape_xyz, dtype=np.float64)
    bad = np.flatnonzero(np.any(low | high, axis=1))
    if bad.size:
        warnings.warn(f"{path}: {bad.size} landmark(s) outside the image {shape_xyz} "
                      f"(first on line {bad[0] + 1}); check the geometry table", stacklevel=3)


def convert_dirlab(root, out_dir, cases=None, table=None, hu_offset=None) -> list:
    """Convert DIR-LAB cases under ``root`` to NIfTI + RAS landmark CSVs in ``out_dir``.

    Parameters
    ----------
    root:
        Folder holding the downloaded DIR-LAB data (searched recursively).
    out_dir:
        Output folder; created if needed. See the module docstring for the layout.
    cases:
        Case names to convert (``'copd1'``, ``'case7'``, ...). ``None`` converts every case
        whose four files (two images, two landmark files) are found under ``root``; cases with
        files missing are then skipped with a warning. A named case with a missing file raises
        ``FileNotFoundError``.
    table:
        Geometry overrides: a CSV path (see :func:`load_table`) or a ``{case: CaseGeometry}``
        dict. Its entries replace the built-in ones for the same cases; other cases keep the
        built-in :data:`DIRLAB_TABLE`.
    hu_offset:
        Integer added to every raw value. ``None`` uses :data:`DEFAULT_HU_OFFSET` of the case's
        set (-1024 for both, giving HU); 0 keeps raw values.

    Returns
    -------
    One dict per converted case with keys ``case``, ``set``, ``inhale``, ``exhale``,
    ``inhale_points``, ``exhale_points`` (output paths), ``shape_xyz``, ``spacing_xyz``,
    ``affine`` (4x4), ``hu_offset``, ``raw_min``, ``raw_max``, ``n_points``,
    ``mean_error_mm``, ``std_error_mm`` (identity-registration landmark error) and
    ``published_mean_error_mm`` (``None`` when unknown).
    """
    root = Path(root)
    out_dir = Path(out_dir)
    geometry_table = dict(DIRLAB_TABLE)
    if table is not None:
        overrides = load_table(table) if isinstance(table, (str, os.PathLike)) else dict(table)
        geometry_table.update({normalize_case_name(k): v for k, v in overrides.items()})

    found = find_case_files(root)
    slots = [("img", "inhale"), ("img", "exhale"), ("pts", "inhale"), ("pts", "exhale")]
    if cases is None:
        selected = []
        for case in sorted(found, key=_case_sort_key):
            missing = [f"{kind} {phase}" for kind, phase in slots if (kind, phase) not in found[case]]
            if missing:
                warnings.warn(f"skipping {case}: no {', '.join(missing)} file found under {root}",
                              stacklevel=2)
            else:
                selected.append(case)
        if not selected:
            raise FileNotFoundError(f"no complete DIR-LAB case (4DCT or COPD) found under {root}")
    else:
        selected = [normalize_case_name(c) for c in cases]
        for case in selected:
            missing = [f"{kind} {phase}" for kind, phase in slots
                       if (kind, phase) not in found.get(case, {})]
            if missing:
                raise FileNotFoundError(f"{case}: no {', '.join(missing)} file found under {root}")

    out_dir.mkdir(parents=True, exist_ok=True)
    results = []
    for case in selected:
        if case not in geometry_table:
            raise ValueError(f"{case}: no image size/spacing known; give one with --table")
        geometry = geometry_table[case]
        dataset = case_set(case)
        offset = DEFAULT_HU_OFFSET[dataset] if hu_offset is None else int(hu_offset)
        affine = dirlab_affine(geometry.spacing_xyz)
        case_dir = out_dir / case
        case_dir.mkdir(parents=True, exist_ok=True)

        record = {"case": case, "set": dataset, "shape_xyz": geometry.shape_xyz,
                  "spacing_xyz": geometry.spacing_xyz, "affine": affine, "hu_offset": offset}
        raw_min, raw_max = None, None
        points_mm = {}
        for phase in ("inhale", "exhale"):
            image_path = _pick_image(found[case][("img", phase)], geometry)
            raw = read_dirlab_img(image_path, geometry.shape_xyz)
            lo, hi = int(raw.min()), int(raw.max())
            raw_min = lo if raw_min is None else min(raw_min, lo)
            raw_max = hi if raw_max is None else max(raw_max, hi)
            out_image = case_dir / f"{case}_{phase}.nii.gz"
            _write_nifti(_apply_offset(raw, offset), affine, out_image)

            points_path = found[case][("pts", phase)][0]
            points = read_dirlab_points(points_path)
            _check_bounds(points, geometry.shape_xyz, points_path)
            points_mm[phase] = points_to_ras(points, affine)
            out_points = case_dir / f"{case}_{phase}_points.csv"
            _write_points(points_mm[phase], out_points)
            record[phase] = str(out_image)
            record[f"{phase}_points"] = str(out_points)

        if offset != 0 and raw_min < -100:
            warnings.warn(f"{case}: raw values go down to {raw_min}, so the data may already be "
                          f"in HU; the offset {offset} was applied anyway (use --hu-offset 0 to "
                          "keep raw values)", stacklevel=2)
        if len(points_mm["inhale"]) != len(points_mm["exhale"]):
            raise ValueError(f"{case}: {len(points_mm['inhale'])} inhale landmarks but "
                             f"{len(points_mm['exhale'])} exhale landmarks")
        errors = initial_error_mm(points_mm["inhale"], points_mm["exhale"])
        record.update(raw_min=raw_min, raw_max=raw_max, n_points=int(len(errors)),
                      mean_error_mm=float(errors.mean()), std_error_mm=float(errors.std()),
                      published_mean_error_mm=PUBLISHED_INITIAL_ERROR_MM.get(case))
        results.append(record)

    _write_pairs(results, out_dir)
    _write_initial_errors(results, out_dir)
    return results


def _write_pairs(results, out_dir: Path) -> None:
    with open(out_dir / "pairs.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["moving", "fixed", "moving_points", "fixed_points"])
        for r in results:
            rel = [Path(r[k]).relative_to(out_dir).as_posix()
                   for k in ("exhale", "inhale", "exhale_points", "inhale_points")]
            writer.writerow(rel)


def _write_initial_errors(results, out_dir: Path) -> None:
    with open(out_dir / "initial_errors.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["case", "set", "n_points", "mean_mm", "std_mm", "published_mean_mm",
                         "difference_mm"])
        for r in results:
            published = r["published_mean_error_mm"]
            writer.writerow([
                r["case"], r["set"], r["n_points"], f"{r['mean_error_mm']:.4f}",
                f"{r['std_error_mm']:.4f}", "" if published is None else f"{published:.2f}",
                "" if published is None else f"{r['mean_error_mm'] - published:.4f}",
            ])
