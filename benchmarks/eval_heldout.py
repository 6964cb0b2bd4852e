"""Held-out evaluation of a trained lung checkpoint: feed-forward, then feed-forward + IO.

Builds N synthetic lung pairs from seeds that no config trains on (default 5000..), registers
them with ``nephi-infer --checkpoint CKPT --pairs`` twice (``--io-steps 0`` and ``--io-steps K``)
and prints one markdown table: landmark error before / after (mean and p95 over all landmarks,
mm), folding inside the fixed lung mask, and seconds per pair (feed-forward, IO, export).

    .venv/bin/python benchmarks/eval_heldout.py --checkpoint runs/lung_cpu/checkpoints/best.pt \\
        [--pairs 5] [--io-steps 100] [--out /tmp/heldout] [--threads 1] \\
        [--options "--set output.field_grid=voxels"]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shlex
import subprocess
import sys

import numpy as np


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from benchmarks.bench_peers import checkpoint_seeds, nephi_infer, thread_env  # noqa: E402


HELDOUT_SEED = 5000


def build_pairs(out: str, n: int, seed: int, shape: list, spacing: list, motion: float) -> str:
    """Synthetic lung pairs under ``out/data`` and the ``--pairs`` CSV that lists them."""
    rows = []
    for i in range(n):
        folder = os.path.join(out, "data", f"seed_{seed + i}")
        if not os.path.exists(os.path.join(folder, "inhale_points.csv")):
            subprocess.run([sys.executable, "-m", "data_prep.synthetic_lung", "--out", folder,
                            "--shape", *map(str, shape), "--spacing", *map(str, spacing),
                            "--motion-mm", str(motion), "--seed", str(seed + i)],
                           check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
        f = lambda name: os.path.join(folder, name)  # noqa: E731
        rows.append({"name": f"seed_{seed + i}", "moving": f("exhale.nii.gz"),
                     "fixed": f("inhale.nii.gz"), "moving_mask": f("exhale_mask.nii.gz"),
                     "fixed_mask": f("inhale_mask.nii.gz"), "moving_points": f("exhale_points.csv"),
                     "fixed_points": f("inhale_points.csv")})
    path = os.path.join(out, "pairs.csv")
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def row(label: str, results: list, key: str, times: bool = True) -> str:
    means = [r[key]["mean_mm"] for r in results]
    p95 = [r[key]["p95_mm"] for r in results]
    fold = [r.get("folding_percent_in_mask", r["folding_percent"]) for r in results]
    ff = [r["feedforward_seconds"] for r in results]
    io = [r["io_seconds"] for r in results]
    export = [r["dense_seconds"] for r in results]
    fold_text = f"{max(fold):.3f}" if times else "-"
    time_text = (f"{np.mean(ff):.1f} | {np.mean(io):.1f} | {np.mean(export):.1f}" if times
                 else "- | - | -")
    return (f"| {label} | {np.mean(means):.2f} (range {min(means):.2f}-{max(means):.2f}) | "
            f"{np.mean(p95):.2f} | {fold_text} | {time_text} |")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--pairs", type=int, default=5)
    p.add_argument("--io-steps", type=int, default=100)
    p.add_argument("--seed", type=int, default=HELDOUT_SEED)
    p.add_argument("--shape", type=int, nargs=3, default=[64, 64, 64])
    p.add_argument("--spacing", type=float, nargs=3, default=[4.0, 4.0, 4.0])
    p.add_argument("--motion-mm", type=float, default=12.0)
    p.add_argument("--out", default="/tmp/nephi_heldout")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--options", default="", metavar='"OPTIONS"',
                   help='more nephi-infer options for every run, e.g. "--set output.field_grid=voxels"')
    args = p.parse_args(argv)
    trained = checkpoint_seeds(args.checkpoint)
    if trained is not None and set(range(args.seed, args.seed + args.pairs)) & set(trained):
        print(f"eval_heldout: seeds {args.seed}.. overlap the training seeds {trained}")
        return 2
    os.makedirs(args.out, exist_ok=True)
    pairs_csv = build_pairs(args.out, args.pairs, args.seed, args.shape, args.spacing,
                            args.motion_mm)
    env = {**os.environ, **thread_env(args.threads)}
    results = {}
    for steps in (0, args.io_steps):
        out = os.path.join(args.out, f"io{steps}")
        subprocess.run([nephi_infer(), "--checkpoint", args.checkpoint, "--pairs", pairs_csv,
                        "--out", out, "--io-steps", str(steps), "--no-progress",
                        *shlex.split(args.options)],
                       check=True, env=env)
        results[steps] = [json.load(open(os.path.join(out, f"seed_{args.seed + i}",
                                                      "summary.json")))
                          for i in range(args.pairs)]
    print(f"\n{args.pairs} held-out pairs (seeds {args.seed}-{args.seed + args.pairs - 1}, "
          f"{'x'.join(map(str, args.shape))} at {args.spacing[0]:g} mm, motion "
          f"{args.motion_mm:g} mm), checkpoint {args.checkpoint}, {args.threads} thread(s)"
          f"{', options ' + args.options if args.options else ''}\n")
    print("| method | landmark error mean (mm) | p95 (mm) | max folding in lung (%) | "
          "feed-forward s | IO s | export s |")
    print("|---|---|---|---|---|---|---|")
    print(row("before registration", results[0], "landmark_error_before_mm", times=False))
    print(row("feed-forward", results[0], "landmark_error_after_mm"))
    print(row(f"feed-forward + {args.io_steps} IO steps", results[args.io_steps],
              "landmark_error_after_mm"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
