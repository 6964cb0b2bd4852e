"""Training learning-based NePhi with accelerate: the :class:`~nephi.learn.trainer.Trainer` and
validation.
"""
