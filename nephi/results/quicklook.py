"""Quick-look pictures of a registration: ``qc_overview.png`` (drawn with Pillow).

One picture, a grid of panels. Rows: the axial, coronal and sagittal planes (3-D) or the image
plane (2-D). Columns:

1. FIXED: the fixed image B.
2. MOVING: the moving image A resampled onto the plane with the identity (physical space), i.e.
   what the pair looks like before registration.
3. WARPED: A(phi_AB(x)), the registered moving image (``warped.nii.gz``).
4. BEFORE: colour overlay of fixed (green) and identity-resampled moving (magenta); aligned
   structures are grey, misaligned edges show green and magenta fringes.
5. AFTER: the same overlay with the warped image.
6. GRID: grid lines of the fixed frame, every k voxels, pushed through phi_AB (each point p of a
   line drawn at p + d(p), projected onto the plane), drawn in yellow over the dimmed fixed image.
7. JACOBIAN: det D phi_AB on a diverging scale centred at 1 (log scale from 2/3, full blue: local
   compression, to 1.5, full red: expansion; white: volume kept); folds (det <= 0) in bright
   green.

Pixels whose sample point lies outside an image (beyond half a voxel from its voxel centres) are
black: outside the fixed grid in every panel, outside the moving grid in MOVING, and where
phi_AB leaves the moving grid in WARPED (``warped.nii.gz`` holds 0 there, which in CT would
otherwise show as soft tissue).

Orientation (radiological convention, the same in every row): the planes are resampled in
physical space along the RAS axes, whatever the voxel axes of the images are. Axial: patient
right on the screen's left, anterior up. Coronal: patient right on the screen's left, superior
up. Sagittal: anterior on the screen's left, superior up. The first column marks each panel's
edges with R/L, A/P, S/I. 2-D images are shown as an axial slice (x = R, y = A).

Slices: through the centre of the fixed image; with a fixed mask, each plane is placed where the
mask's cross-section is largest (for two lungs this puts the sagittal plane through a lung
rather than the mediastinum, where the mask centroid would lie).

Intensities: each image is windowed to its own 0.5 and 99.5 percentiles (the warped image uses
the moving image's window).

Labels use Pillow's built-in scalable font (:func:`PIL.ImageFont.load_default`, Pillow >= 10.1) at
:data:`FONT_PX` pixels per scale step: capitals about 7 pixels high at scale 1, 14 at scale 2.
"""

from __future__ import annotations

import functools
import itertools
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import PIL.Image
import PIL.ImageDraw
import PIL.ImageFont

from nephi.errors import NephiInputError
from nephi.geometry.grid import Grid
from nephi.io.atomic import write_file
from nephi.io.images import Image, load_mask
from nephi.io.layout import JACOBIAN, QC_FILE, WARPED
from nephi.results.warp import sample_index
from nephi.transforms.displacement import map_points


if TYPE_CHECKING:  # the result folder's class (it draws its pictures with this module)
    from nephi.results.result import Result


COLUMNS = ("FIXED", "MOVING", "WARPED", "BEFORE", "AFTER", "GRID", "JACOBIAN")


BACKGROUND = (24, 24, 24)


TEXT = (235, 235, 235)


GRID_COLOUR = (255, 215, 0)


FOLD_COLOUR = (0, 230, 0)


JAC_LOW, JAC_HIGH = (33, 102, 172), (178, 24, 43)


JAC_RANGE = 1.5  # colour scale of det J: from 1 / JAC_RANGE (full blue) to JAC_RANGE (full red)


PANEL_PX = 176   # largest panel side in pixels


GRID_LINES = 14  # deformed-grid lines across the largest extent


WINDOW_PERCENTILES = (0.5, 99.5)


FONT_PX = 10     # font size at scale 1 (capitals about 7 px high; scale 2: 20, capitals 14 px)


@functools.lru_cache(maxsize=None)
def font(scale: int = 1) -> PIL.ImageFont.FreeTypeFont:
    """Pillow's built-in scalable font at ``FONT_PX * scale`` pixels."""
    return PIL.ImageFont.load_default(size=FONT_PX * scale)


@functools.lru_cache(maxsize=None)
def cap_height(scale: int = 1) -> int:
    """Height in pixels of a capital letter at ``scale``: the text line height of the layout."""
    return -font(scale).getbbox("H", anchor="ls")[1]


_MEASURE = PIL.ImageDraw.Draw(PIL.Image.new("RGB", (1, 1)))


def text_size(text: str, scale: int = 1) -> tuple:
    """(height, width) in pixels of ``text`` drawn by :func:`draw_text` at ``scale``, measured
    from its (row, col): down to the lowest ink (descenders included) and right to the end."""
    _, _, right, bottom = _MEASURE.textbbox((0, cap_height(scale)), text, font=font(scale),
                                            anchor="ls")
    return bottom, right


def draw_text(picture: np.ndarray, text: str, row: int, col: int, colour=(255, 255, 255),
              scale: int = 1, background=None) -> None:
    """Paint ``text`` into ``picture`` (H, W, 3) uint8 in place, the top of its capitals at
    ``row`` and its start at ``col``.

    ``background``: optional RGB filled behind the text (a ``scale``-pixel margin included) so
    labels stay readable over images. Whatever falls outside the picture is clipped.
    """
    image = PIL.Image.fromarray(picture)
    draw = PIL.ImageDraw.Draw(image)
    origin = (col, row + cap_height(scale))
    if background is not None:
        left, top, right, bottom = draw.textbbox(origin, text, font=font(scale), anchor="ls")
        draw.rectangle((left - scale, top - scale, right + scale - 1, bottom + scale - 1),
                       fill=tuple(background))
    draw.text(origin, text, fill=tuple(colour), font=font(scale), anchor="ls")
    picture[:] = np.asarray(image)


def save_png(path: str, picture: np.ndarray) -> None:
    """Write ``picture`` (H, W, 3) uint8 to ``path`` as a PNG file (whatever the file name)."""
    PIL.Image.fromarray(picture).save(path, format="PNG")


@dataclass(frozen=True)
class View:
    """A display plane. Pixel (r, c) has its centre at
    ``corner + (c + 0.5) * pixel_mm * right + (r + 0.5) * pixel_mm * down`` (RAS mm)."""

    name: str
    corner: np.ndarray
    right: np.ndarray
    down: np.ndarray
    shape: tuple
    pixel_mm: float
    edges: tuple          # letters at the left, right, top and bottom edge
    position: str         # e.g. "Z = -12.0 MM"

    def points(self) -> np.ndarray:
        """RAS mm of every pixel centre, (h * w, d), row-major."""
        h, w = self.shape
        rr, cc = np.meshgrid(np.arange(h) + 0.5, np.arange(w) + 0.5, indexing="ij")
        return (self.corner + self.pixel_mm * (cc.reshape(-1, 1) * self.right
                                               + rr.reshape(-1, 1) * self.down))

    def project(self, points_ras: np.ndarray) -> np.ndarray:
        """(row, col) pixel coordinates (N, 2) of RAS points (N, d), out-of-plane part dropped."""
        rel = points_ras - self.corner
        return np.stack([rel @ self.down / self.pixel_mm - 0.5,
                         rel @ self.right / self.pixel_mm - 0.5], axis=-1)


# (name, right, down, normal axis, edge letters left/right/top/bottom)
_PLANES_3D = (
    ("AXIAL", (-1.0, 0.0, 0.0), (0.0, -1.0, 0.0), 2, ("R", "L", "A", "P")),
    ("CORONAL", (-1.0, 0.0, 0.0), (0.0, 0.0, -1.0), 1, ("R", "L", "S", "I")),
    ("SAGITTAL", (0.0, -1.0, 0.0), (0.0, 0.0, -1.0), 0, ("A", "P", "S", "I")),
)


_PLANE_2D = ("2-D", (-1.0, 0.0), (0.0, -1.0), None, ("R", "L", "A", "P"))


def grid_corners(grid: Grid) -> np.ndarray:
    """RAS mm (2^d, d) of the outer corners of the grid's voxels (half a voxel beyond centres)."""
    lo, hi = -0.5, np.asarray(grid.shape, dtype=np.float64) - 0.5
    corners = [np.where(np.asarray(bits, dtype=bool), hi, lo)
               for bits in itertools.product((0, 1), repeat=grid.ndim)]
    return grid.index_to_ras_points(np.asarray(corners))


def slice_positions(grid: Grid, mask: np.ndarray | None) -> np.ndarray:
    """RAS coordinate (d,) at which each RAS axis's plane is cut (see module docstring); mask
    cross-sections are counted in bins of the grid's smallest voxel size."""
    centre = grid.index_to_ras_points((np.asarray(grid.shape, dtype=np.float64) - 1.0) / 2.0)
    if mask is None or not mask.any():
        return centre
    vox = np.argwhere(mask).astype(np.float64)
    if len(vox) > 400_000:
        vox = vox[np.linspace(0, len(vox) - 1, 400_000).astype(np.int64)]
    ras = grid.index_to_ras_points(vox)
    out = centre.copy()
    step = float(grid.spacing.min())
    for axis in range(grid.ndim):
        values = ras[:, axis]
        edges = np.arange(values.min(), values.max() + step, step)
        if len(edges) < 2:
            out[axis] = values.mean()
            continue
        counts, edges = np.histogram(values, bins=edges)
        counts = np.convolve(counts, np.ones(3) / 3.0, mode="same")
        k = int(np.argmax(counts))
        out[axis] = 0.5 * (edges[k] + edges[k + 1])
    return out


def make_views(grid: Grid, mask: np.ndarray | None = None, panel_px: int = PANEL_PX) -> list:
    """The display planes of a fixed grid: 3 (axial, coronal, sagittal) in 3-D, 1 in 2-D."""
    corners = grid_corners(grid)
    extent = corners.max(axis=0) - corners.min(axis=0)
    pixel_mm = float(extent.max() / panel_px)
    position = slice_positions(grid, mask)
    planes = _PLANES_3D if grid.ndim == 3 else (_PLANE_2D,)
    views = []
    for name, right, down, normal, edges in planes:
        right, down = np.asarray(right), np.asarray(down)
        along_r, along_d = corners @ right, corners @ down
        w = max(2, int(np.ceil((along_r.max() - along_r.min()) / pixel_mm)))
        h = max(2, int(np.ceil((along_d.max() - along_d.min()) / pixel_mm)))
        corner = position - right * (position @ right) - down * (position @ down)
        corner = corner + right * along_r.min() + down * along_d.min()
        text = "" if normal is None else f"{'XYZ'[normal]} = {position[normal]:.1f} MM"
        views.append(View(name, corner, right, down, (h, w), pixel_mm, edges, text))
    return views


def inside_grid(grid: Grid, points_ras: np.ndarray) -> np.ndarray:
    """(N,) bool: each point lies within half a voxel of the grid's voxel centres."""
    index = grid.ras_to_index_points(points_ras)
    upper = np.asarray(grid.shape, dtype=np.float64) - 0.5
    return np.all((index >= -0.5) & (index <= upper), axis=-1)


def sample_on_view(data: np.ndarray, grid: Grid, view: View, interp: str = "linear") -> tuple:
    """``data`` (*S on ``grid``) at the view's pixels -> (values (h, w) float32, inside (h, w)).

    ``inside``: the pixel centre lies within the grid (within half a voxel of a voxel centre).
    """
    points = view.points()
    values = sample_index(data, grid.ras_to_index_points(points).astype(np.float32), interp)
    inside = inside_grid(grid, points)
    return values.astype(np.float32).reshape(view.shape), inside.reshape(view.shape)


def robust_window(data: np.ndarray) -> tuple:
    """(low, high) intensity window: the 0.5 and 99.5 percentiles (of at most 2M voxels)."""
    flat = np.asarray(data, dtype=np.float32).reshape(-1)
    if flat.size > 2_000_000:
        flat = flat[:: flat.size // 2_000_000 + 1]
    low, high = np.percentile(flat, WINDOW_PERCENTILES)
    if not high > low:
        low, high = float(flat.min()), float(flat.max())
        if not high > low:
            high = low + 1.0
    return float(low), float(high)


def to_unit(values: np.ndarray, window: tuple) -> np.ndarray:
    low, high = window
    return np.clip((values - low) / (high - low), 0.0, 1.0)


def grey(unit: np.ndarray) -> np.ndarray:
    """(h, w) in [0, 1] -> (h, w, 3) uint8 grey."""
    v = np.round(255.0 * unit).astype(np.uint8)
    return np.repeat(v[..., None], 3, axis=-1)


def overlay(fixed_unit: np.ndarray, moving_unit: np.ndarray) -> np.ndarray:
    """Fixed in green, moving in magenta: equal intensities give grey."""
    f = np.round(255.0 * fixed_unit).astype(np.uint8)
    m = np.round(255.0 * moving_unit).astype(np.uint8)
    return np.stack([m, f, m], axis=-1)


def jacobian_colours(det: np.ndarray) -> np.ndarray:
    """det J (h, w) -> RGB (h, w, 3): log scale, blue below 1, red above, folds green."""
    safe = np.where(det > 0, det, 1.0)
    t = np.clip(np.log(safe) / np.log(JAC_RANGE), -1.0, 1.0)[..., None]
    white = np.array([255.0, 255.0, 255.0])
    low, high = np.asarray(JAC_LOW, dtype=np.float64), np.asarray(JAC_HIGH, dtype=np.float64)
    rgb = np.where(t < 0, white + (-t) * (low - white), white + t * (high - white))
    rgb = np.round(rgb).astype(np.uint8)
    rgb[det <= 0] = FOLD_COLOUR
    return rgb


def deformed_grid_lines(view: View, grid: Grid, disp: np.ndarray) -> list:
    """Grid lines of the fixed frame in ``view``, pushed through p -> p + d(p).

    Lines run along the view's two in-plane axes every k voxels of the fixed grid (k chosen
    for about :data:`GRID_LINES` lines across the largest extent). Returns a list of (n, 2)
    arrays of (row, col) pixel coordinates, one per line piece inside the fixed grid.
    """
    h, w = view.shape
    voxel = float(grid.spacing.min())
    k = max(1, int(round(max(h, w) * view.pixel_mm / GRID_LINES / voxel)))
    gap = k * voxel / view.pixel_mm
    pieces = []  # (row, col) samples of every line, inside the fixed grid, in drawing order
    for along_rows in (True, False):
        count, length = (h, w) if along_rows else (w, h)
        t = np.arange(0.0, length, 0.5)
        for fixed_coord in np.arange(gap / 2.0, count, gap):
            const = np.full_like(t, fixed_coord)
            rc = np.stack([const, t] if along_rows else [t, const], axis=-1)
            index = grid.ras_to_index_points(_pixel_points(view, rc))
            inside = np.all((index >= 0) & (index <= np.asarray(grid.shape) - 1.0), axis=-1)
            runs = np.split(np.flatnonzero(inside),
                            np.flatnonzero(np.diff(np.flatnonzero(inside)) > 1) + 1)
            pieces.extend(rc[run] for run in runs if len(run) > 1)
    if not pieces:
        return []
    sizes = np.cumsum([len(p) for p in pieces])[:-1]
    moved = map_points(_pixel_points(view, np.concatenate(pieces)), disp, grid)
    return np.split(view.project(moved), sizes)


def _pixel_points(view: View, rc: np.ndarray) -> np.ndarray:
    """RAS mm (n, d) of continuous pixel coordinates (n, 2) (row, col) of ``view``."""
    return view.corner + view.pixel_mm * ((rc[:, 1:2] + 0.5) * view.right
                                          + (rc[:, 0:1] + 0.5) * view.down)


def draw_polyline(picture: np.ndarray, rc: np.ndarray, colour) -> None:
    """Draw connected (row, col) points (n, 2) as a 1-pixel line, clipped to the picture."""
    a, b = rc[:-1], rc[1:]
    n = int(min(64, max(2, np.ceil(np.abs(b - a).max()) + 1)))
    t = np.linspace(0.0, 1.0, n)[None, :, None]
    pts = np.round(a[:, None] + t * (b - a)[:, None]).reshape(-1, 2).astype(np.int64)
    h, w = picture.shape[:2]
    ok = (pts[:, 0] >= 0) & (pts[:, 0] < h) & (pts[:, 1] >= 0) & (pts[:, 1] < w)
    picture[pts[ok, 0], pts[ok, 1]] = colour


def _edge_letters(panel: np.ndarray, letters: tuple) -> None:
    h, w = panel.shape[:2]
    left, right, top, bottom = letters
    text_h = cap_height()
    mid_r = h // 2 - text_h // 2
    for text, r, c in ((left, mid_r, 2), (right, mid_r, w - text_size(right)[1] - 2),
                       (top, 2, w // 2 - text_size(top)[1] // 2),
                       (bottom, h - text_h - 2, w // 2 - text_size(bottom)[1] // 2)):
        draw_text(panel, text, r, c, colour=(255, 255, 0), background=(0, 0, 0))


def view_panels(view: View, fixed: Image, moving: Image, warped: np.ndarray, disp: np.ndarray,
                jacobian: np.ndarray, windows: tuple) -> list:
    """The seven (h, w, 3) uint8 panels of one view, in :data:`COLUMNS` order."""
    grid = fixed.grid
    f, inside = sample_on_view(fixed.data, grid, view)
    m, m_inside = sample_on_view(moving.data, moving.grid, view)
    wp, _ = sample_on_view(warped, grid, view)
    det, _ = sample_on_view(jacobian, grid, view, interp="nearest")
    mapped = map_points(view.points(), disp, grid)
    w_inside = inside_grid(moving.grid, mapped).reshape(view.shape)
    fixed_window, moving_window = windows
    fu = to_unit(f, fixed_window)
    mu = np.where(m_inside, to_unit(m, moving_window), 0.0)
    wu = np.where(w_inside, to_unit(wp, moving_window), 0.0)
    panels = [grey(fu), grey(mu), grey(wu), overlay(fu, mu), overlay(fu, wu),
              grey(0.6 * fu), jacobian_colours(det)]
    for line in deformed_grid_lines(view, grid, disp):
        draw_polyline(panels[5], line, GRID_COLOUR)
    for panel in panels:
        panel[~inside] = 0
    _edge_letters(panels[0], view.edges)
    if view.position:
        draw_text(panels[0], view.position, view.shape[0] - cap_height() - 2, 2, colour=TEXT,
                  background=(0, 0, 0))
    return panels


def metrics_line(summary: dict | None) -> str:
    """One line of the key numbers of a summary.json (empty when there is none)."""
    if not summary:
        return ""
    parts = []
    if "ncc_before" in summary and "ncc_after" in summary:
        parts.append(f"NCC {summary['ncc_before']:.3f} -> {summary['ncc_after']:.3f}")
    before = summary.get("landmark_error_before_mm")
    after = summary.get("landmark_error_after_mm")
    if before and after:
        parts.append(f"LANDMARKS {before['mean_mm']:.2f} -> {after['mean_mm']:.2f} MM")
    if "folding_percent" in summary:
        parts.append(f"FOLDS {summary['folding_percent']:.3f} %")
    if "inverse_consistency_mm_mean" in summary:
        parts.append(f"INV.CONS. {summary['inverse_consistency_mm_mean']:.2f} MM")
    return "   ".join(parts)


def _colour_bar(width: int) -> np.ndarray:
    """A (text height + 4, width, 3) legend of the Jacobian colours with ticks 1/R, 1, R and
    FOLD (R = :data:`JAC_RANGE`)."""
    h = cap_height() + 4
    bar = np.zeros((h, width, 3), dtype=np.uint8)
    bar[:] = BACKGROUND
    fold_w = text_size("FOLD")[1] + 4
    span = max(10, width - fold_w - 14)
    det = JAC_RANGE ** np.linspace(-1.0, 1.0, span)
    bar[:, :span] = jacobian_colours(np.repeat(det[None], h, axis=0))
    low, high = f"{1.0 / JAC_RANGE:.2g}", f"{JAC_RANGE:g}"
    for text, pos in ((low, 1), ("1", span // 2 - text_size("1")[1] // 2),
                      (high, span - text_size(high)[1] - 1)):
        draw_text(bar, text, 2, pos, colour=(0, 0, 0))
    bar[:, span + 4:span + 10] = FOLD_COLOUR
    draw_text(bar, "FOLD", 2, span + 13, colour=TEXT)
    return bar


def wrap(text: str, width_px: int, scale: int) -> list:
    """Split ``text`` at its "   " separators into lines no wider than ``width_px`` (a single
    part wider than that stays one line)."""
    lines = []
    for part in (p for p in text.split("   ") if p):
        if lines and text_size(f"{lines[-1]}   {part}", scale)[1] <= width_px:
            lines[-1] = f"{lines[-1]}   {part}"
        else:
            lines.append(part)
    return lines


def overview(fixed: Image, moving: Image, warped: np.ndarray, disp: np.ndarray,
             jacobian: np.ndarray, mask: np.ndarray | None = None, summary: dict | None = None,
             title: str = "", panel_px: int = PANEL_PX) -> np.ndarray:
    """The quick-look picture (H, W, 3) uint8 of one registration.

    ``fixed``, ``moving``: the images (any grids). ``warped`` (*S_fixed): moving pulled onto the
    fixed grid. ``disp`` (*S_fixed, d): phi_AB - Id in RAS mm on the fixed grid (as
    ``warp.nii.gz`` after :func:`nephi.export.read_displacement_field`). ``jacobian``
    (*S_fixed): det D phi_AB. ``mask`` (*S_fixed) bool, optional: places the slices.
    ``summary``: optional summary.json dict for the header's numbers.
    """
    views = make_views(fixed.grid, mask, panel_px)
    windows = (robust_window(fixed.data), robust_window(moving.data))
    rows = [view_panels(v, fixed, moving, warped, disp, jacobian, windows) for v in views]
    scale = 2
    text_h = cap_height()
    gap, label_w = 4, cap_height(scale) + 8
    panel_w = max(v.shape[1] for v in views)
    col_w = max(panel_w, max(text_size(c, scale)[1] for c in COLUMNS)) + gap
    width = label_w + len(COLUMNS) * col_w + gap
    header_lines = []
    for text in (f"NEPHI QUICK LOOK  {title}".rstrip(), metrics_line(summary),
                 "RADIOLOGICAL VIEW: PATIENT RIGHT ON SCREEN LEFT"):
        header_lines.extend(wrap(text, width - 2 * gap, scale))
    width = max(width, max(text_size(t, scale)[1] for t in header_lines) + 2 * gap)
    line_h = cap_height(scale) + 6
    header_h = len(header_lines) * line_h + (cap_height(scale) + 6) + text_h + 10
    height = header_h + sum(v.shape[0] + gap for v in views) + gap
    canvas = np.zeros((height, width, 3), dtype=np.uint8)
    canvas[:] = BACKGROUND
    for k, text in enumerate(header_lines):
        draw_text(canvas, text, gap + k * line_h, gap, colour=TEXT, scale=scale)
    top = gap + len(header_lines) * line_h
    for j, name in enumerate(COLUMNS):
        draw_text(canvas, name, top, label_w + j * col_w, colour=TEXT, scale=scale)
    legend_top = top + cap_height(scale) + 4
    draw_text(canvas, "GREEN FIXED, MAGENTA MOVING", legend_top + 2, label_w + 3 * col_w,
              colour=TEXT)
    draw_text(canvas, "PHI(FIXED GRID)", legend_top + 2, label_w + 5 * col_w, colour=TEXT)
    bar = _colour_bar(col_w - gap)
    canvas[legend_top:legend_top + bar.shape[0],
           label_w + 6 * col_w:label_w + 7 * col_w - gap] = bar
    r = header_h
    for view, panels in zip(views, rows):
        h, w = view.shape
        strip = np.zeros((*text_size(view.name, scale), 3), dtype=np.uint8)
        strip[:] = BACKGROUND
        draw_text(strip, view.name, 0, 0, colour=TEXT, scale=scale)
        strip = np.rot90(strip)[: h]
        canvas[r + (h - strip.shape[0]) // 2: r + (h - strip.shape[0]) // 2 + strip.shape[0],
               4:4 + strip.shape[1]] = strip
        for j, panel in enumerate(panels):
            left = label_w + j * col_w + (col_w - gap - w) // 2
            canvas[r:r + h, left:left + w] = panel
        r += h + gap
    return canvas


def write_overview(path: str, fixed: Image, moving: Image, warped: np.ndarray, disp: np.ndarray,
                   jacobian: np.ndarray, mask: np.ndarray | None = None,
                   summary: dict | None = None, title: str = "",
                   panel_px: int = PANEL_PX) -> str:
    """Draw :func:`overview` and write it as a PNG at ``path``; returns ``path``."""
    save_png(path, overview(fixed, moving, warped, disp, jacobian, mask, summary, title,
                            panel_px))
    return path


def result_overview(result: Result, out_path: str | None = None, fixed_path: str | None = None,
                    moving_path: str | None = None, panel_px: int = PANEL_PX) -> str:
    """Quick look of a result folder from its files.

    Reads warp.nii.gz, warped.nii.gz, jacobian.nii.gz and summary.json; the fixed and moving
    images (and the fixed mask, if one was used) from the paths summary.json records unless
    ``fixed_path`` / ``moving_path`` are given. Writes ``out_path`` (default
    ``<result>/qc_overview.png``) and returns it.
    """
    field = result.field()
    fixed = result.input_image("fixed", fixed_path)
    if not fixed.grid.same_as(field.grid):
        raise NephiInputError(f"fixed image {fixed.path}: its grid differs from the grid of "
                              f"{field.path}; is it the fixed image of this result?")
    moving = result.input_image("moving", moving_path)
    mask_path = result.recorded_path("mask")
    mask = None
    if mask_path and os.path.isfile(mask_path) and fixed.grid.same_as(field.grid):
        mask = load_mask(mask_path, field.grid)
    out_path = out_path or os.path.join(result.path, QC_FILE)
    picture = overview(fixed, moving, result.scalar(WARPED), field.disp, result.scalar(JACOBIAN),
                       mask, result.summary, result.name, panel_px)
    write_file(out_path, lambda tmp: save_png(tmp, picture), option="quick look")
    return out_path
