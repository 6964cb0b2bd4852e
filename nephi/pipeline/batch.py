"""Registering every pair of a pairs CSV: one result folder per pair, resumable, one table.

``run_pairs`` is the loop of ``nephi-infer --pairs`` with or without a trained network: pairs
whose folder already holds a summary.json are skipped (folders appear whole, so a killed run
leaves none half-written and a second run registers only what is missing); a pair with bad input
is reported and the others go on; ``out_dir/summary.csv`` gets one row per pair at the end.
"""

from __future__ import annotations

import csv
import json
import os
from typing import Callable

from nephi.data.preprocess import read_pairs_csv
from nephi.errors import NephiInputError
from nephi.io.atomic import write_file
from nephi.io.layout import SUMMARY
from nephi.pipeline.inputs import LoadedPair
from nephi.results.result import summary_line


__all__ = ["SUMMARY_CSV", "SUMMARY_FIELDS", "run_pairs"]

SUMMARY_CSV = "summary.csv"
SUMMARY_FIELDS = ("name", "status", "ncc_before", "ncc_after", "folding_percent",
                  "landmark_error_before_mm", "landmark_error_after_mm", "feedforward_seconds",
                  "io_seconds", "wall_time_s")
"""Columns of summary.csv; landmark errors are means in mm."""


def _record(name: str, status: str, summary: dict) -> dict:
    rec = {"name": name, "status": status}
    for key in SUMMARY_FIELDS[2:]:
        value = summary.get(key)
        if isinstance(value, dict):
            value = value.get("mean_mm")
        rec[key] = value
    return rec


def run_pairs(pairs_csv: str, out_dir: str,
              register_one: Callable[[LoadedPair, dict, str], dict], log=print) -> dict:
    """Call ``register_one(pair, row, folder) -> summary`` for every row of ``pairs_csv`` whose
    folder ``out_dir/<name>`` (the CSV's name column, else ``pair_<row>``) holds no summary
    yet; write ``out_dir/summary.csv``. Returns counts ``{"done", "skipped", "failed"}``."""
    rows = read_pairs_csv(pairs_csv)
    names = [r["name"] or f"pair_{i:04d}" for i, r in enumerate(rows, start=1)]
    if len(set(names)) != len(names):
        raise NephiInputError(f"pairs CSV {pairs_csv}: names must be unique")
    counts = {"done": 0, "skipped": 0, "failed": 0}
    records = []
    for k, (row, name) in enumerate(zip(rows, names), start=1):
        folder = os.path.join(out_dir, name)
        summary_path = os.path.join(folder, SUMMARY)
        if os.path.isfile(summary_path):
            counts["skipped"] += 1
            with open(summary_path, encoding="utf-8") as fh:
                records.append(_record(name, "skipped (already done)", json.load(fh)))
            log(f"nephi-infer: [{k}/{len(rows)}] {name}: already done, skipped")
            continue
        try:
            pair = LoadedPair(row["moving"], row["fixed"], row["fixed_mask"], row["fixed_points"],
                              row["moving_points"], row["moving_mask"])
            summary = register_one(pair, row, folder)
        except NephiInputError as exc:
            counts["failed"] += 1
            log(f"nephi-infer: pair {name} (CSV line {row['line']}) failed: {exc}")
            records.append({"name": name, "status": f"failed: {exc}"})
            continue
        counts["done"] += 1
        records.append(_record(name, "done", summary))
        log(f"nephi-infer: [{k}/{len(rows)}] {name}: {summary_line(summary)}")

    def write(tmp: str) -> None:
        with open(tmp, "w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=SUMMARY_FIELDS, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(records)

    write_file(os.path.join(out_dir, SUMMARY_CSV), write, option="--out")
    return counts
