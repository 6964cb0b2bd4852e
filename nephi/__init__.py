"""nephi: learned, amortized, approximately diffeomorphic image registration (NePhi).

Direction convention: A is moving, B is fixed. phi_AB maps fixed-space points to moving-space
points; the warped image is I_A(phi_AB(x)) on the fixed grid.

The Python API: :func:`register` (pairwise, by instance optimization), :func:`load_model` (a
trained network: one forward pass, optionally refined) and :class:`Result` (fields, metrics,
``warp``, ``map_points``, ``save``, ``Result.load``). The subpackages, bottom to top, each
importing only the ones below it: geometry, transforms, io, models, objectives, config, optim,
results, data, learn, pipeline, cli.
"""

__version__ = "0.1.0"

from nephi.errors import NephiInputError  # noqa: E402
from nephi.pipeline.api import Model, load_model, pairwise_config, register  # noqa: E402
from nephi.results.result import Result  # noqa: E402


__all__ = ["__version__", "register", "load_model", "pairwise_config", "Model", "Result",
           "NephiInputError"]
