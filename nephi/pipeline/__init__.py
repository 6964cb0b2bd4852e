"""Registration end to end: checked inputs, pairwise registration, feed-forward registration with a
trained network, and the public Python API.
"""
