"""Learning-based NePhi training (paper eq. 9) with accelerate: DDP, mixed precision, gradient
accumulation, TensorBoard, self-describing checkpoints and exact resumption.

Entry point: ``train/train.py`` (``accelerate launch [opts] train/train.py --config CONFIG.yaml
--output-dir DIR [--resume] [key=value ...]``). Each optimizer step, on every process:

1. the next ``train.batch_size`` pairs of the step's share of the data (a deterministic function
   of the step, the process index and the seed, so a resumed run sees the same batches);
2. the encoder predicts the latent codes from [moving, fixed] on the network grid;
3. :func:`nephi.objective.nephi_terms` samples points (a generator seeded by seed, step,
   micro-step and process) and gives the eq. 8/9 terms: symmetric 1 - NCC^2, GradICON on
   phi_AB(phi_BA(x)), latent prior; Adam with warmup and a cosine / linear / constant schedule.

The fields and the losses always run in float32 (finite-difference Jacobians with a step of 1e-3
frame units are meaningless in 16-bit); ``train.mixed_precision`` applies to the encoder.

Output folder DIR::

    config.yaml                  resolved configuration of the run
    tensorboard/                 scalars (every loss term, lr, throughput, validation metrics)
                                 and validation images (fixed, moving, warped, deformed grid)
    checkpoints/step_XXXXXXXX.pt the last ``checkpoint.keep_last`` checkpoints
    checkpoints/best.pt          best by the validation metric
    replica_rank<R>.json         parameter hash of each process at the end (DDP sanity check)

A checkpoint holds everything inference needs (model config, weights, preprocessing, resolved
config, code version) and everything resumption needs (optimizer, scheduler, step, RNG states of
every process). Checkpoints are written to a temporary file and renamed (``os.replace``).
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import json
import math
import os
import random
import subprocess
import sys
import time

import numpy as np
import torch
import yaml

from . import __version__
from .config import load_defaults, merge, parse_override, read_yaml, require_positive, set_dotted
from .dataset import PairDataset, PairFile
from .dense import evaluate_chunked
from .derivatives import NEPHI_METHODS, jacobian_determinant_dense
from .encoder import EncoderConfig, RegistrationNet
from .errors import NephiInputError
from .geometry import Grid
from .landmarks import landmark_errors, map_points
from .losses import total
from .networks import FieldConfig
from .objective import nephi_terms
from .pair import PairTensors
from .sampling import sample_image

CHECKPOINT_FORMAT = "nephi-checkpoint"
CHECKPOINT_VERSION = 1
SCHEDULES = ("constant", "cosine", "linear")
METRICS = {"landmark_error": ("val/landmark_error_mm", "min"),
           "dice": ("val/dice", "max"),
           "loss": ("val/loss", "min")}


# ----------------------------------------------------------------------------- configuration
def resolve_config(config_path: str | None, overrides: list) -> dict:
    """Defaults (nephi/defaults/train.yaml) <- CONFIG.yaml <- ``key=value`` overrides."""
    cfg = load_defaults("train")
    if config_path:
        cfg = merge(cfg, read_yaml(config_path), source=f"config {config_path}")
    return apply_overrides(cfg, overrides)


def apply_overrides(cfg: dict, overrides: list) -> dict:
    for text in overrides:
        key, value = parse_override(text)
        cfg = set_dotted(cfg, key, value, source=f"override {text}")
    return cfg


def validate_config(cfg: dict) -> None:
    require_positive(cfg, ["train.steps", "train.batch_size", "train.grad_accum", "train.lr",
                           "train.points", "train.reg_points", "train.log_every", "val.every",
                           "val.points", "val.chunk", "checkpoint.every", "checkpoint.keep_last",
                           "latent.sigma", "loss.fd_eps", "model.latent_channels",
                           "model.hidden", "model.layers", "model.local_target"])
    t = cfg["train"]
    if t["schedule"] not in SCHEDULES:
        raise NephiInputError(f"config key train.schedule: {t['schedule']!r} is not one of "
                              f"{', '.join(SCHEDULES)}")
    if t["mixed_precision"] not in ("no", "fp16", "bf16"):
        raise NephiInputError(f"config key train.mixed_precision: {t['mixed_precision']!r} is not "
                              "one of no, fp16, bf16")
    if cfg["val"]["metric"] not in ("auto", *METRICS):
        raise NephiInputError(f"config key val.metric: {cfg['val']['metric']!r} is not one of "
                              f"auto, {', '.join(METRICS)}")
    if cfg["loss"]["jacobian"] not in NEPHI_METHODS:
        raise NephiInputError(f"config key loss.jacobian: {cfg['loss']['jacobian']!r} is not one "
                              f"of {', '.join(NEPHI_METHODS)}")
    if cfg["data"]["build"] not in ("none", "synthetic-lung", "triangles-circles"):
        raise NephiInputError(f"config key data.build: {cfg['data']['build']!r} is not one of "
                              "none, synthetic-lung, triangles-circles")
    if not cfg["model"]["encoder_channels"]:
        raise NephiInputError("config key model.encoder_channels: needs at least one entry")


def lr_factor(cfg: dict, step: int) -> float:
    """Learning-rate multiplier after ``step`` optimizer steps: linear warmup, then the schedule."""
    t = cfg["train"]
    warm, steps, floor = int(t["warmup_steps"]), int(t["steps"]), float(t["min_lr_ratio"])
    if step < warm:
        return (step + 1) / warm
    if t["schedule"] == "constant":
        return 1.0
    progress = min(1.0, (step - warm) / max(1, steps - warm))
    if t["schedule"] == "linear":
        return 1.0 - (1.0 - floor) * progress
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_net(cfg: dict, shape: tuple) -> RegistrationNet:
    """The network for a data grid of spatial ``shape`` from a resolved config."""
    m = cfg["model"]
    enc = EncoderConfig(input_shape=list(shape), channels=list(m["encoder_channels"]),
                        latent_channels=m["latent_channels"], local_target=m["local_target"],
                        groups=m["norm_groups"])
    fields = FieldConfig(ndim=len(shape), latent_channels=m["latent_channels"],
                         latent_grid=enc.local_grid[0], hidden=m["hidden"], layers=m["layers"],
                         fourier_features=m["fourier_features"],
                         fourier_scale=m["fourier_scale"], omega0=m["omega0"])
    return RegistrationNet(enc, fields, seed=int(cfg["seed"]))


# ----------------------------------------------------------------------------- data
def ensure_data(cfg: dict, log=print) -> str:
    """Return data.path; build it first when it is missing and data.build says how."""
    d = cfg["data"]
    path = os.path.abspath(d["path"])
    if os.path.isfile(path):
        return path
    if d["build"] == "none":
        raise NephiInputError(f"config key data.path: {d['path']} does not exist (build it with "
                              "nephi-prep, or set data.build)")
    from data_prep.build import build_synthetic_lung, build_triangles_circles

    log(f"nephi-train: building the {d['build']} training data into {path} (first use)")
    t0 = time.perf_counter()
    if d["build"] == "synthetic-lung":
        s = d["synthetic_lung"]
        counts = build_synthetic_lung(path, s["n"], s["shape"], s["spacing"], s["motion_mm"],
                                      s["seed"], s["n_landmarks"], d["val_fraction"],
                                      s["apply_mask"], d["build_workers"],
                                      builder="nephi.training.ensure_data")
    else:
        s = d["triangles_circles"]
        counts = build_triangles_circles(path, s["n"], s["size"], s["mode"], s["seed"],
                                         d["val_fraction"], builder="nephi.training.ensure_data")
    log(f"nephi-train: built {counts['train']} training and {counts['val']} validation pairs "
        f"in {time.perf_counter() - t0:.0f} s")
    return path


class StepBatches(torch.utils.data.Sampler):
    """Index lists of one process, one per micro-step, for global micro-steps [start, stop).

    Global micro-step g draws ``batch * world`` consecutive entries of an endless sequence of
    seeded permutations of the training set; process ``rank`` takes its ``batch`` of them. The
    batches depend only on (seed, g, rank, world), which makes resumption exact.
    """

    def __init__(self, n: int, batch: int, rank: int, world: int, start: int, stop: int,
                 seed: int):
        self.n, self.batch, self.rank, self.world = n, batch, rank, world
        self.start, self.stop, self.seed = start, stop, seed
        self._perm = {}

    def _entry(self, position: int) -> int:
        epoch, offset = divmod(position, self.n)
        if epoch not in self._perm:
            self._perm = {epoch: np.random.default_rng([self.seed, epoch]).permutation(self.n)}
        return int(self._perm[epoch][offset])

    def __len__(self) -> int:
        return self.stop - self.start

    def __iter__(self):
        for g in range(self.start, self.stop):
            first = (g * self.world + self.rank) * self.batch
            yield [self._entry(first + j) for j in range(self.batch)]


# ----------------------------------------------------------------------------- model step
class TrainStep(torch.nn.Module):
    """The module DDP wraps: forward = encoder + eq. 9 loss of a batch on one grid."""

    def __init__(self, net: RegistrationNet, grid: Grid, cfg: dict):
        super().__init__()
        self.net = net
        self.grid = grid
        self.loss_cfg = dict(cfg["loss"])
        self.sigma = float(cfg["latent"]["sigma"])

    def forward(self, moving: torch.Tensor, fixed: torch.Tensor, fixed_mask, points: int,
                reg_points: int, generator: torch.Generator):
        """moving, fixed (B, 1, *S); fixed_mask (B, *S) bool or None -> (loss, {term: value})."""
        latent = self.net.encode(moving, fixed)
        with torch.autocast(device_type=moving.device.type, enabled=False):
            pair = PairTensors(fixed.float(), moving.float(), self.grid, self.grid, fixed_mask)
            terms = nephi_terms(self.net.fields, latent, pair, self.loss_cfg, points, reg_points,
                                self.sigma, generator)
            loss = total(terms)
        return loss, {name: t.value.detach() for name, t in terms.items()}


def step_generator(seed: int, step: int, micro: int, rank: int) -> torch.Generator:
    """The point-sampling generator of one micro-step of one process."""
    mixed = hashlib.sha256(f"{seed}/{step}/{micro}/{rank}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(mixed[:8], "little") & (2 ** 63 - 1))


# ----------------------------------------------------------------------------- validation
def _dice(a: np.ndarray, b: np.ndarray) -> float:
    """Mean Dice over the labels > 0 of ``b`` (the fixed label map)."""
    scores = []
    for lab in np.unique(b):
        if lab == 0:
            continue
        x, y = a == lab, b == lab
        scores.append(2.0 * np.logical_and(x, y).sum() / max(1, x.sum() + y.sum()))
    return float(np.mean(scores)) if scores else float("nan")


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
    terms = nephi_terms(net.fields, latent, pair, cfg["loss"], int(cfg["val"]["points"]),
                        int(cfg["train"]["reg_points"]), float(cfg["latent"]["sigma"]), generator)
    out = {f"val/{k}": float(t.value) for k, t in terms.items()}
    out["val/loss"] = float(total(terms))

    x = grid.normalized_points(device=device).reshape(-1, d)
    ab = evaluate_chunked(lambda p: net.fields.phi_ab(p, latent), x, int(cfg["val"]["chunk"]))
    index = ab @ torch.as_tensor(grid.normalized_to_index[:d, :d].T, dtype=ab.dtype,
                                 device=device)
    index = index + torch.as_tensor(grid.normalized_to_index[:d, d], dtype=ab.dtype,
                                    device=device)
    det = jacobian_determinant_dense(index.reshape(*grid.shape, d).movedim(-1, 0)).cpu().numpy()
    out["val/folding_percent"] = float(100.0 * np.mean(det <= 0))
    if mask is not None:
        out["val/folding_percent_in_mask"] = float(100.0 * np.mean(det[mask > 0] <= 0))

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
        out["val/dice_before"] = _dice(arrays["moving_label"], arrays["fixed_label"])
        out["val/dice"] = _dice(np.rint(warp(arrays["moving_label"], "nearest")),
                                arrays["fixed_label"])
    if images:
        lines = _grid_lines(grid.shape, max(2, min(grid.shape) // 8))
        out["images"] = {"fixed": _view(arrays["fixed"]), "moving": _view(arrays["moving"]),
                         "warped": _view(warp(arrays["moving"], "bilinear")),
                         "deformed_grid": _view(warp(lines, "bilinear"))}
    return out


def validate(net: RegistrationNet, data: PairFile, cfg: dict, device) -> tuple:
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


# ----------------------------------------------------------------------------- checkpoints
def code_version() -> dict:
    """nephi's version and, when the code is a git checkout, its commit and dirty flag."""
    out = {"nephi": __version__}
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        commit = subprocess.run(["git", "-C", root, "rev-parse", "HEAD"], capture_output=True,
                                text=True, timeout=10)
        if commit.returncode == 0:
            out["git_commit"] = commit.stdout.strip()
            dirty = subprocess.run(["git", "-C", root, "status", "--porcelain", "--untracked-files=no"],
                                   capture_output=True, text=True, timeout=10)
            out["git_dirty"] = bool(dirty.stdout.strip())
    except (OSError, subprocess.SubprocessError):
        pass
    return out


def rng_state() -> dict:
    """RNG states of this process as plain Python values (lists of ints; picklable across
    processes and loadable with ``weights_only``)."""
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {"python": random.getstate(),
             "numpy": [name, keys.tolist(), int(pos), int(has_gauss), float(gauss)],
             "torch": torch.get_rng_state().tolist()}
    if torch.cuda.is_available():
        state["cuda"] = [s.tolist() for s in torch.cuda.get_rng_state_all()]
    return state


def set_rng_state(state: dict) -> None:
    """Restore the states of :func:`rng_state`."""
    random.setstate(_tuples(state["python"]))
    name, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([torch.tensor(s, dtype=torch.uint8) for s in state["cuda"]])


def _tuples(value):
    if isinstance(value, list):
        return tuple(_tuples(v) for v in value)
    return value


def save_atomic(payload: dict, path: str) -> None:
    """torch.save to ``path`` via a temporary file in the same folder and os.replace."""
    tmp = f"{path}.tmp-{os.getpid()}"
    torch.save(payload, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: str) -> dict:
    """Load and check a nephi checkpoint (tensors and plain values only: weights_only)."""
    if not os.path.isfile(path):
        raise NephiInputError(f"checkpoint {path}: file not found")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for foreign or corrupt files
        raise NephiInputError(f"checkpoint {path}: not a readable checkpoint "
                              f"({str(exc).splitlines()[0][:160]})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise NephiInputError(f"checkpoint {path}: not a nephi checkpoint")
    if int(ckpt.get("format_version", 0)) > CHECKPOINT_VERSION:
        raise NephiInputError(f"checkpoint {path}: format version {ckpt['format_version']} is "
                              f"newer than this nephi reads ({CHECKPOINT_VERSION})")
    return ckpt


def step_checkpoints(folder: str) -> list:
    """Step checkpoints of a run folder, oldest first."""
    return sorted(glob.glob(os.path.join(folder, "checkpoints", "step_*.pt")))


def param_hash(module: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for name, p in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(p.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


# ----------------------------------------------------------------------------- the run
def _log(accelerator, text: str) -> None:
    if accelerator.is_main_process:
        print(text, flush=True)


def train(cfg: dict, output_dir: str, resume: bool = False, command: list | None = None) -> dict:
    """Run (or resume) training; returns the last validation metrics (main process)."""
    from accelerate import Accelerator
    from accelerate.utils import gather_object
    from tqdm import tqdm

    validate_config(cfg)
    t = cfg["train"]
    accelerator = Accelerator(cpu=not torch.cuda.is_available(),
                              mixed_precision=t["mixed_precision"],
                              gradient_accumulation_steps=int(t["grad_accum"]))
    device, rank, world = accelerator.device, accelerator.process_index, accelerator.num_processes
    output_dir = os.path.abspath(output_dir)
    ckpt_dir = os.path.join(output_dir, "checkpoints")

    ckpt = None
    if resume:
        found = step_checkpoints(output_dir)
        if not found:
            raise NephiInputError(f"--resume: no checkpoint in {ckpt_dir}")
        ckpt = load_checkpoint(found[-1])
        _log(accelerator, f"nephi-train: resuming from {found[-1]} (step {ckpt['step']})")

    with accelerator.main_process_first():
        data_path = ensure_data(cfg, log=lambda s: _log(accelerator, s))
    cfg = set_dotted(cfg, "data.path", data_path)
    data = PairFile(data_path)
    if cfg["data"]["sample_in_mask"] and not data.has["fixed_mask"]:
        raise NephiInputError("config key data.sample_in_mask: the data has no fixed masks")
    metric_key, metric_mode = selection_metric(cfg, data)
    train_set = PairDataset(data_path, "train")
    if len(train_set) == 0:
        raise NephiInputError(f"dataset {data_path}: no training pair")

    torch.manual_seed(int(cfg["seed"]))
    net = build_net(cfg, data.shape)
    if ckpt is not None:
        if ckpt["model_config"] != net.model_config():
            raise NephiInputError("--resume: the model configuration differs from the checkpoint")
        net.load_state_dict(ckpt["model_state"])
    step_module = TrainStep(net, data.canonical_grid(), cfg)
    optimizer = torch.optim.Adam(net.parameters(), lr=float(t["lr"]))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(cfg, s))
    step_module, optimizer = accelerator.prepare(step_module, optimizer)
    start = 0
    best = None
    if ckpt is not None:
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        start = int(ckpt["step"])
        best = ckpt.get("best")
        states = ckpt.get("rng_states") or []
        if len(states) == world:
            set_rng_state(states[rank])

    steps, accum, batch = int(t["steps"]), int(t["grad_accum"]), int(t["batch_size"])
    writer = None
    if accelerator.is_main_process:
        os.makedirs(ckpt_dir, exist_ok=True)
        with open(os.path.join(output_dir, "config.yaml"), "w") as fh:
            yaml.safe_dump(cfg, fh, sort_keys=False)
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(os.path.join(output_dir, "tensorboard"), purge_step=start + 1)
        n_params = sum(p.numel() for p in net.parameters())
        enc = net.encoder.cfg
        _log(accelerator, f"nephi-train: {len(train_set)} training / {len(data.splits['val'])} "
             f"validation pairs on a {'x'.join(map(str, data.shape))} grid; {world} "
             f"process(es) on {device}; z_l grid {'x'.join(map(str, enc.local_grid))} "
             f"(branch after {enc.branch} stride-2 blocks); {n_params / 1e6:.2f} M parameters; "
             f"output {output_dir}")

    sampler = StepBatches(len(train_set), batch, rank, world, start * accum, steps * accum,
                          int(cfg["seed"]))
    loader = torch.utils.data.DataLoader(train_set, batch_sampler=sampler,
                                         num_workers=int(cfg["data"]["loader_workers"]))
    batches = iter(loader)
    sample_in_mask = bool(cfg["data"]["sample_in_mask"])
    points, reg_points = int(t["points"]), int(t["reg_points"])
    bar = tqdm(total=steps, initial=start, disable=not (accelerator.is_main_process and t["progress"]),
               desc="train", unit="step", dynamic_ncols=True)
    running: dict = {}
    last_log, last_time = start, time.perf_counter()
    metrics: dict = {}
    step_module.train()
    for step in range(start, steps):
        for micro in range(accum):
            item = next(batches)
            moving = item["moving"].to(device, non_blocking=True)
            fixed = item["fixed"].to(device, non_blocking=True)
            mask = item["fixed_mask"].to(device) if sample_in_mask else None
            gen = step_generator(int(cfg["seed"]), step, micro, rank)
            with accelerator.accumulate(step_module):
                loss, values = step_module(moving, fixed, mask, points, reg_points, gen)
                accelerator.backward(loss)
                if accelerator.sync_gradients and float(t["grad_clip"]) > 0:
                    accelerator.clip_grad_norm_(step_module.parameters(), float(t["grad_clip"]))
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            values["loss"] = loss.detach()
            for k, v in values.items():
                running[k] = running.get(k, 0.0) + v.float() / accum
        scheduler.step()
        done = step + 1
        bar.update(1)

        if done % int(t["log_every"]) == 0 or done == steps:
            keys = sorted(running)
            stacked = torch.stack([running[k] for k in keys]) / (done - last_log)
            stacked = accelerator.reduce(stacked.to(device), reduction="mean")
            now = time.perf_counter()
            if accelerator.is_main_process:
                pairs_s = (done - last_log) * accum * batch * world / (now - last_time)
                for k, v in zip(keys, stacked.tolist()):
                    writer.add_scalar(f"train/{k}", v, done)
                writer.add_scalar("train/lr", scheduler.get_last_lr()[0], done)
                writer.add_scalar("throughput/pairs_per_s", pairs_s, done)
                writer.add_scalar("throughput/points_per_s", pairs_s * 2 * points, done)
                bar.set_postfix(loss=f"{stacked[keys.index('loss')]:.4f}",
                                lr=f"{scheduler.get_last_lr()[0]:.1e}", pairs_s=f"{pairs_s:.2f}")
            running, last_log, last_time = {}, done, now

        do_val = done % int(cfg["val"]["every"]) == 0 or done == steps
        do_ckpt = done % int(cfg["checkpoint"]["every"]) == 0 or done == steps
        if do_val:
            if accelerator.is_main_process:
                t_val = time.perf_counter()
                metrics, views = validate(accelerator.unwrap_model(step_module).net, data, cfg,
                                          device)
                log_validation(writer, metrics, views, done, time.perf_counter() - t_val)
                summary = ", ".join(f"{k[4:]} {v:.4g}" for k, v in sorted(metrics.items())
                                    if k in (metric_key, "val/loss", "val/folding_percent",
                                             "val/landmark_error_before_mm", "val/dice_before"))
                bar.write(f"nephi-train: step {done}: {summary}")
            accelerator.wait_for_everyone()
        if do_ckpt:
            states = gather_object([rng_state()])
            hashes = gather_object([param_hash(accelerator.unwrap_model(step_module))])
            if len(set(hashes)) != 1:
                raise RuntimeError(f"processes hold different parameters at step {done}: "
                                   "gradients are not synchronized (see DESIGN.md section 6)")
            if accelerator.is_main_process:
                improved = do_val and metric_key in metrics and (
                    best is None or (metrics[metric_key] < best["value"] if metric_mode == "min"
                                     else metrics[metric_key] > best["value"]))
                if improved:
                    best = {"metric": metric_key, "mode": metric_mode,
                            "value": metrics[metric_key], "step": done}
                unwrapped = accelerator.unwrap_model(step_module).net
                payload = {
                    "format": CHECKPOINT_FORMAT, "format_version": CHECKPOINT_VERSION,
                    "code_version": code_version(), "step": done,
                    "model_config": unwrapped.model_config(),
                    "model_state": {k: v.detach().cpu() for k, v in unwrapped.state_dict().items()},
                    "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                    "rng_states": states, "world_size": world,
                    "config": cfg, "preprocessing": data.prep.to_dict(),
                    "grid": {"shape": list(data.shape), "spacing": data.spacing.tolist()},
                    "data": {"path": data_path, "train_pairs": len(train_set),
                             "val_pairs": len(data.splits["val"])},
                    "metrics": metrics, "best": best,
                    "command": command if command is not None else sys.argv,
                }
                path = os.path.join(ckpt_dir, f"step_{done:08d}.pt")
                save_atomic(payload, path)
                if improved:
                    save_atomic(payload, os.path.join(ckpt_dir, "best.pt"))
                for old in step_checkpoints(output_dir)[:-int(cfg["checkpoint"]["keep_last"])]:
                    os.remove(old)
            accelerator.wait_for_everyone()
    bar.close()
    final_hash = param_hash(accelerator.unwrap_model(step_module))
    with open(os.path.join(output_dir, f"replica_rank{rank}.json"), "w") as fh:
        json.dump({"rank": rank, "world_size": world, "step": steps, "param_sha256": final_hash},
                  fh)
    if writer is not None:
        writer.close()
        _log(accelerator, f"nephi-train: done at step {steps}; checkpoints in {ckpt_dir}; "
             f"TensorBoard: tensorboard --logdir {os.path.join(output_dir, 'tensorboard')}")
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return metrics


def build_parser(default_config: str | None) -> argparse.ArgumentParser:
    from .cli import OneLineParser

    p = OneLineParser(
        prog="train.py",
        description="Train learning-based NePhi (encoder + field networks, paper eq. 9). Run "
                    "it with `accelerate launch [opts] train/train.py ...`; with no argument it "
                    "trains the default config on a synthetic lung population built on first use.")
    p.add_argument("--config", default=default_config, metavar="YAML",
                   help=f"training config (default {default_config})")
    p.add_argument("--output-dir", metavar="DIR",
                   help="run folder (default: the config's output_dir)")
    p.add_argument("--resume", action="store_true",
                   help="continue from the last checkpoint in DIR with its step count, schedule "
                        "and configuration (key=value arguments still apply, e.g. train.steps)")
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="override config keys, e.g. train.steps=200 data.path=DATA.h5")
    return p


def main(argv=None, default_config: str | None = None) -> int:
    """Command line of ``train/train.py``."""
    from .cli import run_cli

    def run(args_list) -> int:
        args = build_parser(default_config).parse_args(args_list)
        if args.resume:
            out = args.output_dir
            if out is None:
                out = resolve_config(args.config, args.overrides)["output_dir"]
            found = step_checkpoints(out)
            if not found:
                raise NephiInputError(f"--resume: no checkpoint in {os.path.join(out, 'checkpoints')}")
            cfg = apply_overrides(load_checkpoint(found[-1])["config"], args.overrides)
        else:
            cfg = resolve_config(args.config, args.overrides)
            out = args.output_dir or cfg["output_dir"]
        if not args.resume and step_checkpoints(out):
            raise NephiInputError(f"--output-dir {out}: already holds checkpoints; add --resume "
                                  "to continue, or choose another folder")
        train(cfg, out, resume=args.resume, command=["train.py", *args_list])
        return 0

    return run_cli("train.py", run, argv)


__all__ = ["resolve_config", "validate_config", "lr_factor", "build_net", "ensure_data",
           "StepBatches", "TrainStep", "evaluate_pair", "validate", "load_checkpoint",
           "save_atomic", "train", "main"]
