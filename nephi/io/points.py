"""Reading and writing point sets (landmarks) in the formats nephi and its peers use.

:func:`load_points` always returns RAS millimetres, float64 (N, d); :func:`save_points` takes
RAS millimetres. The format is chosen by the file name (suffixes in any case):

* ``.fcsv``: a 3D Slicer fiducial list. ``#`` header lines, one of them
  ``# CoordinateSystem = LPS`` or ``= RAS`` (older Slicer writes ``0`` for RAS and ``1`` for
  LPS; a file without the line is RAS, Slicer's old default) and optionally
  ``# columns = id,x,y,z,...``; then one CSV row per point with the columns
  ``id,x,y,z,ow,ox,oy,oz,vis,sel,lock,label,desc,associatedNodeID``. Written in LPS, with
  ``# CoordinateSystem = LPS``.
* ``.mrk.json`` (and any other ``.json``, as Slicer reads them): 3D Slicer markups JSON
  (schema markups-schema-v1.0.x), ``{"@schema": ..., "markups": [{"type": "Fiducial",
  "coordinateSystem": "LPS" | "RAS", "controlPoints": [{"position": [x, y, z], ...}]}]}``.
  The first markup's control points are read in order; ``coordinateSystem`` defaults to LPS.
  Written as one Fiducial markup in LPS, labels ``F-1``, ``F-2``, ...
* anything else (``.csv``): a CSV file with a header.

  - ``x,y,z`` (2-D ``x,y``; other columns ignored): nephi's own layout, RAS mm. This is what
    :func:`save_points` writes.
  - a header that also has a ``t`` column, ``x,y,z,t[,label,comment]``: the ITK/ANTs point
    CSV of antsApplyTransformsToPoints, LPS mm (``t`` and the rest ignored). Written by
    :func:`save_ants_points` (``nephi-points --lps``).

The Slicer formats hold 3-D points only; 2-D point sets are nephi CSV files (``x,y``). LPS and
RAS differ by the sign of x and y (:func:`nephi.geometry.grid.ras_to_lps`). Every problem with a
file (missing, unreadable, not valid JSON, no points, missing columns, a non-numeric value, an
unknown coordinate system) is one :class:`~nephi.errors.NephiInputError` line naming the file.
Writers write ``path`` directly; callers that need atomic files wrap them in
:func:`nephi.io.atomic.write_file`.
"""

from __future__ import annotations

import csv
import json

import numpy as np

from nephi.errors import NephiInputError, short_reason
from nephi.geometry.grid import lps_to_ras, ras_to_lps
from nephi.io.images import check_input_file


__all__ = ["load_points", "save_points", "save_ants_points", "read_point_file", "point_format",
           "NEPHI_CSV", "ANTS_CSV", "FCSV", "MRK_JSON", "POINT_FORMATS", "SLICER_FORMATS"]

#: format names returned by :func:`read_point_file`
NEPHI_CSV, ANTS_CSV, FCSV, MRK_JSON = "nephi-csv", "ants-csv", "fcsv", "mrk.json"
POINT_FORMATS = (NEPHI_CSV, ANTS_CSV, FCSV, MRK_JSON)
SLICER_FORMATS = (FCSV, MRK_JSON)

_AXES = ("x", "y", "z")
_FCSV_COLUMNS = ("id", "x", "y", "z", "ow", "ox", "oy", "oz", "vis", "sel", "lock", "label",
                 "desc", "associatedNodeID")
_FCSV_SYSTEMS = {"RAS": "RAS", "LPS": "LPS", "0": "RAS", "1": "LPS"}
_MARKUPS_SCHEMA = ("https://raw.githubusercontent.com/slicer/slicer/master/Modules/Loadable/"
                   "Markups/Resources/Schema/markups-schema-v1.0.3.json#")


def point_format(path: str) -> str:
    """The format a point file name selects: ``"fcsv"``, ``"mrk.json"`` or ``"csv"`` (nephi or
    ANTs CSV; which one is told by the header, see :func:`read_point_file`)."""
    name = str(path).lower()
    if name.endswith(".fcsv"):
        return FCSV
    if name.endswith(".json"):
        return MRK_JSON
    return "csv"


def load_points(path: str, ndim: int, what: str = "points") -> np.ndarray:
    """Read a point set (any format of this module) -> RAS mm, float64 array (N, ndim)."""
    return read_point_file(path, ndim, what)[0]


def read_point_file(path: str, ndim: int, what: str = "points") -> tuple[np.ndarray, str]:
    """``(points, format)``: the points in RAS mm (N, ndim) and the format the file was read as,
    one of :data:`POINT_FORMATS` (``"nephi-csv"``, ``"ants-csv"``, ``"fcsv"``, ``"mrk.json"``)."""
    fmt = point_format(path)
    kind = {FCSV: "a .fcsv file", MRK_JSON: "a markups JSON file"}.get(fmt, "a CSV file")
    label = check_input_file(path, what, kind)
    if fmt in SLICER_FORMATS and ndim != 3:
        raise NephiInputError(f"{label}: 3D Slicer point files hold 3-D points, {ndim}-D points "
                              f"are needed here (2-D points: a CSV file with header x,y)")
    try:
        if fmt == FCSV:
            pts, system = _read_fcsv(path, label)
        elif fmt == MRK_JSON:
            pts, system = _read_markups_json(path, label)
        else:
            pts, fmt = _read_csv(path, ndim, label)
            system = "LPS" if fmt == ANTS_CSV else "RAS"
    except UnicodeDecodeError:
        text = "a text (UTF-8) CSV file" if fmt == "csv" else "a text (UTF-8) file"
        raise NephiInputError(f"{label}: not {text}") from None
    except csv.Error as exc:
        raise NephiInputError(f"{label}: not a valid CSV file ({short_reason(exc)})") from None
    except OSError as exc:
        raise NephiInputError(f"{label}: cannot be read ({short_reason(exc)})") from None
    pts = np.asarray(pts, dtype=np.float64).reshape(-1, ndim)
    if len(pts) == 0:
        raise NephiInputError(f"{label}: holds no point")
    if not np.all(np.isfinite(pts)):
        raise NephiInputError(f"{label}: holds non-finite coordinates")
    return (lps_to_ras(pts) if system == "LPS" else pts), fmt


# ----------------------------------------------------------------------------- CSV
def _read_csv(path: str, ndim: int, label: str) -> tuple[list, str]:
    """Rows of a CSV with a header (nephi: x,y[,z]; ANTs: x,y,z,t,...) and which of the two."""
    names = list(_AXES[:ndim])
    rows = []
    with open(path, newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        if reader.fieldnames is None or any(n not in reader.fieldnames for n in names):
            raise NephiInputError(f"{label}: needs a header with columns {','.join(names)}")
        fmt = ANTS_CSV if "t" in reader.fieldnames else NEPHI_CSV
        for line, row in enumerate(reader, start=2):
            try:
                rows.append([float(row[n]) for n in names])
            except (TypeError, ValueError):
                raise NephiInputError(f"{label}: line {line} is not numeric") from None
    return rows, fmt


def save_points(path: str, points: np.ndarray) -> None:
    """Write points (N, d), RAS mm, in the format of ``path``'s suffix: ``.fcsv`` and
    ``.mrk.json`` / ``.json`` (3D Slicer, LPS, 3-D only), otherwise nephi's CSV with header
    x,y[,z] (RAS, 4 decimals)."""
    points = _as_points(points)
    fmt = point_format(path)
    if fmt in SLICER_FORMATS:
        if points.shape[1] != 3:
            raise NephiInputError(f"{path}: 3D Slicer point files hold 3-D points, not "
                                  f"{points.shape[1]}-D (write 2-D points as .csv)")
        (_write_fcsv if fmt == FCSV else _write_markups_json)(path, ras_to_lps(points))
        return
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(_AXES[: points.shape[1]])
        for p in points:
            writer.writerow([f"{v:.4f}" for v in p])


def save_ants_points(path: str, points: np.ndarray) -> None:
    """Write points (N, d), RAS mm, as the ITK/ANTs point CSV antsApplyTransformsToPoints reads:
    header ``x,y,z,t,label,comment``, LPS mm, ``t = 0``, label 1, 2, ..., comment 0 (all
    numeric, as ITK's CSV reader wants); 2-D points get ``z = 0``."""
    lps = ras_to_lps(_as_points(points))
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh, lineterminator="\n")  # ITK's CSV reader splits lines at \n
        writer.writerow(["x", "y", "z", "t", "label", "comment"])
        for i, p in enumerate(lps, start=1):
            xyz = [*p, 0.0][:3]
            writer.writerow([*(_num(v) for v in xyz), 0, i, 0])


def _as_points(points) -> np.ndarray:
    points = np.asarray(points, dtype=np.float64)
    if points.ndim != 2 or points.shape[1] not in (2, 3):
        raise ValueError(f"points must have shape (N, 2) or (N, 3), got {points.shape}")
    return points


def _num(v: float) -> str:
    """A coordinate as text that reads back exactly (shortest round-trip form, no ``-0``)."""
    return repr(float(v) + 0.0)


# ----------------------------------------------------------------------------- 3D Slicer .fcsv
def _coordinate_system(value, label: str, allowed: dict) -> str:
    key = str(value).strip().upper()
    if key not in allowed:
        raise NephiInputError(f"{label}: unknown coordinate system {str(value).strip()!r} "
                              f"(expected LPS or RAS)")
    return allowed[key]


def _read_fcsv(path: str, label: str) -> tuple[list, str]:
    system, columns, rows = "RAS", list(_FCSV_COLUMNS), []
    with open(path, newline="", encoding="utf-8-sig") as fh:
        text = fh.read()
    data_lines = []
    for line_no, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if stripped.startswith("#"):
            key, sep, value = stripped.lstrip("#").partition("=")
            key = key.strip().lower()
            if sep and key == "coordinatesystem":
                system = _coordinate_system(value, label, _FCSV_SYSTEMS)
            elif sep and key == "columns":
                columns = [c.strip() for c in value.split(",")]
        elif stripped:
            data_lines.append((line_no, line))
    missing = [n for n in _AXES if n not in columns]
    if missing:
        raise NephiInputError(f"{label}: its '# columns' line lacks {','.join(missing)} (needs "
                              f"{','.join(_FCSV_COLUMNS)})")
    index = [columns.index(n) for n in _AXES]
    for line_no, line in data_lines:
        fields = next(csv.reader([line]))
        if len(fields) <= max(index):
            raise NephiInputError(f"{label}: line {line_no} has {len(fields)} columns, needs "
                                  f"{','.join(columns[:max(index) + 1])}")
        try:
            rows.append([float(fields[i]) for i in index])
        except ValueError:
            raise NephiInputError(f"{label}: line {line_no} is not numeric") from None
    return rows, system


def _write_fcsv(path: str, points_lps: np.ndarray) -> None:
    with open(path, "w", newline="", encoding="utf-8") as fh:
        fh.write("# Markups fiducial file version = 4.11\n"
                 "# CoordinateSystem = LPS\n"
                 f"# columns = {','.join(_FCSV_COLUMNS)}\n")
        writer = csv.writer(fh, lineterminator="\n")
        for i, p in enumerate(points_lps, start=1):
            writer.writerow([i, *(_num(v) for v in p), 0, 0, 0, 1, 1, 1, 0, f"F-{i}", "", ""])


# ----------------------------------------------------------------------------- 3D Slicer JSON
def _read_markups_json(path: str, label: str) -> tuple[list, str]:
    with open(path, encoding="utf-8-sig") as fh:
        text = fh.read()
    try:
        doc = json.loads(text)
    except ValueError as exc:
        raise NephiInputError(f"{label}: not valid JSON ({short_reason(exc)})") from None
    markups = doc.get("markups") if isinstance(doc, dict) else None
    if not isinstance(markups, list) or not markups or not isinstance(markups[0], dict):
        raise NephiInputError(f"{label}: not a 3D Slicer markups file (no \"markups\" list with "
                              f"a markup)")
    markup = markups[0]
    system = _coordinate_system(markup.get("coordinateSystem", "LPS"), label,
                                {"LPS": "LPS", "RAS": "RAS"})
    units = markup.get("coordinateUnits", "mm")
    if units != "mm":
        raise NephiInputError(f"{label}: coordinateUnits {units!r} is not supported (need mm)")
    points = markup.get("controlPoints")
    if not isinstance(points, list) or not points:
        raise NephiInputError(f"{label}: the first markup has no control points")
    rows = []
    for i, point in enumerate(points, start=1):
        position = point.get("position") if isinstance(point, dict) else None
        status = point.get("positionStatus", "defined") if isinstance(point, dict) else None
        if status in ("missing", "undefined"):
            raise NephiInputError(f"{label}: control point {i} has positionStatus {status!r}")
        if not isinstance(position, list) or len(position) != 3:
            raise NephiInputError(f"{label}: control point {i} has no position [x, y, z]")
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in position):
            raise NephiInputError(f"{label}: control point {i}: position is not numeric")
        rows.append([float(v) for v in position])
    return rows, system


def _write_markups_json(path: str, points_lps: np.ndarray) -> None:
    control_points = [
        {"id": str(i), "label": f"F-{i}", "description": "", "associatedNodeID": "",
         "position": [float(v) + 0.0 for v in p],
         "orientation": [-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0],
         "selected": True, "locked": False, "visibility": True, "positionStatus": "defined"}
        for i, p in enumerate(points_lps, start=1)]
    doc = {"@schema": _MARKUPS_SCHEMA,
           "markups": [{"type": "Fiducial", "coordinateSystem": "LPS", "coordinateUnits": "mm",
                        "locked": False, "labelFormat": "%N-%d",
                        "controlPoints": control_points, "measurements": []}]}
    text = json.dumps(doc, indent=2, allow_nan=False)  # JSON has no NaN or infinity
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(text + "\n")
