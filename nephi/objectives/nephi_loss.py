"""The NePhi objective (paper eqs. 8 and 9) on one batch of pairs.

L = Sim(I_A o phi_AB, I_B) + Sim(I_A, I_B o phi_BA) + lambda_1 GradICON + lambda_2 prior,
with Sim = 1 - NCC^2 on random points (eq. 10) by default (any weighted sum of the similarity
terms of :func:`nephi.objectives.similarity.similarity_terms`: ``io.similarity`` in instance
optimization, ``loss.similarity`` in training) and GradICON on
phi_AB(phi_BA(x)) (eq. 5).
"""

from __future__ import annotations

import torch

from nephi.geometry.pair import PairTensors
from nephi.models.fields import Latent, NephiFields
from nephi.objectives.regularizers import gradicon
from nephi.objectives.similarity import similarity_terms, stencil_offsets
from nephi.objectives.terms import Term
from nephi.transforms.base import Composition
from nephi.transforms.jacobian import jacobian


def training_similarity(loss_cfg: dict, grid_shape, device=None) -> tuple:
    """The similarity of a training config's ``loss`` section for :func:`nephi_terms`:
    (weights {name: w}, local-NCC stencil offsets (k^d, d) on ``grid_shape``, or None without
    an lncc term)."""
    weights = {k: float(w) for k, w in loss_cfg["similarity"].items()}
    offsets = (stencil_offsets(loss_cfg["lncc_window"], grid_shape, device=device)
               if weights.get("lncc", 0.0) > 0 else None)
    return weights, offsets


def latent_prior(latent: Latent, sigma: float) -> torch.Tensor:
    """Eq. 7: ||z_g||^2 / sigma^2 + mean over grid cells of ||z_l(i)||^2 / sigma^2, batch mean."""
    zg = (latent.global_ ** 2).sum(dim=1)
    zl = (latent.local ** 2).sum(dim=1).flatten(1).mean(dim=1)
    return ((zg + zl) / sigma ** 2).mean()


def nephi_terms(fields: NephiFields, latent: Latent, pair: PairTensors, loss_cfg: dict,
                points: int, reg_points: int, sigma: float,
                generator: torch.Generator | None = None, similarity: dict | None = None,
                offsets: torch.Tensor | None = None) -> dict:
    """The four loss terms of eq. 8 as named :class:`Term` objects.

    ``similarity``: weights of :func:`nephi.objectives.similarity.similarity_terms` (default ``{"ncc": 1}``,
    the paper's eq. 10); ``offsets``: its local-NCC stencil. With several similarity terms the
    result also holds their unweighted parts as diagnostics (``sim_ab/ncc``, ...).
    """
    weights = {"ncc": 1.0} if similarity is None else similarity
    both = pair.moving_mask is not None  # with a moving mask: only where both masks hold
    x = pair.sample_fixed_points(points, generator)
    terms = similarity_terms("sim_ab", pair.moving_at, pair.fixed_at,
                             lambda p: fields.phi_ab(p, latent), x, weights, offsets,
                             source_mask_at=pair.moving_mask_at)

    if both:
        y = pair.sample_moving_points(points, generator)
    elif pair.fixed_mask is not None:
        with torch.no_grad():
            y = fields.phi_ab(pair.sample_fixed_points(points, generator), latent)
    else:
        y = pair.sample_moving_points(points, generator)
    terms.update(similarity_terms("sim_ba", pair.fixed_at, pair.moving_at,
                                  lambda p: fields.phi_ba(p, latent), y, weights, offsets,
                                  source_mask_at=pair.fixed_mask_at if both else None))

    r = pair.sample_fixed_points(reg_points, generator, in_mask=False)
    jac = jacobian(Composition(fields.map_ab(latent), fields.map_ba(latent)), r,
                   method=loss_cfg["jacobian"], eps=loss_cfg["fd_eps"])
    reg = gradicon(jac)
    prior = latent_prior(latent, sigma)
    terms["gradicon"] = Term(reg, float(loss_cfg["lambda_reg"]), "||J-I||_F^2 (frame)")
    terms["prior"] = Term(prior, float(loss_cfg["lambda_prior"]), "||z||^2/sigma^2")
    return terms
