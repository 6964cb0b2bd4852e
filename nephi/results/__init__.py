"""A registration result in memory or as a folder, and what is done with it: warping images, mapping
points, metrics, evaluation reports, quick-look pictures.
"""
