"""Train learning-based NePhi: ``accelerate launch [opts] train/train.py --config CONFIG.yaml
--output-dir DIR [--resume] [key=value ...]``.

With no argument it trains ``configs/lung_cpu.yaml`` (a synthetic lung population, built on
first use). A thin entry point over :mod:`nephi.cli.train`.
"""

import os
import sys

from nephi.cli.train import main


DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                              "configs", "lung_cpu.yaml")

if __name__ == "__main__":
    sys.exit(main(default_config=DEFAULT_CONFIG, prog="train.py"))
