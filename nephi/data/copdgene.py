"""Find the inspiration / expiration pairs of a COPDGene-style folder.

Expected layout (NIfTI converted from the study's DICOM; CT values in HU)::

    ROOT/<subject>/.../<subject>_INSP_<recon>_<site>_COPD.nii.gz            inspiration CT
    ROOT/<subject>/.../<subject>_EXP_<recon>_<site>_COPD.nii.gz             expiration CT
    ROOT/<subject>/.../<subject>_INSP_<recon>_<site>_COPD_lung_mask.nii.gz  lung mask (> 0 = lung)
    ROOT/<subject>/.../<subject>_EXP_<recon>_<site>_COPD_lung_mask.nii.gz

for example ``ROOT/10005Q/Phase-1/10005Q_INSP_STD_NJC_COPD.nii.gz``. Files are searched
recursively; ``<subject>`` is the part of the file name before ``_INSP_`` / ``_EXP_``. A mask has
its image's file name with ``_lung_mask`` before ``.nii.gz`` (``.nii`` works too). When a subject
has several reconstructions, the ``STD`` kernel is preferred, then the first name in sorted order.
Subjects without both phases are skipped (and reported). Moving = expiration, fixed =
inspiration, the project's convention for lung CT.

Paper recipe (NePhi section 5.1), used by ``nephi-prep copdgene``: 2 mm isotropic, 175^3 voxels,
HU clamped to [-1000, 0] and scaled to [0, 1], lung mask applied, 899 / 100 train / validation.
"""

from __future__ import annotations

import os
import re

from nephi.errors import NephiInputError


MASK_SUFFIX = "_lung_mask"


_PHASE = re.compile(r"^(?P<subject>.+?)_(?P<phase>INSP|EXP)_(?P<rest>.+?)(?P<mask>_lung_mask)?"
                    r"\.nii(\.gz)?$")


def find_copdgene_pairs(root: str, require_masks: bool = True) -> tuple:
    """Rows (as :func:`nephi.data.preprocess.read_pairs_csv` gives them) and skipped subjects.

    Returns ``(rows, skipped)``: rows sorted by subject with keys moving, fixed, moving_mask,
    fixed_mask (None when absent), the point and label keys None, name = subject;
    ``skipped`` maps subject -> reason.
    """
    if not os.path.isdir(root):
        raise NephiInputError(f"COPDGene folder {root}: not found")
    images: dict = {}
    masks: dict = {}
    for folder, _, files in os.walk(root):
        for name in sorted(files):
            m = _PHASE.match(name)
            if not m:
                continue
            key = (m["subject"], m["phase"])
            path = os.path.join(folder, name)
            if m["mask"]:
                masks[os.path.join(folder, name.replace(MASK_SUFFIX, "", 1))] = path
            else:
                images.setdefault(key, []).append(path)
    subjects = sorted({s for s, _ in images})
    rows, skipped = [], {}
    for subject in subjects:
        chosen = {}
        for phase in ("INSP", "EXP"):
            candidates = sorted(images.get((subject, phase), []),
                                key=lambda p: ("_STD_" not in os.path.basename(p), p))
            if candidates:
                chosen[phase] = candidates[0]
        if len(chosen) < 2:
            skipped[subject] = "needs both an INSP and an EXP image"
            continue
        mask_of = {ph: masks.get(p) for ph, p in chosen.items()}
        if require_masks and None in mask_of.values():
            skipped[subject] = f"no lung mask ({MASK_SUFFIX}) for both phases"
            continue
        rows.append({"line": 0, "name": subject, "moving": chosen["EXP"],
                     "fixed": chosen["INSP"], "moving_mask": mask_of["EXP"],
                     "fixed_mask": mask_of["INSP"], "moving_points": None,
                     "fixed_points": None, "moving_label": None, "fixed_label": None})
    if not rows:
        raise NephiInputError(f"COPDGene folder {root}: no usable INSP/EXP pair found "
                              f"(see the layout in nephi/data/copdgene.py)")
    return rows, skipped


__all__ = ["find_copdgene_pairs", "MASK_SUFFIX"]
