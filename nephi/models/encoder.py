"""The CNN encoder f_theta3 of learning-based NePhi (paper section 4.3, eq. 9, appendix A.2).

The encoder reads the concatenated pair [I_A (moving), I_B (fixed)] as a 2-channel image on the
network grid and predicts the hybrid latent code of :class:`nephi.models.fields.Latent`:

* a stem convolution at full resolution, then ``len(channels) - 1`` stride-2 blocks (each halves
  every spatial axis, rounding up: ``n -> ceil(n / 2)``);
* z_g (B, C): global average pooling of the deepest feature map, then a linear layer;
* z_l (B, C, *G): a 3x3(x3) convolution on the feature map whose spatial shape is closest to
  ``local_target``^d (16^d in the paper). "Closest" means the smallest sum over axes of
  ``|log(G_k / local_target)|``; ties go to the finer map. The branch point is chosen from the
  input shape the encoder is built for (:attr:`EncoderConfig.input_shape`), so z_l's grid G is
  about 16 per axis, not exactly (e.g. 22^3 for the paper's 175^3 lung volumes);
* optionally (``top_down``, not in the paper) a top-down path into the z_l branch, as in a
  feature pyramid: the deeper maps, each projected to the branch's width by a 1x1(x1)
  convolution, are upsampled (linear interpolation) level by level, summed onto the branch's
  map and smoothed by a 3x3(x3) convolution before z_l's head. Without it z_l sees only the
  levels down to the branch (a receptive field of a few voxels of the network grid) and the deep
  levels feed z_g alone;
* optionally (``flow_features``, not in the paper) d more input channels: the demons force of
  the pair, (I_A - I_B) g / (|g|^2 + (I_A - I_B)^2) with g the gradient of (I_A + I_B) / 2 in
  intensity per voxel (Thirion's demons, symmetric form; at most half a voxel per axis): a
  linearized estimate of the displacement at every voxel. Sub-voxel residuals, which is what
  is left after a global alignment, are hard to read off intensities for a strided CNN; the
  force gives it the estimate to aggregate. It assumes one contrast for both images.

The z_l grid covers the network frame [-1, 1]^d with the align_corners convention (cell i at
-1 + 2 i / (G - 1)), like the latent grid of pairwise NePhi; :class:`nephi.models.fields.FieldMap`
works with any G.
The same layer counts and widths are used in 2-D and 3-D (paper Fig. 7); only the convolution
dimension changes.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from nephi.errors import NephiInputError, short_reason
from nephi.models.cascade import CascadeFields, warp_moving
from nephi.models.checkpoint import load_checkpoint, save_checkpoint
from nephi.models.fields import FieldConfig, Latent, NephiFields
from nephi.records import from_mapping


def downsampled_shape(shape, level: int) -> tuple:
    """Spatial shape after ``level`` stride-2 blocks: each axis n -> ceil(n / 2) per block."""
    out = tuple(int(s) for s in shape)
    for _ in range(level):
        out = tuple((s + 1) // 2 for s in out)
    return out


def branch_level(input_shape, levels: int, target: int = 16) -> int:
    """Index (0 = stem, full resolution) of the feature map closest in shape to target^d.

    Distance: sum over axes of ``|log(G_k / target)|``; the first (finest) minimum wins.
    """
    best, best_dist = 0, math.inf
    for level in range(levels + 1):
        dist = sum(abs(math.log(s / target)) for s in downsampled_shape(input_shape, level))
        if dist < best_dist - 1e-12:
            best, best_dist = level, dist
    return best


@dataclass
class EncoderConfig:
    """Hyper-parameters of the encoder.

    ``input_shape``: spatial shape (d,) of the network grid it is built for (voxels);
    ``channels``: width of the stem (first entry) and of each stride-2 block;
    ``latent_channels``: C of z_g and z_l (32 in the paper);
    ``local_target``: z_l grid size aimed at per axis (16 in the paper);
    ``groups``: GroupNorm groups (0 = no normalization);
    ``top_down``: the deeper levels also feed z_l;
    ``flow_features``: the demons force is an input too (both: see the module docstring).
    """

    input_shape: list = field(default_factory=lambda: [64, 64, 64])
    channels: list = field(default_factory=lambda: [16, 32, 64, 64, 128, 128])
    latent_channels: int = 32
    local_target: int = 16
    groups: int = 8
    top_down: bool = False
    flow_features: bool = False

    @property
    def ndim(self) -> int:
        return len(self.input_shape)

    @property
    def levels(self) -> int:
        """Number of stride-2 blocks."""
        return len(self.channels) - 1

    @property
    def branch(self) -> int:
        return branch_level(self.input_shape, self.levels, self.local_target)

    @property
    def local_grid(self) -> tuple:
        """Spatial shape G of z_l for an input of ``input_shape``."""
        return downsampled_shape(self.input_shape, self.branch)

    def to_dict(self) -> dict:
        return asdict(self)


def demons_force(moving: torch.Tensor, fixed: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """(B, 1, *S) moving and fixed -> (B, d, *S): (moving - fixed) g / (|g|^2 + (moving -
    fixed)^2 + eps), g the gradient of their mean in intensity per voxel (central differences,
    one-sided at the border). Each component lies in [-1/2, 1/2]; 0 where both are flat."""
    d = moving.dim() - 2
    diff = moving - fixed
    grad = torch.cat(torch.gradient(0.5 * (moving + fixed), dim=tuple(range(2, 2 + d))), dim=1)
    return diff * grad / (grad.square().sum(dim=1, keepdim=True) + diff.square() + eps)


def _conv(ndim: int, cin: int, cout: int, stride: int = 1, kernel: int = 3) -> nn.Module:
    conv = nn.Conv3d if ndim == 3 else nn.Conv2d
    return conv(cin, cout, kernel_size=kernel, stride=stride, padding=kernel // 2)


def _norm(groups: int, channels: int) -> nn.Module:
    if groups <= 0:
        return nn.Identity()
    return nn.GroupNorm(math.gcd(groups, channels), channels)


class _Block(nn.Module):
    """conv(stride) -> norm -> LeakyReLU -> conv -> norm -> LeakyReLU."""

    def __init__(self, ndim: int, cin: int, cout: int, stride: int, groups: int):
        super().__init__()
        self.layers = nn.Sequential(
            _conv(ndim, cin, cout, stride), _norm(groups, cout), nn.LeakyReLU(0.2),
            _conv(ndim, cout, cout), _norm(groups, cout), nn.LeakyReLU(0.2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class Encoder(nn.Module):
    """f_theta3: pair (B, 2, *S) -> :class:`Latent` with z_g (B, C) and z_l (B, C, *G)."""

    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        if cfg.ndim not in (2, 3):
            raise ValueError(f"the encoder is 2-D or 3-D, got input shape {cfg.input_shape}")
        self.cfg = cfg
        d, ch = cfg.ndim, cfg.channels
        inputs = 2 + (d if cfg.flow_features else 0)
        self.stem = nn.Sequential(_conv(d, inputs, ch[0]), _norm(cfg.groups, ch[0]),
                                  nn.LeakyReLU(0.2))
        self.blocks = nn.ModuleList(
            _Block(d, ch[i], ch[i + 1], 2, cfg.groups) for i in range(cfg.levels))
        self.branch_at = cfg.branch
        width = ch[self.branch_at]
        deeper = range(self.branch_at + 1, cfg.levels + 1) if cfg.top_down else range(0)
        self.laterals = nn.ModuleList(_conv(d, ch[level], width, kernel=1) for level in deeper)
        self.merge = (nn.Sequential(_conv(d, width, width), _norm(cfg.groups, width),
                                    nn.LeakyReLU(0.2)) if len(self.laterals) else None)
        self.local_head = _conv(d, width, cfg.latent_channels)
        self.global_head = nn.Linear(ch[-1], cfg.latent_channels)

    def _top_down(self, maps: list) -> torch.Tensor:
        """The branch's feature map with the deeper ``maps`` (one per lateral, finest first)
        projected, upsampled level by level and summed onto it, then smoothed."""
        mode = "trilinear" if self.cfg.ndim == 3 else "bilinear"
        top = None
        for lateral, h in zip(reversed(self.laterals), reversed(maps[1:])):
            top = lateral(h) if top is None else lateral(h) + nn.functional.interpolate(
                top, size=h.shape[2:], mode=mode, align_corners=False)
        branch = maps[0]
        return self.merge(branch + nn.functional.interpolate(
            top, size=branch.shape[2:], mode=mode, align_corners=False))

    def forward(self, moving: torch.Tensor, fixed: torch.Tensor) -> Latent:
        """Moving and fixed intensities (B, 1, *S) on the network grid -> latent codes."""
        pair = [moving, fixed]
        if self.cfg.flow_features:
            pair.append(demons_force(moving, fixed))
        h = self.stem(torch.cat(pair, dim=1))
        maps = [h] if self.branch_at == 0 else []
        for level, block in enumerate(self.blocks, start=1):
            h = block(h)
            if level >= self.branch_at:
                maps.append(h)
        glob = self.global_head(h.flatten(2).mean(dim=2))
        local = self._top_down(maps) if self.merge is not None else maps[0]
        return Latent(glob, self.local_head(local))


class RegistrationNet(nn.Module):
    """Learning-based NePhi: the encoder and the forward/backward field networks.

    ``encode(moving, fixed)`` gives the latent codes; ``fields.phi_ab(x, latent)`` maps points of
    the network frame of the FIXED image to the MOVING image (A = moving, B = fixed), see
    :class:`nephi.models.fields.NephiFields`. Both images must be on the same network grid.

    With ``passes`` K > 1 the network is a cascade (:mod:`nephi.models.cascade`): ``fields`` is
    a :class:`~nephi.models.cascade.CascadeFields` of K passes, ``encoder`` reads the pair and
    each of the ``refiners`` (K - 1 encoders) reads the moving image seen through the passes
    before it; the latent code holds the K codes side by side (K C channels).
    """

    def __init__(self, encoder_cfg: EncoderConfig, field_cfg: FieldConfig, seed: int = 0,
                 passes: int = 1):
        super().__init__()
        if encoder_cfg.latent_channels != field_cfg.latent_channels:
            raise ValueError("encoder and fields must agree on latent_channels")
        if encoder_cfg.ndim != field_cfg.ndim:
            raise ValueError("encoder and fields must agree on the dimension")
        if passes < 1:
            raise ValueError(f"passes must be at least 1, got {passes}")
        self.passes = int(passes)
        self.encoder = Encoder(encoder_cfg)
        self.refiners = nn.ModuleList(Encoder(encoder_cfg) for _ in range(passes - 1))
        self.fields = (NephiFields(field_cfg, seed=seed) if passes == 1
                       else CascadeFields(field_cfg, passes, seed=seed))

    def encode(self, moving: torch.Tensor, fixed: torch.Tensor) -> Latent:
        """(B, 1, *S) moving and fixed -> Latent; always float32 (autocast-safe). A cascade's
        code has the passes' codes side by side in its channels."""
        z = self.encoder(moving, fixed)
        latent = Latent(z.global_.float(), z.local.float())
        for refiner in self.refiners:
            z = refiner(warp_moving(moving, self.fields.map_ab(latent)).to(moving.dtype), fixed)
            latent = Latent(torch.cat([latent.global_, z.global_.float()], 1),
                            torch.cat([latent.local, z.local.float()], 1))
        return latent

    def forward(self, moving: torch.Tensor, fixed: torch.Tensor) -> Latent:
        return self.encode(moving, fixed)

    def model_config(self) -> dict:
        """Everything needed to rebuild this network (stored in checkpoints)."""
        return {"encoder": self.encoder.cfg.to_dict(), "fields": self.fields.cfg.to_dict(),
                "passes": self.passes}

    @staticmethod
    def from_model_config(model_cfg: dict, seed: int = 0) -> "RegistrationNet":
        return RegistrationNet(from_mapping(EncoderConfig, model_cfg["encoder"], "model encoder"),
                               from_mapping(FieldConfig, model_cfg["fields"], "model fields"),
                               seed=seed, passes=int(model_cfg.get("passes", 1)))

    def save(self, path: str, **metadata) -> None:
        """Write a checkpoint (:mod:`nephi.models.checkpoint`) holding this network's config and
        weights, plus ``metadata`` (e.g. preprocessing, training config, step)."""
        save_checkpoint({"model_config": self.model_config(),
                         "model_state": {k: v.detach().cpu() for k, v in self.state_dict().items()},
                         **metadata}, path)

    @staticmethod
    def load(path: str) -> tuple:
        """(network on the CPU in eval mode, the checkpoint dict) from a checkpoint file; a file
        that is not a complete nephi checkpoint is a NephiInputError naming it."""
        ckpt = load_checkpoint(path)
        try:
            net = RegistrationNet.from_model_config(ckpt["model_config"])
            net.load_state_dict(ckpt["model_state"])
        except (KeyError, RuntimeError, TypeError, ValueError, NephiInputError) as exc:
            raise NephiInputError(f"checkpoint {path}: incomplete or inconsistent "
                                  f"({short_reason(exc)})") from None
        return net.eval(), ckpt


__all__ = ["EncoderConfig", "Encoder", "RegistrationNet", "branch_level", "demons_force",
           "downsampled_shape"]
