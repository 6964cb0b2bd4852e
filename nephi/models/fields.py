"""NePhi field networks: modulated periodic MLPs conditioned on a hybrid latent code.

phi(x) = x + u(x, z(x)), with z(x) = [z_g, z_l(x)] (paper eq. 6): z_g a global vector of C
channels, z_l a C-channel grid (16^d by default) over the frame [-1, 1]^d interpolated at x.

``u`` is a modulated SIREN (Mehta et al. 2021, NePhi appendix A.1): a *synthesis* MLP on
Fourier-feature embedded coordinates with sine activations; each layer's activation is
multiplied by the output of a *modulation* MLP (ReLU) fed with the latent code. The output layer
starts at zero, so every map starts as the identity.

Shapes: points (B, N, d) in frame coordinates; latent z_g (B, C), z_l (B, C, *G).

Precision: :meth:`NephiFields.set_precision` runs the hidden layers' matrix products in
bfloat16 (autocast) on CPUs with AVX-512 BF16 / AMX and on CUDA; the Fourier features, the
latent interpolation, the output layer and everything downstream (maps, losses) stay float32.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from nephi.geometry.sampling import (GridInterpolation, interpolate_linear,
                                     interpolate_linear_with_grad)
from nephi.transforms.base import grid_points


PRECISIONS = ("fp32", "bf16")


def _cpu_flags() -> set:
    """The CPU feature flags Linux reports in /proc/cpuinfo (empty elsewhere)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def bf16_pays(device: torch.device | str) -> bool:
    """Whether bfloat16 matrix products are native here: CUDA with bf16 support, or a CPU with
    AVX-512 BF16 or AMX-BF16 (Linux flags ``avx512_bf16`` / ``amx_bf16``). Without them oneDNN
    emulates bfloat16, many times slower than float32 (40x on an AVX2 EPYC)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu" and bool(_cpu_flags() & {"avx512_bf16", "amx_bf16"})


def resolve_precision(precision: str, device) -> str:
    """``auto`` -> ``bf16`` where :func:`bf16_pays`, else ``fp32``; ``fp32`` / ``bf16`` as given."""
    if precision == "auto":
        return "bf16" if bf16_pays(device) else "fp32"
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be auto, fp32 or bf16, got {precision!r}")
    return precision


@dataclass
class FieldConfig:
    """Hyper-parameters of one field network (both directions share them)."""

    ndim: int = 3
    latent_channels: int = 32
    latent_grid: int = 16
    hidden: int = 512
    layers: int = 2
    fourier_features: int = 128
    fourier_scale: float = 2.0
    omega0: float = 1.0

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Latent:
    """Latent codes of a batch: ``global_`` (B, C) and ``local`` (B, C, *G)."""

    global_: torch.Tensor
    local: torch.Tensor

    def detach_clone(self) -> "Latent":
        return Latent(self.global_.detach().clone(), self.local.detach().clone())

    @staticmethod
    def random(batch: int, cfg: FieldConfig, sigma: float, generator=None, device=None) -> "Latent":
        """Draw z ~ N(0, sigma^2) (paper section 4.2)."""
        g = torch.randn(batch, cfg.latent_channels, generator=generator) * sigma
        loc = torch.randn(batch, cfg.latent_channels, *([cfg.latent_grid] * cfg.ndim),
                          generator=generator) * sigma
        return Latent(g.to(device), loc.to(device))


class FourierFeatures(nn.Module):
    """gamma(x) = [x, sin(2 pi B x), cos(2 pi B x)] with B ~ N(0, scale^2) fixed, (..., d) -> (..., d + 2F)."""

    def __init__(self, ndim: int, count: int, scale: float, seed: int = 0):
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.register_buffer("freqs", torch.randn(count, ndim, generator=gen) * scale)
        self.out_features = ndim + 2 * count

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        proj = 2.0 * math.pi * (x @ self.freqs.T)
        return torch.cat([x, torch.sin(proj), torch.cos(proj)], dim=-1)

    def forward_with_tangents(self, x: torch.Tensor) -> tuple:
        """gamma(x) (..., F) and d gamma / d x as tangents (..., d, F): row j is d gamma / d x_j."""
        proj = 2.0 * math.pi * (x @ self.freqs.T)
        d = x.shape[-1]
        dproj = (2.0 * math.pi * self.freqs.T).expand(*x.shape[:-1], d, -1)
        eye = torch.eye(d, dtype=x.dtype, device=x.device).expand(*x.shape[:-1], d, d)
        value = torch.cat([x, torch.sin(proj), torch.cos(proj)], dim=-1)
        tangents = torch.cat([eye, torch.cos(proj).unsqueeze(-2) * dproj,
                              -torch.sin(proj).unsqueeze(-2) * dproj], dim=-1)
        return value, tangents


class ModulatedSiren(nn.Module):
    """u(x, z): displacement (B, N, d) in frame units from points (B, N, d) and the code z(x)."""

    def __init__(self, cfg: FieldConfig, seed: int = 0):
        super().__init__()
        self.cfg = cfg
        self.embed = FourierFeatures(cfg.ndim, cfg.fourier_features, cfg.fourier_scale, seed)
        latent_dim = 2 * cfg.latent_channels
        self.synthesis = nn.ModuleList()
        self.modulation = nn.ModuleList()
        in_syn = self.embed.out_features
        for layer in range(cfg.layers):
            self.synthesis.append(nn.Linear(in_syn, cfg.hidden))
            in_mod = latent_dim if layer == 0 else cfg.hidden + latent_dim
            self.modulation.append(nn.Linear(in_mod, cfg.hidden))
            in_syn = cfg.hidden
        self.out = nn.Linear(cfg.hidden, cfg.ndim)
        self.precision = "fp32"
        self._init_weights()

    def _hidden_autocast(self, x: torch.Tensor):
        """bfloat16 autocast of the hidden layers when ``precision`` is ``bf16``."""
        return torch.autocast(x.device.type, dtype=torch.bfloat16,
                              enabled=self.precision == "bf16")

    def _init_weights(self) -> None:
        w0 = self.cfg.omega0
        with torch.no_grad():
            for layer in self.synthesis:
                bound = math.sqrt(6.0 / layer.in_features) / w0
                layer.weight.uniform_(-bound, bound)
                layer.bias.uniform_(-math.pi / 2, math.pi / 2)
            self.out.weight.zero_()
            self.out.bias.zero_()

    def _modulation_parts(self, layer: int) -> tuple:
        """Weight blocks of modulation layer ``layer`` acting on (g, z_g, z_l)."""
        w = self.modulation[layer].weight
        c = self.cfg.latent_channels
        h = 0 if layer == 0 else self.cfg.hidden
        return w[:, :h], w[:, h:h + c], w[:, h + c:]

    def forward(self, x: torch.Tensor, z_global: torch.Tensor, z_local: torch.Tensor) -> torch.Tensor:
        """u at points x (B, N, d) given z_g (B, C) and z_l interpolated at x (B, N, C).

        The modulation layers see [g, z_g, z_l]; the z_g part is constant over the points and is
        folded into the bias. Without autograd (dense evaluation) the activations are computed
        in place.
        """
        inplace = not torch.is_grad_enabled()
        h = self.embed(x)
        g = None
        with self._hidden_autocast(x):
            if self.precision == "bf16":  # cast once, not at every layer that reads it
                z_local = z_local.to(torch.bfloat16)
            for layer, (syn, mod) in enumerate(zip(self.synthesis, self.modulation)):
                w_g, w_zg, w_zl = self._modulation_parts(layer)
                a = F.linear(z_local, w_zl)
                bias = (z_global @ w_zg.T + mod.bias).unsqueeze(1).to(a.dtype)
                a = a.add_(bias) if inplace else a + bias
                if g is not None:
                    a = a.add_(F.linear(g, w_g)) if inplace else a + F.linear(g, w_g)
                g = a.relu_() if inplace else torch.relu(a)
                s = syn(h)
                if self.cfg.omega0 != 1.0:
                    s = s * self.cfg.omega0
                h = s.sin_().mul_(g) if inplace else g * torch.sin(s)
        return self.out(h.to(self.out.weight.dtype))

    def forward_with_jacobian(self, x: torch.Tensor, z_global: torch.Tensor, z_local: torch.Tensor,
                              dz_local: torch.Tensor) -> tuple:
        """u (B, N, d) and its exact spatial Jacobian du/dx (B, N, d, d), ``[..., i, j] = du_i/dx_j``.

        ``dz_local`` (B, N, d, C) is dz_l/dx. The d directional derivatives are carried through
        the layers beside the values (forward mode written out), so the result needs only
        first-order backpropagation: no double backward, unlike reverse-mode Jacobians.
        """
        h, dh = self.embed.forward_with_tangents(x)
        w0 = self.cfg.omega0
        g = dg = None
        with self._hidden_autocast(x):
            for layer, (syn, mod) in enumerate(zip(self.synthesis, self.modulation)):
                w_g, w_zg, w_zl = self._modulation_parts(layer)
                a = F.linear(z_local, w_zl) + (z_global @ w_zg.T + mod.bias).unsqueeze(1)
                da = F.linear(dz_local, w_zl)
                if g is not None:
                    a = a + F.linear(g, w_g)
                    da = da + F.linear(dg, w_g)
                g, dg = torch.relu(a), da * (a > 0).to(da.dtype).unsqueeze(-2)
                s = w0 * syn(h)
                ds = w0 * F.linear(dh, syn.weight)
                sin_s = torch.sin(s)
                dh = dg * sin_s.unsqueeze(-2) + (g * torch.cos(s)).unsqueeze(-2) * ds
                h = g * sin_s
        out = self.out.weight.dtype
        return self.out(h.to(out)), F.linear(dh.to(out), self.out.weight).transpose(-1, -2)


class FieldMap:
    """One direction of NePhi as a point map on frame coordinates: x -> x + u(x, z(x)).

    Callable on points (B, N, d); ``value_and_jacobian`` also gives the exact spatial Jacobian
    (B, N, d, d) without double backward (see :meth:`ModulatedSiren.forward_with_jacobian`).
    """

    def __init__(self, net: ModulatedSiren, latent: Latent):
        self.net = net
        self.latent = latent

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.net(x, self.latent.global_, interpolate_linear(self.latent.local, x))

    @torch.no_grad()
    def on_grid(self, shape, chunk: int, device=None) -> torch.Tensor:
        """phi at every voxel centre of a regular frame grid of ``shape`` (row-major) -> (M, d).

        The values of calling the map on those points (:func:`nephi.transforms.base.on_grid`),
        with the latent grid interpolated by separable products
        (:class:`nephi.geometry.sampling.GridInterpolation`) instead of corner gathers; in
        first-axis slabs of about ``chunk`` points, on the latent code's device. Batch 1 only.
        """
        if self.latent.local.shape[0] != 1:
            raise ValueError("on_grid evaluates a single latent code (batch 1)")
        z_local = GridInterpolation(self.latent.local, shape)
        device = self.latent.local.device
        plane = int(math.prod(shape[1:]))
        rows = max(1, chunk // plane)
        out = torch.empty(int(math.prod(shape)), len(shape), device=device)
        for start in range(0, int(shape[0]), rows):
            stop = min(start + rows, int(shape[0]))
            x = grid_points(shape, device, slice(start, stop)).unsqueeze(0)
            u = self.net(x, self.latent.global_, z_local.rows(start, stop).unsqueeze(0))
            out[start * plane:stop * plane] = (x + u)[0]
        return out

    def value_and_jacobian(self, x: torch.Tensor) -> tuple:
        z_local, dz_local = interpolate_linear_with_grad(self.latent.local, x)
        u, du = self.net.forward_with_jacobian(x, self.latent.global_, z_local, dz_local)
        eye = torch.eye(x.shape[-1], dtype=x.dtype, device=x.device)
        return x + u, du + eye


class FieldPair(nn.Module):
    """The contract of NePhi's field networks, stated once: ``map_ab(latent)`` (FIXED-frame
    points -> MOVING points) and ``map_ba(latent)`` (MOVING -> FIXED) are point maps for a
    latent code; ``phi_ab`` / ``phi_ba`` apply them to points (B, N, d); ``forward`` is
    ``phi_ab``. Subclasses give the two maps, ``set_precision`` and ``precision``."""

    def map_ab(self, latent: Latent):
        raise NotImplementedError

    def map_ba(self, latent: Latent):
        raise NotImplementedError

    def phi_ab(self, x: torch.Tensor, latent: Latent) -> torch.Tensor:
        return self.map_ab(latent)(x)

    def phi_ba(self, x: torch.Tensor, latent: Latent) -> torch.Tensor:
        return self.map_ba(latent)(x)

    def forward(self, x: torch.Tensor, latent: Latent) -> torch.Tensor:
        return self.phi_ab(x, latent)


class NephiFields(FieldPair):
    """The forward and backward field networks of NePhi (separate weights, shared latent code).

    ``phi_ab`` maps FIXED-frame points to MOVING points (the warped moving image is
    I_A(phi_ab(x))); ``phi_ba`` maps MOVING points to FIXED points. All in frame coordinates.
    """

    def __init__(self, cfg: FieldConfig, seed: int = 0):
        super().__init__()
        self.cfg = cfg
        self.forward_net = ModulatedSiren(cfg, seed=seed)
        self.backward_net = ModulatedSiren(cfg, seed=seed + 1)

    def set_precision(self, precision: str) -> "NephiFields":
        """Run both networks' hidden layers in ``fp32`` or ``bf16`` (see the module docstring)."""
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be fp32 or bf16, got {precision!r}")
        self.forward_net.precision = self.backward_net.precision = precision
        return self

    @property
    def precision(self) -> str:
        return self.forward_net.precision

    def map_ab(self, latent: Latent) -> FieldMap:
        """phi_AB for this latent code: FIXED-frame points -> MOVING-frame points."""
        return FieldMap(self.forward_net, latent)

    def map_ba(self, latent: Latent) -> FieldMap:
        """phi_BA for this latent code: MOVING-frame points -> FIXED-frame points."""
        return FieldMap(self.backward_net, latent)


__all__ = ["PRECISIONS", "bf16_pays", "resolve_precision", "FieldConfig", "Latent", "FourierFeatures", "ModulatedSiren", "FieldMap", "FieldPair", "NephiFields"]
