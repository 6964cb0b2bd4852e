"""Instance optimization: one engine, the modes it runs (nephi, inr, velocity) behind one documented
interface, and the invertible refinements.
"""
