"""Instance-optimization modes compared on synthetic lung pairs: nephi vs inr vs velocity.

For every seed a synthetic inhale/exhale pair is drawn (:func:`data_prep.synthetic_lung.
make_lung_pair`; default 64^3 voxels at 4 mm, ``motion_mm`` 14; moving = exhale, fixed =
inhale) and registered by :func:`nephi.pipeline.pairwise.register` once per mode with the pairwise
defaults of that mode (``--set KEY=VALUE`` overrides any config key for every mode). Each run is
a fresh subprocess, so its peak memory is its own: on CPU the process's peak resident set size
(MB, including the Python/torch baseline of a few hundred MB), on CUDA
``torch.cuda.max_memory_allocated``.

Columns (all from the written result folder):

* landmark error (mm): mean and 95th percentile over the pair's landmarks, before and after;
* folding (%): percentage of lung-mask voxels with det J(phi_AB) <= 0 (``jacobian.nii.gz``);
* IC (mm): inverse consistency |phi_BA(phi_AB(x)) - x| mean over the mask (summary.json);
* files (vox): mean over the mask of |x - (x + d(x)) - d'(x + d(x))| in fixed voxels, composing
  the exported warp.nii.gz (d) and inverse_warp.nii.gz (d', linearly interpolated) as an ITK
  tool would;
* IO (s), wall (s): optimization time and total time of register() (dense export included);
* peak MB: see above.

Examples::

    python benchmarks/bench_io_modes.py                         # 3 modes, seed 0, CPU
    python benchmarks/bench_io_modes.py --seeds 0 1 2 --modes inr velocity
    python benchmarks/bench_io_modes.py --set inr.steps=400 --set velocity.ode_steps=4
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

import numpy as np


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def make_pair(folder: str, shape, spacing, motion_mm: float, seed: int) -> None:
    from nephi.data.synthetic_lung import make_lung_pair

    if not os.path.isfile(os.path.join(folder, "exhale_points.csv")):
        make_lung_pair(shape=shape, spacing=spacing, motion_mm=motion_mm, seed=seed).save(folder)


def worker(data: str, out: str, mode: str, sets: list, threads: int) -> None:
    """One registration (run in its own process); writes ``out``."""
    import torch

    from nephi.config.loader import load_defaults, parse_override, set_dotted
    from nephi.pipeline.pairwise import LoadedPair, register

    if threads > 0:
        torch.set_num_threads(threads)
    cfg = set_dotted(load_defaults("pairwise"), "io.mode", mode)
    for text in sets:
        key, value = parse_override(text)
        cfg = set_dotted(cfg, key, value, source=f"--set {text}")
    pair = LoadedPair(os.path.join(data, "exhale.nii.gz"), os.path.join(data, "inhale.nii.gz"),
                      os.path.join(data, "inhale_mask.nii.gz"),
                      os.path.join(data, "inhale_points.csv"),
                      os.path.join(data, "exhale_points.csv"))
    register(pair, out, cfg, command=["bench_io_modes.py", mode, *sets], progress=False)


def composition_error_vox(out: str, mask: np.ndarray) -> float:
    """Mean over mask voxels of the round trip through the two exported fields, fixed voxels."""
    from nephi.results.result import Result
    from nephi.transforms.displacement import map_points

    res = Result.load(out)
    fwd, inv = res.field(), res.field(inverse=True)
    index = np.argwhere(mask).astype(np.float64)
    p = fwd.grid.index_to_ras_points(index)
    back = map_points(map_points(p, fwd.disp, fwd.grid), inv.disp, inv.grid)
    return float(np.linalg.norm(fwd.grid.ras_to_index_points(back) - index, axis=1).mean())


def row(out: str, mask: np.ndarray, mode: str, seed: int) -> dict:
    from nephi.results.result import Result

    s = Result.load(out).summary
    before, after = s["landmark_error_before_mm"], s["landmark_error_after_mm"]
    return {
        "mode": mode, "seed": seed,
        "lm_before": before["mean_mm"], "lm_mean": after["mean_mm"], "lm_p95": after["p95_mm"],
        "reduction_pct": 100.0 * (1.0 - after["mean_mm"] / before["mean_mm"]),
        "folding_pct_mask": s["folding_percent_in_mask"],
        "ic_mm": s["inverse_consistency_mm_mean"],
        "files_vox": composition_error_vox(out, mask),
        "io_s": s["io_seconds"], "wall_s": s["wall_time_s"], "peak_mb": s["peak_memory_mb"],
        "ncc_after": s["ncc_after"], "device": s["device"],
    }


def table(rows: list) -> str:
    head = ("| mode | seed | landmarks before (mm) | mean (mm) | p95 (mm) | reduction (%) | "
            "folding in mask (%) | IC mean (mm) | warp o inverse_warp (vox) | IO (s) | wall (s) "
            "| peak MB |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        lines.append(f"| {r['mode']} | {r['seed']} | {r['lm_before']:.2f} | {r['lm_mean']:.2f} | "
                     f"{r['lm_p95']:.2f} | {r['reduction_pct']:.1f} | "
                     f"{r['folding_pct_mask']:.4f} | {r['ic_mm']:.2g} | {r['files_vox']:.2g} | "
                     f"{r['io_s']:.0f} | {r['wall_s']:.0f} | {r['peak_mb']:.0f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--modes", nargs="+", default=["nephi", "inr", "velocity"],
                   choices=["nephi", "inr", "velocity"])
    p.add_argument("--seeds", nargs="+", type=int, default=[0])
    p.add_argument("--shape", nargs=3, type=int, default=[64, 64, 64])
    p.add_argument("--spacing", nargs=3, type=float, default=[4.0, 4.0, 4.0])
    p.add_argument("--motion-mm", type=float, default=14.0)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="config override for every mode, e.g. --set inr.steps=300")
    p.add_argument("--threads", type=int, default=0,
                   help="torch threads per run (0: torch's default)")
    p.add_argument("--out", default=None, help="work folder (default: a temporary one)")
    p.add_argument("--json", default=None, help="also write the rows to this JSON file")
    p.add_argument("--worker", nargs=3, metavar=("DATA", "OUT", "MODE"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        worker(*args.worker, args.set, args.threads)
        return 0

    import nibabel as nib

    work = args.out or tempfile.mkdtemp(prefix="bench_io_modes_")
    rows = []
    for seed in args.seeds:
        data = os.path.join(work, f"lung_seed{seed}")
        make_pair(data, args.shape, args.spacing, args.motion_mm, seed)
        mask = np.asarray(nib.load(os.path.join(data, "inhale_mask.nii.gz")).dataobj) > 0
        for mode in args.modes:
            out = os.path.join(work, f"{mode}_seed{seed}")
            if not os.path.isfile(os.path.join(out, "summary.json")):
                cmd = [sys.executable, os.path.abspath(__file__), "--worker", data, out, mode,
                       "--threads", str(args.threads)]
                for text in args.set:
                    cmd += ["--set", text]
                subprocess.run(cmd, check=True, cwd=ROOT)
            rows.append(row(out, mask, mode, seed))
            print(f"{mode} seed {seed}: {rows[-1]['lm_mean']:.2f} mm "
                  f"({rows[-1]['reduction_pct']:.1f} % lower), {rows[-1]['io_s']:.0f} s",
                  file=sys.stderr, flush=True)
    shape = "x".join(map(str, args.shape))
    spacing = "x".join(f"{v:g}" for v in args.spacing)
    print(f"\nSynthetic lung pairs {shape} at {spacing} mm, motion_mm {args.motion_mm:g}, "
          f"seeds {' '.join(map(str, args.seeds))}; results in {work}\n")
    print(table(rows))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
