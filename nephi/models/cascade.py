"""A second look: learning-based NePhi as a cascade of K passes (``model.passes``).

Pass 1 is NePhi as the paper has it: the encoder reads (moving, fixed) and its latent code
conditions the field networks (phi^1_AB, phi^1_BA). Pass k > 1 has an encoder and field networks
of its own; its encoder reads the moving image resampled through the map of the passes before it
and the fixed image, and its fields are a residual on top of them. The whole maps, with the
directions of :class:`nephi.models.fields.NephiFields` (A = moving, B = fixed):

    phi_AB = phi^1_AB o phi^2_AB o ... o phi^K_AB   (phi^K_AB acts first on a fixed point)
    phi_BA = phi^K_BA o ... o phi^2_BA o phi^1_BA   (phi^1_BA acts first on a moving point)

The K latent codes travel as one :class:`~nephi.models.fields.Latent` whose channels are the
passes' codes side by side (pass k: channels ``k C .. (k + 1) C - 1``), so the latent prior, IO
on the latent codes and every consumer of ``(fields, latent)`` work on a cascade unchanged.
Training is end to end: the loss sees only the whole maps, and its gradient reaches every pass
through them. The resampling that feeds pass k's encoder is not differentiated (pass k's input
is data to it, as in a two-step ICON network run with its first step frozen per batch).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from nephi.geometry.sampling import sample_image
from nephi.models.fields import PRECISIONS, FieldConfig, FieldPair, Latent, NephiFields
from nephi.transforms.base import Composition, grid_points

__all__ = ["CascadeFields", "warp_moving"]


class CascadeFields(FieldPair):
    """K :class:`NephiFields` read as one pair of maps (module docstring), under the same
    contract (:class:`FieldPair`); ``cfg`` is each pass's (the same for all)."""

    def __init__(self, cfg: FieldConfig, passes: int, seed: int = 0):
        super().__init__()
        if passes < 2:
            raise ValueError(f"a cascade has at least 2 passes, got {passes}")
        self.cfg = cfg
        self.passes = nn.ModuleList(NephiFields(cfg, seed=seed + 2 * k) for k in range(passes))

    def split(self, latent: Latent) -> list:
        """The passes' codes of a cascade code of k C channels (k <= K): k Latents of C
        channels, the first k passes'."""
        c, n = self.cfg.latent_channels, latent.global_.shape[1]
        if n % c or not 0 < n // c <= len(self.passes):
            raise ValueError(f"a {len(self.passes)}-pass cascade reads up to "
                             f"{c * len(self.passes)} latent channels in steps of {c}, got {n}")
        return [Latent(latent.global_[:, k * c:(k + 1) * c], latent.local[:, k * c:(k + 1) * c])
                for k in range(n // c)]

    def map_ab(self, latent: Latent):
        """phi_AB of the passes whose codes ``latent`` holds (all of them for a whole code, the
        first k for a code of k C channels): FIXED -> MOVING points."""
        maps = [f.map_ab(z) for f, z in zip(self.passes, self.split(latent))]
        out = maps[-1]
        for outer in reversed(maps[:-1]):
            out = Composition(outer, out)
        return out

    def map_ba(self, latent: Latent):
        """phi_BA of the passes whose codes ``latent`` holds: MOVING -> FIXED points."""
        maps = [f.map_ba(z) for f, z in zip(self.passes, self.split(latent))]
        out = maps[0]
        for outer in maps[1:]:
            out = Composition(outer, out)
        return out

    def set_precision(self, precision: str) -> "CascadeFields":
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be fp32 or bf16, got {precision!r}")
        for f in self.passes:
            f.set_precision(precision)
        return self

    @property
    def precision(self) -> str:
        return self.passes[0].precision


@torch.no_grad()
def warp_moving(moving: torch.Tensor, phi_ab) -> torch.Tensor:
    """The moving image (B, 1, *S) seen through ``phi_ab`` (fixed -> moving frame points) on its
    own grid -> (B, 1, *S), float32, without gradient.

    The map is evaluated on a grid of half the resolution (ceil(S / 2) per axis, the same frame)
    and interpolated (multilinear, exact for affine maps) to every voxel: the fields vary on the
    scale of the latent grid, several voxels. Edge values continue outside the image.
    """
    shape = tuple(moving.shape[2:])
    b, d = moving.shape[0], len(shape)
    coarse = tuple(max(2, (n + 1) // 2) for n in shape)
    with torch.autocast(device_type=moving.device.type, enabled=False):
        x = grid_points(coarse, moving.device).unsqueeze(0).expand(b, -1, -1)
        y = phi_ab(x).float().reshape(b, *coarse, d).movedim(-1, 1)
        y = F.interpolate(y, size=shape, mode="trilinear" if d == 3 else "bilinear",
                          align_corners=True)
        points = y.movedim(1, -1).reshape(b, int(math.prod(shape)), d)
        return sample_image(moving.float(), points).reshape(moving.shape)
