"""Training data: preprocessing onto a network grid, the HDF5 pair file, dataset builders (pairs,
unpaired scans), on-the-fly augmentation, and the generators and converters (synthetic lung,
Triangles & Circles, DIR-LAB, COPDGene).
"""
