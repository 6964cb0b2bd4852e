"""The recipe of issue 13 and its benchmark: NePhi trained on a population of real head scans
within a CPU budget, then, on held-out pairs, feed-forward and feed-forward + IO beside ANTs SyN.

1. **Population** (``--out/subjects``). The template is nilearn's MNI152 head
   (:mod:`nephi.data.real_scans`: the CT of the head, or the T1 MRI with ``--modality mri``) at
   ``--scan-spacing`` mm. Subject s is the template pulled back by a random map T_s drawn from
   seed s with :mod:`nephi.data.augment` (a random affine: rotation up to 3 degrees about each
   axis, scale 1 +- 0.03 per axis, shear up to 0.02, shift up to 3 mm; then a random smooth
   diffeomorphism, velocity up to 6 mm varying over 40 mm; MRI: then gamma, bias field and
   contrast changes), so
   J_s(x) = S(T_s(x)). 200 template landmarks (strong gradients in the brain) sit at
   T_s^-1(p) in subject s (the inverse table refined by fixed-point iteration on T_s), brain
   mask and tissue labels follow the image (nearest voxel): every pair of subjects has exact
   landmark correspondences and labels. Each subject is written as NIfTI (image, mask, labels)
   with a landmark CSV; ``scans.csv`` lists the training subjects (seeds 1000..).
2. **Training pairs**: ``nephi-prep scans`` of ``scans.csv`` (``--pairs-per-scan``
   inter-subject pairs and ``--intra`` pairs per scan, 10 % of the subjects for validation;
   with ``--align rigid|affine`` each inter-subject pair aligned first) on
   the network grid ``--grid``^3 at ``--grid-spacing`` mm (default 64^3 at 3.5 mm, 224 mm: the
   whole head).
3. **Training**: ``configs/heads_cpu.yaml`` (``configs/lung_cpu.yaml``'s network and schedule,
   augmentation on) with ``data.path`` and ``train.steps`` set, saved as
   ``--out/train_config.yaml``, trained by ``accelerate launch train/train.py`` on
   ``--processes`` CPU processes (``--threads`` threads in all) into ``--out/train``. The step
   count comes from ``--train-steps``, or from ``--train-minutes`` (the whole training budget,
   measurement included): a short probe run measures the seconds per step (TensorBoard's
   ``throughput/pairs_per_s``), the seconds per validation and the start-up, and the steps that
   fill the rest of the budget are trained. A finished run is reused; an interrupted one resumes.
4. **Held-out pairs** (``--heldout`` N): moving subject 9000 + 2k, fixed subject 9000 + 2k + 1,
   never trained on. Every method runs as its own process at ``--threads`` threads through the
   peer benchmark's harness (``bench_peers.run_method``: wall seconds and peak memory of the
   whole command from ``os.wait4``, reading and writing included; landmark error from the
   method's own point mapping; Dice of the brain labels pulled back through its dense field;
   folding in the fixed brain mask): no registration, ``nephi-infer --checkpoint`` feed-forward
   (``--io-steps 0``), the same with the global alignment in front (``--align affine``) and
   feed-forward + ``--io-steps`` IO with ``--io-options`` (:data:`IO_OPTIONS`), ANTs SyN with MI and with CC
   (radius 4), both 100x70x50 (:data:`benchmarks.methods.RECIPE_PEERS`). Then feed-forward
   once more, all held-out pairs in ONE ``nephi-infer --pairs`` command (the model loaded
   once, as a cohort is registered; its wall seconds shared out evenly).
   Peers' results are kept between runs of the same command (nephi's are made anew), so ``--set SECTION.KEY=VALUE`` (a change to ``--config``, e.g.
   ``model.passes=2``) with the previous run's training folder moved aside compares networks on
   the same pairs without running SyN again.

Prints a markdown table (landmark error mean / p95 mm, Dice, % folded voxels in the mask,
wall s per pair, peak MB, ratios to SyN MI) and the issue's targets, and writes ``results.md``,
``results.csv`` (one row per run) and ``summary.csv`` (one row per method) to ``--out``::

    .venv/bin/python benchmarks/bench_recipe.py                      # 60 min of training
    .venv/bin/python benchmarks/bench_recipe.py --train-minutes 2 --heldout 2 --subjects 8 \\
        --grid 32 --grid-spacing 7 --out /tmp/recipe_tiny           # a smoke run
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import glob
import json
import os
import shlex
import shutil
import subprocess
import sys
import time

import numpy as np
import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from benchmarks import bench_peers, methods  # noqa: E402
from benchmarks.methods import Case  # noqa: E402

CONFIG = os.path.join(ROOT, "configs", "heads_cpu.yaml")
TRAIN_SCRIPT = os.path.join(ROOT, "train", "train.py")
TRAIN_SEED = 1000
HELDOUT_SEED = 9000
N_LANDMARKS = 200
SUBJECTS = {
    "affine": {"probability": 1.0, "rotation_deg": 3.0, "scaling": 0.03, "shear": 0.02,
               "translation_mm": 3.0},
    "deform": {"probability": 1.0, "max_mm": 6.0, "scale_mm": 40.0},
    "intensity": {"probability": 1.0, "gamma": 0.1, "bias": 0.1, "bias_scale_mm": 80.0,
                  "contrast": 0.05, "noise": 0.0},
}
"""How subjects differ from the template (an ``augment`` section, every kind always drawn;
intensities of MRI subjects only: a CT's Hounsfield units are calibrated)."""
FF, FF_IO, FF_COHORT = "nephi-ff", "nephi-ff-io", "nephi-ff-cohort"
FF_ALIGNED = "nephi-ff-aligned"
# feed-forward + IO on this population: the global alignment in front of the network (it was
# trained on pairs as they come, subjects' random affines included), then IO of the codes and a
# copy of the fields at 3x the automatic learning rates of refinement: measured on the 4
# held-out pairs of docs/bench/recipe_heads.md (300 steps: 0.535 mm in 22 s a pair; 500 steps
# at the automatic rates: 0.535 mm in 34 s; 200 steps of the codes alone: 0.585 mm in 18 s)
IO_OPTIONS = "--align affine --io-params all --lr 3e-4 --set optim.latent_lr=3e-3"
SYN_MI, SYN_CC = methods.RECIPE_PEERS
COLUMNS = [("method", "method"), ("pairs", "pairs"), ("tre_mean", "TRE mean mm"),
           ("tre_p95", "TRE p95 mm"), ("dice", "Dice"),
           ("folding_mask_pct", "folded % (mask)"), ("wall_s", "s per pair"),
           ("peak_mb", "peak MB"), ("tre_x_ants", "TRE x SyN MI"),
           ("time_x_ants", "time x SyN MI")]


# ----------------------------------------------------------------------------- population
def template(modality: str, spacing: float):
    """The MNI152 head (:class:`nephi.data.real_scans.Scan`) of ``modality`` at ``spacing``
    mm and its landmarks (N, 3) RAS mm."""
    from nephi.data.real_scans import brain_landmarks, head_ct, mni152

    scan = mni152(spacing)
    if modality == "ct":
        scan = head_ct(scan)
    points = brain_landmarks(scan, N_LANDMARKS, np.random.default_rng(0),
                             min_mm=2.0 * float(scan.grid.spacing.max()))
    return scan, points


def carried_points(spatial, x, iterations: int = 30):
    """The points y with T(y) = x of a :class:`nephi.data.augment.SpatialMap` T, frame points
    (1, N, d) float64: T's inverse table, refined by the fixed-point iteration y <- y - (T(y) -
    x) (T is close to the identity, so it contracts)."""
    y = spatial.inverse(x)
    for _ in range(iterations):
        y = y - (spatial(y) - x)
    return y


def make_subject(scan, points: np.ndarray, seed: int) -> dict:
    """Subject ``seed``: ``image``, ``mask``, ``labels`` on the template's grid and ``points``
    (N, 3) RAS mm, row k the template's landmark k (see the module docstring)."""
    import torch

    from nephi.data.augment import AugmentConfig, PairAugmenter

    grid = scan.grid
    kinds = SUBJECTS if scan.modality == "mri" else {**SUBJECTS, "intensity": {}}
    draw = PairAugmenter(AugmentConfig.from_dict(kinds), grid).draw(
        1, torch.Generator().manual_seed(seed))
    spatial = draw.moving_map

    def pulled(volume, mode: str, background: float = 0.0):
        vol = torch.as_tensor(np.asarray(volume, dtype=np.float32) - background)
        return spatial.resample(vol[None, None], mode=mode) + background

    image = pulled(scan.image, "bilinear", float(scan.image.min()))
    if draw.moving_intensity is not None:
        image = draw.moving_intensity.apply(image)
    x = torch.as_tensor(grid.ras_to_normalized_points(points))[None]
    moved = carried_points(spatial, x)[0].numpy()
    return {"image": image[0, 0].numpy(),
            "mask": pulled(scan.mask, "nearest")[0, 0].numpy() > 0.5,
            "labels": np.rint(pulled(scan.labels, "nearest")[0, 0].numpy()).astype(np.int16),
            "points": grid.normalized_to_ras_points(moved)}


def subject_files(folder: str, scan, points: np.ndarray, seed: int) -> dict:
    """Subject ``seed`` written once into ``folder``: file kind -> path."""
    from nephi.io.images import save_image
    from nephi.io.points import save_points

    paths = {k: os.path.join(folder, f"{k}.nii.gz") for k in ("image", "mask", "labels")}
    paths["points"] = os.path.join(folder, "points.csv")
    if not all(os.path.isfile(p) for p in paths.values()):
        subject = make_subject(scan, points, seed)
        os.makedirs(folder, exist_ok=True)
        for kind, dtype in (("image", np.float32), ("mask", np.uint8), ("labels", np.int16)):
            save_image(paths[kind], subject[kind], scan.grid, dtype=dtype)
        save_points(paths["points"], subject["points"])
    return paths


def build_population(args, scan, points) -> tuple:
    """The training subjects' ``scans.csv`` and the held-out cases (see the module docstring)."""
    root = os.path.join(args.out, "subjects")
    rows = []
    for i in range(args.subjects):
        name = f"subject_{TRAIN_SEED + i}"
        paths = subject_files(os.path.join(root, name), scan, points, TRAIN_SEED + i)
        rows.append({"name": name, "image": paths["image"], "mask": paths["mask"],
                     "label": paths["labels"], "points": paths["points"]})
    scans_csv = os.path.join(args.out, "scans.csv")
    with open(scans_csv, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    cases = []
    for k in range(args.heldout):
        seeds = (HELDOUT_SEED + 2 * k, HELDOUT_SEED + 2 * k + 1)
        moving, fixed = (subject_files(os.path.join(root, f"heldout_{s}"), scan, points, s)
                         for s in seeds)
        cases.append(Case(name=f"heldout_{seeds[0]}__{seeds[1]}", group="held-out", ndim=3,
                          moving=moving["image"], fixed=fixed["image"],
                          fixed_mask=fixed["mask"], moving_mask=moving["mask"],
                          fixed_points=fixed["points"], moving_points=moving["points"],
                          fixed_labels=fixed["labels"], moving_labels=moving["labels"],
                          shape=tuple(scan.grid.shape),
                          spacing=tuple(float(s) for s in scan.grid.spacing), seed=seeds[1]))
    return scans_csv, cases


def prep_pairs(args, scans_csv: str) -> str:
    """``nephi-prep scans`` of the training subjects -> the pair file (built once)."""
    from nephi.cli.prep import main as prep_main

    aligned = "" if args.align == "none" else f"_{args.align}"
    path = os.path.join(args.out, f"pairs_{args.grid}_{args.grid_spacing:g}mm{aligned}.h5")
    if not os.path.isfile(path):
        argv = ["scans", "--csv", scans_csv, "--out", path, "--align", args.align,
                "--spacing", str(args.grid_spacing),
                "--shape", str(args.grid), "--pairs-per-scan", str(args.pairs_per_scan),
                "--intra", str(args.intra), "--intra-max-mm", "6", "--seed", "0",
                "--workers", str(args.threads)]
        print("recipe: nephi-prep " + " ".join(argv), flush=True)
        if prep_main(argv) != 0:
            raise SystemExit("recipe: nephi-prep scans failed")
    return path


# ----------------------------------------------------------------------------- training
def launch(args, config: str, out_dir: str, extra: list) -> float:
    """``accelerate launch train/train.py`` on ``--processes`` CPU processes; wall seconds."""
    accelerate = os.path.join(os.path.dirname(sys.executable), "accelerate")
    cmd = [accelerate, "launch", *(["--multi_gpu"] if args.processes > 1 else []),
           "--num_processes", str(args.processes), "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", TRAIN_SCRIPT,
           "--config", config, "--output-dir", out_dir, *extra]
    print("recipe: " + " ".join(shlex.quote(c) for c in cmd), flush=True)
    env = bench_peers.thread_env(max(1, args.threads // args.processes))
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=ROOT, env=env)
    return time.perf_counter() - t0


def scalars(run_dir: str, tag: str) -> list:
    """(step, value) of a TensorBoard scalar of a run folder."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(os.path.join(run_dir, "tensorboard"), size_guidance={"scalars": 0})
    acc.Reload()
    return [(e.step, e.value) for e in acc.Scalars(tag)] if tag in acc.Tags()["scalars"] else []


def budget_steps(args, config: dict, config_path: str) -> tuple:
    """Steps that fit ``--train-minutes`` (probe included) and the probe's measurements."""
    probe_dir = os.path.join(args.out, "probe")
    shutil.rmtree(probe_dir, ignore_errors=True)  # a probe of an earlier run measured another config
    every = 5
    wall = launch(args, config_path, probe_dir,
                  [f"train.steps={args.probe_steps}", f"train.log_every={every}",
                   "train.warmup_steps=1", f"checkpoint.every={args.probe_steps}"])
    rates = [v for step, v in scalars(probe_dir, "throughput/pairs_per_s") if step > every]
    val_s = max(v for _, v in scalars(probe_dir, "val/seconds"))
    t = config["train"]
    pairs_per_step = t["batch_size"] * t.get("grad_accum", 1) * args.processes
    step_s = pairs_per_step / float(np.median(rates))
    fixed_s = max(0.0, wall - args.probe_steps * step_s - val_s)
    left = 60.0 * args.train_minutes - wall - fixed_s - val_s
    steps = int(left / (step_s + val_s / config["val"]["every"]))
    probe = {"probe_wall_s": wall, "step_s": step_s, "val_s": val_s, "startup_s": fixed_s}
    print(f"recipe: probe: {step_s:.2f} s per step, {val_s:.1f} s per validation, "
          f"{fixed_s:.1f} s start-up -> {steps} steps in {args.train_minutes:g} min", flush=True)
    if steps < 1:
        raise SystemExit(f"recipe: --train-minutes {args.train_minutes:g} leaves no step "
                         "after the probe; give more minutes or --train-steps")
    return steps, probe


def write_config(path: str, config: dict, source: str) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(f"# written by benchmarks/bench_recipe.py from {source}: data.path, output_dir "
                 f"and train.steps ({config['train']['steps']}) set\n")
        yaml.safe_dump(config, fh, sort_keys=False)


def train(args, pairs_h5: str) -> tuple:
    """Train (or reuse, or resume) the run ``--out/train``; (best checkpoint, time record,
    whether this call trained)."""
    run_dir = os.path.join(args.out, "train")
    best = os.path.join(run_dir, "checkpoints", "best.pt")
    config_path = os.path.join(args.out, "train_config.yaml")
    record_path = os.path.join(args.out, "train_time.json")
    if os.path.isfile(os.path.join(run_dir, "replica_rank0.json")) and os.path.isfile(best):
        print(f"recipe: training done before, reusing {best}", flush=True)
        with open(record_path, encoding="utf-8") as fh:
            return best, json.load(fh), False
    if glob.glob(os.path.join(run_dir, "checkpoints", "step_*.pt")):
        with open(record_path, encoding="utf-8") as fh:
            record = json.load(fh)
        extra = ["--resume"]
    else:
        with open(args.config, encoding="utf-8") as fh:
            config = yaml.safe_load(fh)
        config["data"]["path"] = os.path.abspath(pairs_h5)
        config["output_dir"] = run_dir
        for key, value in args.set:
            section, _, name = key.partition(".")
            config.setdefault(section, {})[name] = value
        source = os.path.relpath(args.config, ROOT)
        write_config(config_path, config, source)
        record = {"processes": args.processes, "threads": args.threads,
                  "train_minutes": None if args.train_steps else args.train_minutes,
                  "train_wall_s": 0.0}
        if args.train_steps:
            config["train"]["steps"] = args.train_steps
        else:
            config["train"]["steps"], probe = budget_steps(args, config, config_path)
            record.update(probe)
        record["steps"] = config["train"]["steps"]
        write_config(config_path, config, source)
        extra = []
    with open(record_path, "w", encoding="utf-8") as fh:
        json.dump(record, fh, indent=1)
    record["train_wall_s"] += launch(args, config_path, run_dir, extra)
    with open(record_path, "w", encoding="utf-8") as fh:
        json.dump(record, fh, indent=1)
    return best, record, True


def checkpoint_facts(path: str) -> dict:
    """Step, pair counts and best validation metric that a checkpoint states about itself."""
    import torch

    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    return {"step": ckpt.get("step"), **ckpt.get("data", {}), "best": ckpt.get("best") or {},
            "grid": ckpt.get("grid", {})}


# ----------------------------------------------------------------------------- benchmark
def with_options(spec, key: str, options: list):
    """``spec`` (a nephi-infer method) with ``options`` added to its command, as method ``key``."""
    base = spec.argv
    return dataclasses.replace(spec, key=key,
                               argv=lambda case, out_dir, mask: base(case, out_dir, mask) + options)


def method_specs(checkpoint: str, io_steps: int, io_options: list) -> list:
    """Feed-forward, feed-forward with the global alignment in front, feed-forward + IO (with
    ``io_options``), then the peers."""
    ff = bench_peers.nephi_spec("nephi", 0, checkpoint)
    ff_io = bench_peers.nephi_spec("nephi", io_steps, checkpoint, ff_io=True)
    return [ff, with_options(ff, FF_ALIGNED, ["--align", "affine"]),
            with_options(ff_io, FF_IO, io_options),
            bench_peers.peer_spec(SYN_MI, "full"), bench_peers.peer_spec(SYN_CC, "full")]


def cohort_records(args, checkpoint: str, cases: list, runs: str) -> list:
    """Feed-forward of every held-out pair by ONE ``nephi-infer --pairs`` command (the model
    loaded once, as a user registers a cohort): one record per pair, wall seconds and peak
    memory of the whole command shared out evenly."""
    out = os.path.join(runs, FF_COHORT)
    shutil.rmtree(out, ignore_errors=True)
    os.makedirs(runs, exist_ok=True)
    table = out + ".csv"
    keys = ("moving", "fixed", "fixed_mask", "moving_mask", "fixed_points", "moving_points")
    with open(table, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["name", *keys])
        for case in cases:
            writer.writerow([case.name, *(getattr(case, k) for k in keys)])
    argv = [bench_peers.nephi_infer(), "--checkpoint", checkpoint, "--pairs", table, "--out", out,
            "--io-steps", "0", "--no-progress", "--seed", "0"]
    run = bench_peers.measure(argv, out + ".log", bench_peers.thread_env(args.threads),
                              args.timeout * len(cases))
    records = []
    for case in cases:
        rec = {"method": FF_COHORT, "case": case.name, "group": case.group, "mask": True,
               "threads": args.threads, "command": " ".join(argv),
               "wall_s": run["wall_s"] / len(cases), "peak_mb": run["peak_mb"]}
        folder = os.path.join(out, case.name)
        try:
            if run["returncode"] != 0:
                raise RuntimeError(f"exit {run['returncode']}")
            rec.update(bench_peers.evaluate(case, os.path.join(folder, "warp.nii.gz"),
                                            os.path.join(folder, "landmarks_moving.csv")))
            rec["status"] = "ok"
        except Exception as exc:  # a missing or unreadable output is this method's failure
            rec.update(status="failed", error=f"{type(exc).__name__}: {exc}")
        records.append(rec)
    return records


def ratio(a, b):
    return a / b if a is not None and b else None


def targets(rows: list, records: list, labels: dict) -> list:
    """The issue's "done when" figures of this run."""
    by = {r["method"]: r for r in rows}
    lines = []
    for key, ref, most in ((FF, SYN_MI, 0.2), (FF_COHORT, SYN_MI, 0.2), (FF_ALIGNED, SYN_MI, 0.2),
                           (FF_IO, SYN_CC, 0.25)):
        a, b = by.get(key, {}), by.get(ref, {})
        tre, wall = ratio(a.get("tre_mean"), b.get("tre_mean")), ratio(a.get("wall_s"),
                                                                        b.get("wall_s"))
        lines.append(f"- {labels[key]} against {labels[ref]}: landmark error x "
                     f"{bench_peers._fmt(tre)} (target <= 1), time per pair x "
                     f"{bench_peers._fmt(wall)} (target <= {most:g})")
    folds = [r["folding_mask_pct"] for r in records
             if r["method"].startswith("nephi") and r.get("folding_mask_pct") is not None]
    lines.append("- folded voxels in the fixed brain mask, largest over nephi's runs: "
                 f"{bench_peers._fmt(max(folds) if folds else None, 4)} % (target 0)")
    return lines


def report(args, command: str, facts: dict, timing: dict, cases: list, rows: list,
           records: list, labels: dict) -> str:
    best = facts["best"]
    minutes = timing["train_wall_s"] / 60.0 + timing.get("probe_wall_s", 0.0) / 60.0
    grid = facts["grid"]
    head = [
        f"# Recipe benchmark (issue 13), {time.strftime('%Y-%m-%d %H:%M')}",
        "",
        f"Command: `{command}`; {os.cpu_count()} CPUs, every method its own process at "
        f"{args.threads} threads.",
        "",
        f"Population: MNI152 head {args.modality.upper()} at {args.scan_spacing:g} mm, "
        f"{args.subjects} training subjects (random affine + smooth diffeomorphism each, seeds "
        f"{TRAIN_SEED}..), `nephi-prep scans` {facts.get('train_pairs')} training / "
        f"{facts.get('val_pairs')} validation pairs ({args.pairs_per_scan} inter-subject + "
        f"{args.intra} intra per scan) on "
        f"{'x'.join(map(str, grid.get('shape', [])))} at "
        f"{'/'.join(f'{s:g}' for s in grid.get('spacing', []))} mm.",
        f"Training: `{os.path.relpath(args.config, ROOT)}`, {timing['steps']} steps on "
        f"{timing['processes']} process(es), {minutes:.1f} min (probe included"
        + (f"; budget {timing['train_minutes']:g} min" if timing.get("train_minutes") else "")
        + f"); best validation {best.get('metric', '-')} {bench_peers._fmt(best.get('value'))} "
        f"at step {best.get('step', '-')}.",
        f"Held-out: {len(cases)} pairs of subjects never trained on (seeds {HELDOUT_SEED}..), "
        f"{N_LANDMARKS} landmarks each, Dice of the brain labels, folding in the fixed brain "
        "mask; seconds per pair: wall of the whole command (reading, registering, writing).",
    ]
    table = bench_peers.markdown_tables(rows, ["held-out"], labels, COLUMNS)
    commands = ["", "Commands (first pair):", ""]
    for key in [k for k in labels if k != "identity"]:
        rec = next((r for r in records if r["method"] == key), None)
        if rec:
            commands.append(f"- {labels[key]}: `{rec['command']}`")
    return "\n".join(head + [table, "", "Targets of the issue:", ""]
                     + targets(rows, records, labels) + commands) + "\n"


def setting(text: str) -> tuple:
    """``SECTION.KEY=VALUE`` of ``--set`` -> (key, YAML-parsed value)."""
    key, sep, value = text.partition("=")
    if not sep or key.count(".") != 1:
        raise argparse.ArgumentTypeError(f"{text!r}: expected SECTION.KEY=VALUE")
    return key, yaml.safe_load(value)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=os.path.join(ROOT, "runs", "recipe_heads"),
                   help="population, pair file, training run and results (default runs/recipe_heads)")
    p.add_argument("--modality", choices=["ct", "mri"], default="ct")
    p.add_argument("--scan-spacing", type=float, default=2.5, help="subjects' voxel size, mm")
    p.add_argument("--subjects", type=int, default=30, help="training subjects (default 30)")
    p.add_argument("--pairs-per-scan", type=int, default=4)
    p.add_argument("--intra", type=int, default=2)
    p.add_argument("--grid", type=int, default=64, help="network grid side (default 64)")
    p.add_argument("--grid-spacing", type=float, default=3.5, help="network grid mm (default 3.5)")
    p.add_argument("--config", default=CONFIG)
    p.add_argument("--align", choices=["none", "rigid", "affine"], default="affine",
                   help="nephi-prep --align of the training pairs (default affine): the network "
                        "learns what is left after the global alignment, and nephi-infer runs "
                        "that alignment in front of it (none: pairs as they come)")
    p.add_argument("--train-minutes", type=float, default=60.0,
                   help="training budget in minutes, step-time probe included (default 60)")
    p.add_argument("--train-steps", type=int, default=0, help="train this many steps instead")
    p.add_argument("--probe-steps", type=int, default=30,
                   help="steps of the run that measures the step time (default 30, at least 15)")
    p.add_argument("--processes", type=int, default=2, help="training processes (default 2)")
    p.add_argument("--threads", type=int, default=2, help="threads in all (default 2)")
    p.add_argument("--heldout", type=int, default=10, help="held-out pairs (default 10)")
    p.add_argument("--io-steps", type=int, default=300, help="IO steps of feed-forward + IO "
                   "(default 300)")
    p.add_argument("--io-options", default=IO_OPTIONS,
                   help=f"more nephi-infer options of feed-forward + IO (default {IO_OPTIONS!r})")
    p.add_argument("--timeout", type=float, default=1800.0, help="per run, seconds")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   type=setting, help="change a key of --config for this run (YAML value; "
                   "e.g. model.passes=2); repeatable")
    args = p.parse_args(argv)
    if args.subjects < 2 or args.subjects >= HELDOUT_SEED - TRAIN_SEED:
        p.error(f"--subjects: between 2 and {HELDOUT_SEED - TRAIN_SEED - 1}")
    if args.probe_steps < 15:
        p.error("--probe-steps: at least 15")
    args.out = os.path.abspath(args.out)
    args.config = os.path.abspath(args.config)
    os.makedirs(args.out, exist_ok=True)
    command = " ".join(shlex.quote(a) for a in [os.path.relpath(sys.executable, ROOT),
                                                os.path.relpath(os.path.abspath(__file__), ROOT),
                                                *(sys.argv[1:] if argv is None else argv)])
    import torch

    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    print(f"recipe: building {args.subjects} + {2 * args.heldout} subjects in {args.out}",
          flush=True)
    scan, points = template(args.modality, args.scan_spacing)
    scans_csv, cases = build_population(args, scan, points)
    checkpoint, timing, _ = train(args, prep_pairs(args, scans_csv))
    facts = checkpoint_facts(checkpoint)
    runs = os.path.join(args.out, "runs")
    # nephi's results are made anew every time (a minute; the checkpoint behind the same path
    # may have changed); the peers' are reused when their command is the same
    for path in glob.glob(os.path.join(runs, "*", "nephi-*")):
        if os.path.isdir(path):
            shutil.rmtree(path)
        else:
            os.remove(path)

    io_options = shlex.split(args.io_options)
    specs = method_specs(checkpoint, args.io_steps, io_options)
    labels = {"identity": "before registration", FF: "nephi feed-forward",
              FF_COHORT: "nephi feed-forward, all pairs in one command (--pairs)",
              FF_ALIGNED: "nephi feed-forward, --align affine in front",
              FF_IO: f"nephi feed-forward + IO ({args.io_steps} steps"
              + (f", {args.io_options}" if io_options else "") + ")",
              **{s.key: s.label for s in specs[3:]}}
    records = [bench_peers.identity_record(c) for c in cases]
    for case in cases:
        for spec in specs:
            if spec.reason:
                raise SystemExit(f"recipe: {spec.label} cannot run: {spec.reason}")
            rec = bench_peers.run_method(spec, case, runs, timeout=args.timeout,
                                         threads=args.threads, resume=True)
            records.append(rec)
            print(f"recipe: {case.name} {labels[spec.key]}: "
                  + bench_peers._progress_line(rec, time.perf_counter() - started), flush=True)
    records += cohort_records(args, checkpoint, cases, runs)
    rows = bench_peers.aggregate(records, ["held-out"], list(labels), reference=SYN_MI)
    text = report(args, command, facts, timing, cases, rows, records, labels)
    print("\n" + text)
    with open(os.path.join(args.out, "results.md"), "w", encoding="utf-8") as fh:
        fh.write(text)
    bench_peers.write_csv(os.path.join(args.out, "results.csv"), records, bench_peers.RUN_COLUMNS)
    bench_peers.write_csv(os.path.join(args.out, "summary.csv"), rows,
                          bench_peers.SUMMARY_COLUMNS)
    print(f"recipe: wrote results.md, results.csv and summary.csv to {args.out} "
          f"({(time.perf_counter() - started) / 60:.1f} min)")
    return 1 if any(r.get("status") == "failed" for r in records) else 0


if __name__ == "__main__":
    np.seterr(all="ignore")
    sys.exit(main())
