"""nephi: learned, amortized, approximately diffeomorphic image registration (NePhi).

Direction convention: A is moving, B is fixed. phi_AB maps fixed-space points to moving-space
points; the warped image is I_A(phi_AB(x)) on the fixed grid.
"""

__version__ = "0.1.0"
