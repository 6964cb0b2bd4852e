"""Learning-based NePhi training (paper eq. 9) with accelerate: DDP, mixed precision, gradient
accumulation, TensorBoard, self-describing checkpoints and exact resumption.

Entry point: ``train/train.py`` (``accelerate launch [opts] train/train.py --config CONFIG.yaml
--output-dir DIR [--resume] [key=value ...]``). Each optimizer step, on every process:

1. the next ``train.batch_size`` pairs of the step's share of the data (a deterministic function
   of the step, the process index and the seed, so a resumed run sees the same batches);
2. with an ``augment`` section that switches a kind on, the pairs are augmented on the network
   grid (:mod:`nephi.data.augment`: one sampling of each stored image; a generator seeded by
   seed, step, micro-step and process, so every process draws its own augmentations,
   reproducibly); validation pairs never are;
3. the encoder predicts the latent codes from [moving, fixed] on the network grid;
4. :func:`nephi.objectives.nephi_loss.nephi_terms` samples points (a generator seeded by seed, step,
   micro-step and process) and gives the eq. 8/9 terms: symmetric 1 - NCC^2, GradICON on
   phi_AB(phi_BA(x)), latent prior; Adam with warmup and a cosine / linear / constant schedule.

The fields and the losses always run in float32 (finite-difference Jacobians with a step of 1e-3
frame units are meaningless in 16-bit); ``train.mixed_precision`` applies to the encoder.

Output folder DIR::

    config.yaml                  resolved configuration of the run
    tensorboard/                 scalars (every loss term, lr, throughput, the landmark error of
                                 the (augmented) training pairs, validation metrics)
                                 and validation images (fixed, moving, warped, deformed grid)
    checkpoints/step_XXXXXXXX.pt the last ``checkpoint.keep_last`` checkpoints
    checkpoints/best.pt          best by the validation metric
    replica_rank<R>.json         parameter hash of each process at the end (DDP sanity check)

A checkpoint holds everything inference needs (model config, weights, preprocessing, resolved
config, code version) and everything resumption needs (optimizer, scheduler, step, RNG states of
every process). Checkpoints are written to a temporary file and renamed (``os.replace``).
"""

from __future__ import annotations

import glob
import hashlib
import json
import math
import os
import random
import sys
import time

import numpy as np
import torch
import yaml

from nephi.config.loader import set_dotted
from nephi.config.validate import validate_training
from nephi.data.augment import AugmentConfig, PairAugmenter
from nephi.data.pairfile import PairDataset, PairFile, collate_pairs
from nephi.errors import NephiInputError
from nephi.geometry.grid import Grid
from nephi.geometry.pair import PairTensors
from nephi.io.atomic import write_file
from nephi.learn.validation import log_validation, selection_metric, validation_metrics
from nephi.models.checkpoint import code_version, load_checkpoint
from nephi.models.encoder import EncoderConfig, RegistrationNet
from nephi.models.fields import FieldConfig
from nephi.objectives.nephi_loss import nephi_terms, training_similarity
from nephi.objectives.terms import total
from nephi.progress import Progress


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
                        groups=m["norm_groups"], top_down=m["top_down"],
                        flow_features=m["flow_features"])
    fields = FieldConfig(ndim=len(shape), latent_channels=m["latent_channels"],
                         latent_grid=enc.local_grid[0], hidden=m["hidden"], layers=m["layers"],
                         fourier_features=m["fourier_features"],
                         fourier_scale=m["fourier_scale"], omega0=m["omega0"])
    return RegistrationNet(enc, fields, seed=int(cfg["seed"]), passes=int(m["passes"]))


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
    from nephi.data.builders import build_synthetic_lung, build_triangles_circles

    log(f"nephi-train: building the {d['build']} training data into {path} (first use)")
    t0 = time.perf_counter()
    if d["build"] == "synthetic-lung":
        s = d["synthetic_lung"]
        counts = build_synthetic_lung(path, s["n"], s["shape"], s["spacing"], s["motion_mm"],
                                      s["seed"], s["n_landmarks"], d["val_fraction"],
                                      s["apply_mask"], d["build_workers"],
                                      builder="nephi.learn.trainer.ensure_data")
    else:
        s = d["triangles_circles"]
        counts = build_triangles_circles(path, s["n"], s["size"], s["mode"], s["seed"],
                                         d["val_fraction"], builder="nephi.learn.trainer.ensure_data")
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
        self.similarity, offsets = training_similarity(self.loss_cfg, grid.shape)
        self.register_buffer("offsets", offsets, persistent=False)

    def forward(self, moving: torch.Tensor, fixed: torch.Tensor, fixed_mask, points: int,
                reg_points: int, generator: torch.Generator, landmarks: tuple | None = None):
        """moving, fixed (B, 1, *S); fixed_mask (B, *S) bool or None; landmarks None or
        (fixed, moving) frame points (B, K, d), NaN rows for none -> (loss, {term: value}),
        with landmarks also ``landmark_sum_mm`` and ``landmark_count`` (no gradient)."""
        latent = self.net.encode(moving, fixed)
        with torch.autocast(device_type=moving.device.type, enabled=False):
            pair = PairTensors(fixed.float(), moving.float(), self.grid, self.grid, fixed_mask)
            terms = nephi_terms(self.net.fields, latent, pair, self.loss_cfg, points, reg_points,
                                self.sigma, generator, self.similarity, self.offsets)
            loss = total(terms)
            values = {name: t.value.detach() for name, t in terms.items()}
            if landmarks is not None:
                values.update(self.landmark_error(latent, *landmarks))
        return loss, values

    @torch.no_grad()
    def landmark_error(self, latent, fixed_points: torch.Tensor,
                       moving_points: torch.Tensor) -> dict:
        """Sum of |phi_AB(fixed point) - moving point| in mm over the valid rows of (B, K, d)
        frame points, and their count (mm through the grid's spacing)."""
        valid = torch.isfinite(fixed_points).all(-1) & torch.isfinite(moving_points).all(-1)
        mapped = self.net.fields.phi_ab(torch.nan_to_num(fixed_points), latent)
        scale = torch.as_tensor(self.grid.normalized_mm_scale(), dtype=mapped.dtype,
                                device=mapped.device)
        error = ((mapped - torch.nan_to_num(moving_points)) * scale).norm(dim=-1)
        return {"landmark_sum_mm": torch.where(valid, error, 0.0).sum(),
                "landmark_count": valid.sum().float()}


def step_generator(seed: int, step: int, micro: int, rank: int,
                   stream: str = "points") -> torch.Generator:
    """The generator of one micro-step of one process: ``stream`` "points" samples the loss
    points, "augment" draws the augmentation."""
    text = f"{seed}/{step}/{micro}/{rank}" + ("" if stream == "points" else f"/{stream}")
    mixed = hashlib.sha256(text.encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(mixed[:8], "little") & (2 ** 63 - 1))


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
def _dump(path: str, text: str) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(text)


class Trainer:
    """One training run (or its resumption) on every process of an accelerate launch.

    ``setup`` builds the accelerator, data, network, optimizer and logging; ``run`` loops over
    optimizer steps: ``train_step`` (gradient accumulation over micro-batches), ``log`` (every
    ``train.log_every`` steps), ``validate`` and ``checkpoint`` (every ``val.every`` and
    ``checkpoint.every`` steps and at the end), then ``finish``. Every process runs the same
    methods; only the main one writes logs and checkpoints.
    """

    def __init__(self, cfg: dict, output_dir: str, resume: bool = False,
                 command: list | None = None):
        validate_training(cfg)
        self.cfg, self.resume = cfg, resume
        self.command = command if command is not None else sys.argv
        self.output_dir = os.path.abspath(output_dir)
        self.ckpt_dir = os.path.join(self.output_dir, "checkpoints")
        self.metrics: dict = {}
        self.best = None
        self.start = 0

    # ------------------------------------------------------------------ setup
    def log_line(self, text: str) -> None:
        if self.accelerator.is_main_process:
            print(text, flush=True)

    def setup(self) -> None:
        from accelerate import Accelerator

        t = self.cfg["train"]
        if t["mixed_precision"] != "no" and not torch.cuda.is_available():
            # Measured with torch 2.13 on an AVX-512 BF16 CPU: the encoder's gradients under CPU
            # bf16 autocast differ from one identical backward pass to the next (by up to 40 %
            # of their largest value), and a few steps of training can turn every weight NaN.
            raise NephiInputError(f"config key train.mixed_precision: {t['mixed_precision']} is "
                                  "for CUDA; training on the CPU needs \"no\" (CPU bf16 gradients "
                                  "of the encoder are not reproducible)")
        self.accelerator = Accelerator(cpu=not torch.cuda.is_available(),
                                       mixed_precision=t["mixed_precision"],
                                       gradient_accumulation_steps=int(t["grad_accum"]))
        acc = self.accelerator
        self.device, self.rank, self.world = acc.device, acc.process_index, acc.num_processes
        ckpt = self._resume_checkpoint()
        with acc.main_process_first():
            data_path = ensure_data(self.cfg, log=self.log_line)
        self.cfg = set_dotted(self.cfg, "data.path", data_path)
        self.data = PairFile(data_path)
        if self.cfg["data"]["sample_in_mask"] and not self.data.has["fixed_mask"]:
            raise NephiInputError("config key data.sample_in_mask: the data has no fixed masks")
        self.metric_key, self.metric_mode = selection_metric(self.cfg, self.data)
        self.train_set = PairDataset(data_path, "train", points=self.data.has["fixed_points"])
        augment = AugmentConfig.from_dict(self.cfg["augment"])
        self.augmenter = (PairAugmenter(augment, self.data.canonical_grid()) if augment.enabled
                          else None)
        if len(self.train_set) == 0:
            raise NephiInputError(f"dataset {data_path}: no training pair")
        self._build_model(ckpt)
        self._build_logging()
        self._build_loader()

    def _resume_checkpoint(self) -> dict | None:
        if not self.resume:
            return None
        found = step_checkpoints(self.output_dir)
        if not found:
            raise NephiInputError(f"--resume: no checkpoint in {self.ckpt_dir}")
        ckpt = load_checkpoint(found[-1])
        self.log_line(f"nephi-train: resuming from {found[-1]} (step {ckpt['step']})")
        return ckpt

    def _build_model(self, ckpt: dict | None) -> None:
        cfg = self.cfg
        torch.manual_seed(int(cfg["seed"]))
        self.net = build_net(cfg, self.data.shape)
        if ckpt is not None:
            if ckpt["model_config"] != self.net.model_config():
                raise NephiInputError("--resume: the model configuration differs from the "
                                      "checkpoint")
            self.net.load_state_dict(ckpt["model_state"])
        step_module = TrainStep(self.net, self.data.canonical_grid(), cfg)
        optimizer = torch.optim.Adam(self.net.parameters(), lr=float(cfg["train"]["lr"]))
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer,
                                                           lambda s: lr_factor(cfg, s))
        self.step_module, self.optimizer = self.accelerator.prepare(step_module, optimizer)
        if ckpt is not None:
            self.optimizer.load_state_dict(ckpt["optimizer"])
            self.scheduler.load_state_dict(ckpt["scheduler"])
            self.start = int(ckpt["step"])
            self.best = ckpt.get("best")
            states = ckpt.get("rng_states") or []
            if len(states) == self.world:
                set_rng_state(states[self.rank])

    def _build_logging(self) -> None:
        self.writer = None
        if not self.accelerator.is_main_process:
            return
        from torch.utils.tensorboard import SummaryWriter

        os.makedirs(self.ckpt_dir, exist_ok=True)
        write_file(os.path.join(self.output_dir, "config.yaml"),
                   lambda tmp: _dump(tmp, yaml.safe_dump(self.cfg, sort_keys=False)),
                   option="--output-dir")
        self.writer = SummaryWriter(os.path.join(self.output_dir, "tensorboard"),
                                    purge_step=self.start + 1)
        n_params = sum(p.numel() for p in self.net.parameters())
        enc = self.net.encoder.cfg
        self.log_line(
            f"nephi-train: {len(self.train_set)} training / {len(self.data.splits['val'])} "
            f"validation pairs on a {'x'.join(map(str, self.data.shape))} grid; {self.world} "
            f"process(es) on {self.device}; z_l grid {'x'.join(map(str, enc.local_grid))} "
            f"(branch after {enc.branch} stride-2 blocks); {n_params / 1e6:.2f} M parameters; "
            f"output {self.output_dir}")

    def _build_loader(self) -> None:
        t = self.cfg["train"]
        self.steps, self.accum = int(t["steps"]), int(t["grad_accum"])
        self.batch = int(t["batch_size"])
        sampler = StepBatches(len(self.train_set), self.batch, self.rank, self.world,
                              self.start * self.accum, self.steps * self.accum,
                              int(self.cfg["seed"]))
        loader = torch.utils.data.DataLoader(self.train_set, batch_sampler=sampler,
                                             num_workers=int(self.cfg["data"]["loader_workers"]),
                                             collate_fn=collate_pairs)
        self.batches = iter(loader)

    # ------------------------------------------------------------------ the loop
    def train_step(self, step: int) -> dict:
        """One optimizer step (``train.grad_accum`` micro-batches) -> mean term values."""
        t, device = self.cfg["train"], self.device
        sample_in_mask = bool(self.cfg["data"]["sample_in_mask"])
        values_sum: dict = {}
        for micro in range(self.accum):
            item = next(self.batches)
            moving = item["moving"].to(device, non_blocking=True)
            fixed = item["fixed"].to(device, non_blocking=True)
            mask = item["fixed_mask"].to(device) if sample_in_mask else None
            landmarks = (None if not self.train_set.points else
                         (item["fixed_points"].to(device), item["moving_points"].to(device)))
            seed = int(self.cfg["seed"])
            if self.augmenter is not None:
                aug = self.augmenter.draw(moving.shape[0], step_generator(
                    seed, step, micro, self.rank, stream="augment"), device)
                moving, fixed, mask = aug.images(moving, fixed, mask)
                if landmarks is not None:
                    landmarks = aug.points(*landmarks)
            gen = step_generator(seed, step, micro, self.rank)
            with self.accelerator.accumulate(self.step_module):
                loss, values = self.step_module(moving, fixed, mask, int(t["points"]),
                                                int(t["reg_points"]), gen, landmarks)
                self.accelerator.backward(loss)
                if self.accelerator.sync_gradients and float(t["grad_clip"]) > 0:
                    self.accelerator.clip_grad_norm_(self.step_module.parameters(),
                                                     float(t["grad_clip"]))
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
            values["loss"] = loss.detach()
            for k, v in values.items():
                values_sum[k] = values_sum.get(k, 0.0) + v.float() / self.accum
        self.scheduler.step()
        return values_sum

    def log(self, running: dict, done: int, steps_since: int, seconds: float, bar) -> None:
        """Mean terms over the last ``steps_since`` steps (all processes) to TensorBoard, and the
        landmark error of the (augmented) training pairs when they carry landmarks."""
        keys = sorted(running)
        stacked = torch.stack([running[k] for k in keys]) / steps_since
        stacked = self.accelerator.reduce(stacked.to(self.device), reduction="mean")
        if not self.accelerator.is_main_process:
            return
        points = int(self.cfg["train"]["points"])
        pairs_s = steps_since * self.accum * self.batch * self.world / seconds
        lr = self.scheduler.get_last_lr()[0]
        means = dict(zip(keys, stacked.tolist()))
        count, error_sum = means.pop("landmark_count", 0.0), means.pop("landmark_sum_mm", 0.0)
        if count > 0:
            means["landmark_error_mm"] = error_sum / count
        for k, v in means.items():
            self.writer.add_scalar(f"train/{k}", v, done)
        self.writer.add_scalar("train/lr", lr, done)
        self.writer.add_scalar("throughput/pairs_per_s", pairs_s, done)
        self.writer.add_scalar("throughput/points_per_s", pairs_s * 2 * points, done)
        bar.set_postfix(loss=f"{means['loss']:.4f}", lr=f"{lr:.1e}",
                        pairs_s=f"{pairs_s:.2f}")

    def validate(self, done: int, bar) -> None:
        """Validation metrics and images (main process) to TensorBoard and the progress bar."""
        if self.accelerator.is_main_process:
            t_val = time.perf_counter()
            self.metrics, views = validation_metrics(self.accelerator.unwrap_model(self.step_module).net,
                                           self.data, self.cfg, self.device)
            log_validation(self.writer, self.metrics, views, done, time.perf_counter() - t_val)
            shown = (self.metric_key, "val/loss", "val/folding_percent",
                     "val/landmark_error_before_mm", "val/dice_before")
            summary = ", ".join(f"{k[4:]} {v:.4g}" for k, v in sorted(self.metrics.items())
                                if k in shown)
            bar.write(f"nephi-train: step {done}: {summary}")
        self.accelerator.wait_for_everyone()

    def checkpoint(self, done: int, validated: bool) -> None:
        """Check that every process holds the same parameters, then (main process) write
        ``step_<done>.pt``, ``best.pt`` when the selection metric improved, and prune."""
        from accelerate.utils import gather_object

        states = gather_object([rng_state()])
        hashes = gather_object([param_hash(self.accelerator.unwrap_model(self.step_module))])
        if len(set(hashes)) != 1:
            raise RuntimeError(f"processes hold different parameters at step {done}: "
                               "gradients are not synchronized (see DESIGN.md section 6)")
        if self.accelerator.is_main_process:
            key, mode, metrics = self.metric_key, self.metric_mode, self.metrics
            improved = validated and key in metrics and (
                self.best is None or (metrics[key] < self.best["value"] if mode == "min"
                                      else metrics[key] > self.best["value"]))
            if improved:
                self.best = {"metric": key, "mode": mode, "value": metrics[key], "step": done}
            data = self.data
            metadata = {
                "code_version": code_version(), "step": done,
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "rng_states": states, "world_size": self.world,
                "config": self.cfg, "preprocessing": data.prep.to_dict(),
                "grid": {"shape": list(data.shape), "spacing": data.spacing.tolist()},
                "data": {"path": data.path, "train_pairs": len(self.train_set),
                         "val_pairs": len(data.splits["val"]),
                         # masks were there when the pairs' intensities were normalized
                         "masks": bool(data.has["fixed_mask"] and data.has["moving_mask"])},
                "metrics": metrics, "best": self.best, "command": self.command,
            }
            net = self.accelerator.unwrap_model(self.step_module).net
            net.save(os.path.join(self.ckpt_dir, f"step_{done:08d}.pt"), **metadata)
            if improved:
                net.save(os.path.join(self.ckpt_dir, "best.pt"), **metadata)
            keep = int(self.cfg["checkpoint"]["keep_last"])
            for old in step_checkpoints(self.output_dir)[:-keep]:
                os.remove(old)
        self.accelerator.wait_for_everyone()

    def run(self) -> dict:
        """Set up, loop over the remaining steps, finish; returns the last validation metrics."""
        self.setup()
        cfg, steps = self.cfg, self.steps
        bar = Progress(steps, "train", initial=self.start,
                       enabled=self.accelerator.is_main_process and cfg["train"]["progress"])
        running: dict = {}
        last_log, last_time = self.start, time.perf_counter()
        self.step_module.train()
        for step in range(self.start, steps):
            for k, v in self.train_step(step).items():
                running[k] = running.get(k, 0.0) + v
            done = step + 1
            bar.update()
            if done % int(cfg["train"]["log_every"]) == 0 or done == steps:
                now = time.perf_counter()
                self.log(running, done, done - last_log, now - last_time, bar)
                running, last_log, last_time = {}, done, now
            validated = done % int(cfg["val"]["every"]) == 0 or done == steps
            if validated:
                self.validate(done, bar)
            if done % int(cfg["checkpoint"]["every"]) == 0 or done == steps:
                self.checkpoint(done, validated)
        bar.close()
        self.finish()
        return self.metrics

    def finish(self) -> None:
        """Each process writes its parameter hash (DDP sanity check); logs are closed."""
        final_hash = param_hash(self.accelerator.unwrap_model(self.step_module))
        replica = json.dumps({"rank": self.rank, "world_size": self.world, "step": self.steps,
                              "param_sha256": final_hash})
        write_file(os.path.join(self.output_dir, f"replica_rank{self.rank}.json"),
                   lambda tmp: _dump(tmp, replica), option="--output-dir")
        if self.writer is not None:
            self.writer.close()
            self.log_line(f"nephi-train: done at step {self.steps}; checkpoints in "
                          f"{self.ckpt_dir}; TensorBoard: tensorboard --logdir "
                          f"{os.path.join(self.output_dir, 'tensorboard')}")
        self.accelerator.wait_for_everyone()
        self.accelerator.end_training()


def train(cfg: dict, output_dir: str, resume: bool = False, command: list | None = None) -> dict:
    """Run (or resume) training; returns the last validation metrics (main process)."""
    return Trainer(cfg, output_dir, resume, command).run()
