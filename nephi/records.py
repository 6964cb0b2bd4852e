"""Plain-data records built strictly from mappings (configs, checkpoints, HDF5 attributes).

Every dataclass that is read back from a file goes through :func:`from_mapping`, so an unknown
key is always an error that names it, never silently dropped.
"""

from __future__ import annotations

import dataclasses

from nephi.errors import NephiInputError


__all__ = ["from_mapping"]


def from_mapping(cls, data: dict, what: str):
    """``cls(**data)`` for a dataclass ``cls``; unknown keys raise a NephiInputError naming
    ``what`` and the keys. Tuples become lists (YAML and JSON give lists)."""
    if not isinstance(data, dict):
        raise NephiInputError(f"{what}: must be a mapping of keys, got {data!r}")
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise NephiInputError(f"{what}: unknown key(s) {unknown}; known: {sorted(known)}")
    return cls(**{k: (list(v) if isinstance(v, tuple) else v) for k, v in data.items()})
