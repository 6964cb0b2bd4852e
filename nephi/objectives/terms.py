"""Named loss terms: a value, the weight it enters the loss with, and its unit.

Every objective in nephi returns ``{name: Term}``; :func:`total` is the weighted sum that is
optimized and :func:`diagnostics` the plain numbers that are logged.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Term:
    """One named loss term: its ``value`` (scalar tensor), ``weight`` and ``unit``."""

    value: torch.Tensor
    weight: float
    unit: str


def total(terms: dict) -> torch.Tensor:
    """Weighted sum of a dict of :class:`Term`."""
    return sum(t.weight * t.value for t in terms.values())


def diagnostics(terms: dict) -> dict:
    """Plain floats of each term's value, keyed ``name [unit]``-free, plus units separately."""
    return {name: float(t.value.detach()) for name, t in terms.items()}
