"""Benchmark: GradICON throughput per Jacobian strategy, and IO time per step vs point count.

Prints two markdown tables. All figures come from one run on the same process, so ratios are
meaningful even on a noisy shared machine; absolute times are not.

    .venv/bin/python benchmarks/bench_jacobian.py [--device cpu|cuda] [--repeats 5]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from nephi.config.loader import load_defaults, set_dotted
from nephi.geometry.grid import Grid
from nephi.geometry.pair import PairTensors
from nephi.models.fields import FieldConfig, Latent, NephiFields
from nephi.objectives.nephi_loss import nephi_terms
from nephi.objectives.regularizers import gradicon
from nephi.transforms.base import Composition
from nephi.transforms.jacobian import NEPHI_METHODS, jacobian


def timed(fn, repeats: int) -> float:
    fn()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / repeats


def gradicon_table(device, repeats: int, points: int) -> None:
    torch.manual_seed(0)
    cfg = FieldConfig(ndim=3)
    fields = NephiFields(cfg).to(device)
    for net in (fields.forward_net, fields.backward_net):
        torch.nn.init.normal_(net.out.weight, std=1e-3)
    latent = Latent.random(1, cfg, 1.0, device=device)
    x = (torch.rand(1, points, 3, device=device) * 2 - 1)

    composed = Composition(fields.map_ab(latent), fields.map_ba(latent))
    exact = jacobian(composed, x, "autograd").detach()
    print(f"\nGradICON loss + backward, {points} points, 3-D, default network (2 x 512)\n")
    print("| strategy | s/step | points/s | median max-abs error vs autograd |")
    print("|---|---|---|---|")
    for method in NEPHI_METHODS:
        def step():
            fields.zero_grad(set_to_none=True)
            gradicon(jacobian(composed, x, method)).backward()

        sec = timed(step, repeats)
        err = (jacobian(composed, x, method).detach() - exact).abs().amax(dim=(-1, -2)).median()
        print(f"| {method} | {sec:.3f} | {points / sec:,.0f} | {float(err):.2e} |")


def io_table(device, repeats: int, shape=(64, 64, 64)) -> None:
    base = load_defaults("pairwise")
    grid = Grid(shape, np.diag([4.0, 4.0, 4.0, 1.0]))
    fixed = torch.rand(1, 1, *shape, device=device)
    moving = torch.rand(1, 1, *shape, device=device)
    pair = PairTensors(fixed, moving, grid, grid)
    print(f"\nOne IO step (eq. 8 loss + backward + Adam), {shape[0]}^3 images, default network\n")
    print("| jacobian | points | reg points | s/step | 500 steps (min) |")
    print("|---|---|---|---|---|")
    for method in ("autograd", "analytic", "fd"):
        for points, reg in ((1024, 256), (2048, 512), (4096, 1024), (8192, 2048)):
            cfg = set_dotted(base, "loss.jacobian", method)
            fcfg = FieldConfig(ndim=3)
            fields = NephiFields(fcfg).to(device)
            latent = Latent.random(1, fcfg, 1.0, device=device)
            latent = Latent(latent.global_.requires_grad_(), latent.local.requires_grad_())
            opt = torch.optim.Adam(list(fields.parameters()) + [latent.global_, latent.local])

            def step():
                opt.zero_grad(set_to_none=True)
                terms = nephi_terms(fields, latent, pair, cfg["loss"], points, reg, 1.0)
                sum(t.weight * t.value for t in terms.values()).backward()
                opt.step()

            sec = timed(step, repeats)
            print(f"| {method} | {points} | {reg} | {sec:.3f} | {500 * sec / 60:.1f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--points", type=int, default=2048)
    args = parser.parse_args()
    device = torch.device(args.device)
    print(f"device: {device}, torch {torch.__version__}, threads {torch.get_num_threads()}")
    gradicon_table(device, args.repeats, args.points)
    io_table(device, args.repeats)


if __name__ == "__main__":
    main()
