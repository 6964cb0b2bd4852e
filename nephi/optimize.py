"""Instance optimization (IO): refine NePhi fields and latent codes for one pair with Adam.

The inputs are never changed: IO works on copies and returns them (DESIGN.md trap).
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field

import torch
from tqdm import tqdm

from .losses import total
from .networks import Latent, NephiFields
from .objective import nephi_terms
from .pair import PairTensors


@dataclass
class IOResult:
    """Optimized copies of the fields and latent codes, with the loss history per step."""

    fields: NephiFields
    latent: Latent
    history: list = field(default_factory=list)
    seconds: float = 0.0
    steps: int = 0


def instance_optimize(fields: NephiFields, latent: Latent, pair: PairTensors, cfg: dict,
                      params: str = "all", progress: bool = True) -> IOResult:
    """Optimize copies of ``latent`` (and of ``fields`` if ``params == 'all'``) for ``pair``.

    ``cfg`` is a resolved pairwise config (``optim``, ``loss``, ``latent`` and ``seed`` keys).
    """
    opt_cfg, loss_cfg = cfg["optim"], cfg["loss"]
    steps = int(opt_cfg["steps"])
    fields = copy.deepcopy(fields)
    latent = Latent(torch.nn.Parameter(latent.global_.detach().clone()),
                    torch.nn.Parameter(latent.local.detach().clone()))
    groups = [{"params": [latent.global_, latent.local], "lr": float(opt_cfg["latent_lr"])}]
    if params == "all":
        groups.append({"params": list(fields.parameters()), "lr": float(opt_cfg["lr"])})
    elif params == "latent":
        fields.requires_grad_(False)
    else:
        raise ValueError(f"params must be 'all' or 'latent', got {params!r}")
    optimizer = torch.optim.Adam(groups)
    generator = torch.Generator().manual_seed(int(cfg["seed"]))
    history = []
    start = time.perf_counter()
    points = int(opt_cfg["points"])
    bar = tqdm(range(steps), desc="IO", disable=not progress or steps == 0, unit="step",
               dynamic_ncols=True, leave=False)
    for step in bar:
        optimizer.zero_grad(set_to_none=True)
        terms = nephi_terms(fields, latent, pair, loss_cfg, points, int(opt_cfg["reg_points"]),
                            float(cfg["latent"]["sigma"]), generator)
        loss = total(terms)
        loss.backward()
        optimizer.step()
        record = {name: float(t.value.detach()) for name, t in terms.items()}
        record["loss"] = float(loss.detach())
        history.append(record)
        if progress and (step % 10 == 0 or step == steps - 1):
            rate = (step + 1) * points * 2 * pair.batch / (time.perf_counter() - start)
            bar.set_postfix(loss=f"{record['loss']:.4f}", sim=f"{record['sim_ab']:.4f}",
                            gradicon=f"{record['gradicon']:.2e}", pts_s=f"{rate:.0f}")
    bar.close()
    fields.requires_grad_(False)
    result = IOResult(fields=fields, latent=latent.detach_clone(), history=history,
                      seconds=time.perf_counter() - start, steps=steps)
    return result
