"""Instance optimization (IO): one engine for every mode (``nephi``, ``inr``, ``velocity``).

:func:`instance_optimize` builds the mode of ``cfg['io']['mode']`` (:mod:`nephi.optim.modes`),
runs Adam over its stages on the terms it returns (a progress bar per stage), and returns the
optimized point maps ``(phi_AB, phi_BA)`` with the loss history. The inputs (a given network's
fields and latent codes) are never changed: every mode works on copies (DESIGN.md trap).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from nephi.geometry.pair import PairTensors
from nephi.objectives.terms import total
from nephi.optim.modes import build_mode
from nephi.progress import Progress
from nephi.transforms.base import PointMap


__all__ = ["IOResult", "instance_optimize", "converged", "learning_rate_schedule"]


@dataclass
class IOResult:
    """What IO produced, in the frame of the pair it optimized on.

    ``phi_ab`` maps fixed points (B, N, d) to moving points, ``phi_ba`` moving points to fixed
    points (no gradients reach any parameter). ``history``: one dict per step (term values and
    ``loss``; ``stage`` with several stages). ``info``: how the mode made its maps (summary).
    """

    mode: str
    phi_ab: PointMap
    phi_ba: PointMap
    history: list = field(default_factory=list)
    seconds: float = 0.0
    steps: int = 0
    info: dict = field(default_factory=dict)


def _postfix(record: dict) -> dict:
    """The loss and the first few weighted terms, for the progress bar."""
    shown = {"loss": f"{record['loss']:.4f}"}
    for name, value in record.items():
        if name not in ("loss", "stage") and "/" not in name and len(shown) < 4:
            shown[name] = f"{value:.3g}"
    return shown


def converged(losses: list, window: int, tolerance: float) -> bool:
    """The mean loss of the last ``window`` steps differs from that of the ``window`` before by
    at most ``tolerance`` relative to the latter (``io.tolerance``, ``io.window``)."""
    if len(losses) < 2 * window:
        return False
    old = sum(losses[-2 * window:-window]) / window
    new = sum(losses[-window:]) / window
    return abs(old - new) <= tolerance * max(abs(old), 1e-12)


def stalled(losses: list, window: int, significance: float) -> bool:
    """The mean loss of the last ``window`` steps is not below that of the ``window`` before by
    more than ``significance`` standard errors of their difference (``align.significance``,
    ``align.window``). Each step's loss is an estimate over freshly drawn points, so an
    optimization that has stopped improving still moves by that noise, and a relative tolerance
    small enough not to cut a large turn short never fires; this test asks only whether the
    improvement still exceeds the noise."""
    if len(losses) < 2 * window:
        return False
    old = np.asarray(losses[-2 * window:-window])
    new = np.asarray(losses[-window:])
    noise = math.sqrt((old.var(ddof=1) + new.var(ddof=1)) / window)
    return old.mean() - new.mean() <= significance * noise


def learning_rate_schedule(optimizer: torch.optim.Optimizer, kind: str, steps: int):
    """``constant`` learning rates, or ``cosine``: from each group's rate down to 0 at the
    stage's last step (``io.lr_schedule``)."""
    if kind == "constant":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda k: 1.0)
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda k: 0.5 * (1.0 + math.cos(math.pi * min(k, steps) / max(steps, 1))))


def instance_optimize(pair: PairTensors, cfg: dict, init: tuple | None = None,
                      io_params: str = "all", progress: bool = True) -> IOResult:
    """Optimize the mode ``cfg['io']['mode']`` for ``pair``; return its point maps.

    ``init``: optional (fields, latent) of a NePhi network (its prediction for this pair, in
    the frame of ``pair``): ``nephi`` refines copies of them, ``inr`` and ``velocity`` compose
    their refinement with the map they give. Without it, ``nephi`` starts from fresh fields and
    ``inr``/``velocity`` from the identity. ``io_params``: what ``nephi`` optimizes, ``'all'``
    or ``'latent'``. ``cfg``: a resolved pairwise config (``seed`` seeds the point sampling).
    With ``io.tolerance`` > 0 a stage ends before its step count once the loss has converged
    (:func:`converged`); ``IOResult.steps`` counts the steps taken.
    """
    mode = build_mode(cfg, pair, init, io_params)
    generator = torch.Generator().manual_seed(int(cfg["seed"]))
    history = []
    total_steps = 0
    start = time.perf_counter()
    tolerance, window = float(cfg["io"]["tolerance"]), int(cfg["io"]["window"])
    for stage in mode.stages():
        if stage.steps == 0:  # a prediction kept as it is: no optimizer (importing one costs s)
            continue
        optimizer = torch.optim.Adam(stage.groups)
        scheduler = learning_rate_schedule(optimizer, cfg["io"]["lr_schedule"], stage.steps)
        bar = Progress(stage.steps, f"IO {stage.label}", enabled=progress)
        losses = []
        for step in range(stage.steps):
            optimizer.zero_grad(set_to_none=True)
            terms = mode.terms(pair if stage.pair is None else stage.pair, generator)
            loss = total(terms)
            loss.backward()
            optimizer.step()
            scheduler.step()
            record = {name: float(t.value.detach()) for name, t in terms.items()}
            record["loss"] = float(loss.detach())
            if stage.count > 1:
                record["stage"] = stage.index + 1
            history.append(record)
            if progress and (step % 10 == 0 or step == stage.steps - 1):
                bar.set_postfix(**_postfix(record))
            bar.update()
            losses.append(record["loss"])
            if tolerance > 0 and converged(losses, window, tolerance):
                break
        bar.close()
        total_steps += len(losses)
    phi_ab, phi_ba = mode.maps()
    return IOResult(mode=mode.name, phi_ab=phi_ab, phi_ba=phi_ba, history=history,
                    seconds=time.perf_counter() - start, steps=total_steps, info=mode.info())
