"""Feed-forward registration with a trained network, optionally refined by instance optimization.

1. :func:`load_model` reads a checkpoint of :mod:`nephi.learn.trainer`; it needs nothing else (model
   config, weights, preprocessing and training config are inside).
2. :func:`register_with_model` brings the pair to the network grid exactly as training data was
   (:func:`nephi.data.preprocess.preprocess_pair` with the checkpoint's preprocessing), predicts the
   latent codes in one forward pass, and hands the prediction to
   :func:`nephi.pipeline.pairwise.register` with ``network_view``: the fields live in the network grid's
   frame, IO (``optim.steps`` > 0) refines copies of the latent codes (``io_params='latent'``)
   or of the latent codes and fields (``'all'``) there, and the outputs are written on the
   original fixed and moving grids (A = moving, B = fixed; warp.nii.gz maps fixed points to
   moving points). The loaded model is never changed.
3. :func:`register_pairs` does this for every row of a pairs CSV with one loaded model.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

import numpy as np
import torch

from nephi.config.loader import load_defaults
from nephi.config.options import io_steps
from nephi.data.preprocess import PrepConfig, preprocess_pair, seen_through
from nephi.errors import NephiInputError
from nephi.geometry.pair import PairTensors
from nephi.io.atomic import check_output_dir
from nephi.models.encoder import RegistrationNet
from nephi.pipeline.batch import run_pairs
from nephi.pipeline.inputs import LoadedPair, select_device
from nephi.pipeline.pairwise import global_alignment, register_pair, save_result
from nephi.results.result import Result


__all__ = ["LoadedModel", "load_model", "base_config", "predict", "register_with_model",
           "register_pairs"]

@dataclass
class LoadedModel:
    """A trained network in eval mode and what came with it. Its parameters keep
    ``requires_grad`` (IO with ``io_params='all'`` optimizes a copy of the fields)."""

    net: RegistrationNet
    prep: PrepConfig
    train_config: dict
    path: str
    step: int
    sample_in_mask: bool
    masks: bool  # the training pairs had masks, so percentile normalization looked inside them


def load_model(path: str) -> LoadedModel:
    """Load a training checkpoint (``best.pt`` or ``step_*.pt``) on the CPU."""
    net, ckpt = RegistrationNet.load(path)
    try:
        prep = PrepConfig.from_dict(ckpt["preprocessing"])
        cfg = ckpt["config"]
        sample_in_mask = bool(cfg["data"]["sample_in_mask"])
        # checkpoints before the record: similarity points in the mask needed masks
        masks = bool(ckpt["data"].get("masks", sample_in_mask))
    except (KeyError, TypeError, NephiInputError) as exc:
        raise NephiInputError(f"checkpoint {path}: incomplete or inconsistent "
                              f"({exc})") from None
    return LoadedModel(net=net, prep=prep, train_config=cfg, path=os.path.abspath(path),
                       step=int(ckpt["step"]), sample_in_mask=sample_in_mask, masks=masks)


def base_config(model: LoadedModel) -> dict:
    """Pairwise defaults with the model's loss, latent prior and field settings, so IO from the
    prediction optimizes what training optimized. Command-line options go on top of this."""
    cfg = load_defaults("pairwise")
    tc = model.train_config
    fields = model.net.fields.cfg
    for key in cfg["model"]:
        cfg["model"][key] = getattr(fields, key)
    cfg["loss"].update({k: tc["loss"][k] for k in cfg["loss"] if k in tc["loss"]})
    cfg["latent"]["sigma"] = tc["latent"]["sigma"]
    cfg["intensity"] = dict(model.prep.intensity)
    cfg["optim"]["steps"] = 0
    # the alignment the training pairs went through (nephi-prep --align; none: pairs as they
    # come); --align rigid|affine|none overrides it
    cfg["align"]["mode"] = model.prep.align
    return cfg


def predict(model: LoadedModel, pair: LoadedPair, cfg: dict, io_params: str = "latent",
            moving_mask: np.ndarray | None = None, progress: bool = True) -> Result:
    """Predict, optionally refine (``cfg['optim']['steps']`` IO steps) -> an in-memory Result.

    ``pair.mask`` (fixed mask) and ``moving_mask`` (bool on the moving grid) are needed when the
    model was trained on masked images, or on intensities normalized by percentiles within
    masks; a fixed mask also restricts similarity points in IO.
    """
    if io_params not in ("latent", "all"):
        raise NephiInputError(f"--io-params: {io_params!r} is not one of latent, all")
    if cfg["align"]["only"]:
        raise NephiInputError("--align-only: a pure linear registration needs no trained "
                              "network; leave out --checkpoint")
    if pair.mask is None or moving_mask is None:
        why = None
        if model.prep.apply_mask:
            why = "was trained on masked images"
        elif model.masks and model.prep.intensity["method"] == "percentile":
            low, high = model.prep.intensity["low"], model.prep.intensity["high"]
            why = (f"was trained on intensities scaled by the {low:g}-{high:g} percentiles within "
                   "each image's mask, and sees other intensities without one")
        if why:
            raise NephiInputError(f"checkpoint {model.path}: the network {why}; give the fixed "
                                  "and the moving mask (--mask and --moving-mask, or the CSV "
                                  "columns fixed_mask and moving_mask)")
    device = select_device(cfg["device"])
    aligned, moving = None, pair.moving
    if cfg["align"]["mode"] != "none":
        # the encoder sees the moving image through the affine A: an image whose voxel i lies
        # at A^-1(M i) samples as moving(A(x)) wherever the preprocessing resamples it
        aligned = global_alignment(pair, cfg, None, progress)
        moving = seen_through(pair.moving, aligned[0].matrix)
    t0 = time.perf_counter()
    prepared = preprocess_pair(moving, pair.fixed, model.prep, moving_mask=moving_mask,
                               fixed_mask=pair.mask)
    grid = prepared.grid
    moving = torch.as_tensor(prepared.moving, device=device).reshape(1, 1, *grid.shape)
    fixed = torch.as_tensor(prepared.fixed, device=device).reshape(1, 1, *grid.shape)
    mask = None
    if prepared.fixed_mask is not None:
        mask = torch.as_tensor(prepared.fixed_mask, device=device).unsqueeze(0)
    tensors = PairTensors(fixed, moving, grid, grid, mask)
    prep_seconds = time.perf_counter() - t0

    net = model.net.to(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t1 = time.perf_counter()
    with torch.no_grad():
        latent = net.encode(moving, fixed)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    ff_seconds = time.perf_counter() - t1

    extra = {
        "mode": "feedforward" if io_steps(cfg) == 0 else "feedforward+io",
        "checkpoint": model.path,
        "checkpoint_step": model.step,
        "passes": model.net.passes,
        "io_params": io_params,
        "network_grid": {"shape": list(grid.shape), "spacing_mm": grid.spacing.tolist(),
                         "affine": grid.affine.tolist()},
        "preprocessing": model.prep.to_dict(),
        "preprocess_seconds": prep_seconds,
        "feedforward_seconds": ff_seconds,
    }
    frame_to_net = pair.fixed.grid.frame_to(grid)
    return register_pair(pair, cfg, progress=progress, init=(net.fields, latent),
                         io_params=io_params, extra_summary=extra,
                         network_view=(tensors, frame_to_net), aligned=aligned)


def register_with_model(model: LoadedModel, pair: LoadedPair, out_dir: str, cfg: dict,
                        io_params: str = "latent", moving_mask: np.ndarray | None = None,
                        command: list | None = None, progress: bool = True) -> dict:
    """:func:`predict`, then write the result folder ``out_dir``; returns the summary."""
    check_output_dir(out_dir)
    result = predict(model, pair, cfg, io_params, moving_mask, progress)
    save_result(result, out_dir, cfg, command)
    return result.summary


def register_pairs(model: LoadedModel, pairs_csv: str, out_dir: str, cfg: dict,
                   io_params: str = "latent", command: list | None = None,
                   progress: bool = True, log=print) -> dict:
    """Feed-forward registration of every pair of ``pairs_csv`` (see
    :func:`nephi.pipeline.batch.run_pairs`: one folder per pair, resumable, summary.csv)."""

    def one(pair: LoadedPair, row: dict, folder: str) -> dict:
        return register_with_model(model, pair, folder, cfg, io_params, pair.moving_mask,
                                   command=command, progress=progress)

    return run_pairs(pairs_csv, out_dir, one, log)
