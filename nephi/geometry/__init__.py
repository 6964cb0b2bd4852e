"""Voxel grids, affines and coordinate systems (index, normalized frame, RAS, LPS), sampling images
and latent grids at points, and an image pair as tensors.
"""
