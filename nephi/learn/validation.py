"""Validation during training: metrics of the validation pairs (loss terms, folding, landmark
error, Dice from :mod:`nephi.results.metrics`), TensorBoard images, and the metric that selects
``best.pt``.
"""

from __future__ import annotations

import numpy as np
import torch

from nephi.data.pairfile import PairFile
from nephi.errors import NephiInputError
from nephi.geometry.grid import Grid, apply_affine_torch
from nephi.geometry.pair import PairTensors
from nephi.geometry.sampling import sample_image
from nephi.models.encoder import RegistrationNet
from nephi.objectives.nephi_loss import nephi_terms, training_similarity
from nephi.objectives.terms import total
from nephi.results.metrics import folding_percent, landmark_errors, mean_dice
from nephi.transforms.dense import evaluate_chunked
from nephi.transforms.displacement import map_points
from nephi.transforms.jacobian import jacobian_determinant_dense


METRICS = {"landmark_error": ("val/landmark_error_mm", "min"),
           "dice": ("val/dice", "max"),
           "loss": ("val/loss", "min")}


def _grid_lines(shape: tuple, every: int) -> np.ndarray:
    """An image (shape) that is 1 on grid lines every ``every`` voxels (along all axes), else 0."""
    out = np.zeros(shape, dtype=np.float32)
    for axis, n in enumerate(shape):
        index = [slice(None)] * len(shape)
        index[axis] = slice(0, n, every)
        out[tuple(index)] = 1.0
    return out


def _view(vol: np.ndarray) -> np.ndarray:
    """A 2-D view for TensorBoard: 2-D as is; 3-D the middle slice of axis 1 (coronal for RAS
    grids), axis 2 drawn upwards."""
    if vol.ndim == 2:
        return vol
    return np.flipud(vol[:, vol.shape[1] // 2, :].T)


@torch.no_grad()
def evaluate_pair(net: RegistrationNet, arrays: dict, grid: Grid, cfg: dict, device,
                  generator: torch.Generator | None = None, images: bool = False) -> dict:
    """Validation metrics of one preprocessed pair (arrays as :meth:`PairFile.read` gives them)
    on its network ``grid`` (real affine, so landmark errors are in mm).

    Returns scalars: val loss terms; folding percent (det J <= 0, % of voxels, and within the
    fixed mask if any); landmark errors before/after (mm) when landmarks exist; Dice
    before/after when labels exist; with ``images`` also 2-D views under ``"images"``.
    """
    d = grid.ndim
    moving = torch.as_tensor(arrays["moving"], device=device).reshape(1, 1, *grid.shape)
    fixed = torch.as_tensor(arrays["fixed"], device=device).reshape(1, 1, *grid.shape)
    latent = net.encode(moving, fixed)
    mask = arrays.get("fixed_mask")
    sample_mask = (torch.as_tensor(mask > 0, device=device).unsqueeze(0)
                   if mask is not None and cfg["data"]["sample_in_mask"] else None)
    pair = PairTensors(fixed, moving, grid, grid, sample_mask)
    similarity, offsets = training_similarity(cfg["loss"], grid.shape, device)
    terms = nephi_terms(net.fields, latent, pair, cfg["loss"], int(cfg["val"]["points"]),
                        int(cfg["train"]["reg_points"]), float(cfg["latent"]["sigma"]), generator,
                        similarity, offsets)
    out = {f"val/{k}": float(t.value) for k, t in terms.items()}
    out["val/loss"] = float(total(terms))

    x = grid.normalized_points(device=device).reshape(-1, d)
    ab = evaluate_chunked(lambda p: net.fields.phi_ab(p, latent), x, int(cfg["val"]["chunk"]))
    index = apply_affine_torch(grid.normalized_to_index, ab)
    det = jacobian_determinant_dense(index.reshape(*grid.shape, d).movedim(-1, 0)).cpu().numpy()
    out["val/folding_percent"] = folding_percent(det)
    if mask is not None:
        out["val/folding_percent_in_mask"] = folding_percent(det[mask > 0])

    if "fixed_points" in arrays:
        to_ras = torch.as_tensor(grid.normalized_to_ras, dtype=ab.dtype, device=device)
        disp = (ab - x) @ to_ras[:d, :d].T
        disp_ras = disp.reshape(*grid.shape, d).cpu().numpy()
        mapped = map_points(arrays["fixed_points"], disp_ras, grid)
        out["val/landmark_error_before_mm"] = landmark_errors(
            arrays["fixed_points"], arrays["moving_points"])["mean_mm"]
        out["val/landmark_error_mm"] = landmark_errors(mapped, arrays["moving_points"])["mean_mm"]

    def warp(vol: np.ndarray, mode: str) -> np.ndarray:
        t = torch.as_tensor(np.asarray(vol, dtype=np.float32), device=device)
        t = t.reshape(1, 1, *grid.shape)
        return sample_image(t, ab.unsqueeze(0), mode=mode, padding="zeros").reshape(
            grid.shape).cpu().numpy()

    if "fixed_label" in arrays and "moving_label" in arrays:
        out["val/dice_before"] = mean_dice(arrays["fixed_label"], arrays["moving_label"])
        out["val/dice"] = mean_dice(arrays["fixed_label"],
                                    np.rint(warp(arrays["moving_label"], "nearest")))
    if images:
        lines = _grid_lines(grid.shape, max(2, min(grid.shape) // 8))
        out["images"] = {"fixed": _view(arrays["fixed"]), "moving": _view(arrays["moving"]),
                         "warped": _view(warp(arrays["moving"], "bilinear")),
                         "deformed_grid": _view(warp(lines, "bilinear"))}
    return out


def validation_metrics(net: RegistrationNet, data: PairFile, cfg: dict, device) -> tuple:
    """Mean validation metrics over the validation split (at most val.max_pairs pairs) and the
    image views of the first val.images pairs."""
    names = data.splits["val"] or data.splits["train"][:1]
    limit = int(cfg["val"]["max_pairs"])
    names = names[:limit] if limit > 0 else names
    was_training = net.training
    net.eval()
    sums: dict = {}
    views = []
    for k, name in enumerate(names):
        gen = torch.Generator().manual_seed(int(cfg["seed"]) + k)
        res = evaluate_pair(net, data.read(name), data.grid(name), cfg, device, gen,
                            images=k < int(cfg["val"]["images"]))
        if "images" in res:
            views.append((name, res.pop("images")))
        for key, value in res.items():
            sums.setdefault(key, []).append(value)
    net.train(was_training)
    return {k: float(np.mean(v)) for k, v in sums.items()}, views


def log_validation(writer, metrics: dict, views: list, step: int, seconds: float) -> None:
    """Validation scalars and images (each view scaled to [0, 1]) to TensorBoard."""
    for key, value in metrics.items():
        writer.add_scalar(key, value, step)
    writer.add_scalar("val/seconds", seconds, step)
    for name, view in views:
        for kind, img in view.items():
            img = np.asarray(img, dtype=np.float32)
            img = (img - img.min()) / max(float(img.max() - img.min()), 1e-8)
            writer.add_image(f"val_{name}/{kind}", img, step, dataformats="HW")
    writer.flush()


def selection_metric(cfg: dict, data: PairFile) -> tuple:
    """(TensorBoard key, 'min' | 'max') of the metric selecting best.pt."""
    name = cfg["val"]["metric"]
    if name == "auto":
        name = ("landmark_error" if data.has["fixed_points"]
                else "dice" if data.has["fixed_label"] else "loss")
    if name == "landmark_error" and not data.has["fixed_points"]:
        raise NephiInputError("config key val.metric: landmark_error needs landmarks in the data")
    if name == "dice" and not data.has["fixed_label"]:
        raise NephiInputError("config key val.metric: dice needs label maps in the data")
    return METRICS[name]
