"""Point sets in the formats nephi and its peers use (:mod:`nephi.io.points`).

The same RAS points, written by hand as each peer writes them, must land where nephi's CSV
points land; every writer must read back; a malformed file of each kind is one
NephiInputError line naming the file. The LPS of the ANTs CSV and of the Slicer files is
checked against ITK's physical space (SimpleITK, and antsApplyTransformsToPoints when ANTs is
installed).
"""

from __future__ import annotations

import csv
import json

import nibabel as nib
import numpy as np
import pytest

from nephi.errors import NephiInputError
from nephi.io.points import (ANTS_CSV, FCSV, MRK_JSON, NEPHI_CSV, load_points, read_point_file,
                             save_ants_points, save_points)

# Not symmetric in any axis, so a sign error (or a missing flip) shows.
RAS = np.array([[12.5, -30.25, 7.0],
                [-4.75, 18.0, -22.5],
                [0.125, 3.5, 41.0]])
# The same points in LPS, stated literally (x and y change sign) rather than computed.
LPS = np.array([[-12.5, 30.25, 7.0],
                [4.75, -18.0, -22.5],
                [-0.125, -3.5, 41.0]])
FCSV_COLUMNS = "id,x,y,z,ow,ox,oy,oz,vis,sel,lock,label,desc,associatedNodeID"


def _rows(points) -> list:
    return [",".join(repr(float(v)) for v in p) for p in points]


def _fcsv(points, system_line) -> str:
    head = "# Markups fiducial file version = 4.11\n"
    if system_line is not None:
        head += f"# CoordinateSystem = {system_line}\n"
    head += f"# columns = {FCSV_COLUMNS}\n"
    body = "".join(f"vtkMRMLMarkupsFiducialNode_{i},{row},0,0,0,1,1,1,0,F-{i + 1},,\n"
                   for i, row in enumerate(_rows(points)))
    return head + body


def _markups(points, system=None, **extra) -> str:
    markup = {"type": "Fiducial", "coordinateUnits": "mm",
              "controlPoints": [{"id": str(i + 1), "label": f"F-{i + 1}", "description": "",
                                 "position": [float(v) for v in p],
                                 "orientation": [-1, 0, 0, 0, -1, 0, 0, 0, 1],
                                 "selected": True, "locked": False, "visibility": True,
                                 "positionStatus": "defined"} for i, p in enumerate(points)]}
    if system is not None:
        markup["coordinateSystem"] = system
    markup.update(extra)
    return json.dumps({"@schema": "https://raw.githubusercontent.com/slicer/slicer/master/"
                                  "Modules/Loadable/Markups/Resources/Schema/"
                                  "markups-schema-v1.0.3.json#", "markups": [markup]})


# name -> (text as the peer writes it, format it is read as)
PEER_FILES = {
    "nephi.csv": ("x,y,z\n" + "".join(r + "\n" for r in _rows(RAS)), NEPHI_CSV),
    "nephi_extra_columns.csv": ("label,x,y,z\n" + "".join(f"p{i},{r}\n" for i, r in
                                                          enumerate(_rows(RAS))), NEPHI_CSV),
    "ants.csv": ("x,y,z,t,label,comment\n" + "".join(f"{r},0,{i + 1},0\n" for i, r in
                                                     enumerate(_rows(LPS))), ANTS_CSV),
    "ants_minimal.csv": ("x,y,z,t\n" + "".join(f"{r},0\n" for r in _rows(LPS)), ANTS_CSV),
    "lps.fcsv": (_fcsv(LPS, "LPS"), FCSV),
    "ras.fcsv": (_fcsv(RAS, "RAS"), FCSV),
    "old_ras.fcsv": (_fcsv(RAS, "0"), FCSV),
    "old_lps.fcsv": (_fcsv(LPS, "1"), FCSV),
    "no_system.fcsv": (_fcsv(RAS, None), FCSV),  # Slicer's old default: RAS
    "lps.mrk.json": (_markups(LPS, "LPS"), MRK_JSON),
    "ras.mrk.json": (_markups(RAS, "RAS"), MRK_JSON),
    "default.mrk.json": (_markups(LPS), MRK_JSON),  # coordinateSystem defaults to LPS
    "plain.json": (_markups(LPS, "LPS"), MRK_JSON),
}


@pytest.mark.parametrize("name", sorted(PEER_FILES))
def test_peer_files_land_where_the_csv_points_land(tmp_path, name):
    reference = tmp_path / "reference.csv"
    reference.write_text(PEER_FILES["nephi.csv"][0])
    text, expected_format = PEER_FILES[name]
    path = tmp_path / name
    path.write_text(text)
    points, fmt = read_point_file(str(path), 3)
    assert fmt == expected_format
    assert points.shape == (3, 3) and points.dtype == np.float64
    np.testing.assert_allclose(points, load_points(str(reference), 3), rtol=0, atol=1e-6)
    np.testing.assert_allclose(points, RAS, rtol=0, atol=1e-6)


def test_fcsv_without_columns_line_uses_slicer_column_order(tmp_path):
    text = "".join(line + "\n" for line in _fcsv(LPS, "LPS").splitlines()
                   if not line.startswith("# columns"))
    path = tmp_path / "no_columns.fcsv"
    path.write_text(text)
    np.testing.assert_allclose(load_points(str(path), 3), RAS, rtol=0, atol=1e-6)


@pytest.mark.parametrize("suffix", [".csv", ".fcsv", ".mrk.json", ".json", ".FCSV", ".txt"])
def test_save_points_round_trip(tmp_path, suffix):
    path = tmp_path / f"points{suffix}"
    save_points(str(path), RAS)
    np.testing.assert_allclose(load_points(str(path), 3), RAS, rtol=0, atol=1e-6)


def test_save_ants_points_round_trip_2d_and_3d(tmp_path):
    path = tmp_path / "ants.csv"
    save_ants_points(str(path), RAS)
    assert read_point_file(str(path), 3)[1] == ANTS_CSV
    np.testing.assert_allclose(load_points(str(path), 3), RAS, rtol=0, atol=1e-6)
    save_ants_points(str(path), RAS[:, :2])
    with open(path, newline="", encoding="utf-8") as fh:
        rows = list(csv.reader(fh))
    assert rows[0] == ["x", "y", "z", "t", "label", "comment"]
    assert [float(v) for v in rows[1][2:4]] == [0.0, 0.0]  # z = 0, t = 0
    np.testing.assert_allclose(load_points(str(path), 2), RAS[:, :2], rtol=0, atol=1e-6)


def test_2d_nephi_csv_round_trip(tmp_path):
    path = tmp_path / "points2d.csv"
    save_points(str(path), RAS[:, :2])
    assert path.read_text(encoding="utf-8").splitlines()[0] == "x,y"
    np.testing.assert_allclose(load_points(str(path), 2), RAS[:, :2], rtol=0, atol=1e-6)


def test_written_files_are_in_the_peers_convention(tmp_path):
    """What nephi writes: the fcsv and JSON in LPS saying so, the ANTs CSV in LPS with t = 0."""
    save_points(str(tmp_path / "p.fcsv"), RAS)
    lines = (tmp_path / "p.fcsv").read_text(encoding="utf-8").splitlines()
    assert "# CoordinateSystem = LPS" in lines
    assert f"# columns = {FCSV_COLUMNS}" in lines
    rows = [next(csv.reader([line])) for line in lines if not line.startswith("#")]
    np.testing.assert_allclose([[float(v) for v in r[1:4]] for r in rows], LPS, atol=1e-9)
    assert [r[11] for r in rows] == ["F-1", "F-2", "F-3"]

    save_points(str(tmp_path / "p.mrk.json"), RAS)
    doc = json.loads((tmp_path / "p.mrk.json").read_text(encoding="utf-8"))
    assert "markups-schema-v1.0" in doc["@schema"]
    (markup,) = doc["markups"]
    assert markup["type"] == "Fiducial" and markup["coordinateSystem"] == "LPS"
    assert [p["label"] for p in markup["controlPoints"]] == ["F-1", "F-2", "F-3"]
    np.testing.assert_allclose([p["position"] for p in markup["controlPoints"]], LPS, atol=1e-9)

    save_ants_points(str(tmp_path / "ants.csv"), RAS)
    with open(tmp_path / "ants.csv", newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    np.testing.assert_allclose([[float(r[n]) for n in "xyz"] for r in rows], LPS, atol=1e-9)
    assert all(float(r["t"]) == 0.0 for r in rows)


def test_slicer_formats_need_3d(tmp_path):
    for name in ("lps.fcsv", "lps.mrk.json"):
        path = tmp_path / name
        path.write_text(PEER_FILES[name][0])
        with pytest.raises(NephiInputError, match="3-D") as info:
            load_points(str(path), 2)
        assert str(path) in str(info.value)
        with pytest.raises(NephiInputError, match="3-D"):
            save_points(str(tmp_path / f"out_{name}"), RAS[:, :2])


def _bad_markups(**change) -> str:
    doc = json.loads(_markups(LPS, "LPS"))
    doc["markups"][0].update(change)
    return json.dumps(doc)


MALFORMED = {
    # nephi / ANTs CSV (messages as before the move)
    "missing_z.csv": ("x,y\n1,2\n", "needs a header with columns x,y,z"),
    "text.csv": ("x,y,z\n1,two,3\n", "line 2 is not numeric"),
    "ants_text.csv": ("x,y,z,t\n1,2,3,0\n1,2,x,0\n", "line 3 is not numeric"),
    "empty_rows.csv": ("x,y,z,t,label,comment\n", "holds no point"),
    "nan.csv": ("x,y,z\n1,nan,3\n", "non-finite"),
    "latin1.csv": (b"x,y,z\n1,2,3 \xe9\n", "UTF-8"),
    # 3D Slicer .fcsv
    "ijk.fcsv": (_fcsv(LPS, "IJK"), "unknown coordinate system 'IJK'"),
    "two.fcsv": (_fcsv(LPS, "2"), "unknown coordinate system '2'"),
    "text.fcsv": (_fcsv(LPS, "LPS").replace("4.75", "four"), "line 5 is not numeric"),
    "short.fcsv": ("# CoordinateSystem = LPS\nvtkMRMLMarkupsFiducialNode_0,1,2\n",
                   "line 2 has 3 columns"),
    "columns.fcsv": ("# CoordinateSystem = LPS\n# columns = id,x,y,label\n1,2,3,F-1\n",
                     "lacks z"),
    "no_points.fcsv": ("# CoordinateSystem = LPS\n# columns = " + FCSV_COLUMNS + "\n",
                       "holds no point"),
    "latin1.fcsv": (b"# CoordinateSystem = LPS\n1,2,3,4,0,0,0,1,1,1,0,\xe9,,\n", "UTF-8"),
    # 3D Slicer markups JSON
    "broken.mrk.json": ('{"markups": [', "not valid JSON"),
    "empty.mrk.json": ("", "not valid JSON"),
    "no_markups.mrk.json": ('{"@schema": "x"}', "markups"),
    "no_points.mrk.json": (_bad_markups(controlPoints=[]), "no control points"),
    "ijk.mrk.json": (_bad_markups(coordinateSystem="IJK"), "unknown coordinate system 'IJK'"),
    "text.mrk.json": (_bad_markups(controlPoints=[{"position": [1, "two", 3]}]),
                      "control point 1: position is not numeric"),
    "no_position.mrk.json": (_bad_markups(controlPoints=[{"position": [1, 2, 3]},
                                                         {"label": "F-2"}]),
                             "control point 2 has no position"),
    "um.mrk.json": (_bad_markups(coordinateUnits="um"), "coordinateUnits 'um'"),
}


@pytest.mark.parametrize("name", sorted(MALFORMED))
def test_malformed_files_name_the_file(tmp_path, name):
    content, words = MALFORMED[name]
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    with pytest.raises(NephiInputError) as info:
        load_points(str(path), 3, what="--points")
    message = str(info.value)
    assert message.startswith(f"--points {path}: "), message
    assert words in message and "\n" not in message, message


@pytest.mark.parametrize("name", ["missing.csv", "missing.fcsv", "missing.mrk.json"])
def test_missing_files(tmp_path, name):
    with pytest.raises(NephiInputError, match="file not found"):
        load_points(str(tmp_path / name), 3)


# ----------------------------------------------------------------------------- ITK's LPS
def test_lps_written_is_itk_physical_space(tmp_path):
    """The LPS columns nephi writes are ITK's physical points, and ITK's moved points read back
    as the RAS nephi expects."""
    sitk = pytest.importorskip("SimpleITK")
    # An oblique NIfTI: nibabel's voxel -> RAS affine; SimpleITK gives ITK's physical (LPS).
    a, b = np.radians(20.0), np.radians(10.0)
    rotation = (np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
                @ np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]]))
    affine = np.eye(4)
    affine[:3, :3] = rotation @ np.diag([0.9, 1.1, 1.3])
    affine[:3, 3] = [-40.0, 25.0, -12.0]
    nib.save(nib.Nifti1Image(np.zeros((8, 9, 10), np.float32), affine), tmp_path / "ref.nii.gz")
    image = sitk.ReadImage(str(tmp_path / "ref.nii.gz"))
    index = np.array([[1.5, 2.0, 7.25], [6.0, 0.5, 3.0], [0.0, 8.0, 9.0]])
    ras = index @ affine[:3, :3].T + affine[:3, 3]
    itk_physical = np.array([image.TransformContinuousIndexToPhysicalPoint(tuple(i))
                             for i in index])
    for writer, name in ((save_ants_points, "ants.csv"), (save_points, "slicer.fcsv")):
        writer(str(tmp_path / name), ras)
    with open(tmp_path / "ants.csv", newline="", encoding="utf-8") as fh:
        written = np.array([[float(r[n]) for n in "xyz"] for r in csv.DictReader(fh)])
    np.testing.assert_allclose(written, itk_physical, atol=1e-4)
    fcsv_rows = [line.split(",") for line in (tmp_path / "slicer.fcsv").read_text(encoding="utf-8").splitlines()
                 if not line.startswith("#")]
    np.testing.assert_allclose([[float(v) for v in r[1:4]] for r in fcsv_rows], itk_physical,
                               atol=1e-4)

    # ITK maps LPS points: TranslationTransform(3, (1, 2, 3)) takes p to p + (1, 2, 3) (LPS),
    # i.e. a RAS point moves by (-1, -2, +3).
    tx = sitk.TranslationTransform(3, (1.0, 2.0, 3.0))
    moved = np.array([tx.TransformPoint(tuple(p)) for p in written])
    np.testing.assert_allclose(moved, written + [1.0, 2.0, 3.0], atol=1e-12)
    out = tmp_path / "moved.csv"
    out.write_text("x,y,z,t,label,comment\n" + "".join(f"{r},0,{i},0\n" for i, r in
                                                       enumerate(_rows(moved), start=1)))
    np.testing.assert_allclose(load_points(str(out), 3), ras + [-1.0, -2.0, 3.0], atol=1e-4)


def test_ants_apply_transforms_to_points_reads_and_writes_our_csv(tmp_path):
    """antsApplyTransformsToPoints (when ANTs is installed) reads nephi's ANTs CSV and its
    output reads back as the translated RAS points."""
    sitk = pytest.importorskip("SimpleITK")
    pytest.importorskip("ants")
    from ants.internal import get_lib_fn

    affine = sitk.AffineTransform(3)
    affine.SetTranslation((1.0, 2.0, 3.0))
    sitk.WriteTransform(affine, str(tmp_path / "shift.mat"))
    save_ants_points(str(tmp_path / "in.csv"), RAS)
    status = get_lib_fn("antsApplyTransformsToPoints")(
        ["-d", "3", "-i", str(tmp_path / "in.csv"), "-o", str(tmp_path / "out.csv"),
         "-t", str(tmp_path / "shift.mat")])
    assert status == 0
    np.testing.assert_allclose(load_points(str(tmp_path / "out.csv"), 3),
                               RAS + [-1.0, -2.0, 3.0], atol=1e-4)
