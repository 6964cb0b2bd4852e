"""The NePhi objective (paper eqs. 8 and 9) on one batch of pairs.

L = Sim(I_A o phi_AB, I_B) + Sim(I_A, I_B o phi_BA) + lambda_1 GradICON + lambda_2 prior,
with Sim = 1 - NCC^2 on random points (eq. 10) and GradICON on phi_AB(phi_BA(x)) (eq. 5).
"""

from __future__ import annotations

import torch

from .derivatives import jacobian
from .losses import Term, gradicon, latent_prior, ncc_similarity
from .networks import Latent, NephiFields
from .pair import PairTensors


def nephi_terms(fields: NephiFields, latent: Latent, pair: PairTensors, loss_cfg: dict,
                points: int, reg_points: int, sigma: float,
                generator: torch.Generator | None = None) -> dict:
    """The four loss terms of eq. 8 as named :class:`Term` objects."""
    x = pair.sample_fixed_points(points, generator)
    warped = pair.moving_at(fields.phi_ab(x, latent))
    sim_ab = ncc_similarity(warped, pair.fixed_at(x))

    if pair.fixed_mask is not None:
        with torch.no_grad():
            y = fields.phi_ab(pair.sample_fixed_points(points, generator), latent)
    else:
        y = pair.sample_moving_points(points, generator)
    back = pair.fixed_at(fields.phi_ba(y, latent))
    sim_ba = ncc_similarity(back, pair.moving_at(y))

    r = pair.sample_fixed_points(reg_points, generator, in_mask=False)
    jac = jacobian(lambda p: fields.phi_ab(fields.phi_ba(p, latent), latent), r,
                   method=loss_cfg["jacobian"], eps=loss_cfg["fd_eps"])
    reg = gradicon(jac)
    prior = latent_prior(latent, sigma)
    return {
        "sim_ab": Term(sim_ab, 1.0, "1-NCC^2"),
        "sim_ba": Term(sim_ba, 1.0, "1-NCC^2"),
        "gradicon": Term(reg, float(loss_cfg["lambda_reg"]), "||J-I||_F^2 (frame)"),
        "prior": Term(prior, float(loss_cfg["lambda_prior"]), "||z||^2/sigma^2"),
    }
