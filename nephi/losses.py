"""Loss terms of NePhi (paper eqs. 5, 7, 8, 10). Each returns a tensor; diagnostics carry units.

All point-based: values are sampled at random points, the mean over the batch is returned.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .networks import Latent


@dataclass
class Term:
    """One named loss term: its ``value`` (scalar tensor), ``weight`` and ``unit``."""

    value: torch.Tensor
    weight: float
    unit: str


def ncc(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Normalized cross-correlation of samples a, b (B, N) -> (B,), in [-1, 1] (unitless)."""
    a = a - a.mean(dim=-1, keepdim=True)
    b = b - b.mean(dim=-1, keepdim=True)
    num = (a * b).sum(dim=-1)
    den = torch.sqrt((a * a).sum(dim=-1) * (b * b).sum(dim=-1) + eps)
    return num / den


def ncc_similarity(warped: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Eq. 10: 1 - NCC^2 of point samples (B, N), averaged over the batch; 0 is a perfect match."""
    return (1.0 - ncc(warped, target) ** 2).mean()


def gradicon(jac: torch.Tensor) -> torch.Tensor:
    """Eq. 5: mean over points of ||J - I||_F^2 for J (B, N, d, d) of phi_AB(phi_BA(x)).

    Unit: squared Frobenius norm of a Jacobian in frame (normalized) coordinates, which are
    isotropic in normalized units, not in mm, when spacing or extent differ between axes.
    """
    eye = torch.eye(jac.shape[-1], dtype=jac.dtype, device=jac.device)
    return ((jac - eye) ** 2).sum(dim=(-2, -1)).mean()


def latent_prior(latent: Latent, sigma: float) -> torch.Tensor:
    """Eq. 7: ||z_g||^2 / sigma^2 + mean over grid cells of ||z_l(i)||^2 / sigma^2, batch mean."""
    zg = (latent.global_ ** 2).sum(dim=1)
    zl = (latent.local ** 2).sum(dim=1).flatten(1).mean(dim=1)
    return ((zg + zl) / sigma ** 2).mean()


def total(terms: dict) -> torch.Tensor:
    """Weighted sum of a dict of :class:`Term`."""
    return sum(t.weight * t.value for t in terms.values())


def diagnostics(terms: dict) -> dict:
    """Plain floats of each term's value, keyed ``name [unit]``-free, plus units separately."""
    return {name: float(t.value.detach()) for name, t in terms.items()}
