"""NCC, GradICON and the latent prior on analytic inputs; Jacobian strategies agree."""

import pytest
import torch

from nephi.transforms.base import Composition
from nephi.transforms.jacobian import jacobian
from nephi.objectives.nephi_loss import latent_prior
from nephi.objectives.regularizers import gradicon
from nephi.objectives.similarity import ncc, ncc_similarity
from nephi.models.fields import FieldConfig, Latent, NephiFields
from nephi.geometry.sampling import interpolate_linear, interpolate_linear_with_grad


def test_ncc_values():
    a = torch.randn(3, 500, dtype=torch.float64)
    assert torch.allclose(ncc(a, 2.5 * a + 3.0), torch.ones(3, dtype=torch.float64))
    assert torch.allclose(ncc(a, -a), -torch.ones(3, dtype=torch.float64))
    b = torch.randn(3, 500, dtype=torch.float64)
    c = 0.6 * a + 0.8 * b
    expected = 0.6 / torch.sqrt(torch.tensor(0.36 + 0.64))
    assert abs(float(ncc(a, c).mean()) - float(expected)) < 0.06
    assert float(ncc_similarity(a, 4 * a - 1)) == pytest.approx(0.0, abs=1e-12)
    assert float(ncc_similarity(a, -a)) == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("method", ["fd", "fd-central", "autograd", "forward"])
def test_gradicon_on_linear_maps(method):
    a = torch.tensor([[1.2, 0.1, 0.0], [0.0, 0.9, 0.2], [0.05, 0.0, 1.1]], dtype=torch.float64)
    a_inv = torch.linalg.inv(a)
    x = torch.rand(1, 64, 3, dtype=torch.float64) * 2 - 1
    exact_inverse = jacobian(lambda p: (p @ a_inv.T) @ a.T, x, method)
    assert float(gradicon(exact_inverse)) == pytest.approx(0.0, abs=1e-8)
    not_inverse = jacobian(lambda p: p @ a.T, x, method)
    assert float(gradicon(not_inverse)) == pytest.approx(float(((a - torch.eye(3)) ** 2).sum()),
                                                         rel=1e-6)


def test_latent_prior_closed_form():
    zg = torch.full((1, 4), 2.0)
    zl = torch.full((1, 4, 3, 3, 3), 1.0)
    # ||z_g||^2 = 16, mean over cells of ||z_l||^2 = 4; sigma = 2 divides by 4
    assert float(latent_prior(Latent(zg, zl), sigma=2.0)) == pytest.approx(5.0)


def random_fields(d, dtype=torch.float64):
    torch.manual_seed(0)
    cfg = FieldConfig(ndim=d, hidden=64, fourier_features=16, fourier_scale=0.5, latent_grid=6)
    fields = NephiFields(cfg).to(dtype)
    for net in (fields.forward_net, fields.backward_net):
        torch.nn.init.normal_(net.out.weight, std=0.02)
    latent = Latent.random(1, cfg, 0.5)
    latent = Latent(latent.global_.to(dtype), latent.local.to(dtype))
    return fields, latent


@pytest.mark.parametrize("d", [2, 3])
def test_jacobian_strategies_agree_on_nephi_composition(d):
    """All four strategies give the GradICON Jacobian of phi_AB(phi_BA(x)); FD within O(eps)."""
    fields, latent = random_fields(d)

    def composed(p):
        return fields.phi_ab(fields.phi_ba(p, latent), latent)

    x = torch.rand(1, 200, d, dtype=torch.float64) * 1.6 - 0.8
    exact = jacobian(composed, x, "autograd")
    assert torch.allclose(jacobian(composed, x, "forward"), exact, atol=1e-10)
    central = jacobian(composed, x, "fd-central", eps=1e-5)
    forward_diff = jacobian(composed, x, "fd", eps=1e-6)
    # piecewise-linear latent interpolation: a few points straddle a cell edge
    assert (central - exact).abs().amax(dim=(-1, -2)).median() < 1e-6
    assert (forward_diff - exact).abs().amax(dim=(-1, -2)).median() < 1e-4
    assert abs(float(gradicon(central)) - float(gradicon(exact))) < 1e-3 * float(gradicon(exact))
    exact.sum().backward()
    assert fields.forward_net.out.weight.grad is not None


@pytest.mark.parametrize("d", [2, 3])
def test_analytic_jacobian_matches_autograd_with_parameter_gradients(d):
    """The analytic Jacobian of phi_AB o phi_BA equals reverse mode, and so do the gradients of
    the GradICON loss with respect to weights and latent codes (first-order backprop only)."""
    fields, latent = random_fields(d)
    latent = Latent(latent.global_.requires_grad_(), latent.local.requires_grad_())
    composed = Composition(fields.map_ab(latent), fields.map_ba(latent))
    x = torch.rand(1, 150, d, dtype=torch.float64) * 2.4 - 1.2  # some points outside the grid
    exact = jacobian(composed, x, "autograd")
    analytic = jacobian(composed, x, "analytic")
    assert torch.allclose(analytic, exact, atol=1e-12)
    assert torch.allclose(composed.value_and_jacobian(x)[0], composed(x), atol=1e-14)
    params = list(fields.parameters()) + [latent.global_, latent.local]
    g_exact = torch.autograd.grad(gradicon(exact), params, allow_unused=True)
    g_analytic = torch.autograd.grad(gradicon(analytic), params, allow_unused=True)
    for a, b in zip(g_exact, g_analytic):
        assert (a is None) == (b is None)
        if a is not None:
            assert torch.allclose(a, b, atol=1e-10)
    with pytest.raises(ValueError, match="value_and_jacobian"):
        jacobian(lambda p: p * 2.0, x, "analytic")


def test_interpolation_gradient_is_the_derivative():
    torch.manual_seed(1)
    values = torch.randn(2, 3, 5, 6, 7, dtype=torch.float64)
    p = (torch.rand(2, 40, 3, dtype=torch.float64) * 2.6 - 1.3).requires_grad_()
    value, grad = interpolate_linear_with_grad(values, p)
    assert torch.equal(value, interpolate_linear(values, p))
    rows = [torch.autograd.grad(value[..., c].sum(), p, retain_graph=True)[0] for c in range(3)]
    assert torch.allclose(grad, torch.stack(rows, dim=-1), atol=1e-12)
    outside = (p.abs() > 1).any(-1)
    assert outside.any() and (~outside).any()


def test_regularizers_with_analytic_jacobian_match_autograd():
    """nephi mode's extra regularizers under the default 'analytic' method: same values."""
    from nephi.objectives.regularizers import regularizer_terms

    fields, latent = random_fields(3)
    x = torch.rand(1, 80, 3, dtype=torch.float64) * 1.6 - 0.8
    weights = {"jacobian_det": 1.0, "negative_det": 1.0, "hyperelastic": 1.0, "diffusion": 1.0}
    for extra in ({}, {"bending_energy": 1e-3}):
        w = {**weights, **extra}
        exact = regularizer_terms(fields.map_ab(latent), x, w, "autograd")
        analytic = regularizer_terms(fields.map_ab(latent), x, w, "analytic")
        for name in w:
            assert torch.allclose(analytic[name].value, exact[name].value, rtol=1e-9), name
