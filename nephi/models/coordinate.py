"""Coordinate networks shared by the ``inr`` and ``velocity`` instance-optimization modes.

A :class:`CoordinateNet` maps points (B, N, d) in frame coordinates ([-1, 1]^d on the fixed
grid, see :mod:`nephi.geometry.grid`), optionally with a time t (velocity fields v(x, t)), to a vector
(B, N, d) in frame units per unit (a displacement u(x) for ``inr``, a velocity for
``velocity``). It is an MLP of ``layers`` hidden layers of width ``hidden``; every hidden layer
is ``sigma(W h + b)`` with one activation of the family below, chosen by ``activation``:

* ``sine`` (SIREN, Sitzmann et al. 2020; IDIR):        sin(omega z)
* ``sine+`` (Ziyin et al. 2020; Byra et al. 2023):     z + sin(omega z)
* ``chirp`` (Byra et al. 2023, eq. 6):                 sin(omega z + a z tanh(omega z)),
  ``a`` = ``chirp_rate`` (10 in the paper)
* ``morlet`` (Byra et al. 2023, eq. 7, imaginary part of the Morlet wavelet):
  a_w exp(-z^2 / 2) (sin(omega z) - b_w), a_w = pi^(-1/4) (1 + e^(-w^2) - 2 e^(-3 w^2 / 4))^(-1/2),
  b_w = e^(-w^2 / 2), w = omega
* ``relu``:                                            max(z, 0); use it with Fourier features

Weights of the periodic activations get the SIREN initialization (first layer U(-1/m, 1/m),
later layers U(-sqrt(6/m)/omega, sqrt(6/m)/omega), m the fan-in; Byra et al. initialize chirp
and Morlet the same way); ``relu`` keeps PyTorch's default initialization. The inputs can first
go through random Fourier features gamma(x) = [x, sin(2 pi B x), cos(2 pi B x)]
(``fourier_features`` > 0, :class:`nephi.models.fields.FourierFeatures`). The output layer starts with
weights U(-out_init, out_init) and zero bias (``out_init`` = 0: exactly zero output, so every map
built on the net starts as the identity; Byra et al. use 1e-4).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import nn

from nephi.models.fields import FourierFeatures
from nephi.records import from_mapping


ACTIVATIONS = ("sine", "sine+", "chirp", "morlet", "relu")


PERIODIC = ("sine", "sine+", "chirp", "morlet")


@dataclass
class CoordinateNetConfig:
    """Hyper-parameters of a :class:`CoordinateNet` (the ``network`` keys of a mode's config)."""

    activation: str = "sine"
    hidden: int = 256
    layers: int = 3
    omega0: float = 30.0
    fourier_features: int = 0
    fourier_scale: float = 1.0
    chirp_rate: float = 10.0
    out_init: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)

    @staticmethod
    def from_dict(d: dict, what: str = "coordinate network") -> "CoordinateNetConfig":
        """Strictly from a mapping (unknown keys name ``what``), then :meth:`check`."""
        cfg = from_mapping(CoordinateNetConfig, d, what)
        cfg.check()
        return cfg

    def check(self) -> None:
        """Raise ValueError naming the first invalid field."""
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation {self.activation!r} is not one of {', '.join(ACTIVATIONS)}")
        for name in ("hidden", "layers"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if isinstance(self.fourier_features, bool) or not isinstance(self.fourier_features, int) \
                or self.fourier_features < 0:
            raise ValueError(f"fourier_features must be an integer >= 0, got "
                             f"{self.fourier_features!r}")
        for name in ("omega0", "fourier_scale"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)!r}")
        if self.out_init < 0:
            raise ValueError(f"out_init must be >= 0, got {self.out_init!r}")


class Activation(nn.Module):
    """One activation of the family (see the module docstring), elementwise on (..., H)."""

    def __init__(self, kind: str, omega: float, chirp_rate: float = 10.0):
        super().__init__()
        if kind not in ACTIVATIONS:
            raise ValueError(f"activation {kind!r} is not one of {', '.join(ACTIVATIONS)}")
        self.kind, self.omega, self.chirp_rate = kind, float(omega), float(chirp_rate)
        w = self.omega
        self.morlet_a = math.pi ** -0.25 * (1.0 + math.exp(-w * w)
                                            - 2.0 * math.exp(-0.75 * w * w)) ** -0.5
        self.morlet_b = math.exp(-0.5 * w * w)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        w = self.omega
        if self.kind == "sine":
            return torch.sin(w * z)
        if self.kind == "sine+":
            return z + torch.sin(w * z)
        if self.kind == "chirp":
            return torch.sin(w * z + self.chirp_rate * z * torch.tanh(w * z))
        if self.kind == "morlet":
            return self.morlet_a * torch.exp(-0.5 * z * z) * (torch.sin(w * z) - self.morlet_b)
        return torch.relu(z)

    def extra_repr(self) -> str:
        return f"{self.kind}, omega={self.omega:g}"


class CoordinateNet(nn.Module):
    """f(x[, t]): points (B, N, d) frame coords [and times (B, N, 1)] -> vectors (B, N, out_dim).

    ``time_input``: the net also takes a time t in [0, 1] (time-dependent velocity fields);
    t is appended to the coordinates before the (optional) Fourier features.
    """

    def __init__(self, ndim: int, cfg: CoordinateNetConfig, time_input: bool = False,
                 out_dim: int | None = None, seed: int = 0):
        super().__init__()
        cfg.check()
        self.cfg, self.ndim, self.time_input = cfg, ndim, time_input
        in_dim = ndim + (1 if time_input else 0)
        gen = torch.Generator().manual_seed(seed)
        self.embed = None
        if cfg.fourier_features > 0:
            self.embed = FourierFeatures(in_dim, cfg.fourier_features, cfg.fourier_scale, seed)
            in_dim = self.embed.out_features
        self.linears = nn.ModuleList()
        for _ in range(cfg.layers):
            self.linears.append(nn.Linear(in_dim, cfg.hidden))
            in_dim = cfg.hidden
        self.act = Activation(cfg.activation, cfg.omega0, cfg.chirp_rate)
        self.out = nn.Linear(cfg.hidden, ndim if out_dim is None else out_dim)
        self._init_weights(gen)

    def _init_weights(self, gen: torch.Generator) -> None:
        with torch.no_grad():
            if self.cfg.activation in PERIODIC:
                for k, layer in enumerate(self.linears):
                    m = layer.in_features
                    bound = 1.0 / m if k == 0 else math.sqrt(6.0 / m) / self.cfg.omega0
                    layer.weight.copy_(_uniform(layer.weight.shape, bound, gen))
                    layer.bias.copy_(_uniform(layer.bias.shape, 1.0 / math.sqrt(m), gen))
            else:
                for layer in self.linears:
                    m = layer.in_features
                    layer.weight.copy_(_uniform(layer.weight.shape, 1.0 / math.sqrt(m), gen))
                    layer.bias.copy_(_uniform(layer.bias.shape, 1.0 / math.sqrt(m), gen))
            self.out.weight.copy_(_uniform(self.out.weight.shape, self.cfg.out_init, gen))
            self.out.bias.zero_()

    def forward(self, x: torch.Tensor, t: torch.Tensor | None = None) -> torch.Tensor:
        if self.time_input:
            if t is None:
                raise ValueError("this CoordinateNet takes a time input t")
            x = torch.cat([x, t.to(x).expand(*x.shape[:-1], 1)], dim=-1)
        h = self.embed(x) if self.embed is not None else x
        for layer in self.linears:
            h = self.act(layer(h))
        return self.out(h)


def _uniform(shape, bound: float, gen: torch.Generator) -> torch.Tensor:
    return (torch.rand(shape, generator=gen) * 2.0 - 1.0) * bound


__all__ = ["ACTIVATIONS", "Activation", "CoordinateNet", "CoordinateNetConfig"]
