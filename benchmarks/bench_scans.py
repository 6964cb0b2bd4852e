"""nephi-infer beside ANTs SyN on pairs built from a real scan (MNI152 head: MRI and CT).

Pairs (:mod:`nephi.data.real_scans`, built once into ``--data``): the MNI152 T1 at 2 mm
(about 86 x 104 x 89 voxels) and a CT of the same head at 2.5 mm (about 70 x 84 x 72), each
deformed by a known random smooth map; ``small`` at most 8 mm; ``moved`` the same map with the
moving scan also turned by 15 degrees and shifted by 20.8 mm (a patient lying differently);
``large`` at most 14 mm plus that rigid motion. 200 landmarks in the brain, tissue
labels (CSF, grey, white matter) for Dice, brain masks.

Methods, each its own process at ``--threads`` threads, timed with ``os.wait4`` (wall seconds
and peak memory of the whole command, reading and writing included):

* ``nephi``: ``nephi-infer`` with its defaults (fixed brain mask, landmarks);
* ``nephi:NAME``: the same with extra options given by ``--variant NAME="--set a=b ..."``;
* ``nephi@REV``: ``nephi-infer`` of git revision REV (a temporary worktree, its defaults), for
  before / after figures from one run;
* ``ants-syn-antspy``: ``ants.registration(type_of_transform="SyN")`` with ANTsPy's defaults;
* ``ants-syn-strong``: SyN with a CC metric of radius 4, 100x70x50x20 (antsRegistrationSyN.sh).

Prints a markdown table (landmark error mean / p95 mm, Dice, % folded voxels in the mask, wall s,
peak MB, and nephi's time split: alignment, IO, export) and writes it with a CSV to ``--out``::

    .venv/bin/python benchmarks/bench_scans.py                       # every case and method
    .venv/bin/python benchmarks/bench_scans.py --cases ct-small --methods nephi nephi:w128 \\
        --variant w128="--set model.hidden=128"
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from benchmarks import bench_peers  # noqa: E402
from benchmarks.methods import Case  # noqa: E402

CASES = {
    "ct-small": {"modality": "ct", "spacing": 2.5, "max_mm": 8.0, "degrees": 0.0, "seed": 11},
    "mri-small": {"modality": "mri", "spacing": 2.0, "max_mm": 8.0, "degrees": 0.0, "seed": 12},
    "ct-moved": {"modality": "ct", "spacing": 2.5, "max_mm": 8.0, "degrees": 15.0, "seed": 11},
    "mri-moved": {"modality": "mri", "spacing": 2.0, "max_mm": 8.0, "degrees": 15.0, "seed": 12},
    "ct-large": {"modality": "ct", "spacing": 2.5, "max_mm": 14.0, "degrees": 15.0, "seed": 13},
    "mri-large": {"modality": "mri", "spacing": 2.0, "max_mm": 14.0, "degrees": 15.0,
                  "seed": 14},
}
SHIFT_MM = (12.0, -11.0, 13.0)  # 20.8 mm, with ``degrees`` > 0
PEER_KEYS = ("ants-syn-antspy", "ants-syn-strong")


def build_case(data_dir: str, name: str) -> Case:
    """The pair ``name`` of :data:`CASES`, written into ``data_dir/name`` and built again when
    its recorded parameters (``case.json``) are not the current ones."""
    from nephi.data.real_scans import head_ct, make_pair, mni152

    spec = dict(CASES[name], shift_mm=list(SHIFT_MM) if CASES[name]["degrees"] else [0.0] * 3)
    folder = os.path.join(data_dir, name)
    keys = ("fixed", "moving", "fixed_mask", "moving_mask", "fixed_labels", "moving_labels")
    paths = {k: os.path.join(folder, f"{k}.nii.gz") for k in keys}
    paths.update({k: os.path.join(folder, f"{k}.csv") for k in ("fixed_points", "moving_points")})
    record = os.path.join(folder, "case.json")
    built = all(os.path.isfile(p) for p in (record, *paths.values()))
    if built:
        with open(record, encoding="utf-8") as fh:
            built = json.load(fh) == spec
    if not built:
        scan = mni152(spec["spacing"])
        if spec["modality"] == "ct":
            scan = head_ct(scan)
        make_pair(scan, spec["max_mm"], spec["seed"], spec["degrees"], spec["shift_mm"]).save(folder)
        with open(record, "w", encoding="utf-8") as fh:
            json.dump(spec, fh)
    return Case(name=name, group=name, ndim=3, **paths, seed=spec["seed"])


def nephi_method(name: str, extra: list) -> bench_peers.MethodSpec:
    """``nephi-infer`` with defaults, plus ``extra`` options for a named variant."""
    base = bench_peers.nephi_spec("nephi", None, None)
    key = "nephi" if not name else f"nephi:{name}"

    def argv(case: Case, out_dir: str, use_mask: bool) -> list:
        return base.argv(case, out_dir, use_mask) + list(extra)

    desc = "nephi-infer defaults" + (f" + {' '.join(extra)}" if extra else "")
    return dataclasses.replace(base, key=key, label=key, description=desc, argv=argv)


def revision_method(rev: str, tmp: str) -> bench_peers.MethodSpec:
    """``nephi-infer`` of git revision ``rev``, checked out into a worktree under ``tmp``."""
    tree = os.path.join(tmp, f"nephi-{rev}")
    if not os.path.isdir(tree):
        subprocess.run(["git", "-C", ROOT, "worktree", "add", "--detach", tree, rev], check=True,
                       capture_output=True)
    base = bench_peers.nephi_spec("nephi", None, None)
    script = (f"import sys; sys.path.insert(0, {tree!r}); from nephi.cli.infer import main; "
              "sys.exit(main())")

    def argv(case: Case, out_dir: str, use_mask: bool) -> list:
        return [sys.executable, "-c", script] + base.argv(case, out_dir, use_mask)[1:]

    return dataclasses.replace(base, key=f"nephi@{rev}", label=f"nephi@{rev}",
                               description=f"nephi-infer of commit {rev}, its defaults", argv=argv)


def phases(out_dir: str) -> dict:
    """nephi's time split from its summary.json (seconds)."""
    s = bench_peers._summary(out_dir)
    align = (s.get("align") or {}).get("seconds")
    return {"align_s": align, "io_s": s.get("io_seconds"), "io_steps": s.get("io_steps"),
            "export_s": s.get("dense_seconds")}


def fmt(value, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    parser.add_argument("--methods", nargs="+", default=["nephi", *PEER_KEYS],
                        help="nephi, nephi:NAME (see --variant), nephi@GITREV and peer keys")
    parser.add_argument("--variant", action="append", default=[], metavar='NAME="OPTIONS"',
                        help="extra nephi-infer options of the method nephi:NAME")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--data", default=os.path.join(ROOT, "benchmarks", "data", "scans"))
    parser.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results", "scans"))
    parser.add_argument("--timeout", type=float, default=1800.0)
    args = parser.parse_args(argv)

    variants = {}
    for item in args.variant:
        name, _, opts = item.partition("=")
        variants[name] = shlex.split(opts)
    specs = []
    for key in args.methods:
        if key.startswith("nephi@"):
            specs.append(revision_method(key.partition("@")[2], tempfile.gettempdir()))
        elif key == "nephi" or key.startswith("nephi:"):
            name = key.partition(":")[2]
            if name and name not in variants:
                parser.error(f"method {key}: no --variant {name}=...")
            specs.append(nephi_method(name, variants.get(name, [])))
        else:
            specs.append(bench_peers.peer_spec(key, "full"))
    runs = os.path.join(args.out, "runs")
    os.makedirs(runs, exist_ok=True)
    rows = []
    for case_name in args.cases:
        case = build_case(args.data, case_name)
        start = bench_peers.identity_record(case)
        rows.append({"case": case_name, "method": "before", "tre_mean": start["tre_mean"],
                     "tre_p95": start["tre_p95"], "dice": start.get("dice")})
        for spec in specs:
            if spec.reason:
                print(f"{case_name} {spec.key}: not run ({spec.reason})", flush=True)
                continue
            rec = bench_peers.run_method(spec, case, runs, threads=args.threads,
                                         timeout=args.timeout)
            row = {"case": case_name, "method": spec.key, "status": rec["status"]}
            for k in ("tre_mean", "tre_p95", "dice", "folding_mask_pct", "wall_s", "peak_mb"):
                row[k] = rec.get(k)
            if rec["status"] == "ok" and spec.family == "nephi":
                row.update(phases(os.path.join(runs, case_name, spec.key)))
            if rec["status"] != "ok":
                row["error"] = rec.get("error")
            rows.append(row)
            print(f"{case_name} {spec.key}: " + ", ".join(
                f"{k} {fmt(v)}" for k, v in row.items() if k not in ("case", "method")),
                flush=True)
    columns = ["case", "method", "tre_mean", "tre_p95", "dice", "folding_mask_pct", "wall_s",
               "peak_mb", "align_s", "io_s", "io_steps", "export_s"]
    head = ["pair", "method", "TRE mean mm", "TRE p95 mm", "Dice", "folded % (mask)", "wall s",
            "peak MB", "align s", "IO s", "IO steps", "export s"]
    lines = [f"{time.strftime('%Y-%m-%d %H:%M')}, {args.threads} threads, "
             f"{os.cpu_count()} CPUs; command: {' '.join(shlex.quote(a) for a in sys.argv)}", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        lines.append("| " + " | ".join(fmt(row.get(c), 1 if c.endswith("_s") or c == "peak_mb"
                                           else 3 if c == "dice" else 2) for c in columns) + " |")
    table = "\n".join(lines)
    print("\n" + table)
    with open(os.path.join(args.out, "results.md"), "w", encoding="utf-8") as fh:
        fh.write(table + "\n")
    with open(os.path.join(args.out, "results.csv"), "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns + ["status", "error"],
                                extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    failed = [r for r in rows if r.get("status") == "failed"]
    return 1 if failed else 0


if __name__ == "__main__":
    np.seterr(all="ignore")
    sys.exit(main())
