"""Speed of the two hot paths of ``nephi-infer``: one IO step and the dense export.

Times, with the default pairwise network (2 x 512, 128 Fourier features) on a 64^3 grid:

* one nephi-mode IO step (eq. 8 loss on 2048 + 2048 similarity points and 512 GradICON points,
  backward, Adam) for each Jacobian strategy given;
* the dense export of :func:`nephi.dense.dense_fields` (phi_AB on the fixed grid, the warped
  image, det J, phi_BA o phi_AB for inverse consistency, phi_BA on the moving grid).

``--baseline REV`` also times the same code paths of git revision REV (checked out in a temporary
worktree) in the same run, alternating the two, and prints the ratio: the before/after figures of
a speed change come from one run on one machine.

    .venv/bin/python benchmarks/bench_speed.py [--baseline 99d7988] [--repeats 3] [--size 64]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Runs inside a fresh interpreter whose sys.path starts with the tree being measured; only API
# present in every revision since the first is used.
WORKER = r"""
import json, sys, time
import numpy as np
import torch
from nephi.config import load_defaults, set_dotted
from nephi.dense import dense_fields
from nephi.geometry import Grid
from nephi.networks import FieldConfig, Latent, NephiFields
from nephi.objective import nephi_terms
from nephi.pair import PairTensors

size, repeats, methods = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3].split(",")
torch.manual_seed(0)
shape = (size,) * 3
grid = Grid(shape, np.diag([256.0 / size] * 3 + [1.0]))
pair = PairTensors(torch.rand(1, 1, *shape), torch.rand(1, 1, *shape), grid, grid)
fcfg = FieldConfig(ndim=3)
fields = NephiFields(fcfg)
for net in (fields.forward_net, fields.backward_net):
    torch.nn.init.normal_(net.out.weight, std=1e-3)
latent = Latent.random(1, fcfg, 1.0)
latent = Latent(latent.global_.requires_grad_(), latent.local.requires_grad_())
opt = torch.optim.Adam(list(fields.parameters()) + [latent.global_, latent.local])
out, skipped = {}, []
base = load_defaults("pairwise")
for method in methods:
    try:
        cfg = set_dotted(base, "loss.jacobian", method)
    except Exception:
        skipped.append(method)
        continue
    def step():
        opt.zero_grad(set_to_none=True)
        terms = nephi_terms(fields, latent, pair, cfg["loss"], 2048, 512, 1.0)
        sum(t.weight * t.value for t in terms.values()).backward()
        opt.step()
    try:
        step()
    except ValueError:
        skipped.append(method)
        continue
    start = time.perf_counter()
    for _ in range(repeats):
        step()
    out["io_step_" + method] = (time.perf_counter() - start) / repeats
moving = np.random.rand(*shape).astype(np.float32)
ab = lambda p: fields.phi_ab(p, latent)
ba = lambda p: fields.phi_ba(p, latent)
dense_fields(ab, ba, moving, grid, grid, torch.device("cpu"))
start = time.perf_counter()
for _ in range(repeats):
    dense_fields(ab, ba, moving, grid, grid, torch.device("cpu"))
out["dense_export"] = (time.perf_counter() - start) / repeats
print(json.dumps({"times": out, "skipped": skipped}))
"""


def measure(tree: str, size: int, repeats: int, methods: list) -> dict:
    env = {**os.environ, "PYTHONPATH": tree}
    done = subprocess.run([sys.executable, "-c", WORKER, str(size), str(repeats),
                           ",".join(methods)], capture_output=True, text=True, env=env,
                          cwd=tree, check=True)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    if result["skipped"]:
        print(f"{tree}: Jacobian strategies not available there: {', '.join(result['skipped'])}")
    return result["times"]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--baseline", default=None, help="git revision to compare against")
    p.add_argument("--size", type=int, default=64, help="cube side of the grid (default 64)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--rounds", type=int, default=2, help="alternations with the baseline")
    p.add_argument("--methods", default="autograd,analytic,fd",
                   help="Jacobian strategies of the IO step (default autograd,analytic,fd)")
    args = p.parse_args(argv)
    methods = args.methods.split(",")
    import torch

    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), grid {args.size}^3, "
          f"{args.repeats} repeats x {args.rounds} rounds (best round kept)")
    trees = {"this tree": ROOT}
    tmp = None
    if args.baseline:
        tmp = tempfile.mkdtemp(prefix="nephi_baseline_")
        subprocess.run(["git", "-C", ROOT, "worktree", "add", "--detach", tmp, args.baseline],
                       check=True, capture_output=True)
        trees[args.baseline] = tmp
    best: dict = {name: {} for name in trees}
    try:
        for _ in range(args.rounds):
            for name, tree in trees.items():
                for key, sec in measure(tree, args.size, args.repeats, methods).items():
                    best[name][key] = min(sec, best[name].get(key, float("inf")))
    finally:
        if tmp:
            subprocess.run(["git", "-C", ROOT, "worktree", "remove", "--force", tmp],
                           capture_output=True)
    keys = list(dict.fromkeys(k for r in best.values() for k in r))
    names = list(trees)
    header = "| seconds | " + " | ".join(names) + (" | this / baseline |" if len(names) == 2 else " |")
    print("\n" + header)
    print("|---" * (len(names) + 1 + (len(names) == 2)) + "|")
    for key in keys:
        vals = [best[n].get(key) for n in names]
        cells = [f"{v:.3f}" if v is not None else "-" for v in vals]
        ratio = ""
        if len(names) == 2:
            ratio = f" {vals[0] / vals[1]:.2f} |" if None not in vals else " - |"
        print(f"| {key} | " + " | ".join(cells) + " |" + ratio)
    return 0


if __name__ == "__main__":
    sys.exit(main())
