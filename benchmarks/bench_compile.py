"""Does ``torch.compile`` pay for a NePhi field network on this machine?

Times one forward + backward pass of the default pairwise field network (``--precision``,
default bf16 where ``auto`` would pick it) on ``--points`` points, eager and compiled, and
prints the compile time (the first call) and the time per pass after it::

    .venv/bin/python benchmarks/bench_compile.py [--points 2048] [--repeats 50] [--threads 2]
"""

from __future__ import annotations

import argparse
import time

import torch

from nephi.config.loader import load_defaults
from nephi.models.fields import resolve_precision
from nephi.optim.modes import initial_state


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--points", type=int, default=2048)
    p.add_argument("--repeats", type=int, default=50)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"])
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    cfg = load_defaults("pairwise")
    fields, latent = initial_state(cfg, 3, torch.device("cpu"))
    precision = resolve_precision(args.precision, "cpu")
    fields.set_precision(precision)
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(1, args.points, 3, generator=gen) * 2 - 1
    z_local = torch.rand(1, args.points, cfg["model"]["latent_channels"], generator=gen)

    def one_pass(fn) -> None:
        fn(x, latent.global_, z_local).sum().backward()

    net = fields.forward_net
    print(f"{args.points} points, {precision}, {args.threads} threads")
    for name, fn in (("eager", net), ("torch.compile", torch.compile(net))):
        start = time.perf_counter()
        one_pass(fn)
        first = time.perf_counter() - start
        start = time.perf_counter()
        for _ in range(args.repeats):
            one_pass(fn)
        per = (time.perf_counter() - start) / args.repeats * 1000
        print(f"{name}: first call {first:.2f} s, then {per:.2f} ms per forward + backward")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
