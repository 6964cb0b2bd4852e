"""Quick-look pictures: orientation of the display planes, the panels' content, and
qc_overview.png from register (3-D and 2-D) and from a result folder."""

from __future__ import annotations

import os
import struct

import numpy as np
import PIL.Image

from helpers_results import lung_result, tc_result
from nephi.geometry.grid import Grid
from nephi.io.images import load_image
from nephi.results.quicklook import COLUMNS, FOLD_COLOUR, GRID_COLOUR, jacobian_colours, make_views, overview, result_overview, sample_on_view, view_panels
from nephi.io.layout import QC_FILE
from nephi.results.result import Result


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


# ----------------------------------------------------------------------------- orientation
def permuted_grid() -> Grid:
    """Voxel axes (i, j, k) along (S, -R, -A): nothing like the display axes."""
    affine = np.eye(4)
    affine[:3, :3] = np.array([[0.0, -3.0, 0.0], [0.0, 0.0, -2.5], [4.0, 0.0, 0.0]])
    shape = (30, 40, 48)
    affine[:3, 3] = -affine[:3, :3] @ ((np.asarray(shape) - 1) / 2.0)
    return Grid(shape, affine)


def test_planes_are_shown_in_radiological_orientation():
    grid = permuted_grid()
    idx = np.stack(np.meshgrid(*[np.arange(n) for n in grid.shape], indexing="ij"), -1)
    ras = grid.index_to_ras_points(idx.reshape(-1, 3).astype(float)).reshape(*grid.shape, 3)
    views = {v.name: v for v in make_views(grid)}

    def halves(name, axis):
        """Mean of (coordinate > 0) over the left/right and top/bottom halves of a view."""
        values, inside = sample_on_view((ras[..., axis] > 0).astype(np.float32), grid,
                                        views[name])
        assert inside.mean() > 0.5
        h, w = values.shape
        return (values[:, : w // 3].mean(), values[:, -(w // 3):].mean(),
                values[: h // 3].mean(), values[-(h // 3):].mean())

    left, right, top, bottom = halves("AXIAL", 0)       # x > 0: patient right
    assert left > 0.9 and right < 0.1                    # patient right on the screen's left
    left, right, top, bottom = halves("AXIAL", 1)       # y > 0: anterior
    assert top > 0.9 and bottom < 0.1                    # anterior up
    left, right, top, bottom = halves("CORONAL", 0)
    assert left > 0.9 and right < 0.1
    for name in ("CORONAL", "SAGITTAL"):
        left, right, top, bottom = halves(name, 2)      # z > 0: superior
        assert top > 0.9 and bottom < 0.1                # superior up
    left, right, top, bottom = halves("SAGITTAL", 1)
    assert left > 0.9 and right < 0.1                    # anterior on the screen's left


def test_jacobian_colours():
    rgb = jacobian_colours(np.array([[1.0, 0.7, 1.4, 0.0, -0.3]]))[0].astype(int)
    assert tuple(rgb[0]) == (255, 255, 255)
    assert rgb[1, 2] > rgb[1, 0] + 40     # compression: blue
    assert rgb[2, 0] > rgb[2, 2] + 40     # expansion: red
    assert tuple(rgb[3]) == tuple(rgb[4]) == FOLD_COLOUR


# ----------------------------------------------------------------------------- panels
def truth_inputs(truth):
    result = Result.load(truth["out"])
    fixed = load_image(truth["paths"]["inhale"])
    moving = load_image(truth["paths"]["exhale"])
    return (result, fixed, moving, result.scalar("warped.nii.gz"), result.field().disp,
            result.scalar("jacobian.nii.gz"))


def test_overlays_show_alignment_and_folds_are_marked(truth):
    result, fixed, moving, warped, disp, jac = truth_inputs(truth)
    view = make_views(fixed.grid)[1]  # coronal: the breathing motion is mostly superior
    jac = jac.copy()
    centre = tuple(n // 2 for n in fixed.grid.shape)
    jac[centre[0] - 2:centre[0] + 2, centre[1] - 2:centre[1] + 2, centre[2] - 2:centre[2] + 2] = -1
    panels = view_panels(view, fixed, moving, warped, disp, jac, ((-1000, 400), (-1000, 400)))
    assert len(panels) == len(COLUMNS)

    def colour_fringe(panel):
        return np.abs(panel[..., 0].astype(int) - panel[..., 1].astype(int)).mean()

    before, after = colour_fringe(panels[3]), colour_fringe(panels[4])
    assert after < 0.6 * before, (before, after)
    folds = np.all(panels[6] == FOLD_COLOUR, axis=-1)
    assert folds.sum() > 20
    assert np.all(panels[5] == GRID_COLOUR, axis=-1).sum() > 500


def test_deformed_grid_follows_the_displacement(truth):
    """A constant displacement of +5 mm along x (towards the patient's right) moves the axial
    view's grid lines 5 mm to the screen's LEFT (radiological view). The shift is found by
    matching the drawn lines over shifts of less than half the line spacing."""
    _, fixed, moving, warped, disp, jac = truth_inputs(truth)
    view = make_views(fixed.grid)[0]
    windows = ((-1000, 400), (-1000, 400))

    def lines(d):
        panel = view_panels(view, fixed, moving, warped, d, jac, windows)[5]
        return np.all(panel == GRID_COLOUR, axis=-1)

    still = np.zeros_like(disp)
    shifted = still.copy()
    shifted[..., 0] = 5.0
    a, b = lines(still), lines(shifted)
    expected = -5.0 / view.pixel_mm  # columns: negative = towards the screen's left
    gap = 2 * 8.0 / view.pixel_mm   # grid lines every k = 2 voxels of 8 mm here
    assert abs(expected) < gap / 2
    shifts = np.arange(-int(gap / 2), int(gap / 2) + 1)
    w = a.shape[1]
    overlap = [np.sum(a[:, max(0, -s):w - max(0, s)] & b[:, max(0, s):w - max(0, -s)])
               for s in shifts]
    best = shifts[int(np.argmax(overlap))]
    assert abs(best - expected) <= 1.0, (best, expected)


# ----------------------------------------------------------------------------- files
def test_register_writes_qc_overview_3d_and_2d():
    for builder, rows in ((lung_result, 3), (tc_result, 1)):
        path = os.path.join(builder()["out"], QC_FILE)
        with open(path, "rb") as fh:
            data = fh.read()
        assert data[:8] == PNG_SIGNATURE
        width, height = struct.unpack(">II", data[16:24])
        assert width > 7 * 100 and height > rows * 100
    pixels = np.asarray(PIL.Image.open(os.path.join(tc_result()["out"], QC_FILE)).convert("RGB"))
    assert pixels.shape[2] == 3 and (pixels.max(axis=-1) > 200).mean() > 0.05


def test_result_overview_from_files(truth, tmp_path):
    out = result_overview(Result.load(truth["out"]), str(tmp_path / "qc.png"))
    with open(out, "rb") as fh:
        assert fh.read(8) == PNG_SIGNATURE
    result, fixed, moving, warped, disp, jac = truth_inputs(truth)
    picture = overview(fixed, moving, warped, disp, jac, title="T")
    views = make_views(fixed.grid)
    assert picture.dtype == np.uint8 and picture.shape[2] == 3
    assert picture.shape[0] > sum(v.shape[0] for v in views)
    assert picture.shape[1] > len(COLUMNS) * max(v.shape[1] for v in views)
