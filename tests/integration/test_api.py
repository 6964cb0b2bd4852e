"""The README's Python API example runs as written, and its numbers are a registration's."""

import os
import pathlib
import re

import numpy as np
import pytest

import nephi


pytestmark = pytest.mark.slow

README = pathlib.Path(__file__).resolve().parents[2] / "README.md"


def readme_example() -> str:
    """The first python code block after the '## Python API' heading of the README."""
    text = README.read_text(encoding="utf-8")
    section = text[text.index("## Python API"):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_readme_api_example_registers(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(readme_example(), "README.md", "exec"), scope)
    result, again, lung = scope["result"], scope["again"], scope["lung"]
    before = result.summary["landmark_error_before_mm"]["mean_mm"]
    after = scope["errors"]["mean_mm"]
    assert after < 0.5 * before, (before, after)
    assert result.summary["folding_percent"] < 0.1
    # the same maps in memory and read back from the folder
    assert os.path.isfile(tmp_path / "api_result" / "warp.nii.gz")
    np.testing.assert_allclose(again.map_points(lung.inhale_points), scope["moving_points"],
                               atol=1e-3)
    # mapped landmarks are the summary's landmark error
    dist = np.linalg.norm(scope["moving_points"] - lung.exhale_points, axis=1)
    np.testing.assert_allclose(dist.mean(), after, rtol=1e-6)
    # the warped label map lies on the fixed grid and overlaps the fixed lung mask
    warped = scope["mask_on_fixed"]
    assert warped.grid.shape == lung.inhale.shape
    fixed_mask = lung.inhale_mask.get_fdata() > 0
    dice = 2 * np.sum((warped.data > 0) & fixed_mask) / (np.sum(warped.data > 0) + fixed_mask.sum())
    assert dice > 0.8


def test_api_rejects_bad_input_with_one_clear_error(tmp_path):
    lung_like = (np.zeros((8, 8, 8), np.float32), np.eye(4))
    bad = (np.full((8, 8, 8), np.nan, np.float32), np.eye(4))
    with pytest.raises(nephi.NephiInputError, match="moving image.*NaN"):
        nephi.register(bad, lung_like, io_steps=1)
    with pytest.raises(nephi.NephiInputError, match="io_stepz"):
        nephi.register(lung_like, lung_like, io_stepz=3)
