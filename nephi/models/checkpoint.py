"""The self-describing checkpoint format of nephi's trained networks.

A checkpoint is one ``torch.save`` file (loaded with ``weights_only=True``: tensors and plain
values only) holding ``format`` / ``format_version``, the model configuration and weights, and
whatever the trainer adds (preprocessing, resolved training config, step, code version,
optimizer and RNG states). :meth:`nephi.models.encoder.RegistrationNet.save` and ``.load`` use
it, so inference needs nothing but the file.
"""

from __future__ import annotations

import os
import subprocess

import torch

from nephi import __version__
from nephi.errors import NephiInputError, short_reason
from nephi.io.atomic import write_file


__all__ = ["CHECKPOINT_FORMAT", "CHECKPOINT_VERSION", "code_version", "save_checkpoint",
           "load_checkpoint"]

CHECKPOINT_FORMAT = "nephi-checkpoint"
CHECKPOINT_VERSION = 1


def code_version() -> dict:
    """nephi's version and, when the code is a git checkout, its commit and dirty flag."""
    out = {"nephi": __version__}
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    try:
        commit = subprocess.run(["git", "-C", root, "rev-parse", "HEAD"], capture_output=True,
                                text=True, timeout=10)
        if commit.returncode == 0:
            out["git_commit"] = commit.stdout.strip()
            dirty = subprocess.run(["git", "-C", root, "status", "--porcelain", "--untracked-files=no"],
                                   capture_output=True, text=True, timeout=10)
            out["git_dirty"] = bool(dirty.stdout.strip())
    except (OSError, subprocess.SubprocessError):
        pass
    return out


def save_checkpoint(payload: dict, path: str) -> None:
    """``torch.save`` a checkpoint dict (``format`` and ``format_version`` added) atomically."""
    payload = {"format": CHECKPOINT_FORMAT, "format_version": CHECKPOINT_VERSION, **payload}
    write_file(path, lambda tmp: torch.save(payload, tmp), option="checkpoint")


def load_checkpoint(path: str) -> dict:
    """Load and check a nephi checkpoint (tensors and plain values only: weights_only)."""
    if not os.path.isfile(path):
        raise NephiInputError(f"checkpoint {path}: file not found")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for foreign or corrupt files
        raise NephiInputError(f"checkpoint {path}: not a readable checkpoint "
                              f"({short_reason(exc)})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise NephiInputError(f"checkpoint {path}: not a nephi checkpoint")
    if int(ckpt.get("format_version", 0)) > CHECKPOINT_VERSION:
        raise NephiInputError(f"checkpoint {path}: format version {ckpt['format_version']} is "
                              f"newer than this nephi reads ({CHECKPOINT_VERSION})")
    return ckpt
