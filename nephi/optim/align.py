"""Global alignment before the deformable stage: centre of mass, then rigid, then affine.

The result is an :class:`~nephi.transforms.affine.Affine` y = A x + t from fixed to moving
physical points (RAS mm). Each stage optimizes its parameters with Adam on a Gaussian pyramid
(both images smoothed by ``align.sigmas`` fixed-image voxels, coarse to fine), on points drawn
in the fixed image (inside the fixed mask when there is one), by the similarity 1 - NCC^2 over
the points that fall inside the moving image; a level ends after ``align.steps`` steps or when the
loss has changed by less than ``align.tolerance`` (relative) over the last ``align.window`` steps.

Parameters, in physical units about the fixed image's centre c: rigid y = R(w) (x - c) + c + t
(w a rotation vector in radians, R its matrix exponential; 2-D: one angle), affine
y = (I + G) R(w) (x - c) + c + t. The translation is optimized in units of the fixed image's
half extent, so one learning rate serves rotation, translation and the linear part.

Initialization (``align.init``): ``com`` translates the intensity centre of mass of the fixed
image onto that of the moving image (normalized intensities; within the mask when given),
``geometry`` the centre of the fixed field of view onto the moving one's, ``none`` starts at the
identity (or at the transform given, e.g. ``--initial-transform``).
"""

from __future__ import annotations

import math
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from nephi.geometry.grid import Grid
from nephi.geometry.sampling import sample_image
from nephi.progress import Progress
from nephi.transforms.affine import Affine

__all__ = ["align"]


def _gaussian(volume: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian smoothing of (1, 1, *S) by ``sigma`` voxels along every axis."""
    if sigma <= 0:
        return volume
    radius = max(1, int(math.ceil(3.0 * sigma)))
    x = torch.arange(-radius, radius + 1, dtype=volume.dtype, device=volume.device)
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


def _centre_of_mass(data: np.ndarray, grid: Grid, mask: np.ndarray | None) -> np.ndarray:
    weights = np.clip(np.asarray(data, dtype=np.float64), 0.0, None)
    if mask is not None:
        weights = weights * mask
    total = weights.sum()
    if total <= 0:
        return grid.index_to_ras_points((np.asarray(grid.shape, dtype=np.float64) - 1) / 2)
    index = np.stack([(weights.sum(axis=tuple(a for a in range(grid.ndim) if a != k))
                       * np.arange(n)).sum() / total for k, n in enumerate(grid.shape)])
    return grid.index_to_ras_points(index)


def _fov_centre(grid: Grid) -> np.ndarray:
    return grid.index_to_ras_points((np.asarray(grid.shape, dtype=np.float64) - 1) / 2)


def _rotation(w: torch.Tensor, d: int) -> torch.Tensor:
    if d == 2:
        c, s = torch.cos(w[0]), torch.sin(w[0])
        return torch.stack([torch.stack([c, -s]), torch.stack([s, c])])
    zero = torch.zeros((), dtype=w.dtype)
    skew = torch.stack([torch.stack([zero, -w[2], w[1]]), torch.stack([w[2], zero, -w[0]]),
                        torch.stack([-w[1], w[0], zero])])
    return torch.matrix_exp(skew)


class _Parameters(nn.Module):
    """The rigid (and affine) parameters about the centre ``c`` of the fixed image."""

    def __init__(self, d: int, start: np.ndarray, centre: np.ndarray, scale: float):
        super().__init__()
        self.d, self.scale = d, float(scale)
        self.centre = torch.as_tensor(centre, dtype=torch.float64)
        self.start = torch.as_tensor(start, dtype=torch.float64)
        self.w = nn.Parameter(torch.zeros(1 if d == 2 else 3, dtype=torch.float64))
        self.t = nn.Parameter(torch.zeros(d, dtype=torch.float64))
        self.g = nn.Parameter(torch.zeros(d, d, dtype=torch.float64))

    def matrix(self) -> torch.Tensor:
        """(d+1, d+1): this stage's update composed after the start transform."""
        d, c = self.d, self.centre
        lin = (torch.eye(d, dtype=torch.float64) + self.g) @ _rotation(self.w, d)
        update = torch.eye(d + 1, dtype=torch.float64)
        update = torch.cat([torch.cat([lin, (c - lin @ c + self.t * self.scale)[:, None]], 1),
                            update[d:]], 0)
        return update @ self.start


def _loss(matrix: torch.Tensor, x_ras: torch.Tensor, fixed_values: torch.Tensor,
          moving: torch.Tensor, moving_grid: Grid) -> torch.Tensor:
    """1 - NCC^2 of fixed and moving intensities over the points mapped inside the moving image."""
    d = x_ras.shape[-1]
    y = x_ras @ matrix[:d, :d].T + matrix[:d, d]
    to_norm = torch.as_tensor(moving_grid.ras_to_normalized, dtype=torch.float64)
    yn = y @ to_norm[:d, :d].T + to_norm[:d, d]
    inside = (yn.abs() <= 1.0).all(dim=-1).to(torch.float64)
    m = sample_image(moving, yn.unsqueeze(0).to(moving.dtype))[0, 0].to(torch.float64)
    w = inside / inside.sum().clamp(min=1.0)
    a = fixed_values - (w * fixed_values).sum()
    b = m - (w * m).sum()
    cov = (w * a * b).sum()
    return 1.0 - cov ** 2 / ((w * a * a).sum() * (w * b * b).sum() + 1e-12)


def align(fixed: np.ndarray, fixed_grid: Grid, moving: np.ndarray, moving_grid: Grid,
          cfg: dict, fixed_mask: np.ndarray | None = None, start: Affine | None = None,
          seed: int = 0, progress: bool = True) -> tuple:
    """Align ``moving`` to ``fixed`` (normalized intensities on their grids) -> (Affine, info).

    ``cfg``: the ``align`` section of a pairwise config; ``start``: a transform to start from
    (it is refined; ``align.init`` then applies only when it is None). ``info`` holds, per
    stage, the steps taken per level and the final similarity, and the time.
    """
    t0 = time.perf_counter()
    d = fixed_grid.ndim
    mode, init = cfg["mode"], cfg["init"]
    matrix = np.eye(d + 1) if start is None else start.matrix.copy()
    if start is None and init != "none":
        if init == "com":
            shift = (_centre_of_mass(moving, moving_grid, None)
                     - _centre_of_mass(fixed, fixed_grid, fixed_mask))
        else:
            shift = _fov_centre(moving_grid) - _fov_centre(fixed_grid)
        matrix[:d, d] = shift
    info = {"mode": mode, "init": init if start is None else "given transform", "stages": []}
    if mode == "none":
        info["seconds"] = time.perf_counter() - t0
        return Affine(matrix), info

    gen = torch.Generator().manual_seed(int(seed))
    fixed_t = torch.as_tensor(fixed, dtype=torch.float32).reshape(1, 1, *fixed_grid.shape)
    moving_t = torch.as_tensor(moving, dtype=torch.float32).reshape(1, 1, *moving_grid.shape)
    inside = (np.argwhere(fixed_mask) if fixed_mask is not None else None)
    centre = _fov_centre(fixed_grid)
    scale = float(np.mean(fixed_grid.normalized_mm_scale()))
    to_ras = torch.as_tensor(fixed_grid.affine, dtype=torch.float64)
    points = int(cfg["points"])
    stages = ["rigid"] if mode == "rigid" else ["rigid", "affine"]
    moving_ratio = np.asarray(fixed_grid.spacing).mean() / np.asarray(moving_grid.spacing).mean()
    for stage in stages:
        params = _Parameters(d, matrix, centre, scale)
        if stage == "rigid":
            params.g.requires_grad_(False)
        record = {"stage": stage, "steps": [], "loss": None}
        for level, sigma in enumerate(cfg["sigmas"]):
            f_level = _gaussian(fixed_t, float(sigma))
            m_level = _gaussian(moving_t, float(sigma) * moving_ratio)
            steps = int(cfg["steps"][level])
            lr = float(cfg["lr"]) * 0.5 ** level
            optimizer = torch.optim.Adam([p for p in params.parameters() if p.requires_grad],
                                         lr=lr)
            schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, max(1, steps))
            bar = Progress(steps, f"align {stage} {level + 1}/{len(cfg['sigmas'])}",
                           enabled=progress, lines=1)
            history, taken = [], 0
            for _ in range(steps):
                if inside is None:
                    index = torch.rand(points, d, generator=gen, dtype=torch.float64)
                    index = index * torch.as_tensor(np.asarray(fixed_grid.shape) - 1.0)
                else:
                    pick = torch.randint(len(inside), (points,), generator=gen)
                    index = torch.as_tensor(inside[pick.numpy()], dtype=torch.float64)
                x_ras = index @ to_ras[:d, :d].T + to_ras[:d, d]
                norm = torch.as_tensor(fixed_grid.index_to_normalized, dtype=torch.float64)
                xn = index @ norm[:d, :d].T + norm[:d, d]
                fixed_values = sample_image(f_level, xn.unsqueeze(0).float())[0, 0].double()
                optimizer.zero_grad(set_to_none=True)
                loss = _loss(params.matrix(), x_ras, fixed_values, m_level, moving_grid)
                loss.backward()
                optimizer.step()
                schedule.step()
                history.append(float(loss.detach()))
                taken += 1
                bar.set_postfix(loss=f"{history[-1]:.4f}")
                bar.update()
                window = int(cfg["window"])
                if len(history) >= 2 * window:
                    old = np.mean(history[-2 * window:-window])
                    new = np.mean(history[-window:])
                    if abs(old - new) <= float(cfg["tolerance"]) * max(abs(old), 1e-12):
                        break
            bar.close()
            record["steps"].append(taken)
            record["loss"] = float(np.mean(history[-10:])) if history else None
        matrix = params.matrix().detach().numpy()
        info["stages"].append(record)
    info["similarity"] = "1 - NCC^2 over the fixed points inside the moving image"
    info["seconds"] = time.perf_counter() - t0
    return Affine(matrix), info
