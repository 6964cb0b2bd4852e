"""Every console script (nephi-infer, nephi-warp, nephi-points, nephi-eval, nephi-prep, nephi-train):
argument parsing over the library, one-line errors.
"""
