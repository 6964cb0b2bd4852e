"""The Python API of nephi (exported from :mod:`nephi`): register a pair, or load a trained model
and register with it. The command-line tools are built on these functions.

>>> import nephi
>>> result = nephi.register("moving.nii.gz", "fixed.nii.gz", io_steps=200)
>>> warped = result.warp("moving_labels.nii.gz", interp="label")
>>> moving_points = result.map_points(fixed_points, direction="fixed-to-moving")
>>> result.save("out/")

Images are paths, nibabel images or ``(array, affine)`` pairs (4x4 NIfTI affine, voxel -> RAS
mm). A = moving, B = fixed; the result's forward field maps fixed points to moving points.
"""

from __future__ import annotations

from nephi.config.loader import resolve_config, set_dotted
from nephi.config.options import apply_options
from nephi.config.validate import validate_pairwise
from nephi.errors import NephiInputError
from nephi.pipeline.feedforward import LoadedModel, base_config
from nephi.pipeline.feedforward import load_model as _load_checkpoint
from nephi.pipeline.feedforward import predict, register_pairs
from nephi.pipeline.inputs import LoadedPair
from nephi.pipeline.pairwise import register_pair
from nephi.results.result import Result


__all__ = ["pairwise_config", "register", "load_model", "Model"]


def pairwise_config(base: dict | None = None, config: str | None = None,
                    overrides: dict | None = None, **options) -> dict:
    """A resolved pairwise config: ``base`` (default: the packaged pairwise defaults) <- the YAML
    file ``config`` <- ``overrides`` (dotted key -> value, e.g. ``{"loss.lambda_reg": 5}``) <-
    ``options`` (the command-line options by their argparse names, the table of
    :mod:`nephi.config.options`: ``io_mode``, ``io_steps``, ``points``, ``reg_points``, ``lr``,
    ``seed``, ``device``, ``qc``, ``output_format``, ``log_jacobian``, ``align``,
    ``align_only``)."""
    cfg = resolve_config(base if base is not None else "pairwise", config, [])
    for key, value in (overrides or {}).items():
        cfg = set_dotted(cfg, key, value, source=f"override {key}")
    return apply_options(cfg, options)


def register(moving, fixed, mask=None, landmarks=None, moving_landmarks=None,
             config: str | None = None, overrides: dict | None = None, progress: bool = False,
             moving_mask=None, **options) -> Result:
    """Register ``moving`` (A) onto ``fixed`` (B) by instance optimization -> :class:`Result`.

    ``mask``: fixed-image mask (path or bool array); ``moving_mask``: moving-image mask (with
    it, similarity counts only where both masks hold); ``landmarks`` / ``moving_landmarks``:
    corresponding points (CSV paths or (N, d) arrays, RAS mm), reported as landmark errors.
    ``config``, ``overrides``, ``options``: see :func:`pairwise_config`.
    """
    cfg = pairwise_config(None, config, overrides, **options)
    validate_pairwise(cfg, min_steps=1)
    pair = LoadedPair(moving, fixed, mask, landmarks, moving_landmarks, moving_mask)
    return register_pair(pair, cfg, progress=progress)


class Model:
    """A trained network (:func:`load_model`): feed-forward registration, optionally refined."""

    def __init__(self, loaded: LoadedModel):
        self.loaded = loaded

    @property
    def path(self) -> str:
        return self.loaded.path

    def config(self, config: str | None = None, overrides: dict | None = None,
               **options) -> dict:
        """The pairwise config of this model's registrations (its loss and field settings,
        0 IO steps) with ``config``, ``overrides`` and ``options`` on top."""
        return pairwise_config(base_config(self.loaded), config, overrides, **options)

    def register(self, moving, fixed, mask=None, moving_mask=None, landmarks=None,
                 moving_landmarks=None, io_params: str = "latent", config: str | None = None,
                 overrides: dict | None = None, progress: bool = False, **options) -> Result:
        """One forward pass (and ``io_steps`` of instance optimization from it, default 0)
        -> :class:`Result`. ``moving_mask`` is needed when the network was trained on masked
        images; ``io_params``: what IO optimizes, ``latent`` codes or ``all``."""
        cfg = self.config(config, overrides, **options)
        validate_pairwise(cfg)
        pair = LoadedPair(moving, fixed, mask, landmarks, moving_landmarks, moving_mask)
        return predict(self.loaded, pair, cfg, io_params, pair.moving_mask, progress)

    def register_pairs(self, pairs_csv: str, out_dir: str, io_params: str = "latent",
                       config: str | None = None, overrides: dict | None = None,
                       progress: bool = False, **options) -> dict:
        """Every row of a pairs CSV into ``out_dir/<name>/`` (see
        :func:`nephi.pipeline.feedforward.register_pairs`); returns the counts."""
        cfg = self.config(config, overrides, **options)
        validate_pairwise(cfg)
        return register_pairs(self.loaded, pairs_csv, out_dir, cfg, io_params,
                              progress=progress)


def load_model(checkpoint: str) -> Model:
    """A trained network from a checkpoint of ``nephi-train`` (``best.pt``, ``step_*.pt``)."""
    if not checkpoint:
        raise NephiInputError("checkpoint: empty file name")
    return Model(_load_checkpoint(checkpoint))
