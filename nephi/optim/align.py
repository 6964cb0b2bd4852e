"""Global alignment before the deformable stage: centre of mass, then rigid, then affine.

The result is an :class:`~nephi.transforms.affine.Affine` y = A x + t from fixed to moving
physical points (RAS mm). Each stage optimizes its parameters with Adam on a Gaussian pyramid
(both images smoothed by ``align.sigmas`` fixed-image voxels, coarse to fine), on points drawn
in the fixed image (inside the fixed mask when there is one; half as many at each coarser level),
by the similarity 1 - NCC^2 over the points that fall inside the moving image; a level ends after
``align.steps`` steps (``align.rigid_steps`` for a rigid stage in front of an affine one: by
default none at the finest level), when the loss has changed by less than ``align.tolerance``
(relative), or when it fell by no more than ``align.significance`` standard errors, over the last
``align.window`` steps.

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
from torch import nn

from nephi.geometry.grid import Grid, apply_affine_torch
from nephi.geometry.sampling import gaussian_smooth, sample_image
from nephi.errors import NephiInputError
from nephi.objectives.similarity import (MIN_MASKED_POINTS, SIMILARITIES, SIMILARITY_FUNCTIONS,
                                         lncc_similarity, ncc)
from nephi.optim.engine import converged, stalled
from nephi.progress import Progress
from nephi.transforms.affine import Affine


__all__ = ["align"]


def _fov_centre(grid: Grid) -> np.ndarray:
    return grid.index_to_ras_points((np.asarray(grid.shape, dtype=np.float64) - 1) / 2)


def _centre_of_mass(data: np.ndarray, grid: Grid, mask: np.ndarray | None) -> np.ndarray:
    """Intensity centre of mass (RAS mm) of the non-negative part of ``data`` (within
    ``mask``); the field-of-view centre when nothing weighs."""
    weights = np.clip(np.asarray(data, dtype=np.float64), 0.0, None)
    if mask is not None:
        weights = weights * mask
    if weights.sum() <= 0:
        return _fov_centre(grid)
    total = weights.sum()
    axes = range(weights.ndim)
    index = [np.dot(weights.sum(axis=tuple(a for a in axes if a != k)), np.arange(n)) / total
             for k, n in enumerate(weights.shape)]
    return grid.index_to_ras_points(np.asarray(index))


def _rotation(w: torch.Tensor, d: int) -> torch.Tensor:
    if d == 2:
        c, s = torch.cos(w[0]), torch.sin(w[0])
        return torch.stack([torch.stack([c, -s]), torch.stack([s, c])])
    zero = torch.zeros((), dtype=w.dtype)
    skew = torch.stack([torch.stack([zero, -w[2], w[1]]), torch.stack([w[2], zero, -w[0]]),
                        torch.stack([-w[1], w[0], zero])])
    # exp(skew) by Rodrigues' formula, I + sin(t)/t K + (1 - cos(t))/t^2 K^2 with t = |w| (their
    # Taylor series near 0, where both quotients are 0/0): the matrix exponential's value and
    # gradient in half its time, which counts over hundreds of steps
    t2 = (w * w).sum()
    small = t2 < 1e-8
    t = torch.sqrt(torch.where(small, torch.ones_like(t2), t2))
    a = torch.where(small, 1.0 - t2 / 6.0, torch.sin(t) / t)
    b = torch.where(small, 0.5 - t2 / 24.0, (1.0 - torch.cos(t)) / (t * t))
    return torch.eye(3, dtype=w.dtype) + a * skew + b * (skew @ skew)


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
        update[:d, :d] = lin
        update[:d, d] = c - lin @ c + self.t * self.scale
        return update @ self.start


def _loss(matrix: torch.Tensor, x_ras: torch.Tensor, fixed_values: torch.Tensor,
          moving: torch.Tensor, ras_to_moving: torch.Tensor, similarity: str,
          window: int = 1, moving_mask: torch.Tensor | None = None) -> torch.Tensor:
    """The ``similarity`` loss (:mod:`nephi.objectives.similarity`) of fixed and moving
    intensities over the points mapped inside the moving image; ``ras_to_moving`` (d+1, d+1):
    RAS mm -> the moving grid's normalized coordinates. For ``lncc`` the points come in windows
    of ``window`` consecutive samples, and only windows wholly inside count."""
    lin = ras_to_moving @ matrix
    yn = x_ras @ lin[:-1, :-1].T + lin[:-1, -1]
    inside = (yn.abs() <= 1.0).all(dim=-1)
    if moving_mask is not None:
        grid = yn.detach().unsqueeze(0).to(moving_mask.dtype)
        in_mask = inside & (sample_image(moving_mask, grid, mode="nearest",
                                         padding="zeros")[0, 0] > 0.5)
        if int(in_mask.sum()) >= MIN_MASKED_POINTS:
            inside = in_mask
    if int(inside.sum()) < MIN_MASKED_POINTS:
        raise NephiInputError(f"alignment: only {int(inside.sum())} of {len(inside)} fixed "
                              "points map into the moving image: the images do not overlap "
                              "(check their orientation and origin, or --initial-transform)")
    m = sample_image(moving, yn.unsqueeze(0).to(moving.dtype))[0, 0].to(torch.float64)
    if similarity == "lncc":
        keep = inside.reshape(-1, window).all(dim=-1)
        return lncc_similarity(m.reshape(-1, window)[keep].unsqueeze(0),
                               fixed_values.reshape(-1, window)[keep].unsqueeze(0))
    return SIMILARITY_FUNCTIONS[similarity](m[inside].unsqueeze(0),
                                            fixed_values[inside].unsqueeze(0))


class _CosineAdam:
    """Adam (Kingma and Ba 2015, torch.optim.Adam's update) whose rate falls from ``lr`` to 0
    over ``steps`` steps along a cosine (CosineAnnealingLR), for the alignment's few parameters.
    torch.optim would do the same, but the first optimizer a process builds imports
    torch._dynamo, 1 to 2 s: longer than the whole alignment of a feed-forward registration."""

    def __init__(self, params: list, lr: float, steps: int, betas=(0.9, 0.999), eps: float = 1e-8):
        self.params, self.lr, self.steps = params, float(lr), max(1, int(steps))
        self.betas, self.eps, self.done = betas, float(eps), 0
        self.moments = [(torch.zeros_like(p), torch.zeros_like(p)) for p in params]

    @torch.no_grad()
    def step(self) -> None:
        """One update from the parameters' gradients, which it then clears."""
        rate = self.lr * 0.5 * (1.0 + math.cos(math.pi * self.done / self.steps))
        self.done += 1
        b1, b2 = self.betas
        correction1, correction2 = 1.0 - b1 ** self.done, 1.0 - b2 ** self.done
        for p, (m, v) in zip(self.params, self.moments):
            m.mul_(b1).add_(p.grad, alpha=1.0 - b1)
            v.mul_(b2).addcmul_(p.grad, p.grad, value=1.0 - b2)
            denom = (v.sqrt() / math.sqrt(correction2)).add_(self.eps)
            p.addcdiv_(m, denom, value=-rate / correction1)
            p.grad = None


# The coarsest levels draw at least this many points per step (see level_point_count).
MIN_LEVEL_POINTS = 512


def level_point_count(points: int, level: int, levels: int) -> int:
    """Points per step of pyramid level ``level`` (0 = coarsest) of ``levels``: ``points`` at the
    finest, half as many at each coarser one (at least :data:`MIN_LEVEL_POINTS`, never more
    than ``points``). A coarse level sees a smoothed image with fewer independent values, as
    the shrunk images of ANTs' coarse levels have fewer voxels to sample; the finest level, which
    sets the precision, keeps them all."""
    return min(points, max(MIN_LEVEL_POINTS, points >> (levels - 1 - level)))


# Fixed points sampled at once (the points of several steps of a level, see _fixed_points).
POINTS_AT_ONCE = 2 ** 20


def _fixed_points(fixed: torch.Tensor, fixed_grid: Grid, steps: int, points: int,
                  inside: np.ndarray | None, stencil: torch.Tensor,
                  gen: torch.Generator):
    """The fixed points of ``steps`` steps: per step (RAS mm (P, d), fixed values (P,)), drawn
    ``points`` at a time in the fixed grid (voxels of ``inside`` when given, else anywhere), each
    with the offsets ``stencil`` (K, d) voxels around it (P = points K). Several steps are drawn
    and sampled in one go, which saves most of a step's fixed cost."""
    d = fixed_grid.ndim
    upper = torch.as_tensor(np.asarray(fixed_grid.shape) - 1.0)
    block = max(1, POINTS_AT_ONCE // (points * len(stencil)))
    for first in range(0, steps, block):
        n = min(block, steps - first)
        if inside is None:
            index = torch.rand(n, points, d, generator=gen, dtype=torch.float64) * upper
        else:
            pick = torch.randint(len(inside), (n, points), generator=gen)
            index = torch.as_tensor(inside[pick.numpy()], dtype=torch.float64)
        index = (index[:, :, None, :] + stencil).reshape(n, -1, d)
        x_ras = apply_affine_torch(fixed_grid.affine, index)
        if inside is None:
            xn = apply_affine_torch(fixed_grid.index_to_normalized, index)
            values = sample_image(fixed, xn.reshape(1, -1, d).float())[0, 0].double()
        else:  # voxel centres: read, no interpolation (the edge voxel beyond the border, as
            # grid_sample's border padding)
            voxel = torch.minimum(index.long().clamp(min=0), upper.long())
            values = fixed[0, 0][tuple(voxel.reshape(-1, d).T)].double()
        yield from zip(x_ras, values.reshape(n, -1))


# Voxels of the fixed image (a regular subsample of at most this many) on which the result is
# compared with where the alignment started (:func:`_overlap_ncc`).
CHECK_VOXELS = 2 ** 16


def _overlap_ncc(matrices: dict, fixed: torch.Tensor, fixed_grid: Grid, moving: torch.Tensor,
                 ras_to_moving: torch.Tensor, fixed_mask: np.ndarray | None) -> dict:
    """For each of ``matrices`` (name -> (d+1, d+1)), the NCC (signed) of the fixed image and
    the moving image seen through it over the fixed image's voxels (within ``fixed_mask``), the
    moving image being 0 outside its grid. Unlike the optimized loss (1 - NCC^2 over the points
    inside the moving image) it neither forgets the points that leave the moving image nor
    rewards an anti-correlated match, so an alignment that drifted away from the anatomy scores
    low. The fixed side is read once for all matrices."""
    shape = np.asarray(fixed_grid.shape)
    stride = max(1, int(np.ceil((shape.prod() / CHECK_VOXELS) ** (1.0 / len(shape)))))
    index = np.stack(np.meshgrid(*[np.arange(0, n, stride) for n in shape], indexing="ij"),
                     -1).reshape(-1, len(shape))
    if fixed_mask is not None:
        keep = np.asarray(fixed_mask)[tuple(index.T)] > 0
        index = index[keep] if keep.sum() >= MIN_MASKED_POINTS else index
    f = fixed[0, 0][tuple(torch.as_tensor(index).T)].double()  # voxel centres: no interpolation
    index_t = torch.as_tensor(index, dtype=torch.float64)
    scores = {}
    for name, matrix in matrices.items():
        lin = ras_to_moving @ torch.as_tensor(matrix, dtype=torch.float64)
        yn = apply_affine_torch(lin.numpy() @ fixed_grid.affine, index_t).unsqueeze(0).float()
        m = sample_image(moving, yn, padding="zeros")[0, 0].double()
        scores[name] = float(ncc(m.unsqueeze(0), f.unsqueeze(0))[0])
    return scores


def align(fixed: np.ndarray, fixed_grid: Grid, moving: np.ndarray, moving_grid: Grid,
          cfg: dict, fixed_mask: np.ndarray | None = None, start: Affine | None = None,
          seed: int = 0, progress: bool = True, lncc_window: int = 5,
          moving_mask: np.ndarray | None = None) -> tuple:
    """Align ``moving`` to ``fixed`` (normalized intensities on their grids) -> (Affine, info).

    ``fixed_mask`` (fixed grid) / ``moving_mask`` (moving grid): points are drawn in the first
    and count only where they map into the second.
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

    start_matrix = matrix.copy()
    gen = torch.Generator().manual_seed(int(seed))
    fixed_t = torch.as_tensor(fixed, dtype=torch.float32).reshape(1, 1, *fixed_grid.shape)
    moving_t = torch.as_tensor(moving, dtype=torch.float32).reshape(1, 1, *moving_grid.shape)
    moving_mask_t = None
    if moving_mask is not None:
        moving_mask_t = torch.as_tensor(moving_mask, dtype=torch.float32)
        moving_mask_t = moving_mask_t.reshape(1, 1, *moving_grid.shape)
    inside = np.argwhere(fixed_mask) if fixed_mask is not None else None
    centre = _fov_centre(fixed_grid)
    scale = float(np.mean(fixed_grid.normalized_mm_scale()))
    ras_to_moving = torch.as_tensor(moving_grid.ras_to_normalized, dtype=torch.float64)
    points, window, tolerance = int(cfg["points"]), int(cfg["window"]), float(cfg["tolerance"])
    significance = float(cfg["significance"])
    rigid_steps = cfg["rigid_steps"]
    if rigid_steps is None:  # in front of the affine stage, which refines the finest level
        rigid_steps = [*cfg["steps"][:-1], 0]
    similarity = cfg["similarity"]
    stencil = torch.zeros(1, d, dtype=torch.float64)
    if similarity == "lncc":  # windows of lncc_window^d voxels, points / 16 of them
        half = (lncc_window - 1) // 2
        axis = torch.arange(-half, half + 1, dtype=torch.float64)
        stencil = torch.stack(torch.meshgrid(*([axis] * d), indexing="ij"), -1).reshape(-1, d)
        points = max(points // 16, 32)
    stages = ["rigid"] if mode == "rigid" else ["rigid", "affine"]
    moving_ratio = np.asarray(fixed_grid.spacing).mean() / np.asarray(moving_grid.spacing).mean()
    pyramid = [(gaussian_smooth(fixed_t, float(sigma)), gaussian_smooth(moving_t, float(sigma) * moving_ratio))
               for sigma in cfg["sigmas"]]
    for stage in stages:
        params = _Parameters(d, matrix, centre, scale)
        if stage == "rigid":
            params.g.requires_grad_(False)
        record = {"stage": stage, "steps": [], "loss": None}
        for level, (f_level, m_level) in enumerate(pyramid):
            steps = int((rigid_steps if stage != stages[-1] else cfg["steps"])[level])
            if steps == 0:
                record["steps"].append(0)
                continue
            optimizer = _CosineAdam([p for p in params.parameters() if p.requires_grad],
                                    float(cfg["lr"]) * 0.5 ** level, steps)
            bar = Progress(steps, f"align {stage} {level + 1}/{len(cfg['sigmas'])}",
                           enabled=progress, lines=1)
            history = []
            level_points = level_point_count(points, level, len(pyramid))
            for x_ras, fixed_values in _fixed_points(f_level, fixed_grid, steps, level_points,
                                                     inside, stencil, gen):
                loss = _loss(params.matrix(), x_ras, fixed_values, m_level, ras_to_moving,
                             similarity, len(stencil), moving_mask_t)
                loss.backward()
                optimizer.step()
                history.append(float(loss.detach()))
                bar.set_postfix(loss=f"{history[-1]:.4f}")
                bar.update()
                if ((tolerance > 0 and converged(history, window, tolerance))
                        or (significance > 0 and stalled(history, window, significance))):
                    break
            bar.close()
            record["steps"].append(len(history))
            record["loss"] = float(np.mean(history[-10:])) if history else None
        matrix = params.matrix().detach().numpy()
        info["stages"].append(record)
    if similarity != "mi":  # a signed NCC means nothing between modalities
        f_fine, m_fine = pyramid[-1]
        candidates = {"aligned": matrix, "start": start_matrix}
        if start is None:
            candidates["identity"] = np.eye(d + 1)
        scores = _overlap_ncc(candidates, f_fine, fixed_grid, m_fine, ras_to_moving, fixed_mask)
        info["check_ncc"] = scores
        best = max(scores, key=scores.get)
        if best != "aligned":
            matrix = candidates[best]
            info["kept"] = (f"the {best} transform: the alignment lowered the NCC of the whole "
                            "fixed image with the moving image (0 outside its grid)")
    info["similarity"] = (f"{similarity} ({SIMILARITIES[similarity]}) over the fixed points "
                          "inside the moving image")
    info["seconds"] = time.perf_counter() - t0
    return Affine(matrix), info
