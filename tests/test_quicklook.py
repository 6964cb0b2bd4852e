"""Quick-look pictures: the PNG writer, the bitmap font, orientation of the display planes, the
panels' content, and qc_overview.png from register (3-D and 2-D) and from a result folder."""

from __future__ import annotations

import os
import struct
import zlib

import numpy as np
import pytest

from helpers_results import lung_result, tc_result
from nephi.font import _GLYPHS, draw_text, text_size
from nephi.geometry import Grid
from nephi.imageio import load_image
from nephi.png import SIGNATURE, decode_png, encode_png, read_png
from nephi.quicklook import (COLUMNS, FOLD_COLOUR, GRID_COLOUR, QC_FILE, jacobian_colours,
                             make_views, overview, result_overview, sample_on_view, view_panels)
from nephi.result import Result


# ----------------------------------------------------------------------------- PNG
def unfilter(raw: bytes, h: int, w: int, bpp: int) -> np.ndarray:
    """Reference PNG unfiltering (the five filter types of the PNG specification)."""
    stride = w * bpp
    out = np.zeros((h, stride), dtype=np.int64)
    for r in range(h):
        ftype = raw[r * (stride + 1)]
        line = list(raw[r * (stride + 1) + 1:(r + 1) * (stride + 1)])
        prev = out[r - 1] if r else np.zeros(stride, np.int64)
        for i in range(stride):
            a = out[r, i - bpp] if i >= bpp else 0
            b = prev[i]
            c = prev[i - bpp] if i >= bpp else 0
            p = a + b - c
            pred = [0, a, b, (a + b) // 2,
                    a if abs(p - a) <= abs(p - b) and abs(p - a) <= abs(p - c)
                    else (b if abs(p - b) <= abs(p - c) else c)][ftype]
            out[r, i] = (line[i] + pred) % 256
    return out.astype(np.uint8)


@pytest.mark.parametrize("channels", [3, 1])
def test_png_writer_produces_a_valid_png(channels):
    rng = np.random.default_rng(0)
    h, w = 23, 17
    yy, xx = np.mgrid[:h, :w]
    smooth = np.stack([xx * 11, yy * 9, (xx + yy) * 5], -1) % 256
    pixels = np.where(rng.random((h, w, 1)) < 0.3, rng.integers(0, 256, (h, w, 3)), smooth)
    pixels = pixels.astype(np.uint8)
    if channels == 1:
        pixels = pixels[..., 0]
    data = encode_png(pixels)
    assert data[:8] == SIGNATURE
    length, kind = struct.unpack(">I4s", data[8:16])
    assert kind == b"IHDR" and length == 13
    width, height, depth, colour, comp, filt, interlace = struct.unpack(">IIBBBBB", data[16:29])
    assert (width, height, depth) == (w, h, 8)
    assert colour == (2 if channels == 3 else 0) and (comp, filt, interlace) == (0, 0, 0)
    assert struct.unpack(">I", data[29:33])[0] == zlib.crc32(data[12:29]) & 0xFFFFFFFF
    start = data.index(b"IDAT") - 4
    idat_len = struct.unpack(">I", data[start:start + 4])[0]
    raw = zlib.decompress(data[start + 8:start + 8 + idat_len])
    assert len(raw) == h * (1 + w * channels)
    assert {raw[r * (1 + w * channels)] for r in range(h)} <= {0, 1, 2, 3, 4}
    decoded = unfilter(raw, h, w, channels).reshape(pixels.shape)
    np.testing.assert_array_equal(decoded, pixels)
    np.testing.assert_array_equal(decode_png(data), pixels)
    assert data.endswith(b"IEND\xaeB`\x82")


def test_png_writer_rejects_bad_arrays():
    with pytest.raises(ValueError):
        encode_png(np.zeros((4, 4, 3), np.float32))
    with pytest.raises(ValueError):
        encode_png(np.zeros((4, 4, 4), np.uint8))


def test_font_has_every_label_glyph_and_draws_ink():
    text = " ".join(COLUMNS) + " AXIAL CORONAL SAGITTAL 2-D NCC 0.123 -> 0.987 % MM X = -1.5"
    assert set(text.upper()) <= set(_GLYPHS)
    widths = {len(row) for rows in _GLYPHS.values() for row in rows}
    assert widths == {5} and {len(rows) for rows in _GLYPHS.values()} == {7}
    picture = np.zeros((20, 80, 3), np.uint8)
    draw_text(picture, "AB", 2, 3, colour=(255, 0, 0), scale=2)
    ink = picture[..., 0] > 0
    assert ink.any() and not picture[..., 1].any()
    rows, cols = np.nonzero(ink)
    h, w = text_size("AB", 2)
    assert rows.min() >= 2 and rows.max() < 2 + h and cols.min() >= 3 and cols.max() < 3 + w


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
    result = Result(truth["out"])
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
        assert data[:8] == SIGNATURE
        width, height = struct.unpack(">II", data[16:24])
        assert width > 7 * 100 and height > rows * 100
    pixels = read_png(os.path.join(tc_result()["out"], QC_FILE))
    assert pixels.shape[2] == 3 and (pixels.max(axis=-1) > 200).mean() > 0.05


def test_result_overview_from_files(truth, tmp_path):
    out = result_overview(Result(truth["out"]), str(tmp_path / "qc.png"))
    with open(out, "rb") as fh:
        assert fh.read(8) == SIGNATURE
    result, fixed, moving, warped, disp, jac = truth_inputs(truth)
    picture = overview(fixed, moving, warped, disp, jac, title="T")
    views = make_views(fixed.grid)
    assert picture.dtype == np.uint8 and picture.shape[2] == 3
    assert picture.shape[0] > sum(v.shape[0] for v in views)
    assert picture.shape[1] > len(COLUMNS) * max(v.shape[1] for v in views)
