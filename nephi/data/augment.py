"""On-the-fly augmentation of training pairs on the network grid, and the random smooth
diffeomorphisms that also make intra-subject pairs (``nephi-prep scans``).

Frame: the normalized coordinates of the network grid ([-1, 1]^d, array-axis order,
align_corners; :mod:`nephi.geometry.grid`). An image I of a pair is augmented by ONE sampling of
the stored image, I'(x) = I(T(x)), with the spatial map

    T(x) = D(A(F x)),

F a flip (shared by the two images of a pair: a reflection between them could not be
registered), A a random affine about the grid centre (rotation, scaling, upper shear, shift, built
in millimetres) and D = exp(v) a random diffeomorphism: the scaling-and-squaring integral of a
smooth stationary velocity field v, whose inverse is exp(-v), integrated the same way. The moving
and the fixed image draw their own A and D, so an augmented pair holds a new relative
deformation. Intensity augmentation (gamma, smooth multiplicative bias field, contrast, noise)
follows the sampling, per image.

Direction: the fixed image B is pulled back by T_B, so a point p of B sits at T_B^-1(p) in B';
likewise moving points move by T_A^-1. If phi (fixed -> moving) registers the stored pair,
T_A^-1 o phi o T_B registers the augmented one. Masks follow their image's map (nearest voxel).

Reproducibility: every random number comes from the ``torch.Generator`` handed to
:meth:`PairAugmenter.draw` (on the CPU; the trainer seeds one per seed, step, micro-step and
process), drawn in a fixed order whatever the outcome of each draw, so the same generator state
gives the same augmentation on any device.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from nephi.errors import NephiInputError
from nephi.geometry.grid import Grid
from nephi.geometry.sampling import gaussian_smooth, sample_image
from nephi.records import from_mapping
from nephi.transforms.jacobian import jacobian_determinant_dense


__all__ = ["AffineAugment", "DeformAugment", "IntensityAugment", "FlipAugment", "AugmentConfig",
           "smooth_noise", "random_velocity", "integrate_velocity", "deformation_grid",
           "random_diffeomorphisms",
           "SpatialMap", "IntensityDraw", "PairAugmentation", "PairAugmenter"]

MIN_DET = 0.05
"""Smallest Jacobian determinant a drawn diffeomorphism (and its inverse) may have on the grid;
a velocity field that gives less is halved until it does not."""


# ----------------------------------------------------------------------------- config
@dataclass
class AffineAugment:
    """``probability`` per image; rotation about each axis uniform in [-rotation_deg,
    rotation_deg] degrees; scale per axis uniform in [1 - scaling, 1 + scaling]; upper shear
    entries uniform in [-shear, shear]; shift per axis uniform in [-translation_mm,
    translation_mm] mm."""

    probability: float = 0.0
    rotation_deg: float = 10.0
    scaling: float = 0.1
    shear: float = 0.05
    translation_mm: float = 5.0


@dataclass
class DeformAugment:
    """``probability`` per image; a velocity field of largest magnitude uniform in [0, max_mm]
    mm, varying over ``scale_mm`` (control points scale_mm / 2 apart)."""

    probability: float = 0.0
    max_mm: float = 6.0
    scale_mm: float = 40.0


@dataclass
class IntensityAugment:
    """``probability`` per image; log gamma uniform in [-gamma, gamma] (on min-max scaled
    intensities); bias field exp(b) with |b| up to U(0, bias), varying over ``bias_scale_mm``;
    contrast about the mean uniform in [1 - contrast, 1 + contrast]; Gaussian noise of standard
    deviation uniform in [0, noise] times the image's intensity range. 0 switches a part off."""

    probability: float = 0.0
    gamma: float = 0.3
    bias: float = 0.2
    bias_scale_mm: float = 60.0
    contrast: float = 0.1
    noise: float = 0.02


@dataclass
class FlipAugment:
    """Each array axis of ``axes`` is flipped with ``probability``, the same for both images of
    a pair."""

    probability: float = 0.0
    axes: list = field(default_factory=list)


@dataclass
class AugmentConfig:
    """The ``augment`` section of a training config (values checked by
    :func:`nephi.config.validate.validate_training`)."""

    affine: AffineAugment = field(default_factory=AffineAugment)
    deform: DeformAugment = field(default_factory=DeformAugment)
    intensity: IntensityAugment = field(default_factory=IntensityAugment)
    flip: FlipAugment = field(default_factory=FlipAugment)

    @staticmethod
    def from_dict(d: dict) -> "AugmentConfig":
        kinds = {"affine": AffineAugment, "deform": DeformAugment,
                 "intensity": IntensityAugment, "flip": FlipAugment}
        unknown = sorted(set(d) - set(kinds))
        if unknown:
            raise NephiInputError(f"config key augment: unknown key(s) {unknown}")
        return AugmentConfig(**{k: from_mapping(cls, d.get(k, {}), f"config key augment.{k}")
                                for k, cls in kinds.items()})

    @property
    def enabled(self) -> bool:
        return any(getattr(self, k).probability > 0 for k in ("affine", "deform", "intensity",
                                                                "flip"))


# ----------------------------------------------------------------------------- diffeomorphisms
def smooth_noise(grid: Grid, scale_mm: float, channels: int,
                 generator: torch.Generator) -> torch.Tensor:
    """Smooth random fields on ``grid``: (channels, *S) float32 on the CPU.

    Standard normal noise on control points at most ``scale_mm / 2`` apart (at least 3 per axis,
    the first and last on the grid's outer voxel centres), smoothed by a Gaussian of one control
    spacing, interpolated linearly onto the grid."""
    extent = (np.asarray(grid.shape, dtype=np.float64) - 1.0) * grid.spacing
    ctrl = [max(3, int(math.ceil(e / (0.5 * scale_mm))) + 1) for e in extent]
    noise = gaussian_smooth(torch.randn(channels, 1, *ctrl, generator=generator), 1.0)
    mode = "bilinear" if grid.ndim == 2 else "trilinear"
    return F.interpolate(noise, size=grid.shape, mode=mode, align_corners=True)[:, 0]


def random_velocity(grid: Grid, max_mm: torch.Tensor, scale_mm: float,
                    generator: torch.Generator) -> torch.Tensor:
    """Velocity fields (B, d, *S) in frame units on ``grid`` (CPU), one per entry of ``max_mm``
    (B,): :func:`smooth_noise` vectors in mm scaled so that the largest is ``max_mm``."""
    d = grid.ndim
    noise = smooth_noise(grid, scale_mm, max_mm.shape[0] * d, generator).reshape(-1, d, *grid.shape)
    largest = noise.norm(dim=1).flatten(1).amax(1).clamp_min(1e-12)
    mm = noise * (max_mm.float() / largest).view(-1, *([1] * (d + 1)))
    scale = torch.as_tensor(grid.normalized_mm_scale(), dtype=mm.dtype).view(1, d, *([1] * d))
    return mm / scale


def _table_at(table: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """A displacement table (B, d, *S) at frame points (B, N, d) -> (B, N, d), border values
    outside the grid."""
    return sample_image(table, points, padding="border").transpose(1, 2)


def integrate_velocity(velocity: torch.Tensor, grid: Grid) -> torch.Tensor:
    """exp(v) by scaling and squaring: the displacement u (B, d, *S) frame units with
    x + u(x) = exp(v)(x) at the grid's voxels, from a stationary velocity ``velocity``
    (B, d, *S) in frame units. The first step is at most a quarter voxel; each squaring composes
    the map with itself (u <- u + u(x + u), linear interpolation)."""
    b, d = velocity.shape[:2]
    half = torch.as_tensor((np.asarray(grid.shape) - 1.0) / 2.0, dtype=velocity.dtype,
                           device=velocity.device)
    largest = float((velocity.abs().flatten(2).amax(2) * half).max())
    steps = max(4, int(math.ceil(math.log2(max(largest, 1e-6) / 0.25))))
    x = grid.normalized_points(device=velocity.device, dtype=velocity.dtype).reshape(1, -1, d)
    u = (velocity / 2.0 ** steps).flatten(2).transpose(1, 2)
    for _ in range(steps):
        u = u + _table_at(u.transpose(1, 2).reshape(b, d, *grid.shape), x + u)
    return u.transpose(1, 2).reshape(b, d, *grid.shape)


def min_jacobian(displacement: torch.Tensor, grid: Grid) -> torch.Tensor:
    """Smallest Jacobian determinant of x -> x + u(x) on the grid, per batch item:
    ``displacement`` (B, d, *S) frame units -> (B,)."""
    d = grid.ndim
    x = grid.normalized_points(device=displacement.device, dtype=displacement.dtype)
    to_index = torch.as_tensor((np.asarray(grid.shape) - 1.0) / 2.0, dtype=x.dtype,
                               device=x.device)
    out = []
    for u in displacement:
        index = (x.movedim(-1, 0) + u + 1.0) * to_index.view(d, *([1] * d))
        out.append(jacobian_determinant_dense(index).min())
    return torch.stack(out)


def deformation_grid(grid: Grid, scale_mm: float) -> Grid:
    """The grid that holds deformations varying over ``scale_mm`` on ``grid``: the same frame
    (first and last voxel centres), points ``scale_mm / 4`` apart or ``grid``'s own spacing,
    whichever is coarser (at least 3 per axis)."""
    extent = (np.asarray(grid.shape, dtype=np.float64) - 1.0) * grid.spacing
    shape = [min(n, max(3, int(math.ceil(e / (0.25 * scale_mm))) + 1))
             for n, e in zip(grid.shape, extent)]
    return Grid(shape, np.diag([*(extent / (np.asarray(shape) - 1.0)), 1.0]))


def random_diffeomorphisms(grid: Grid, max_mm: torch.Tensor, scale_mm: float,
                           generator: torch.Generator, device=None) -> tuple:
    """Random smooth diffeomorphisms of the frame of ``grid`` and their inverses, one per entry
    of ``max_mm`` (B,): (forward, inverse) displacements (B, d, *G) in frame units on
    ``device``, tabulated on :func:`deformation_grid` (G: every point of it; read them at any
    frame point with linear interpolation). They are :func:`integrate_velocity` of a
    :func:`random_velocity` v and of -v; a velocity whose map or inverse has a Jacobian
    determinant below ``MIN_DET`` anywhere on that grid is halved until neither has, so both
    are invertible with a positive Jacobian."""
    grid = deformation_grid(grid, scale_mm)
    velocity = random_velocity(grid, max_mm, scale_mm, generator).to(device)
    forward = integrate_velocity(velocity, grid)
    inverse = integrate_velocity(-velocity, grid)
    bad = (min_jacobian(forward, grid) < MIN_DET) | (min_jacobian(inverse, grid) < MIN_DET)
    while bool(bad.any()):
        velocity[bad] = 0.5 * velocity[bad]
        forward[bad] = integrate_velocity(velocity[bad], grid)
        inverse[bad] = integrate_velocity(-velocity[bad], grid)
        still = (min_jacobian(forward[bad], grid) < MIN_DET) | (
            min_jacobian(inverse[bad], grid) < MIN_DET)
        bad[bad.clone()] = still
    return forward, inverse


# ----------------------------------------------------------------------------- spatial maps
def _apply_matrices(matrix: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Homogeneous matrices (B, d+1, d+1) applied to points (B, N, d)."""
    d = x.shape[-1]
    return x @ matrix[:, :d, :d].transpose(1, 2) + matrix[:, None, :d, d]


class SpatialMap:
    """A batch of frame maps T_b(x) = y + u_b(y), y = M_b x (the point-map contract:
    (B, N, d) -> (B, N, d)), with their inverses.

    ``matrix`` (B, d+1, d+1) homogeneous, frame -> frame; ``forward`` and ``inverse``
    (B, d, *G) frame-unit displacement tables of D and D^-1 on any grid of the same frame
    (None: no D); ``grid`` is the grid of the images :meth:`resample` samples."""

    def __init__(self, matrix: torch.Tensor, grid: Grid, forward: torch.Tensor | None = None,
                 inverse: torch.Tensor | None = None):
        self.matrix = matrix
        self.grid = grid
        self.forward = forward
        self.inverse_table = inverse

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        y = _apply_matrices(self.matrix.to(x.dtype), x)
        return y if self.forward is None else y + _table_at(self.forward.to(x.dtype), y)

    def inverse(self, x: torch.Tensor) -> torch.Tensor:
        """T^-1 of frame points (B, N, d) -> (B, N, d)."""
        y = x if self.inverse_table is None else x + _table_at(self.inverse_table.to(x.dtype), x)
        return _apply_matrices(torch.linalg.inv(self.matrix.to(torch.float64)).to(x.dtype), y)

    def resample(self, volume: torch.Tensor, mode: str = "bilinear") -> torch.Tensor:
        """volume (B, C, *S) on the grid sampled once at T(x) for every voxel x -> (B, C, *S)
        (zero outside the grid)."""
        b, d = volume.shape[0], self.grid.ndim
        x = self.grid.normalized_points(device=volume.device).reshape(1, -1, d).expand(b, -1, -1)
        out = sample_image(volume.float(), self(x), mode=mode, padding="zeros")
        return out.reshape(volume.shape).to(volume.dtype)


def _rotation(angles: np.ndarray) -> np.ndarray:
    """Rotation matrix (d, d) of one angle (2-D) or three angles about the array axes (3-D),
    radians."""
    if len(angles) == 1:
        c, s = math.cos(angles[0]), math.sin(angles[0])
        return np.array([[c, -s], [s, c]])
    out = np.eye(3)
    for axis, a in enumerate(angles):
        i, j = [k for k in range(3) if k != axis]
        r = np.eye(3)
        r[i, i] = r[j, j] = math.cos(a)
        r[i, j], r[j, i] = -math.sin(a), math.sin(a)
        out = out @ r
    return out


def _uniform(generator: torch.Generator, shape, bound: float) -> np.ndarray:
    """Uniform in [-bound, bound], float64 numpy."""
    return ((2.0 * torch.rand(shape, generator=generator, dtype=torch.float64) - 1.0)
            * bound).numpy()


def _chosen(generator: torch.Generator, batch: int, probability: float) -> np.ndarray:
    return (torch.rand(batch, generator=generator, dtype=torch.float64) < probability).numpy()


# ----------------------------------------------------------------------------- intensities
@dataclass
class IntensityDraw:
    """Intensity changes of a batch of images: ``chosen`` (B,) bool, ``log_gamma``,
    ``contrast``, ``noise_std`` (B,), ``bias`` (B, 1, *S) log bias field, ``noise``
    (B, 1, *S) standard normal (None when that part is off)."""

    chosen: torch.Tensor
    log_gamma: torch.Tensor
    contrast: torch.Tensor
    noise_std: torch.Tensor
    bias: torch.Tensor | None
    noise: torch.Tensor | None

    def apply(self, image: torch.Tensor) -> torch.Tensor:
        """image (B, 1, *S) -> (B, 1, *S): on its min-max range, gamma, bias field, contrast
        about the mean, noise; images not ``chosen`` are returned unchanged."""
        dims = tuple(range(1, image.dim()))
        view = (-1,) + (1,) * len(dims)
        lo, hi = image.amin(dims, keepdim=True), image.amax(dims, keepdim=True)
        span = (hi - lo).clamp_min(1e-6)
        t = ((image - lo) / span).clamp(0.0, 1.0) ** torch.exp(self.log_gamma).view(view)
        if self.bias is not None:
            t = t * torch.exp(self.bias)
        mean = t.mean(dims, keepdim=True)
        t = (t - mean) * self.contrast.view(view) + mean
        if self.noise is not None:
            t = t + self.noise_std.view(view) * self.noise
        return torch.where(self.chosen.view(view), lo + t * span, image)


# ----------------------------------------------------------------------------- pairs
@dataclass
class PairAugmentation:
    """One drawn augmentation of a batch of pairs: spatial maps T_A (moving) and T_B (fixed)
    (None: unchanged) and intensity draws (None: unchanged)."""

    moving_map: SpatialMap | None
    fixed_map: SpatialMap | None
    moving_intensity: IntensityDraw | None
    fixed_intensity: IntensityDraw | None

    def images(self, moving: torch.Tensor, fixed: torch.Tensor,
               fixed_mask: torch.Tensor | None = None) -> tuple:
        """moving, fixed (B, 1, *S) and fixed_mask (B, *S) bool or None -> the augmented
        (moving, fixed, fixed_mask)."""
        if self.moving_map is not None:
            moving = self.moving_map.resample(moving)
            fixed = self.fixed_map.resample(fixed)
            if fixed_mask is not None:
                fixed_mask = self.fixed_map.resample(fixed_mask.unsqueeze(1).float(),
                                                     mode="nearest")[:, 0] > 0.5
        if self.moving_intensity is not None:
            moving = self.moving_intensity.apply(moving)
            fixed = self.fixed_intensity.apply(fixed)
        return moving, fixed, fixed_mask

    def points(self, fixed_points: torch.Tensor, moving_points: torch.Tensor) -> tuple:
        """Landmarks (B, K, d) in the frame, row k of both corresponding (NaN rows: padding, kept
        NaN) -> their places in the augmented images: T_B^-1(fixed_points),
        T_A^-1(moving_points)."""
        if self.moving_map is None:
            return fixed_points, moving_points

        def moved(spatial: SpatialMap, pts: torch.Tensor) -> torch.Tensor:
            valid = torch.isfinite(pts).all(-1, keepdim=True)
            return torch.where(valid, spatial.inverse(torch.nan_to_num(pts)), pts)

        return moved(self.fixed_map, fixed_points), moved(self.moving_map, moving_points)


class PairAugmenter:
    """Draws :class:`PairAugmentation` objects for batches of pairs on ``grid`` (the network
    grid: the pair file's shape and spacing)."""

    def __init__(self, cfg: AugmentConfig, grid: Grid):
        self.cfg, self.grid = cfg, grid
        bad = [a for a in cfg.flip.axes if a >= grid.ndim]
        if cfg.flip.probability > 0 and bad:
            raise NephiInputError(f"config key augment.flip.axes: axis {bad[0]} does not exist "
                                  f"in {grid.ndim}-D data")
        self.spatial = any(k.probability > 0 for k in (cfg.affine, cfg.deform, cfg.flip))

    def _matrices(self, batch: int, flips: np.ndarray, generator: torch.Generator) -> torch.Tensor:
        """Frame matrices (B, d+1, d+1) of A F for one image of each pair."""
        a, d = self.cfg.affine, self.grid.ndim
        chosen = _chosen(generator, batch, a.probability)
        angles = np.radians(_uniform(generator, (batch, 1 if d == 2 else 3), a.rotation_deg))
        scales = 1.0 + _uniform(generator, (batch, d), a.scaling)
        shears = _uniform(generator, (batch, d * (d - 1) // 2), a.shear)
        shifts = _uniform(generator, (batch, d), a.translation_mm)
        mm = self.grid.normalized_mm_scale()
        upper = np.triu_indices(d, 1)
        out = np.tile(np.eye(d + 1), (batch, 1, 1))
        for b in range(batch):
            if chosen[b]:
                shear = np.eye(d)
                shear[upper] = shears[b]
                lin = _rotation(angles[b]) @ shear @ np.diag(scales[b])
                out[b, :d, :d] = (lin / mm[:, None]) * mm[None, :]
                out[b, :d, d] = shifts[b] / mm
            out[b, :d, :d] = out[b, :d, :d] @ np.diag(np.where(flips[b], -1.0, 1.0))
        return torch.as_tensor(out)

    def _spatial(self, batch: int, flips: np.ndarray, generator: torch.Generator,
                 device) -> SpatialMap:
        matrix = self._matrices(batch, flips, generator).to(device)
        c = self.cfg.deform
        if c.probability == 0:
            return SpatialMap(matrix, self.grid)
        chosen = torch.as_tensor(_chosen(generator, batch, c.probability))
        max_mm = torch.rand(batch, generator=generator, dtype=torch.float64) * c.max_mm * chosen
        forward, inverse = random_diffeomorphisms(self.grid, max_mm, c.scale_mm, generator,
                                                  device)
        return SpatialMap(matrix, self.grid, forward, inverse)

    def _intensity(self, batch: int, generator: torch.Generator, device) -> IntensityDraw:
        c = self.cfg.intensity
        chosen = torch.as_tensor(_chosen(generator, batch, c.probability))
        log_gamma = torch.as_tensor(_uniform(generator, batch, c.gamma))
        contrast = 1.0 + torch.as_tensor(_uniform(generator, batch, c.contrast))
        noise_std = torch.rand(batch, generator=generator, dtype=torch.float64) * c.noise
        bias = noise = None
        view = (-1,) + (1,) * (self.grid.ndim + 1)
        if c.bias > 0:
            field = smooth_noise(self.grid, c.bias_scale_mm, batch, generator).unsqueeze(1)
            largest = field.abs().flatten(1).amax(1).clamp_min(1e-12)
            amp = torch.rand(batch, generator=generator) * c.bias / largest
            bias = (field * amp.view(view)).to(device)
        if c.noise > 0:
            noise = torch.randn(batch, 1, *self.grid.shape, generator=generator).to(device)
        return IntensityDraw(chosen.to(device), log_gamma.float().to(device),
                             contrast.float().to(device), noise_std.float().to(device), bias,
                             noise)

    def draw(self, batch: int, generator: torch.Generator, device=None) -> PairAugmentation:
        """The augmentation of a batch of ``batch`` pairs, every random number from
        ``generator`` (CPU) in a fixed order: flips, then the moving image's affine,
        deformation and intensities, then the fixed image's."""
        f = self.cfg.flip
        axes = np.zeros((batch, self.grid.ndim), dtype=bool)
        for axis in f.axes:
            axes[:, axis] = _chosen(generator, batch, f.probability)
        maps, intensities = [], []
        for _ in ("moving", "fixed"):
            maps.append(self._spatial(batch, axes, generator, device) if self.spatial else None)
            intensities.append(self._intensity(batch, generator, device)
                               if self.cfg.intensity.probability > 0 else None)
        return PairAugmentation(maps[0], maps[1], intensities[0], intensities[1])
