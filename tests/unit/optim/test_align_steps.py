"""The alignment's own pieces: its optimizer is torch's Adam with a cosine rate, its pyramid a
Gaussian smoothing with the edges repeated, its rotation the matrix exponential, its coarse
levels fewer points than the finest, and a level ends when its loss stops falling by more than
its noise."""

import math

import pytest
import torch
import torch.nn.functional as F

from nephi.geometry.sampling import gaussian_smooth
from nephi.optim.align import MIN_LEVEL_POINTS, _CosineAdam, _rotation, level_point_count
from nephi.optim.engine import stalled


def test_the_alignment_optimizer_takes_torch_adams_steps():
    target = torch.tensor([3.0, -2.0, 0.5], dtype=torch.float64)
    mine = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    theirs = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    steps = 40
    optimizer = _CosineAdam([mine], 0.3, steps)
    reference = torch.optim.Adam([theirs], lr=0.3)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(reference, steps)
    for _ in range(steps):
        ((mine - target) ** 2).sum().backward()
        optimizer.step()
        reference.zero_grad()
        ((theirs - target) ** 2).sum().backward()
        reference.step()
        schedule.step()
        assert mine.grad is None
    assert torch.allclose(mine, theirs, rtol=0, atol=1e-12)
    assert (mine - target).norm() < 0.25 * target.norm()  # and it went somewhere


def _convolved(volume: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable smoothing by 1-D convolutions over a replicate-padded volume."""
    radius = max(1, int(math.ceil(3.0 * sigma)))
    x = torch.arange(-radius, radius + 1, dtype=volume.dtype)
    kernel = torch.exp(-0.5 * (x / sigma) ** 2)
    kernel = kernel / kernel.sum()
    d = volume.dim() - 2
    conv = F.conv3d if d == 3 else F.conv2d
    out = volume
    for axis in range(d):
        shape = [1, 1] + [1] * d
        shape[2 + axis] = kernel.numel()
        pad = [0, 0] * d
        pad[2 * (d - 1 - axis)] = pad[2 * (d - 1 - axis) + 1] = radius
        out = conv(F.pad(out, pad, mode="replicate"), kernel.reshape(shape))
    return out


@pytest.mark.parametrize("shape", [(1, 1, 20, 17, 9), (3, 1, 4, 30), (1, 1, 5, 6, 40)])
@pytest.mark.parametrize("sigma", [0.7, 2.0, 6.0])
def test_gaussian_smoothing_is_a_convolution_with_repeated_edges(shape, sigma):
    volume = torch.randn(*shape, generator=torch.Generator().manual_seed(1))
    smooth = gaussian_smooth(volume, sigma)
    assert smooth.shape == volume.shape and smooth.is_contiguous()
    assert torch.allclose(smooth, _convolved(volume, sigma), atol=1e-6)
    flat = torch.full(shape, 2.5)
    assert torch.allclose(gaussian_smooth(flat, sigma), flat)  # weights sum to 1 at the edges


@pytest.mark.parametrize("w", [[0.0, 0.0, 0.0], [1e-5, 2e-5, -1e-5], [0.3, -0.2, 0.5],
                               [2.0, 1.0, -1.5]])
def test_the_rotation_is_the_exponential_of_its_vector(w):
    """Rodrigues' formula against torch's matrix exponential, values and gradients, at 0 too."""
    ours = torch.tensor(w, dtype=torch.float64, requires_grad=True)
    theirs = ours.detach().clone().requires_grad_(True)
    rotation = _rotation(ours, 3)
    x, y, z = theirs
    zero = torch.zeros((), dtype=torch.float64)
    skew = torch.stack([torch.stack([zero, -z, y]), torch.stack([z, zero, -x]),
                        torch.stack([-y, x, zero])])
    expected = torch.matrix_exp(skew)
    assert torch.allclose(rotation, expected, rtol=0, atol=1e-14)
    assert torch.allclose(rotation @ rotation.T, torch.eye(3, dtype=torch.float64), atol=1e-14)
    weights = torch.randn(3, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    (rotation * weights).sum().backward()
    (expected * weights).sum().backward()
    assert torch.allclose(ours.grad, theirs.grad, rtol=0, atol=1e-12)


def test_coarser_levels_draw_fewer_points_down_to_a_floor():
    assert [level_point_count(4096, k, 3) for k in range(3)] == [1024, 2048, 4096]
    assert level_point_count(4096, 0, 1) == 4096
    assert level_point_count(1024, 0, 3) == MIN_LEVEL_POINTS
    assert level_point_count(256, 0, 3) == 256  # never more than the finest level's count


def test_a_level_stalls_when_its_loss_falls_by_less_than_its_noise():
    gen = torch.Generator().manual_seed(0)
    noise = (0.002 * torch.randn(40, generator=gen)).tolist()
    flat = [0.05 + e for e in noise]
    falling = [0.05 - 0.0005 * k + e for k, e in enumerate(noise)]  # 0.01 a window, 5x the noise
    assert stalled(flat, 20, 2.0)
    assert not stalled(falling, 20, 2.0)
    assert not stalled(flat[:39], 20, 2.0)  # not before two whole windows


def test_a_shorter_pyramid_needs_no_rigid_schedule_of_its_own():
    from nephi.config.loader import load_defaults
    from nephi.config.validate import validate_pairwise

    cfg = load_defaults("pairwise")
    cfg["align"].update(sigmas=[2.0, 1.0], steps=[40, 20])  # rigid_steps null: [40, 0]
    validate_pairwise(cfg)
