"""The peer benchmark's adapters map points the right way round and export fields the same way.

A tiny pair is related by a known translation t (RAS mm): moving(p + t) = fixed(p), so the true
fixed->moving map is phi(p) = p + t. Every peer adapter must carry the fixed landmarks to
p + t with its own point mapping, and its exported ``field.nii.gz`` must hold d = +t (RAS) on
the fixed grid and map the landmarks to the same place. A tool that is not installed is
skipped with the reason. The nephi adapter (``nephi-infer`` in a subprocess, 5 IO steps) is
checked end to end through the benchmark's own measuring and metric code.
"""

from __future__ import annotations

import os
import sys

import nibabel as nib
import numpy as np
import pytest

from nephi.geometry.grid import ras_to_lps

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

from benchmarks import bench_peers, methods  # noqa: E402

pytestmark = [pytest.mark.filterwarnings("ignore:builtin type"), pytest.mark.slow]

SHIFT = np.array([4.0, -3.0, 2.0])
SHAPE = (24, 24, 24)
SPACING = 2.0
BLOBS = np.array([[-8.0, -6.0, -4.0], [7.0, 5.0, -6.0], [0.0, 8.0, 7.0], [-6.0, 4.0, 6.0],
                  [8.0, -7.0, 5.0], [2.0, -2.0, -9.0]])
WIDTHS = np.array([4.0, 3.5, 4.5, 3.0, 4.0, 3.5])


def _blob_image(points: np.ndarray) -> np.ndarray:
    out = np.zeros(len(points))
    for c, w in zip(BLOBS, WIDTHS):
        out += np.exp(-np.sum((points - c) ** 2, axis=1) / (2 * w ** 2))
    return 100.0 * out


def _grid_points(affine: np.ndarray) -> np.ndarray:
    idx = np.indices(SHAPE, dtype=np.float64).reshape(3, -1).T
    return idx @ affine[:3, :3].T + affine[:3, 3]


@pytest.fixture(scope="module")
def shifted_case(tmp_path_factory) -> methods.Case:
    """Moving = fixed translated by SHIFT; landmarks at the blob centres (mask: the whole image)."""
    root = tmp_path_factory.mktemp("shift")
    affine = np.diag([SPACING] * 3 + [1.0])
    affine[:3, 3] = [-23.0, -21.0, -25.0]
    pts = _grid_points(affine)
    fixed = _blob_image(pts).reshape(SHAPE).astype(np.float32)
    moving = _blob_image(pts - SHIFT).reshape(SHAPE).astype(np.float32)
    paths = {}
    for name, data in (("fixed", fixed), ("moving", moving),
                       ("mask", np.ones(SHAPE, np.uint8))):
        paths[name] = str(root / f"{name}.nii.gz")
        nib.save(nib.Nifti1Image(data, affine), paths[name])
    landmarks = BLOBS[:4] + np.array([1.0, -1.0, 0.5])
    paths["fixed_points"] = str(root / "fixed_points.csv")
    paths["moving_points"] = str(root / "moving_points.csv")
    for key, arr in (("fixed_points", landmarks), ("moving_points", landmarks + SHIFT)):
        np.savetxt(paths[key], arr, delimiter=",", header="x,y,z", comments="", fmt="%.4f")
    return methods.Case(name="shift", group="test", ndim=3, moving=paths["moving"],
                        fixed=paths["fixed"], fixed_mask=paths["mask"],
                        fixed_points=paths["fixed_points"], moving_points=paths["moving_points"],
                        shape=SHAPE, spacing=(SPACING,) * 3)


@pytest.fixture(autouse=True)
def _one_thread(monkeypatch):
    for var in bench_peers.THREAD_VARIABLES:
        monkeypatch.setenv(var, "1")


@pytest.mark.parametrize("key", sorted(methods.PEERS))
def test_peer_maps_fixed_points_to_moving_and_exports_the_field(key, shifted_case, tmp_path):
    ok, reason = methods.peer_available(key)
    if not ok:
        pytest.skip(f"{key}: {reason}")
    out = str(tmp_path / key)
    info = methods.run_peer(key, shifted_case, out, profile="test", use_mask=True)
    assert info["reg_seconds"] > 0

    fixed_pts = np.loadtxt(shifted_case.fixed_points, delimiter=",", skiprows=1)
    moved = np.loadtxt(os.path.join(out, methods.POINTS_FILE), delimiter=",", skiprows=1)
    error = np.linalg.norm(moved - (fixed_pts + SHIFT), axis=1)
    wrong_way = np.linalg.norm(moved - (fixed_pts - SHIFT), axis=1)
    assert error.max() < 1.5, f"{key}: landmark error {error} (reversed: {wrong_way})"

    disp, grid = methods.read_field(os.path.join(out, methods.FIELD_FILE))
    fixed_grid = methods.load_image(shifted_case.fixed).grid
    assert grid.same_as(fixed_grid)
    core = disp[6:-6, 6:-6, 6:-6].reshape(-1, 3)
    assert np.allclose(np.median(core, axis=0), SHIFT, atol=1.0), np.median(core, axis=0)
    via_field = methods.field_points(fixed_pts, os.path.join(out, methods.FIELD_FILE))
    assert np.abs(via_field - moved).max() < 0.5
    assert methods.folding_percent(disp, grid) < 1.0


def test_field_export_is_read_by_simpleitk_the_itk_way(shifted_case, tmp_path):
    """A +t RAS field written by the harness reads in SimpleITK as LPS vectors mapping p -> p+t."""
    sitk = pytest.importorskip("SimpleITK")
    grid = methods.load_image(shifted_case.fixed).grid
    disp = np.broadcast_to(SHIFT, SHAPE + (3,)).astype(np.float32)
    path = str(tmp_path / "field.nii.gz")
    methods.write_displacement_field(path, disp, grid)
    tx = sitk.DisplacementFieldTransform(sitk.Cast(sitk.ReadImage(path), sitk.sitkVectorFloat64))
    p_ras = np.array([1.0, 2.0, -3.0])
    q_lps = np.array(tx.TransformPoint(tuple(ras_to_lps(p_ras))))
    assert np.allclose(ras_to_lps(q_lps), p_ras + SHIFT, atol=1e-4)
    back, back_grid = methods.sitk_field_to_ras(sitk.ReadImage(path))
    assert back_grid.same_as(grid) and np.allclose(back, disp, atol=1e-5)


def test_jacobian_of_known_maps():
    grid = methods.Grid((12, 10, 8), np.diag([2.0, 1.5, 3.0, 1.0]))
    idx = np.indices(grid.shape, dtype=np.float64).reshape(3, -1).T
    x = grid.index_to_ras_points(idx).reshape(*grid.shape, 3)
    det = methods.jacobian_determinant(0.1 * x, grid)
    assert np.allclose(det, 1.1 ** 3)
    fold = -2.0 * x
    fold[..., 1:] = 0.0
    assert methods.folding_percent(fold, grid) == 100.0


def test_nephi_adapter_runs_five_io_steps(shifted_case, tmp_path):
    modes = bench_peers.nephi_io_modes()
    assert "nephi" in modes
    spec = bench_peers.nephi_spec("nephi", io_steps=5, checkpoint=None, profile="test")
    record = bench_peers.run_method(spec, shifted_case, str(tmp_path / "runs"), use_mask=True,
                                    timeout=120)
    assert record["status"] == "ok", record.get("error")
    assert record["wall_s"] > 0 and record["peak_mb"] > 50
    assert record["reg_s"] > 0 and record["landmarks"] == 4
    assert record["field_point_gap_mm"] < 0.05
    assert record["folding_pct"] < 1.0
    # right direction: five steps already move the landmarks towards their partners
    assert record["tre_mean"] < bench_peers.identity_record(shifted_case)["tre_mean"]
