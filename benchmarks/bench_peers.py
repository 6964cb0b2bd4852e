"""Peer benchmark: nephi against ANTs, elastix, dipy and SimpleITK on the same held-out pairs.

``make bench`` (or ``.venv/bin/python benchmarks/bench_peers.py``) builds the pairs, runs every
method on every pair, each run in its own subprocess, and writes ``benchmarks/results/``:

* ``results.md``: the tables (one per group of pairs) with the date, the machine and the exact
  command in the header, every method's settings, the methods that did not run and why;
* ``results.csv`` (one row per method and pair), ``summary.csv`` (one row per method and group);
* ``accuracy_vs_time.png``, ``memory_vs_size.png``, ``scaling.png`` (time and peak memory of
  nephi feed-forward, nephi IO per step and ANTs SyN as the image grows).

Pairs (held out: none of them is in any training set of ``configs/``)
    synthetic lung CT pairs (``data_prep.synthetic_lung``, moving = exhale, fixed = inhale,
    motion 14 mm, 300 vessel landmarks, lung masks) at 64^3 x 4 mm and 128^3 x 2 mm with seeds
    from 9000 (``configs/lung_cpu.yaml`` trains on seeds 1000-1149); 2-D Triangles & Circles
    pairs (128^2, solid and hollow, label maps) with seeds from 9100.

Measurements, the same for every method
    * landmark error (mm): the FIXED landmarks carried into moving space by the method's own
      point mapping, against the true moving landmarks; mean and 95th percentile over all
      landmarks of a group. The column ``field/points gap`` checks that the method's dense field
      (below) maps them to the same place.
    * Dice: moving labels (lung masks; T&C label maps) pulled back onto the fixed grid through
      the dense field with nearest neighbour, against the fixed labels.
    * folding (%): voxels of the fixed grid where det J <= 0 of the fixed->moving map, J by
      central differences of the dense displacement field (:func:`methods.jacobian_determinant`).
    * wall time (s) and peak memory (MB) of the whole subprocess (imports, reading, registering,
      writing), from ``os.wait4``'s ``ru_maxrss`` of that child; ``reg s`` is the time the method
      itself reports for the optimization (nephi: IO and feed-forward seconds).
    * ratios against ANTs SyN strong on the same pairs in the same run.

Usage::

    .venv/bin/python benchmarks/bench_peers.py [--checkpoint runs/lung_cpu/checkpoints/best.pt]
        [--quick] [--threads 2] [--masks supported|none] [--io-steps N] [--methods KEY ...]
        [--resume]
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np

from nephi.results.metrics import foreground_dice


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from benchmarks import methods  # noqa: E402
from benchmarks.methods import Case  # noqa: E402


THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                    "ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS", "NUMBA_NUM_THREADS")
DEFAULT_OUT = os.path.join(ROOT, "benchmarks", "results")
LUNG_SEED = 9000
TC_SEED = 9100
FOV_MM = 256.0
MOTION_MM = 14.0
N_LANDMARKS = 300


# --------------------------------------------------------------------------------- methods
@dataclass
class MethodSpec:
    """One row of the tables: how to run it, what it is, and whether it can run here.

    ``argv(case, out_dir, use_mask)`` is the command; ``field_file`` / ``points_file`` are the
    names of the dense field and the mapped landmarks in ``out_dir``; ``reg_seconds(out_dir)``
    reads the time the method reports for itself. ``applies(case)`` gives (True, "") or
    (False, reason) per case; ``reason`` is set when the method cannot run at all.
    """

    key: str
    label: str
    family: str
    description: str
    uses_mask: bool
    argv: Callable[[Case, str, bool], list]
    field_file: str
    points_file: str
    reg_seconds: Callable[[str], float]
    applies: Callable[[Case], tuple] = lambda case: (True, "")
    reason: str = ""
    extra: dict = field(default_factory=dict)


def nephi_infer() -> str:
    """The ``nephi-infer`` console script beside this Python, else the one on PATH."""
    here = os.path.join(os.path.dirname(sys.executable), "nephi-infer")
    return here if os.path.exists(here) else (shutil.which("nephi-infer") or "nephi-infer")


def nephi_io_modes() -> list:
    """IO modes that ``nephi-infer --help`` offers (``--io-mode {a,b,c}``); ['nephi'] without."""
    try:
        text = subprocess.run([nephi_infer(), "--help"], capture_output=True, text=True,
                              timeout=120).stdout
    except (OSError, subprocess.TimeoutExpired):
        return []
    match = re.search(r"--io-mode \{([^}]*)\}", text)
    if match:
        return [m.strip() for m in match.group(1).split(",") if m.strip()]
    return ["nephi"] if "--pair" in text else []


def _summary(out_dir: str) -> dict:
    with open(os.path.join(out_dir, "summary.json")) as fh:
        return json.load(fh)


def _nephi_reg_seconds(out_dir: str) -> float:
    s = _summary(out_dir)
    return float(s.get("io_seconds") or 0.0) + float(s.get("feedforward_seconds") or 0.0) + \
        float(s.get("preprocess_seconds") or 0.0)


def nephi_description(mode: str) -> str:
    """What an IO mode optimizes, with its point counts read from the pairwise defaults."""
    from nephi.config.loader import load_defaults

    cfg = load_defaults("pairwise")
    a = cfg["align"]
    align = ("" if a["mode"] == "none" else
             f"{a['init']} start, {a['mode']} alignment ({'/'.join(map(str, a['steps']))} steps "
             "at most), then ")
    if mode == "nephi":
        o, m = cfg["optim"], cfg["model"]
        return (f"{align}NePhi fields ({m['layers']}x{m['hidden']} modulated SIREN, "
                f"{m['fourier_features']} Fourier features, z_g {m['latent_channels']}, z_l "
                f"{m['latent_channels']}x{m['latent_grid']}^d) + latent codes from scratch, sym. "
                "NCC + GradICON (lambda 10) + prior 0.01, Adam, "
                f"{o['points']} sim. / {o['reg_points']} GradICON points per step")
    if mode == "inr":
        i = cfg["inr"]
        n = i["network"]
        return (f"{align}IDIR-style SIREN displacement network ({n['layers']}x{n['hidden']}, "
                f"omega0 {n['omega0']:g}), NCC + hyperelastic regularizer, Adam, {i['points']} / "
                f"{i['reg_points']} points per step, inverse by fixed-point iteration")
    if mode == "velocity":
        v = cfg["velocity"]
        n = v["network"]
        return (f"{align}neural stationary velocity field (SIREN {n['layers']}x{n['hidden']}) "
                f"integrated by torchdiffeq {v['solver']} ({v['ode_steps']} steps), NCC + "
                f"hyperelastic, Adam, {v['points']} / {v['reg_points']} points per step")
    return mode


def _shown(path: str) -> str:
    """A path as the tables show it: relative inside the repository, absolute outside."""
    rel = os.path.relpath(path, ROOT)
    return path if rel.startswith("..") else rel


def nephi_spec(mode: str, io_steps: Optional[int], checkpoint: Optional[str],
               profile: str = "full", ff_io: bool = False) -> MethodSpec:
    """``nephi-infer`` as a benchmark method: pairwise IO in ``mode`` (no checkpoint), or the
    feed-forward prediction of ``checkpoint`` (``io_steps`` 0) or feed-forward + IO."""
    steps_text = f"{io_steps} steps" if io_steps is not None else "default steps"
    if checkpoint is None:
        key, label = f"nephi-io-{mode}", f"nephi IO ({mode})"
        desc = f"nephi-infer --io-mode {mode}, {steps_text}: {nephi_description(mode)}"
    elif not ff_io:
        key, label = "nephi-ff", "nephi feed-forward"
        desc = (f"nephi-infer --checkpoint {_shown(checkpoint)} --io-steps 0: "
                "one encoder pass (configs/lung_cpu.yaml network), no IO")
    else:
        key, label = "nephi-ff-io", "nephi feed-forward + IO"
        desc = (f"nephi-infer --checkpoint {_shown(checkpoint)} --io-steps "
                f"{io_steps} --io-params latent: prediction refined by IO of the latent codes "
                "(nephi mode)")

    def argv(case: Case, out_dir: str, use_mask: bool) -> list:
        cmd = [nephi_infer(), "--pair", case.moving, case.fixed, "--out", out_dir,
               "--no-progress", "--seed", "0"]
        if checkpoint is None:
            cmd += ["--io-mode", mode]
            if io_steps is not None:
                cmd += ["--io-steps", str(io_steps)]
            if use_mask and case.fixed_mask:
                cmd += ["--mask", case.fixed_mask]
        else:
            cmd += ["--checkpoint", checkpoint, "--io-steps", str(io_steps if ff_io else 0)]
            if case.fixed_mask and case.moving_mask:
                cmd += ["--mask", case.fixed_mask, "--moving-mask", case.moving_mask]
        if case.fixed_points:
            cmd += ["--landmarks", case.fixed_points]
            if case.moving_points:
                cmd += ["--moving-landmarks", case.moving_points]
        return cmd

    def applies(case: Case) -> tuple:
        if checkpoint is not None and case.ndim != 3:
            return False, "the lung checkpoint (configs/lung_cpu.yaml) is 3-D"
        return True, ""

    return MethodSpec(key, label, "nephi", desc, True, argv, "warp.nii.gz",
                      "landmarks_moving.csv", _nephi_reg_seconds, applies,
                      extra={"mode": mode, "io_steps": io_steps, "profile": profile,
                             "always_mask": checkpoint is not None})


def peer_spec(key: str, profile: str) -> MethodSpec:
    """A peer of :mod:`benchmarks.methods`, run by the worker ``python -m benchmarks.methods``."""
    peer = methods.PEERS[key]
    ok, reason = methods.peer_available(key)
    settings3 = peer.settings(profile, 3)

    def argv(case: Case, out_dir: str, use_mask: bool) -> list:
        case_json = os.path.join(os.path.dirname(out_dir), "case.json")
        cmd = [sys.executable, "-m", "benchmarks.methods", key, case_json, out_dir,
               "--profile", profile]
        return cmd + ([] if use_mask else ["--no-mask"])

    def reg_seconds(out_dir: str) -> float:
        with open(os.path.join(out_dir, methods.METHOD_FILE)) as fh:
            return float(json.load(fh)["reg_seconds"])

    version = methods._version(peer.module) if ok else ""
    desc = f"{version}: {peer.describe(settings3)}" if version else peer.describe(settings3)
    return MethodSpec(key, peer.label, "peer", desc, peer.supports_mask, argv, methods.FIELD_FILE,
                      methods.POINTS_FILE, reg_seconds, reason="" if ok else reason)


# --------------------------------------------------------------------------------- running
def thread_env(threads: int) -> dict:
    """The environment of every method's subprocess: the same thread count for all tools."""
    env = dict(os.environ)
    for var in THREAD_VARIABLES:
        env[var] = str(threads)
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    return env


def measure(argv: list, log_path: str, env: dict, timeout: float) -> dict:
    """Run ``argv`` in its own process group; wall seconds, peak RSS (MB) and exit status.

    The peak is ``ru_maxrss`` of this one child as ``os.wait4`` reports it (the child and any
    descendants it waited for), so runs never blur into each other.
    """
    with open(log_path, "w") as log:
        log.write("$ " + " ".join(argv) + "\n")
        log.flush()
        t0 = time.perf_counter()
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, env=env,
                                start_new_session=True)
        timed_out = False
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.perf_counter() - t0 > timeout:
                timed_out = True
                os.killpg(proc.pid, signal.SIGKILL)
                pid, status, usage = os.wait4(proc.pid, 0)
                break
            time.sleep(0.05)
        wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    return {"wall_s": wall, "peak_mb": usage.ru_maxrss / 1024.0, "returncode": proc.returncode,
            "timed_out": timed_out}


def _tail(path: str, lines: int = 3) -> str:
    try:
        with open(path) as fh:
            text = [ln.strip() for ln in fh.read().splitlines() if ln.strip()]
        return " | ".join(text[-lines:])[-300:]
    except OSError:
        return ""


def load_labels(path: str) -> tuple:
    img = methods.load_image(path, "labels")
    return np.rint(img.data).astype(np.int32), img.grid


def evaluate(case: Case, field_path: str, points_path: Optional[str]) -> dict:
    """Metrics of one finished run from its dense field and its mapped landmarks."""
    disp, grid = methods.read_field(field_path)
    fixed_grid = methods.load_image(case.fixed, "fixed image").grid
    if not grid.same_as(fixed_grid, tol=1e-3):
        raise RuntimeError("the field is not on the fixed grid")
    out = {"folding_pct": methods.folding_percent(disp, grid)}
    if case.fixed_mask:
        mask = methods.load_image(case.fixed_mask, "mask").data > 0
        out["folding_mask_pct"] = methods.folding_percent(disp, grid, mask)
    if case.fixed_points and case.moving_points:
        fixed_pts = methods.load_points(case.fixed_points, case.ndim, "fixed points")
        truth = methods.load_points(case.moving_points, case.ndim, "moving points")
        moved = methods.load_points(points_path, case.ndim, "mapped points")
        dist = np.linalg.norm(moved - truth, axis=1)
        gap = np.linalg.norm(methods.field_points(fixed_pts, field_path) - moved, axis=1)
        out.update({"tre": dist.tolist(), "tre_mean": float(dist.mean()),
                    "tre_p95": float(np.percentile(dist, 95)), "landmarks": int(dist.size),
                    "field_point_gap_mm": float(gap.max())})
    if case.fixed_labels and case.moving_labels:
        fixed_lab, _ = load_labels(case.fixed_labels)
        moving_lab, moving_grid = load_labels(case.moving_labels)
        warped = methods.warp_nearest(moving_lab, moving_grid, disp, grid)
        out["dice"] = foreground_dice(warped, fixed_lab)
    return out


def identity_record(case: Case) -> dict:
    """Metrics of no registration (phi = Id in physical space): the starting point."""
    rec = {"method": "identity", "case": case.name, "group": case.group, "status": "ok",
           "folding_pct": 0.0}
    if case.fixed_points and case.moving_points:
        a = methods.load_points(case.fixed_points, case.ndim, "fixed points")
        b = methods.load_points(case.moving_points, case.ndim, "moving points")
        dist = np.linalg.norm(a - b, axis=1)
        rec.update({"tre": dist.tolist(), "tre_mean": float(dist.mean()),
                    "tre_p95": float(np.percentile(dist, 95)), "landmarks": int(dist.size)})
    if case.fixed_labels and case.moving_labels:
        fixed_lab, fixed_grid = load_labels(case.fixed_labels)
        moving_lab, moving_grid = load_labels(case.moving_labels)
        zero = np.zeros(fixed_grid.shape + (case.ndim,))
        rec["dice"] = foreground_dice(methods.warp_nearest(moving_lab, moving_grid, zero, fixed_grid),
                                   fixed_lab)
    return rec


def run_method(spec: MethodSpec, case: Case, runs_dir: str, use_mask: bool = True,
               timeout: float = 1800.0, threads: int = 1, resume: bool = False) -> dict:
    """Run one method on one case in a subprocess, then evaluate its outputs; returns a record.

    The run folder is ``runs_dir/<case>/<method>/``; ``<method>.json`` beside it keeps the
    record, ``<method>.log`` the command and its output. With ``resume`` a record made by the
    same command is reused.
    """
    case_dir = os.path.join(runs_dir, case.name)
    os.makedirs(case_dir, exist_ok=True)
    case.to_json(os.path.join(case_dir, "case.json"))
    out_dir = os.path.join(case_dir, spec.key)
    record_path = out_dir + ".json"
    masked = bool((use_mask or spec.extra.get("always_mask")) and spec.uses_mask
                  and case.fixed_mask)
    argv = spec.argv(case, out_dir, use_mask)
    base = {"method": spec.key, "case": case.name, "group": case.group, "mask": masked,
            "threads": threads, "command": " ".join(argv)}
    if resume and os.path.isfile(record_path):
        with open(record_path) as fh:
            old = json.load(fh)
        if old.get("command") == base["command"] and old.get("status") == "ok":
            old["reused"] = True
            return old
    shutil.rmtree(out_dir, ignore_errors=True)
    load = os.getloadavg()[0]
    run = measure(argv, out_dir + ".log", thread_env(threads), timeout)
    rec = dict(base, **run, load_before=load, load_after=os.getloadavg()[0])
    if run["timed_out"]:
        rec.update(status="failed", error=f"timed out after {timeout:.0f} s")
    elif run["returncode"] != 0:
        rec.update(status="failed", error=f"exit {run['returncode']}: {_tail(out_dir + '.log')}")
    else:
        try:
            rec["reg_s"] = spec.reg_seconds(out_dir)
            points = os.path.join(out_dir, spec.points_file) if case.fixed_points else None
            rec.update(evaluate(case, os.path.join(out_dir, spec.field_file), points))
            if spec.family == "nephi":
                s = _summary(out_dir)
                rec["io_steps"] = s.get("io_steps")
                rec["io_seconds"] = s.get("io_seconds")
                rec["feedforward_seconds"] = s.get("feedforward_seconds")
                rec["dense_seconds"] = s.get("dense_seconds")
            rec["status"] = "ok"
        except Exception as exc:  # a missing or unreadable output is this method's failure
            rec.update(status="failed", error=f"evaluation: {type(exc).__name__}: {exc}")
    with open(record_path, "w") as fh:
        json.dump(rec, fh, indent=1)
    return rec


# ------------------------------------------------------------------------------------ data
def lung_case(data_dir: str, size: int, seed: int, group: str) -> Case:
    """A synthetic lung pair of ``size``^3 voxels over a 256 mm field of view (built once)."""
    from nephi.data.synthetic_lung import make_lung_pair

    spacing = FOV_MM / size
    name = f"lung{size}_s{seed}"
    folder = os.path.join(data_dir, name)
    files = {k: os.path.join(folder, f"{k}.nii.gz") for k in
             ("inhale", "exhale", "inhale_mask", "exhale_mask")}
    files.update({k: os.path.join(folder, f"{k}.csv") for k in ("inhale_points", "exhale_points")})
    if not all(os.path.isfile(p) for p in files.values()):
        pair = make_lung_pair((size,) * 3, (spacing,) * 3, MOTION_MM, n_landmarks=N_LANDMARKS,
                              seed=seed)
        pair.save(folder)
    return Case(name=name, group=group, ndim=3, moving=files["exhale"], fixed=files["inhale"],
                fixed_mask=files["inhale_mask"], moving_mask=files["exhale_mask"],
                fixed_points=files["inhale_points"], moving_points=files["exhale_points"],
                fixed_labels=files["inhale_mask"], moving_labels=files["exhale_mask"],
                shape=(size,) * 3, spacing=(spacing,) * 3, seed=seed)


def tc_case(data_dir: str, size: int, seed: int, mode: str, group: str) -> Case:
    """A 2-D Triangles & Circles pair with label maps (built once)."""
    from nephi.data.triangles_circles import make_tc_pair, save_tc_pair_nifti

    name = f"tc{size}_{mode}_s{seed}"
    folder = os.path.join(data_dir, name)
    keys = ("moving", "fixed", "moving_label", "fixed_label")
    files = {k: os.path.join(folder, f"{k}.nii.gz") for k in keys}
    if not all(os.path.isfile(p) for p in files.values()):
        save_tc_pair_nifti(make_tc_pair(size, mode, rng=seed), folder)
    return Case(name=name, group=group, ndim=2, moving=files["moving"], fixed=files["fixed"],
                fixed_labels=files["fixed_label"], moving_labels=files["moving_label"],
                shape=(size, size), spacing=(1.0, 1.0), seed=seed)


# ------------------------------------------------------------------------------ the report
def machine_info() -> dict:
    """Cores, memory and CPU model of this machine (from /proc)."""
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem_gib = float("nan")
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemTotal"):
                    mem_gib = int(line.split()[1]) / 2 ** 20
                    break
    except OSError:
        pass
    return {"cores": os.cpu_count(), "mem_gib": mem_gib, "cpu": model,
            "python": platform.python_version()}


def _fmt(value, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def aggregate(records: list, groups: list, order: list,
              reference: str = methods.REFERENCE) -> list:
    """One row per (group, method): pooled landmark errors, means, max peak, ratios to the
    ``reference`` method (``*_x_ants``)."""
    rows = []
    for group in groups:
        by_method = {}
        for rec in records:
            if rec["group"] == group:
                by_method.setdefault(rec["method"], []).append(rec)
        ref = _group_row(by_method.get(reference, []))
        for key in order:
            recs = by_method.get(key)
            if not recs:
                continue
            row = _group_row(recs)
            row.update(group=group, method=key)
            for name, col in (("time_x_ants", "wall_s"), ("mem_x_ants", "peak_mb"),
                              ("tre_x_ants", "tre_mean")):
                a, b = row.get(col), ref.get(col)
                row[name] = a / b if a is not None and b else None
            rows.append(row)
    return rows


def _group_row(recs: list) -> dict:
    ok = [r for r in recs if r.get("status") == "ok"]
    row = {"pairs": len(ok), "failed": len(recs) - len(ok)}
    if not ok:
        return row
    tre = [d for r in ok for d in r.get("tre", [])]
    if tre:
        row["tre_mean"] = float(np.mean(tre))
        row["tre_p95"] = float(np.percentile(tre, 95))
    for col in ("dice", "folding_pct", "folding_mask_pct", "wall_s", "reg_s",
                "field_point_gap_mm"):
        vals = [r[col] for r in ok if r.get(col) is not None]
        if vals:
            row[col] = float(np.max(vals) if col == "field_point_gap_mm" else np.mean(vals))
    peaks = [r["peak_mb"] for r in ok if r.get("peak_mb") is not None]
    if peaks:
        row["peak_mb"] = float(np.max(peaks))
    row["mask"] = any(r.get("mask") for r in ok)
    return row


TABLE_COLUMNS = [("method", "method"), ("pairs", "pairs"), ("mask", "mask"),
                 ("tre_mean", "TRE mean mm"), ("tre_p95", "TRE p95 mm"), ("dice", "Dice"),
                 ("folding_pct", "fold %"), ("wall_s", "wall s"), ("reg_s", "reg s"),
                 ("peak_mb", "peak MB"), ("tre_x_ants", "TRE x ANTs"),
                 ("time_x_ants", "time x ANTs"), ("mem_x_ants", "mem x ANTs"),
                 ("field_point_gap_mm", "field/points gap mm")]


def markdown_tables(rows: list, groups: list, labels: dict,
                    columns: list = TABLE_COLUMNS) -> str:
    """A markdown table per group of the aggregated rows; ``columns``: (key, header) pairs."""
    out = []
    for group in groups:
        grows = [r for r in rows if r["group"] == group]
        if not grows:
            continue
        out.append(f"\n### {group}\n")
        out.append("| " + " | ".join(h for _, h in columns) + " |")
        out.append("|" + "---|" * len(columns))
        for r in grows:
            cells = []
            for col, _ in columns:
                v = r.get(col)
                if col == "method":
                    v = labels.get(v, v)
                elif col == "mask":
                    v = "fixed" if v else "none"
                elif col == "pairs" and r.get("failed"):
                    v = f"{v} ({r['failed']} failed)"
                digits = 3 if col in ("dice", "folding_pct", "folding_mask_pct",
                                      "field_point_gap_mm") else 2
                if col in ("wall_s", "reg_s", "peak_mb"):
                    digits = 1 if col != "peak_mb" else 0
                cells.append(_fmt(v, digits))
            out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out)


def write_csv(path: str, rows: list, columns: list) -> None:
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        for r in rows:
            writer.writerow({c: r.get(c) for c in columns})


RUN_COLUMNS = ["group", "case", "method", "status", "mask", "threads", "load_before",
               "load_after", "tre_mean", "tre_p95", "landmarks", "dice", "folding_pct",
               "folding_mask_pct", "wall_s", "reg_s", "peak_mb", "io_steps", "io_seconds",
               "feedforward_seconds", "dense_seconds", "field_point_gap_mm", "error", "settings",
               "command"]
SUMMARY_COLUMNS = ["group", "method", "pairs", "failed", "mask", "tre_mean", "tre_p95", "dice",
                   "folding_pct", "folding_mask_pct", "wall_s", "reg_s", "peak_mb", "tre_x_ants",
                   "time_x_ants", "mem_x_ants", "field_point_gap_mm", "settings"]


# ----------------------------------------------------------------------------------- plots
def plot_all(out: str, rows: list, records: list, scaling: list, labels: dict,
             groups: list) -> list:
    """accuracy_vs_time.png, memory_vs_size.png, scaling.png (matplotlib, Agg); paths written."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed (pip install -e '.[bench]'): no plots")
        return []
    from matplotlib.ticker import FuncFormatter

    plain = FuncFormatter(lambda v, _: f"{v:g}")
    sparse = FuncFormatter(
        lambda v, _: f"{v:g}" if v > 0 and round(v / 10 ** np.floor(np.log10(v))) in (2, 5) else "")
    written = []
    keys = list(dict.fromkeys([r["method"] for r in rows] + [s["method"] for s in scaling]))
    colours = {k: plt.cm.tab10(i % 10) for i, k in enumerate(keys)}
    markers = ["o", "s", "^", "D", "v", "P", "X", "*"]

    acc_groups = [g for g in groups if any(r["group"] == g and r.get("tre_mean") is not None
                                           for r in rows)]
    dice_groups = [g for g in groups if g not in acc_groups and any(
        r["group"] == g and r.get("dice") is not None for r in rows)]
    panels = acc_groups + dice_groups
    if panels:
        fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 4.4), squeeze=False)
        for ax, group in zip(axes[0], panels):
            metric = "tre_mean" if group in acc_groups else "dice"
            for r in rows:
                if r["group"] != group or r.get(metric) is None or r.get("wall_s") is None:
                    continue
                ax.scatter(r["wall_s"], r[metric], color=colours[r["method"]], s=50,
                           marker=markers[keys.index(r["method"]) % len(markers)],
                           label=labels.get(r["method"], r["method"]))
            ax.set_xscale("log")
            ax.xaxis.set_major_formatter(plain)
            ax.xaxis.set_minor_formatter(sparse)
            ax.set_xlabel("wall time per pair (s, log)")
            ax.set_ylabel("mean landmark error (mm)" if metric == "tre_mean" else "Dice")
            ax.set_title(group)
            ax.grid(True, alpha=0.3)
        handles, names = [], []
        for ax in axes[0]:
            for h, n in zip(*ax.get_legend_handles_labels()):
                if n not in names:
                    handles.append(h)
                    names.append(n)
        fig.legend(handles, names, loc="lower center", ncol=min(5, len(names)), fontsize=8)
        fig.suptitle("accuracy vs time (lower-left is better for TRE, upper-left for Dice)")
        fig.tight_layout(rect=(0, 0.12, 1, 0.95))
        path = os.path.join(out, "accuracy_vs_time.png")
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)

    sizes = {}
    for rec in records:
        if rec.get("status") == "ok" and rec.get("voxels"):
            sizes.setdefault(rec["method"], {}).setdefault(rec["voxels"], []).append(rec["peak_mb"])
    if sizes:
        fig, ax = plt.subplots(figsize=(6.5, 4.6))
        for key, by_size in sizes.items():
            xs = sorted(by_size)
            ax.plot(xs, [max(by_size[x]) for x in xs], marker="o", color=colours.get(key),
                    label=labels.get(key, key))
        ax.set_xscale("log")
        ax.set_xlabel("voxels of the fixed image (log)")
        ax.set_ylabel("peak memory of the run (MB)")
        ax.set_title("peak memory vs image size (benchmark pairs)")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
        fig.tight_layout()
        path = os.path.join(out, "memory_vs_size.png")
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)

    if scaling:
        fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(11, 4.4))
        styles = ["-", "--", ":"]
        count = {}
        for series in dict.fromkeys(s["series"] for s in scaling):
            pts = sorted((s for s in scaling if s["series"] == series), key=lambda s: s["voxels"])
            key = pts[0]["method"]
            style = styles[count.get(key, 0) % len(styles)]
            count[key] = count.get(key, 0) + 1
            ax_t.plot([p["voxels"] for p in pts], [p["seconds"] for p in pts], marker="o",
                      linestyle=style, color=colours.get(key), label=series)
        for key in dict.fromkeys(s["method"] for s in scaling):
            by_vox = {s["voxels"]: s["peak_mb"] for s in scaling if s["method"] == key}
            xs = sorted(by_vox)
            ax_m.plot(xs, [by_vox[x] for x in xs], marker="o", color=colours.get(key),
                      label=f"{labels.get(key, key)} (whole run)")
        ax_t.set_yscale("log")
        ax_t.set_xscale("log")
        ax_m.set_xscale("log")
        for axis in (ax_t.yaxis, ax_t.xaxis, ax_m.xaxis):
            axis.set_major_formatter(plain)
            axis.set_minor_formatter(sparse)
        for ax, label in ((ax_t, "seconds (log)"), (ax_m, "peak memory MB")):
            ax.set_xlabel("voxels (log)")
            ax.set_ylabel(label)
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=7)
        ax_t.set_title("time: feed-forward pass, IO per step, ANTs SyN total")
        ax_m.set_title("peak memory of the whole run")
        fig.tight_layout()
        path = os.path.join(out, "scaling.png")
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written


# ------------------------------------------------------------------------------------ main
def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=DEFAULT_OUT, help="results folder (default benchmarks/results)")
    p.add_argument("--checkpoint", default=None,
                   help="nephi checkpoint trained by configs/lung_cpu.yaml: adds feed-forward and "
                        "feed-forward + IO rows")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: one small lung pair, one T&C pair, short settings")
    p.add_argument("--threads", type=int, default=2, help="threads of every method (default 2)")
    p.add_argument("--masks", choices=("supported", "none"), default="supported",
                   help="supported: the fixed lung mask for the methods that take one (nephi, "
                        "ANTs, elastix); none: no mask for any method")
    p.add_argument("--io-steps", type=int, default=None,
                   help="nephi pairwise IO steps, every mode (default: nephi-infer's own for "
                        "the full run, 20 with --quick)")
    p.add_argument("--ff-io-steps", type=int, default=None,
                   help="IO steps after the feed-forward prediction (default 100; 10 with --quick)")
    p.add_argument("--lung64-pairs", type=int, default=None, help="lung pairs at 64^3 (default 2)")
    p.add_argument("--lung128-pairs", type=int, default=None,
                   help="lung pairs at 128^3 (default 1)")
    p.add_argument("--tc-pairs", type=int, default=None,
                   help="2-D Triangles & Circles pairs, alternately solid and hollow (default 4)")
    p.add_argument("--scale-sizes", type=int, nargs="*", default=None,
                   help="cube sides of the scaling runs over a 256 mm field of view "
                        "(default 32 64 96 128; the 128 one is the 128^3 benchmark pair)")
    p.add_argument("--scale-io-steps", type=int, default=20,
                   help="IO steps of the scaling-only runs (time per step is reported)")
    p.add_argument("--methods", nargs="*", default=None,
                   help="run only these method keys (e.g. nephi-io-nephi ants-syn-strong)")
    p.add_argument("--timeout", type=float, default=1800.0, help="seconds per run")
    p.add_argument("--resume", action="store_true",
                   help="reuse the records of an interrupted run made with the same commands")
    return p.parse_args(argv)


def plan(args) -> dict:
    """Sizes, counts and steps of the full run or of ``--quick``."""
    quick = args.quick

    def pick(value, full, small):
        return value if value is not None else (small if quick else full)

    return {
        "profile": "quick" if quick else "full",
        "lung_small": 48 if quick else 64,
        "lung_small_pairs": pick(args.lung64_pairs, 2, 1),
        "lung_large": 64 if quick else 128,
        "lung_large_pairs": pick(args.lung128_pairs, 1, 0),
        "tc_size": 64 if quick else 128,
        "tc_pairs": pick(args.tc_pairs, 4, 1),
        "io_steps": pick(args.io_steps, None, 20),  # None: nephi-infer's defaults
        "ff_io_steps": pick(args.ff_io_steps, 100, 10),
        "scale_sizes": args.scale_sizes if args.scale_sizes is not None else (
            [24, 32, 48] if quick else [32, 64, 96, 128]),
    }


def checkpoint_seeds(path: str) -> Optional[range]:
    """Seeds of the synthetic lung population a checkpoint was trained on, when it says."""
    try:
        import torch

        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        s = ckpt["config"]["data"]["synthetic_lung"]
        return range(int(s["seed"]), int(s["seed"]) + int(s["n"]))
    except Exception:  # an unreadable checkpoint is reported by nephi-infer itself
        return None


def main(argv=None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    date = datetime.datetime.now().strftime("%Y-%m-%d %H:%M %Z").strip()
    cfg = plan(args)
    out = os.path.abspath(args.out)
    data_dir, runs_dir = os.path.join(out, "data"), os.path.join(out, "runs")
    if not args.resume:
        shutil.rmtree(runs_dir, ignore_errors=True)
    os.makedirs(runs_dir, exist_ok=True)
    use_mask = args.masks == "supported"
    profile = cfg["profile"]
    checkpoint = os.path.abspath(args.checkpoint) if args.checkpoint else None
    command = " ".join([_shown(sys.executable), _shown(os.path.abspath(__file__))]
                       + list(sys.argv[1:] if argv is None else argv))
    print(f"bench: results in {out}; {profile} profile, {args.threads} thread(s) per method, "
          f"masks {args.masks}")

    # ---- methods
    specs, skipped = [], []
    modes = nephi_io_modes()
    if not modes:
        skipped.append(("nephi IO", "nephi-infer is not installed (make install)"))
    for mode in modes:
        specs.append(nephi_spec(mode, cfg["io_steps"], None, profile))
    if checkpoint is None:
        reason = ("no --checkpoint given: train one with `accelerate launch train/train.py "
                  "--config configs/lung_cpu.yaml`, then `make bench CHECKPOINT=.../best.pt`")
        skipped += [("nephi feed-forward", reason), ("nephi feed-forward + IO", reason)]
    elif not os.path.isfile(checkpoint):
        reason = f"checkpoint {args.checkpoint} not found"
        skipped += [("nephi feed-forward", reason), ("nephi feed-forward + IO", reason)]
        checkpoint = None
    else:
        specs.append(nephi_spec("nephi", 0, checkpoint, profile))
        specs.append(nephi_spec("nephi", cfg["ff_io_steps"], checkpoint, profile, ff_io=True))
    for key in methods.PEERS:
        if key in methods.RECIPE_PEERS and key not in (args.methods or ()):
            continue
        spec = peer_spec(key, profile)
        (skipped.append((spec.label, spec.reason)) if spec.reason else specs.append(spec))
    skipped.append(("GradICON (icon-registration)", methods.icon_status()[1]))
    if args.methods:
        specs = [s for s in specs if s.key in args.methods]
    labels = {s.key: s.label for s in specs}
    labels["identity"] = "identity (no registration)"
    for name, reason in skipped:
        print(f"bench: not run: {name}: {reason}")

    # ---- pairs
    print("bench: building the held-out pairs ...")
    cases = []
    g_small = f"lung {cfg['lung_small']}^3 x {FOV_MM / cfg['lung_small']:.3g} mm"
    g_large = f"lung {cfg['lung_large']}^3 x {FOV_MM / cfg['lung_large']:.3g} mm"
    g_tc = f"Triangles & Circles 2-D {cfg['tc_size']}^2"
    for i in range(cfg["lung_small_pairs"]):
        cases.append(lung_case(data_dir, cfg["lung_small"], LUNG_SEED + i, g_small))
    large_seed = LUNG_SEED + cfg["lung_small_pairs"]
    for i in range(cfg["lung_large_pairs"]):
        cases.append(lung_case(data_dir, cfg["lung_large"], large_seed + i, g_large))
    for i in range(cfg["tc_pairs"]):
        cases.append(tc_case(data_dir, cfg["tc_size"], TC_SEED + i, ("solid", "hollow")[i % 2],
                             g_tc))
    groups = list(dict.fromkeys(c.group for c in cases))
    trained = checkpoint_seeds(checkpoint) if checkpoint else None
    if trained is not None:
        overlap = [c.name for c in cases if c.ndim == 3 and c.seed in trained]
        if overlap:
            print(f"bench: error: pairs {overlap} use seeds the checkpoint was trained on")
            return 2

    # ---- main runs
    records = [identity_record(c) for c in cases]
    jobs = [(s, c) for c in cases for s in specs]
    not_applicable = []
    for spec, case in list(jobs):
        ok, why = spec.applies(case)
        if not ok:
            jobs.remove((spec, case))
            not_applicable.append((spec.label, case.group, why))
    print(f"bench: {len(jobs)} runs on {len(cases)} pairs")
    for k, (spec, case) in enumerate(jobs, start=1):
        print(f"bench: [{k}/{len(jobs)}] {case.name}: {spec.label} ...", flush=True)
        rec = run_method(spec, case, runs_dir, use_mask, args.timeout, args.threads, args.resume)
        rec["settings"] = spec.description
        rec["voxels"] = int(np.prod(case.shape))
        records.append(rec)
        print("bench:     " + _progress_line(rec, time.perf_counter() - started), flush=True)

    # ---- scaling
    scaling = []
    if cfg["scale_sizes"]:
        scaling = run_scaling(args, cfg, specs, cases, records, data_dir, runs_dir, use_mask,
                              started)

    # ---- report
    order = ["identity"] + [s.key for s in specs]
    rows = aggregate(records, groups, order)
    settings = {s.key: s.description for s in specs}
    for r in rows:
        r["settings"] = settings.get(r["method"], "")
    os.makedirs(out, exist_ok=True)
    write_csv(os.path.join(out, "results.csv"),
              [r for r in records if r["method"] != "identity"] + [r for r in records
                                                                   if r["method"] == "identity"],
              RUN_COLUMNS)
    write_csv(os.path.join(out, "summary.csv"), rows, SUMMARY_COLUMNS)
    write_csv(os.path.join(out, "scaling.csv"), scaling,
              ["series", "size", "voxels", "seconds", "peak_mb", "case", "method", "note"])
    plots = plot_all(out, rows, [r for r in records if r["method"] != "identity"], scaling,
                     labels, groups)
    elapsed = time.perf_counter() - started
    md = report(date, command, args, cfg, specs, skipped, not_applicable, rows, groups, labels,
                scaling, plots, elapsed, use_mask, records, trained)
    with open(os.path.join(out, "results.md"), "w") as fh:
        fh.write(md)
    print(md)
    print(f"bench: wrote {os.path.join(out, 'results.md')} in {elapsed / 60:.1f} min")
    return 0


def _progress_line(rec: dict, elapsed: float) -> str:
    if rec.get("status") != "ok":
        return f"FAILED: {rec.get('error')} (elapsed {elapsed / 60:.1f} min)"
    parts = [f"{rec['wall_s']:.1f} s wall", f"{rec['peak_mb']:.0f} MB"]
    if rec.get("tre_mean") is not None:
        parts.append(f"TRE {rec['tre_mean']:.2f} mm (p95 {rec['tre_p95']:.2f})")
    if rec.get("dice") is not None:
        parts.append(f"Dice {rec['dice']:.3f}")
    parts.append(f"folding {rec['folding_pct']:.3f} %")
    if rec.get("reused"):
        parts.append("reused")
    return ", ".join(parts) + f" (elapsed {elapsed / 60:.1f} min)"


def run_scaling(args, cfg: dict, specs: list, cases: list, records: list, data_dir: str,
                runs_dir: str, use_mask: bool, started: float) -> list:
    """Time and peak memory of nephi feed-forward, nephi IO per step and ANTs SyN strong on one
    anatomy (seed of the large benchmark pair, else of the first small one) rendered at growing
    sizes. Runs of the benchmark
    itself are reused where the pair is the same; other sizes run IO for ``--scale-io-steps``."""
    by_key = {s.key: s for s in specs}
    seed = LUNG_SEED + cfg["lung_small_pairs"] if cfg["lung_large_pairs"] else LUNG_SEED
    series = []
    wanted = [k for k in ("nephi-ff", "nephi-io-nephi", methods.REFERENCE) if k in by_key]
    if not wanted:
        return []
    done = {(r["case"], r["method"]): r for r in records if r.get("status") == "ok"}
    print(f"bench: scaling over sizes {cfg['scale_sizes']} ({', '.join(wanted)})")
    for size in cfg["scale_sizes"]:
        case = lung_case(data_dir, size, seed, f"scaling {size}^3")
        for key in wanted:
            rec = done.get((case.name, key))
            if rec is None:
                spec = by_key[key]
                if key == "nephi-io-nephi":
                    spec = nephi_spec("nephi", args.scale_io_steps, None, cfg["profile"])
                print(f"bench: scaling {size}^3: {spec.label} ...", flush=True)
                rec = run_method(spec, case, os.path.join(runs_dir, "scaling"), use_mask,
                                 args.timeout, args.threads, args.resume)
                print("bench:     " + _progress_line(rec, time.perf_counter() - started),
                      flush=True)
            if rec.get("status") != "ok":
                continue
            if key == "nephi-io-nephi":
                per_step = rec["io_seconds"] / max(1, rec["io_steps"])
                points = [("nephi IO: seconds per step", per_step,
                           f"{rec.get('io_steps')} IO steps"),
                          ("nephi: dense export of both fields", rec.get("dense_seconds"),
                           "from the IO run")]
            elif key == "nephi-ff":
                points = [("nephi feed-forward: encoder pass", rec["feedforward_seconds"], ""),
                          ("nephi feed-forward: whole run", rec["wall_s"],
                           "nephi-infer wall time incl. dense export")]
            else:
                points = [("ANTs SyN strong: whole run", rec["wall_s"], "")]
            for name, secs, note in points:
                if secs is not None:
                    series.append({"series": name, "size": size, "voxels": size ** 3,
                                   "seconds": float(secs), "peak_mb": rec["peak_mb"],
                                   "case": case.name, "method": key, "note": note})
    return series


MASKS_TEXT = ("the fixed (inhale) lung mask for the methods that take one: nephi IO (similarity "
              "points), ANTs (-x on the SyN stage; its linear stages see the whole image), "
              "elastix (fixed mask); dipy and SimpleITK demons take none")


def reused_text(records: list) -> str:
    """Say how many runs came from an earlier invocation (``--resume``)."""
    runs = [r for r in records if r["method"] != "identity"]
    reused = sum(1 for r in runs if r.get("reused"))
    return f" ({reused} of {len(runs)} runs reused from an earlier invocation)" if reused else ""


def load_text(records: list, threads: int) -> str:
    """The machine's 1-minute load average around the runs: other work skews the timings."""
    loads = [r[k] for r in records for k in ("load_before", "load_after") if r.get(k) is not None]
    if not loads:
        return "load average not recorded"
    return (f"1-min load average around the runs {min(loads):.1f}-{max(loads):.1f} (median "
            f"{float(np.median(loads)):.1f}; the benchmark runs one method at a time with "
            f"{threads} thread(s), so a higher load means other work competed for the cores)")


def report(date, command, args, cfg, specs, skipped, not_applicable, rows, groups, labels,
           scaling, plots, elapsed, use_mask, records=(), trained=None) -> str:
    """The markdown of results.md; ``trained``: the checkpoint's training seeds, if known."""
    m = machine_info()
    trained_text = (f"; the checkpoint was trained on seeds {trained.start}-{trained.stop - 1}"
                    if trained else "")
    lines = [
        "# nephi peer benchmark",
        "",
        f"- date: {date}",
        f"- machine: {m['cores']} cores, {m['mem_gib']:.1f} GiB RAM, {m['cpu']}, "
        f"Python {m['python']}",
        f"- command (in the repository root; `make bench` runs it): `{command}`",
        f"- total time: {elapsed / 60:.1f} min{reused_text(records)}; {args.threads} thread(s) "
        "for every method "
        f"({', '.join(THREAD_VARIABLES)}); {load_text(records, args.threads)}",
        f"- masks: {MASKS_TEXT if use_mask else 'none for any method'}; the feed-forward rows "
        "always get both lung masks (the network's preprocessing uses them when it was trained "
        "on masked images)",
        f"- pairs (held out): synthetic lung CT (moving = exhale, fixed = inhale, motion "
        f"{MOTION_MM:g} mm, {N_LANDMARKS} landmarks, seeds from {LUNG_SEED}{trained_text}) "
        "and 2-D Triangles & Circles "
        f"(seeds from {TC_SEED}, solid and hollow); {cfg['profile']} settings",
        "- TRE: fixed landmarks mapped into moving space by each method's own point mapping vs the "
        "true moving landmarks, pooled over the pairs of a group (mean and 95th percentile); "
        "Dice: moving labels (lung masks; T&C labels) pulled back through the dense field, nearest "
        "neighbour; fold %: det J <= 0 of the fixed->moving map on the fixed grid, central "
        "differences of each method's dense field; wall s / peak MB: the whole subprocess "
        "(os.wait4 ru_maxrss), mean wall and max peak per pair; reg s: the optimization alone "
        "as the method reports it; x ANTs: ratio to ANTs SyN strong on the same pairs in this run; "
        "field/points gap: max distance between the method's point mapping and its dense field",
    ]
    lines.append(markdown_tables(rows, groups, labels))
    lines += ["", "### Methods and settings", "", "| method | key | settings |", "|---|---|---|"]
    for s in specs:
        lines.append(f"| {s.label} | `{s.key}` | {s.description} |")
    if skipped or not_applicable:
        lines += ["", "### Not run", ""]
        for name, reason in skipped:
            lines.append(f"- {name}: {reason}")
        for label, group in dict.fromkeys((a, b) for a, b, _ in not_applicable):
            why = next(w for a, b, w in not_applicable if a == label and b == group)
            lines.append(f"- {label} on {group}: {why}")
    if scaling:
        lines += ["", "### Scaling (one anatomy at growing sizes)", "",
                  "| series | size | voxels | seconds | peak MB | note |",
                  "|---|---|---|---|---|---|"]
        for s in sorted(scaling, key=lambda s: (s["series"], s["voxels"])):
            lines.append(f"| {s['series']} | {s['size']}^3 | {s['voxels']} | {s['seconds']:.3f} | "
                         f"{s['peak_mb']:.0f} | {s['note']} |")
    if plots:
        lines += ["", "Plots: " + ", ".join(f"[{os.path.basename(p)}]({os.path.basename(p)})"
                                           for p in plots)]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
