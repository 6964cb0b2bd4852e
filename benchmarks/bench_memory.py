"""Peak memory and time of one training step: learning-based NePhi vs a voxel-based network.

Compares, at the same input size and batch (paper section 5.2, Fig. 3a; Table 2 "Peak Mem."):

* **NePhi**: the encoder of :mod:`nephi.encoder` plus the field networks, one step of
  :class:`nephi.training.TrainStep` (eq. 9 on sampled points: ``--points`` similarity points per
  direction, ``--reg-points`` GradICON points) and Adam.
* **Voxel GradICON** (single resolution): a small U-Net (defined here) that predicts a dense
  displacement field on the input grid for (A, B) and for (B, A); symmetric 1 - NCC^2 on all
  voxels; GradICON as ||J - I||_F^2 of phi_AB o phi_BA by forward finite differences on the
  voxel grid (one voxel step); Adam.

Each (method, size) runs in a fresh subprocess so that its peak is its own: on CUDA the peak is
``torch.cuda.max_memory_allocated`` (MB), on CPU the process's peak resident set size (MB,
including the Python/torch baseline, printed on its own row). Step time is the mean of
``--steps`` steps after one warm-up step. Prints a markdown table. Not a test.

Examples::

    python benchmarks/bench_memory.py                       # CPU-sized defaults
    python benchmarks/bench_memory.py --sizes2d 128 256 512 --sizes3d 64 96 128 160 175 --batch 1
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import torch
import torch.nn.functional as F
from torch import nn


sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


# ----------------------------------------------------------------------------- voxel baseline
class UNet(nn.Module):
    """A small U-Net: 2 channels in (moving, fixed), d channels out (displacement, normalized
    coordinates in array-axis order); ``levels`` stride-2 levels of widths ``width * 2**k``."""

    def __init__(self, ndim: int, width: int = 16, levels: int = 4):
        super().__init__()
        conv = nn.Conv3d if ndim == 3 else nn.Conv2d
        self.ndim = ndim
        widths = [width * 2 ** k for k in range(levels + 1)]
        self.down = nn.ModuleList()
        cin = 2
        for k, w in enumerate(widths):
            self.down.append(nn.Sequential(conv(cin, w, 3, stride=1 if k == 0 else 2, padding=1),
                                           nn.LeakyReLU(0.2), conv(w, w, 3, padding=1),
                                           nn.LeakyReLU(0.2)))
            cin = w
        self.up = nn.ModuleList()
        for k in range(levels, 0, -1):
            self.up.append(nn.Sequential(conv(widths[k] + widths[k - 1], widths[k - 1], 3,
                                              padding=1), nn.LeakyReLU(0.2)))
        self.out = conv(widths[0], ndim, 3, padding=1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for block in self.down:
            x = block(x)
            skips.append(x)
        x = skips.pop()
        mode = "trilinear" if self.ndim == 3 else "bilinear"
        for block in self.up:
            skip = skips.pop()
            x = F.interpolate(x, size=skip.shape[2:], mode=mode, align_corners=False)
            x = block(torch.cat([x, skip], dim=1))
        return self.out(x)


def _identity(shape, device) -> torch.Tensor:
    """Normalized coordinates of every voxel, (1, *S, d), array-axis order."""
    axes = [torch.linspace(-1, 1, n, device=device) for n in shape]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).unsqueeze(0)


def _sample(vol: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
    """vol (B, C, *S) at coords (B, *S', d) in array-axis order -> (B, C, *S')."""
    return F.grid_sample(vol, coords.flip(-1), mode="bilinear", padding_mode="border",
                         align_corners=True)


def _ncc_loss(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    a = a.flatten(1) - a.flatten(1).mean(1, keepdim=True)
    b = b.flatten(1) - b.flatten(1).mean(1, keepdim=True)
    ncc = (a * b).sum(1) / torch.sqrt((a * a).sum(1) * (b * b).sum(1) + 1e-8)
    return (1 - ncc ** 2).mean()


def voxel_gradicon_loss(net: UNet, moving: torch.Tensor, fixed: torch.Tensor,
                        lambda_reg: float = 10.0) -> torch.Tensor:
    """Single-resolution GradICON on the voxel grid (displacements in normalized units)."""
    shape = moving.shape[2:]
    d = len(shape)
    ident = _identity(shape, moving.device)
    disp_ab = net(torch.cat([moving, fixed], 1)).movedim(1, -1)
    disp_ba = net(torch.cat([fixed, moving], 1)).movedim(1, -1)
    phi_ab, phi_ba = ident + disp_ab, ident + disp_ba
    sim = _ncc_loss(_sample(moving, phi_ab), fixed) + _ncc_loss(_sample(fixed, phi_ba), moving)
    composed = phi_ba + _sample(disp_ab.movedim(-1, 1), phi_ba).movedim(1, -1)
    reg = 0.0
    for axis in range(d):
        step = 2.0 / (shape[axis] - 1)
        diff = (composed.narrow(axis + 1, 1, shape[axis] - 1)
                - composed.narrow(axis + 1, 0, shape[axis] - 1)) / step
        eye = torch.zeros(d, device=moving.device)
        eye[axis] = 1.0
        reg = reg + ((diff - eye) ** 2).sum(-1).mean()
    return sim + lambda_reg * reg


# ----------------------------------------------------------------------------- one measurement
def measure(method: str, ndim: int, size: int, batch: int, steps: int, points: int,
            reg_points: int, device: str, jacobian: str | None = None) -> dict:
    from nephi.config.loader import resolve_config
    from nephi.geometry.grid import Grid
    from nephi.learn.trainer import TrainStep, build_net

    dev = torch.device(device)
    shape = (size,) * ndim
    torch.manual_seed(0)
    moving = torch.rand(batch, 1, *shape, device=dev)
    fixed = torch.rand(batch, 1, *shape, device=dev)
    if method == "nephi":
        cfg = resolve_config("train", None, [f"loss.jacobian={jacobian}"] if jacobian else [])
        net = build_net(cfg, shape).to(dev)
        model = TrainStep(net, Grid(shape, torch.eye(ndim + 1).numpy()), cfg)
        gen = torch.Generator().manual_seed(0)

        def loss_fn():
            return model(moving, fixed, None, points, reg_points, gen)[0]
    else:
        net = UNet(ndim).to(dev)

        def loss_fn():
            return voxel_gradicon_loss(net, moving, fixed)
    opt = torch.optim.Adam(net.parameters(), lr=1e-4)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    times = []
    for k in range(steps + 1):
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss = loss_fn()
        loss.backward()
        opt.step()
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        if k > 0:
            times.append(time.perf_counter() - t0)
    peak = (torch.cuda.max_memory_allocated(dev) / 2 ** 20 if dev.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0)
    return {"params_m": sum(p.numel() for p in net.parameters()) / 1e6, "peak_mb": peak,
            "step_s": sum(times) / len(times)}


def _baseline_rss() -> float:
    """Peak RSS (MB) of a process that imports torch and nephi and does nothing else."""
    code = ("import resource, torch, nephi.training; "
            "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0)")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": os.path.dirname(os.path.dirname(
                             os.path.abspath(__file__)))})
    return float(res.stdout.strip()) if res.returncode == 0 else float("nan")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes2d", type=int, nargs="*", default=[64, 128, 256])
    p.add_argument("--sizes3d", type=int, nargs="*", default=[32, 48, 64])
    p.add_argument("--batch", type=int, default=1, help="pairs per step (default 1)")
    p.add_argument("--steps", type=int, default=2, help="timed steps after a warm-up (default 2)")
    p.add_argument("--points", type=int, default=4096, help="NePhi similarity points (4096)")
    p.add_argument("--reg-points", type=int, default=1024, help="NePhi GradICON points (1024)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--timeout", type=int, default=1800, help="seconds per measurement")
    p.add_argument("--jacobians", nargs="*", default=None,
                   help="NePhi GradICON Jacobian strategies, one row each (default: train.yaml's)")
    p.add_argument("--methods", nargs="*", default=["nephi", "voxel-gradicon"],
                   choices=["nephi", "voxel-gradicon"])
    p.add_argument("--one", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.one:
        job = json.loads(args.one)
        print(json.dumps(measure(**job)))
        return 0

    kind = ("torch.cuda.max_memory_allocated" if args.device.startswith("cuda")
            else "peak RSS of the process")
    print(f"Peak memory ({kind}) and time of one training step, batch {args.batch}, "
          f"device {args.device}; NePhi: {args.points} similarity points per direction, "
          f"{args.reg_points} GradICON points, default train.yaml model.\n")
    if not args.device.startswith("cuda"):
        print(f"Baseline RSS of python + torch + nephi: {_baseline_rss():.0f} MB\n")
    print("| input | method | params (M) | peak memory (MB) | step time (s) |")
    print("|---|---|---|---|---|")
    jobs = [(2, s) for s in args.sizes2d] + [(3, s) for s in args.sizes3d]
    for ndim, size in jobs:
        variants = [(m, j) for m in args.methods
                    for j in ((args.jacobians or [None]) if m == "nephi" else [None])]
        for method, jac in variants:
            job = {"method": method, "ndim": ndim, "size": size, "batch": args.batch,
                   "steps": args.steps, "points": args.points, "reg_points": args.reg_points,
                   "device": args.device, "jacobian": jac}
            label = f"{size}^{ndim}"
            name = f"{method} ({jac})" if jac else method
            try:
                res = subprocess.run([sys.executable, os.path.abspath(__file__), "--one",
                                      json.dumps(job)], capture_output=True, text=True,
                                     timeout=args.timeout)
            except subprocess.TimeoutExpired:
                print(f"| {label} | {name} | | timeout | |", flush=True)
                continue
            if res.returncode != 0:
                tail = res.stderr.strip().splitlines()[-1:] or ["failed"]
                why = "OOM" if "out of memory" in res.stderr.lower() else tail[0][:60]
                print(f"| {label} | {name} | | {why} | |", flush=True)
                continue
            out = json.loads(res.stdout.strip().splitlines()[-1])
            print(f"| {label} | {name} | {out['params_m']:.2f} | {out['peak_mb']:.0f} | "
                  f"{out['step_s']:.3f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
