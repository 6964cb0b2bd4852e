"""Intensity normalization of network inputs (an explicit option, never hidden).

Methods (config key ``intensity.method``):

* ``percentile`` (default, any modality): map the ``low``/``high`` percentiles of the image to
  0/1 and clip to [0, 1]. Robust to outliers; works for CT (HU) and MRI (arbitrary units).
* ``window``: clip to ``window`` = [lo, hi] and map it to [0, 1]; e.g. the NePhi paper's lung
  window [-1000, 0] HU.
* ``none``: use intensities as they are.

NCC is invariant to affine intensity changes, but sampling outside the field of view (border
values), the encoder's inputs and clipping are not; hence the option.
"""

from __future__ import annotations

import numpy as np

from nephi.errors import NephiInputError


METHODS = ("percentile", "window", "none")


def normalize(data: np.ndarray, method: str = "percentile", low: float = 1.0, high: float = 99.0,
              window=(-1000.0, 0.0), mask: np.ndarray | None = None) -> np.ndarray:
    """Return a float32 copy of ``data`` normalized as configured (see module docstring)."""
    data = np.asarray(data, dtype=np.float32)
    if method == "none":
        return data.copy()
    if method == "window":
        lo, hi = float(window[0]), float(window[1])
    elif method == "percentile":
        values = data[mask] if mask is not None and mask.any() else data
        lo, hi = np.percentile(values, [low, high])
    else:
        raise NephiInputError(f"config key intensity.method: {method!r} is not one of "
                              f"{', '.join(METHODS)}")
    if not hi > lo:
        if method == "window":
            raise NephiInputError(f"config key intensity.window: {list(window)} is empty")
        hi = lo + 1.0
    return np.clip((data - lo) / (hi - lo), 0.0, 1.0).astype(np.float32)
