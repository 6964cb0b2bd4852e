"""Loss terms of NePhi (paper eqs. 5, 7, 8, 10) and the similarity terms of every IO mode.

Each returns a tensor; diagnostics carry units. All point-based: values are sampled at random
points, the mean over the batch is returned. Similarity (one place for all modes): global NCC
(:func:`ncc_similarity`), windowed local NCC (:func:`lncc_similarity`), MSE
(:func:`mse_similarity`) and Parzen-window mutual information (:func:`mi_similarity`), combined by :func:`similarity_terms` from config weights.
"""

from __future__ import annotations

import torch

from nephi.objectives.terms import Term


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


def lncc_similarity(warped: torch.Tensor, target: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    """Windowed (local) NCC loss: 1 - mean over windows and batch of NCC_w^2 (0 = perfect match).

    ``warped``, ``target`` (B, P, K): the K samples of each of P windows (e.g. a k^d voxel
    stencil around each sampled point). NCC_w^2 = cov^2 / (var_a var_b + eps) with means over
    the K samples, so ``eps`` (intensity^4) only guards windows of constant intensity, whose
    NCC^2 is then 0. Unitless; like :func:`ncc_similarity`, the sign of the correlation is
    ignored (VoxelMorph's local NCC).
    """
    a = warped - warped.mean(dim=-1, keepdim=True)
    b = target - target.mean(dim=-1, keepdim=True)
    cov = (a * b).mean(dim=-1)
    var_a, var_b = (a * a).mean(dim=-1), (b * b).mean(dim=-1)
    return (1.0 - cov ** 2 / (var_a * var_b + eps)).mean()


def mse_similarity(warped: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared difference of samples (B, N) (or (B, P, K)), in intensity^2 of the
    normalized images (see :mod:`nephi.io.intensity`); not invariant to intensity scaling."""
    return ((warped - target) ** 2).mean()


def mi_similarity(warped: torch.Tensor, target: torch.Tensor, bins: int = 32) -> torch.Tensor:
    """Mutual information of samples (B, N) from Parzen-window histograms (Mattes et al. 2003:
    MI estimated on sampled points, each sample spread over ``bins`` bins), as the loss
    ``1 - 2 MI / (H(warped) + H(target))``: 1 when the intensities are independent, lowest
    when one image's intensities determine the other's (the Parzen kernel keeps that floor above
    0, about 0.5 at 32 bins); unitless, MI and entropies in nats.

    Both sample sets are scaled to [0, 1] by their own min and max (the images are normalized,
    :mod:`nephi.io.intensity`, but the moving one is seen through the map); the Parzen kernel is
    a Gaussian of one bin width, so the estimate is differentiable in the samples. For
    multi-modal pairs (CT to MRI, T1 to T2) where intensities do not correspond linearly.
    """
    centres = torch.linspace(0.0, 1.0, bins, device=warped.device, dtype=warped.dtype)
    width = 1.0 / (bins - 1)

    def weights(v):
        lo = v.detach().amin(dim=-1, keepdim=True)
        hi = v.detach().amax(dim=-1, keepdim=True)
        u = (v - lo) / (hi - lo).clamp(min=1e-8)
        w = torch.exp(-0.5 * ((u.unsqueeze(-1) - centres) / width) ** 2)
        return w / w.sum(dim=-1, keepdim=True)

    wa, wb = weights(warped), weights(target)
    joint = wa.transpose(-1, -2) @ wb / warped.shape[-1]
    pa, pb = joint.sum(dim=-1), joint.sum(dim=-2)
    tiny = 1e-12

    def entropy(p):
        return -(p * torch.log(p + tiny)).sum(dim=-1)

    h_a, h_b = entropy(pa), entropy(pb)
    mi = h_a + h_b - entropy(joint.flatten(-2))
    return (1.0 - 2.0 * mi / (h_a + h_b + tiny)).mean()


SIMILARITIES = {"ncc": "1-NCC^2", "lncc": "1-LNCC^2", "mse": "intensity^2",
                "mi": "1-2MI/(H_A+H_B)"}
SIMILARITY_FUNCTIONS = {"ncc": ncc_similarity, "lncc": lncc_similarity, "mse": mse_similarity,
                        "mi": mi_similarity}
"""name -> loss of samples (B, N) (``lncc``: windows (B, P, K))."""
"""Similarity terms by name -> unit. The config holds their weights, e.g.
``similarity: {ncc: 1.0, lncc: 0.0, mse: 0.0}``; see :func:`similarity_terms`."""


def stencil_offsets(window: int, grid_shape, dtype=torch.float32, device=None) -> torch.Tensor:
    """Offsets (k^d, d) in frame units of the k^d voxel stencil centred on a point.

    ``window`` = k (odd, >= 3): offsets (i - (k - 1) / 2) voxels along each axis of the grid of
    ``grid_shape`` (the fixed grid: one voxel is 2 / (N_i - 1) frame units along axis i).
    """
    if isinstance(window, bool) or not isinstance(window, int) or window < 3 or window % 2 == 0:
        raise ValueError(f"local NCC window must be an odd integer >= 3, got {window!r}")
    half = (window - 1) // 2
    steps = torch.arange(-half, half + 1, dtype=dtype, device=device)
    unit = 2.0 / (torch.as_tensor(grid_shape, dtype=dtype, device=device) - 1.0)
    axes = torch.meshgrid(*([steps] * len(grid_shape)), indexing="ij")
    return torch.stack([a.reshape(-1) for a in axes], dim=-1) * unit


MIN_MASKED_POINTS = 64
"""Fewest points a source mask may leave; with fewer (masks that barely overlap yet) the
similarity counts every point of the step."""


def similarity_terms(name: str, source_at, target_at, phi, x: torch.Tensor, weights: dict,
                     offsets: torch.Tensor | None = None, source_mask_at=None) -> dict:
    """Weighted similarity of ``source_at(phi(x))`` and ``target_at(x)`` as named Terms.

    ``phi`` maps target-space points (B, N, d) to source-space points (forward similarity:
    target = fixed, source = moving, phi = phi_AB); ``source_at`` / ``target_at`` sample an
    image at frame points (B, M, d) -> (B, M). ``weights``: name -> weight over
    :data:`SIMILARITIES`; terms of weight 0 are not computed. ``offsets`` (K, d) frame units
    (:func:`stencil_offsets`): the local-NCC stencil, applied around x in the target and around
    phi(x) in the source (phi is evaluated once per point and treated as a translation over the
    window, so a window costs K image samples, not K network evaluations).

    ``source_mask_at``: optional map from source-space points (B, N, d) to (B, N) bool, or to
    None where there is no mask (batch of one): points that ``phi`` carries outside the source image's mask are left out, so the
    similarity counts only where both masks hold (unless fewer than :data:`MIN_MASKED_POINTS`
    remain).

    Returns ``{name: Term(sum_k w_k s_k, 1, unit)}``; when several terms are active also
    ``{name/k: Term(s_k detached, 0, unit)}`` (diagnostics, not part of :func:`total`).
    """
    unknown = sorted(set(weights) - set(SIMILARITIES))
    if unknown:
        raise ValueError(f"unknown similarity term(s) {unknown}; choose from {sorted(SIMILARITIES)}")
    active = {k: float(w) for k, w in weights.items() if float(w) != 0.0}
    if not active:
        raise ValueError("every similarity weight is 0: give at least one a non-zero weight")
    y = phi(x)
    keep = None if source_mask_at is None else source_mask_at(y.detach())
    if keep is not None:
        if x.shape[0] != 1:
            raise ValueError("a source mask needs a batch of one pair")
        if int(keep[0].sum()) >= MIN_MASKED_POINTS:
            x, y = x[:, keep[0]], y[:, keep[0]]
    parts = {}
    if active.keys() & {"ncc", "mse", "mi"}:
        warped, target = source_at(y), target_at(x)
        for key in active.keys() - {"lncc"}:
            parts[key] = SIMILARITY_FUNCTIONS[key](warped, target)
    if "lncc" in active:
        if offsets is None:
            raise ValueError("the lncc similarity needs the stencil offsets")
        b, n, d = x.shape
        k = offsets.shape[0]
        offsets = offsets.to(x)
        warped = source_at((y.unsqueeze(2) + offsets).reshape(b, n * k, d)).reshape(b, n, k)
        target = target_at((x.unsqueeze(2) + offsets).reshape(b, n * k, d)).reshape(b, n, k)
        parts["lncc"] = lncc_similarity(warped, target)
    value = sum(active[k] * parts[k] for k in active)
    unit = SIMILARITIES[next(iter(active))] if len(active) == 1 else "weighted sum"
    terms = {name: Term(value, 1.0, unit)}
    if len(active) > 1:
        for k in active:
            terms[f"{name}/{k}"] = Term(parts[k].detach(), 0.0, SIMILARITIES[k])
    return terms
