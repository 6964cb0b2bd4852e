"""Closed-form and consistency tests of nephi.regularizers (2-D and 3-D)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from nephi.objectives import terms as losses
from nephi.transforms.jacobian import METHODS, jacobian
from nephi.objectives.regularizers import BENDING_METHODS, REGULARIZERS, bending_energy, cofactor, determinant, diffusion, hessian, hyperelastic, jacobian_det, jacobian_to_mm, negative_det, regularizer_terms

DIMS = (2, 3)
ALL_WEIGHTS = {"jacobian_det": 0.05, "negative_det": 1.0, "diffusion": 0.5,
               "hyperelastic": 1.0, "bending_energy": 10.0, "gradicon": 10.0}


@pytest.fixture(autouse=True, scope="module")
def single_thread():
    """The tensors here are tiny; intra-op threads only add overhead (large on a busy CPU)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def matrix(d: int) -> np.ndarray:
    """A fixed non-symmetric matrix with det > 0 whose cofactor columns straddle norm 1."""
    if d == 2:
        return np.array([[1.3, 0.2], [-0.1, 0.7]])
    return np.array([[1.3, 0.2, -0.1], [0.05, 0.8, 0.15], [-0.2, 0.1, 1.1]])


def affine(A: np.ndarray, b: np.ndarray | None = None):
    At = torch.tensor(A, dtype=torch.float64)
    bt = torch.zeros(A.shape[0], dtype=torch.float64) if b is None else torch.tensor(b)
    return lambda p: p @ At.T + bt


def points(d: int, n: int = 64, b: int = 2, dtype=torch.float64, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(b, n, d, generator=g, dtype=torch.float64) * 2 - 1).to(dtype)


class Sine(torch.nn.Module):
    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return torch.sin(z)


class SineMLP(torch.nn.Module):
    """phi(x) = x + 0.1 * MLP(x) with sine activations (twice differentiable in x)."""

    def __init__(self, d: int, width: int = 32, seed: int = 0, dtype=torch.float64):
        super().__init__()
        torch.manual_seed(seed)
        self.net = torch.nn.Sequential(
            torch.nn.Linear(d, width), Sine(), torch.nn.Linear(width, width), Sine(),
            torch.nn.Linear(width, d)).to(dtype)
        with torch.no_grad():
            self.net[0].weight.mul_(3.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + 0.1 * self.net(x)


def rel_close(a: torch.Tensor, b: torch.Tensor, rel: float) -> bool:
    a, b = float(a.detach()), float(b.detach())
    return abs(a - b) <= rel * max(abs(a), abs(b), 1e-12)


def cofactor_np(A: np.ndarray) -> np.ndarray:
    return np.linalg.det(A) * np.linalg.inv(A).T


@pytest.mark.parametrize("d", DIMS)
@pytest.mark.parametrize("method", METHODS)
def test_affine_jacobian_terms_match_closed_forms(d, method):
    A = matrix(d)
    b = np.linspace(-0.2, 0.3, d)
    x = points(d)
    J = jacobian(affine(A, b), x, method)
    np.testing.assert_allclose(J.numpy(), np.broadcast_to(A, J.shape), atol=1e-8)

    det = np.linalg.det(A)
    cof = cofactor_np(A)
    eye = np.eye(d)
    np.testing.assert_allclose(determinant(J).numpy(), det, rtol=1e-9)
    np.testing.assert_allclose(cofactor(J)[0, 0].numpy(), cof, atol=1e-9)
    assert jacobian_det(J).item() == pytest.approx(abs(1 - det), rel=1e-8)
    assert diffusion(J).item() == pytest.approx(((A - eye) ** 2).sum(), rel=1e-8)

    column_sq = (cof ** 2).sum(axis=0)
    assert (column_sq > 1).any() and (column_sq < 1).any()
    length = 0.5 * ((A - eye) ** 2).sum()
    area = (np.maximum(column_sq - 1, 0) ** 2).sum()
    volume = (det - 1) ** 4 / det ** 2
    parts = hyperelastic(J, alpha_l=1.0, alpha_a=0.1, alpha_v=2.0)
    assert parts.length.item() == pytest.approx(length, rel=1e-8)
    assert parts.area.item() == pytest.approx(area, rel=1e-8)
    assert parts.area.item() > 0
    assert parts.volume.item() == pytest.approx(volume, rel=1e-8)
    assert parts.total.item() == pytest.approx(length + 0.1 * area + 2.0 * volume, rel=1e-8)


@pytest.mark.parametrize("d", DIMS)
def test_identity_and_volume_symmetry(d):
    x = points(d, n=8)
    J = jacobian(lambda p: p, x, "autograd")
    parts = hyperelastic(J)
    for value in (parts.total, parts.length, parts.area, parts.volume, jacobian_det(J),
                  diffusion(J), negative_det(J)):
        assert value.item() == pytest.approx(0.0, abs=1e-12)
    v = 1.7
    grow = hyperelastic(jacobian(affine(np.diag([v] + [1.0] * (d - 1))), x, "autograd"))
    shrink = hyperelastic(jacobian(affine(np.diag([1 / v] + [1.0] * (d - 1))), x, "autograd"))
    assert grow.volume.item() == pytest.approx(shrink.volume.item(), rel=1e-10)
    assert grow.volume.item() == pytest.approx((v - 1) ** 4 / v ** 2, rel=1e-10)


@pytest.mark.parametrize("d", DIMS)
def test_negative_det_zero_when_positive_and_positive_for_reflection(d):
    x = points(d, n=16)
    assert negative_det(jacobian(affine(matrix(d)), x, "autograd")).item() == 0.0
    reflection = np.diag([-1.0] + [1.0] * (d - 1))
    J = jacobian(affine(reflection), x, "autograd")
    assert negative_det(J, eps=0.0).item() == pytest.approx(1.0)
    assert negative_det(J, eps=0.05).item() == pytest.approx(1.05)
    assert jacobian_det(J).item() == pytest.approx(2.0)


@pytest.mark.parametrize("d", DIMS)
@pytest.mark.parametrize("method", BENDING_METHODS)
def test_bending_energy_affine_zero_and_quadratic_constant(d, method):
    x = points(d, n=16)
    assert bending_energy(affine(matrix(d), np.ones(d)), x, method).item() == pytest.approx(
        0.0, abs=1e-9)

    Q = np.random.default_rng(d).normal(size=(d, d, d))
    Qt = torch.tensor(Q)

    def quadratic(p):
        return p + torch.einsum("ijk,bnj,bnk->bni", Qt, p, p)

    second = Q + Q.transpose(0, 2, 1)
    H = hessian(quadratic, x, method)
    np.testing.assert_allclose(H.numpy(), np.broadcast_to(second, H.shape), atol=1e-6)
    expected = (second ** 2).sum()
    assert bending_energy(quadratic, x, method).item() == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("d", DIMS)
def test_fd_and_autograd_agree_on_sine_mlp(d):
    fn, inverse = SineMLP(d, seed=1), SineMLP(d, seed=2)
    x = points(d, n=32)
    reference = regularizer_terms(fn, x, ALL_WEIGHTS, "autograd", inverse_fn=inverse,
                                  det_margin=1.0)
    for name in ("bending_energy", "hyperelastic/area", "negative_det", "gradicon"):
        assert reference[name].value.item() > 1e-3, name
    for method, eps in (("fd-central", 1e-4), ("fd", 1e-6), ("forward", 1e-3)):
        other = regularizer_terms(fn, x, ALL_WEIGHTS, method, eps=eps, inverse_fn=inverse,
                                  det_margin=1.0)
        assert list(other) == list(reference)
        for name in other:
            assert rel_close(other[name].value, reference[name].value, 1e-3), (method, name)


@pytest.mark.parametrize("d", DIMS)
def test_bending_fd_float32_default_step(d):
    fn = SineMLP(d, seed=3, dtype=torch.float32)
    x = points(d, n=64, dtype=torch.float32)
    exact = bending_energy(fn, x, "autograd")
    approx = bending_energy(fn, x, "fd")
    assert rel_close(approx, exact, 2e-2)


@pytest.mark.parametrize("d", DIMS)
@pytest.mark.parametrize("method", METHODS)
def test_all_terms_differentiable(d, method):
    fn, inverse = SineMLP(d, seed=4), SineMLP(d, seed=5)
    x = points(d, n=16)
    terms = regularizer_terms(fn, x, ALL_WEIGHTS, method, eps=1e-4, inverse_fn=inverse,
                              det_margin=2.0)
    for name in ALL_WEIGHTS:
        params = list(fn.parameters())
        grads = torch.autograd.grad(terms[name].value, params, retain_graph=True,
                                    allow_unused=True)
        norm = sum(float(g.norm()) for g in grads if g is not None)
        assert np.isfinite(norm) and norm > 0, name
    total = losses.total(terms)
    total.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in inverse.parameters())


@pytest.mark.parametrize("d", DIMS)
def test_registry_matches_shared_terms_and_labels_units(d):
    fn, inverse = SineMLP(d, seed=6), SineMLP(d, seed=7)
    x = points(d, n=16)
    params = {"alpha_l": 1.0, "alpha_a": 0.1, "alpha_v": 2.0, "det_margin": 0.5}
    terms = regularizer_terms(fn, x, ALL_WEIGHTS, "autograd", inverse_fn=inverse, **params)
    assert list(terms) == ["jacobian_det", "negative_det", "diffusion", "hyperelastic",
                           "hyperelastic/length", "hyperelastic/area", "hyperelastic/volume",
                           "bending_energy", "gradicon"]
    for name, weight in ALL_WEIGHTS.items():
        alone = REGULARIZERS[name](fn, x, "autograd", 1e-3, inverse_fn=inverse, **params)
        assert terms[name].value.item() == pytest.approx(alone.item(), rel=1e-10), name
        assert terms[name].weight == weight
        assert isinstance(terms[name].unit, str) and terms[name].unit
    for part in ("length", "area", "volume"):
        assert terms[f"hyperelastic/{part}"].weight == 0.0
    assert "normalized" in terms["bending_energy"].unit
    in_mm = regularizer_terms(fn, x, {"bending_energy": 1}, mm_per_unit=torch.ones(d))
    assert "mm" in in_mm["bending_energy"].unit


def test_gradicon_through_registry_and_errors():
    A = matrix(3)
    x = points(3, n=16)
    inverse = affine(np.linalg.inv(A))
    terms = regularizer_terms(affine(A), x, {"gradicon": 10}, inverse_fn=inverse)
    assert terms["gradicon"].value.item() == pytest.approx(0.0, abs=1e-12)
    terms = regularizer_terms(affine(A), x, {"gradicon": 10}, "fd", inverse_fn=lambda p: p)
    assert terms["gradicon"].value.item() == pytest.approx(((A - np.eye(3)) ** 2).sum(), rel=1e-6)
    with pytest.raises(ValueError, match="inverse_fn"):
        regularizer_terms(affine(A), x, {"gradicon": 1})
    with pytest.raises(ValueError, match="unknown regularizer"):
        regularizer_terms(affine(A), x, {"elastic": 1})
    with pytest.raises(ValueError, match="parameter"):
        regularizer_terms(affine(A), x, {"hyperelastic": 1}, alpha_x=1.0)
    with pytest.raises(ValueError):
        bending_energy(affine(A), x, "spline")


@pytest.mark.parametrize("d", DIMS)
def test_mm_conversion_matches_map_in_mm(d):
    s = torch.tensor([1.5, 0.6, 2.5][:d], dtype=torch.float64)
    fn = SineMLP(d, seed=8)
    x = points(d, n=16)

    def fn_mm(p):
        return fn(p / s) * s

    J_mm = jacobian_to_mm(jacobian(fn, x, "autograd"), s)
    torch.testing.assert_close(J_mm, jacobian(fn_mm, x * s, "autograd"))
    torch.testing.assert_close(determinant(J_mm), determinant(jacobian(fn, x, "autograd")))
    torch.testing.assert_close(bending_energy(fn, x, mm_per_unit=s),
                               bending_energy(fn_mm, x * s))
    terms = regularizer_terms(fn, x, {"diffusion": 1, "bending_energy": 1}, mm_per_unit=s)
    torch.testing.assert_close(terms["diffusion"].value, diffusion(J_mm))

    iso = 1.7
    norm_value = bending_energy(fn, x)
    mm_value = bending_energy(fn, x, mm_per_unit=torch.full((d,), iso, dtype=torch.float64))
    assert mm_value.item() == pytest.approx(norm_value.item() / iso ** 2, rel=1e-10)
