"""On-the-fly augmentation (nephi.data.augment): random diffeomorphisms undone by their inverses
on a real scan (nilearn's MNI152 T1), positive Jacobians, one draw per (seed, step, rank),
landmarks that follow their images, shared flips, intensities, and the config checks."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch

from nephi.config.loader import load_defaults, set_dotted
from nephi.config.validate import validate_training
from nephi.data.augment import (AugmentConfig, PairAugmenter, SpatialMap,
                                 random_diffeomorphisms)
from nephi.errors import NephiInputError
from nephi.geometry.grid import Grid
from nephi.geometry.sampling import gaussian_smooth, sample_image
from nephi.learn.trainer import step_generator
from nephi.transforms.jacobian import jacobian_determinant_dense

SPATIAL = {"affine": {"probability": 1.0}, "deform": {"probability": 1.0, "max_mm": 10.0}}


@pytest.fixture(scope="module")
def head():
    """The MNI152 T1 at 4 mm, band-limited by a Gaussian of one voxel (linear interpolation,
    done twice here, blurs a voxel-sharp image by itself), on its canonical grid:
    (image (1, 1, *S) scaled to [0, 1], grid)."""
    if importlib.util.find_spec("nilearn") is None:
        pytest.skip("nilearn (MNI152 template) is not installed")
    from nephi.data.real_scans import mni152

    scan = mni152(spacing=4.0)
    image = gaussian_smooth(torch.as_tensor(scan.image)[None, None], 1.0)
    grid = Grid(scan.grid.shape, np.diag([*scan.grid.spacing, 1.0]))
    return image / image.max(), grid


def _ncc(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a - a.mean(), b - b.mean()
    return float((a * b).sum() / (a.norm() * b.norm()))


def _voxels(grid: Grid, batch: int) -> torch.Tensor:
    return grid.normalized_points().reshape(1, -1, grid.ndim).expand(batch, -1, -1)


def test_random_deformation_undone_by_its_inverse(head):
    """I' = I o T (affine and diffeomorphism, one sampling); I' o T^-1 gives I back (NCC >= 0.99
    where T^-1 stays in the grid) although I' differs from I; T(T^-1(p)) = p within 0.05 voxel."""
    image, grid = head
    maps = PairAugmenter(AugmentConfig.from_dict(SPATIAL), grid).draw(
        3, torch.Generator().manual_seed(3))
    spatial = maps.fixed_map
    images = image.expand(3, -1, -1, -1, -1)
    warped = spatial.resample(images)
    back_at = spatial.inverse(_voxels(grid, 3))
    restored = sample_image(warped, back_at, padding="zeros").reshape(images.shape)
    inside = (back_at.abs() <= 1.0).all(-1).reshape(3, *grid.shape)
    for b in range(3):
        assert _ncc(images[b, 0], warped[b, 0]) < 0.97
        assert _ncc(images[b, 0][inside[b]], restored[b, 0][inside[b]]) >= 0.99
    p = 1.6 * torch.rand(3, 200, 3, generator=torch.Generator().manual_seed(0)) - 0.8
    voxel = torch.as_tensor(2.0 / (np.asarray(grid.shape) - 1.0), dtype=torch.float32)
    assert float(((spatial(spatial.inverse(p)) - p).abs() / voxel).max()) < 0.05
    assert float(((spatial.inverse(spatial(p)) - p).abs() / voxel).max()) < 0.05


def _determinant(spatial, grid: Grid, batch: int) -> torch.Tensor:
    """det of the Jacobian of every map of ``spatial`` on the grid: (B, *S)."""
    index = (spatial(_voxels(grid, batch)) + 1.0) * torch.as_tensor(
        (np.asarray(grid.shape) - 1.0) / 2.0, dtype=torch.float32)
    return torch.stack([jacobian_determinant_dense(i.T.reshape(grid.ndim, *grid.shape))
                        for i in index])


def test_augmented_jacobian_is_positive_everywhere(head):
    """The drawn maps (affine and diffeomorphism) have det J > 0 at every voxel, and so do
    diffeomorphisms asked for far more than the grid allows (40 mm over 12 mm: the velocity is
    halved until the map and its inverse keep det J >= MIN_DET on the deformation grid; here
    checked on the image grid)."""
    _, grid = head
    maps = PairAugmenter(AugmentConfig.from_dict(SPATIAL), grid).draw(
        4, torch.Generator().manual_seed(5))
    assert float(_determinant(maps.moving_map, grid, 4).min()) > 0.0
    forward, inverse = random_diffeomorphisms(grid, torch.tensor([40.0, 40.0]), 12.0,
                                              torch.Generator().manual_seed(1))
    identity = torch.eye(4, dtype=torch.float64).expand(2, -1, -1)
    for tables in ((forward, inverse), (inverse, forward)):
        assert float(_determinant(SpatialMap(identity, grid, *tables), grid, 2).min()) > 0.0
    largest = (forward * torch.as_tensor(grid.normalized_mm_scale(), dtype=torch.float32).view(
        1, 3, 1, 1, 1)).norm(dim=1).amax()
    assert float(largest) > 3.0  # halved, not flattened


def test_processes_draw_different_reproducible_augmentations(head):
    """Same (seed, step, micro-step, rank): the same augmented pair; another rank or step: a
    different one; the augmentation stream is not the point-sampling stream."""
    image, grid = head
    cfg = AugmentConfig.from_dict({**SPATIAL, "intensity": {"probability": 1.0}})
    augmenter = PairAugmenter(cfg, grid)
    pair = (image.expand(2, -1, -1, -1, -1), image.expand(2, -1, -1, -1, -1))

    def augmented(seed, step, rank):
        draw = augmenter.draw(2, step_generator(seed, step, 0, rank, stream="augment"))
        return torch.cat(draw.images(*pair)[:2])

    first = augmented(0, 7, 0)
    assert torch.equal(first, augmented(0, 7, 0))
    for other in (augmented(0, 7, 1), augmented(0, 8, 0), augmented(1, 7, 0)):
        assert float((first - other).abs().mean()) > 1e-3
    assert not torch.equal(torch.rand(4, generator=step_generator(0, 7, 0, 0)),
                           torch.rand(4, generator=step_generator(0, 7, 0, 0, stream="augment")))


def test_landmarks_follow_their_images(head):
    """A pair of one image (true map: identity) with landmarks p on both sides: after
    augmentation the augmented moving image at T_A^-1(p) equals the augmented fixed image at
    T_B^-1(p) (both equal I(p)); NaN padding rows stay NaN; the fixed mask moves with the
    fixed image."""
    image, grid = head
    augmenter = PairAugmenter(AugmentConfig.from_dict(SPATIAL), grid)
    draw = augmenter.draw(2, torch.Generator().manual_seed(11))
    images = image.expand(2, -1, -1, -1, -1)
    mask = images[:, 0] > 0.3
    moving, fixed, fixed_mask = draw.images(images, images, mask)
    p = 1.2 * torch.rand(2, 60, 3, generator=torch.Generator().manual_seed(2)) - 0.6
    p[1, -5:] = float("nan")
    fixed_points, moving_points = draw.points(p, p.clone())
    assert torch.isnan(fixed_points[1, -5:]).all() and torch.isfinite(fixed_points[0]).all()
    keep = torch.isfinite(fixed_points[..., 0])
    truth = sample_image(images, torch.nan_to_num(p))[:, 0][keep]
    at_moving = sample_image(moving, torch.nan_to_num(moving_points))[:, 0][keep]
    at_fixed = sample_image(fixed, torch.nan_to_num(fixed_points))[:, 0][keep]
    wrong_way = sample_image(moving, draw.moving_map(torch.nan_to_num(p)))[:, 0][keep]
    errors = {name: ((values - truth).abs().mean().item(), (values - truth).abs().max().item())
              for name, values in (("moving", at_moving), ("fixed", at_fixed),
                                   ("wrong way", wrong_way))}
    assert errors["moving"][0] < 0.01 and errors["moving"][1] < 0.05, errors
    assert errors["fixed"][0] < 0.01 and errors["fixed"][1] < 0.05, errors
    assert errors["wrong way"][0] > 5 * errors["moving"][0], errors
    expected = draw.fixed_map.resample(mask.unsqueeze(1).float(), mode="nearest")[:, 0] > 0.5
    assert torch.equal(fixed_mask, expected) and not torch.equal(fixed_mask, mask)


def test_flips_are_shared_and_intensity_parts_switch_off(head):
    """A flip of axis 0 turns both images of a pair alike; intensity augmentation with every
    part at 0 leaves images as they are, with its parts on it changes them within their
    range's order of magnitude; no spatial kind on: no spatial map."""
    image, grid = head
    cfg = AugmentConfig.from_dict({"flip": {"probability": 1.0, "axes": [0]}})
    draw = PairAugmenter(cfg, grid).draw(1, torch.Generator().manual_seed(0))
    moving, fixed, _ = draw.images(image, image)
    assert torch.allclose(moving, image.flip(2), atol=1e-5)
    assert torch.allclose(fixed, image.flip(2), atol=1e-5)
    parts = {"gamma": 0.0, "bias": 0.0, "contrast": 0.0, "noise": 0.0}
    off = PairAugmenter(AugmentConfig.from_dict({"intensity": {"probability": 1.0, **parts}}),
                        grid).draw(1, torch.Generator().manual_seed(0))
    assert off.moving_map is None and off.fixed_map is None
    assert torch.allclose(off.images(image, image)[0], image, atol=1e-5)
    on = PairAugmenter(AugmentConfig.from_dict({"intensity": {"probability": 1.0}}),
                       grid).draw(1, torch.Generator().manual_seed(0))
    changed = on.images(image, image)[0]
    assert 1e-3 < float((changed - image).abs().mean()) < 0.2
    with pytest.raises(NephiInputError, match="augment.flip.axes: axis 2"):
        PairAugmenter(AugmentConfig.from_dict({"flip": {"probability": 0.5, "axes": [2]}}),
                      Grid((8, 8), np.eye(3)))


@pytest.mark.parametrize("key, value, message", [
    ("augment.affine.probability", 1.5, "augment.affine.probability: must be <= 1"),
    ("augment.affine.scaling", 1.0, "augment.affine.scaling: must be < 1"),
    ("augment.affine.rotation_deg", -2.0, "augment.affine.rotation_deg: must be a number >= 0"),
    ("augment.affine.rotation_deg", 200.0, "augment.affine.rotation_deg: must be <= 180"),
    ("augment.deform.scale_mm", 0.0, "augment.deform.scale_mm: must be a number > 0"),
    ("augment.intensity.contrast", 1.0, "augment.intensity.contrast: must be < 1"),
    ("augment.flip.axes", [0, 0], "augment.flip.axes: must be a list of distinct"),
    ("augment.flip.axes", [3], "augment.flip.axes: must be a list of distinct"),
    ("augment.flip.probability", 0.5, "augment.flip.axes: name the axes"),
])
def test_config_rejects_bad_augment_values(key, value, message):
    cfg = set_dotted(load_defaults("train"), key, value)
    with pytest.raises(NephiInputError) as err:
        validate_training(cfg)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_config_rejects_unknown_augment_keys():
    with pytest.raises(NephiInputError, match="unknown key 'augment.deform.sigma'"):
        set_dotted(load_defaults("train"), "augment.deform.sigma", 2.0)
    defaults = load_defaults("train")
    validate_training(defaults)
    assert not AugmentConfig.from_dict(defaults["augment"]).enabled
