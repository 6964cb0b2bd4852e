"""The point-map contract (:mod:`~nephi.transforms.base`), composition, spatial Jacobians of maps,
dense tabulation of maps on grids, and displacement fields as maps.
"""
