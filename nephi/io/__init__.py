"""Files: images and point sets, intensity normalization, ITK displacement fields (NIfTI and HDF5),
the result-folder layout, and atomic writing.
"""
