"""Instance-optimization modes (nephi, inr, velocity): one engine, the same outputs.

Small and fast: a 20^3 blob phantom with a known translation, tiny networks, few steps.
"""

import json

import nibabel as nib
import numpy as np
import pytest
import torch

from helpers_interop import Phantom, centred_grid, save_nifti
from nephi.config.loader import load_defaults, merge
from nephi.errors import NephiInputError
from nephi.geometry.grid import Grid
from nephi.models.coordinate import ACTIVATIONS, CoordinateNet, CoordinateNetConfig
from nephi.optim.modes import build_mode, initial_state
from nephi.optim.refinements import fixed_point_inverse
from nephi.transforms.dense import tabulate
from nephi.objectives.similarity import lncc_similarity, mi_similarity, mse_similarity, ncc_similarity, similarity_terms, stencil_offsets
from nephi.optim.engine import instance_optimize
from nephi.geometry.pair import PairTensors
from nephi.pipeline.pairwise import LoadedPair, pair_tensors, register, register_pair
from nephi.config.validate import validate_pairwise

SPACING = 3.0
SHIFT_MM = np.array([4.0, -3.0, 2.5])
TINY_NET = {"hidden": 48, "layers": 2}

SMALL = {
    "device": "cpu",
    "model": {"hidden": 64, "fourier_features": 16, "latent_channels": 8, "latent_grid": 6},
    "optim": {"steps": 60, "points": 1024, "reg_points": 128, "lr": 3e-4},
    "inr": {"steps": 60, "points": 1024, "reg_points": 256, "lr": 3e-4, "network": TINY_NET},
    "velocity": {"steps": 60, "points": 1024, "reg_points": 256, "lr": 3e-4,
                 "network": TINY_NET, "ode_steps": 3},
}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """These problems are tiny: a second thread only adds synchronization (and on a busy
    2-core machine, waiting for a descheduled thread makes every small op many times slower)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def config(mode: str, **sections) -> dict:
    cfg = merge(load_defaults("pairwise"), SMALL)
    return merge(merge(cfg, sections), {"io": {"mode": mode}})


@pytest.fixture(scope="module")
def shifted(tmp_path_factory):
    """Moving = fixed anatomy moved by SHIFT_MM: phi_AB(x) = x + SHIFT_MM (RAS mm)."""
    root = tmp_path_factory.mktemp("io_modes")
    phantom = Phantom(3, extent_mm=20.0, count=14, seed=3)
    grid = centred_grid((20, 20, 20), np.eye(3) * SPACING, np.zeros(3))
    save_nifti(root / "fixed.nii.gz", phantom.render(grid), grid)
    save_nifti(root / "moving.nii.gz", phantom.moved(np.eye(3), -SHIFT_MM).render(grid), grid)
    return root


def load(root) -> LoadedPair:
    return LoadedPair(str(root / "moving.nii.gz"), str(root / "fixed.nii.gz"))


def warp_lps(path) -> np.ndarray:
    return nib.load(str(path)).get_fdata()[..., 0, :]


def centre(field: np.ndarray) -> np.ndarray:
    return field[5:15, 5:15, 5:15].reshape(-1, 3)


# ------------------------------------------------------------------ similarity terms


def test_local_ncc_and_mse_closed_forms():
    gen = torch.Generator().manual_seed(0)
    target = torch.rand(2, 50, 27, generator=gen, dtype=torch.float64)
    scale = torch.rand(2, 50, 1, generator=gen, dtype=torch.float64) + 0.5
    offset = torch.rand(2, 50, 1, generator=gen, dtype=torch.float64)
    # an affine intensity change per window is a perfect local match (global NCC is not)
    assert float(lncc_similarity(scale * target + offset, target)) == pytest.approx(0, abs=1e-6)
    assert float(ncc_similarity((scale * target + offset).flatten(1), target.flatten(1))) > 0.05
    assert float(lncc_similarity(-target, target)) == pytest.approx(0.0, abs=1e-6)
    # orthogonal zero-mean windows: NCC_w = 0, loss 1
    a = torch.tensor([[[1.0, -1.0, 1.0, -1.0]]], dtype=torch.float64)
    b = torch.tensor([[[1.0, 1.0, -1.0, -1.0]]], dtype=torch.float64)
    assert float(lncc_similarity(a, b)) == pytest.approx(1.0)
    # half-correlated window: b2 = a + c with c orthogonal to a, same norm -> NCC^2 = 1/2
    assert float(lncc_similarity(a, a + b)) == pytest.approx(0.5)
    # a constant window has NCC^2 = 0 (no division by zero)
    assert float(lncc_similarity(torch.ones(1, 1, 8), torch.rand(1, 1, 8))) == pytest.approx(1.0)
    x = torch.tensor([[0.0, 1.0, 2.0, 3.0]])
    assert float(mse_similarity(x, x + 0.5)) == pytest.approx(0.25)
    assert float(mse_similarity(x, torch.zeros_like(x))) == pytest.approx(3.5)


def test_mutual_information_sees_any_functional_relation():
    """MI loss: an intensity-inverted copy scores as the copy itself (the Parzen kernel of one
    bin sets that floor, about 0.5 at 32 bins), a squared copy (which NCC^2 misses) close to it,
    independent samples near 1; differentiable in the samples."""
    gen = torch.Generator().manual_seed(0)
    a = torch.rand(1, 20000, generator=gen, dtype=torch.float64)
    same = float(mi_similarity(a, a))
    assert same < 0.6
    assert float(mi_similarity(1.0 - a, a)) == pytest.approx(same, abs=0.01)
    assert float(mi_similarity((2 * a - 1) ** 2, a)) < same + 0.15
    assert float(ncc_similarity((2 * a - 1) ** 2, a)) > 0.95
    noise = torch.rand(1, 20000, generator=gen, dtype=torch.float64)
    assert float(mi_similarity(noise, a)) > 0.95
    b = (0.5 * a + 0.5 * noise).requires_grad_()
    mi_similarity(b, a).backward()
    assert torch.isfinite(b.grad).all() and b.grad.abs().sum() > 0


def test_stencil_offsets():
    off = stencil_offsets(3, (5, 9, 11))
    assert off.shape == (27, 3)
    assert torch.allclose(off[13], torch.zeros(3))
    assert torch.allclose(off.abs().amax(dim=0), torch.tensor([2 / 4, 2 / 8, 2 / 10]))
    with pytest.raises(ValueError):
        stencil_offsets(4, (5, 5, 5))


def test_similarity_terms_on_an_analytic_image():
    """I(x) = x_0 + 2 x_1^2 sampled through the pair: identity map scores 0 for all terms;
    a shifted map keeps local NCC near 0 (a locally affine change) but not MSE."""
    grid = Grid((17, 17, 17), np.diag([2.0, 2.0, 2.0, 1.0]))
    x = grid.normalized_points()
    image = (x[..., 0] + 2 * x[..., 1] ** 2).reshape(1, 1, *grid.shape)
    pair = PairTensors(image, image.clone(), grid, grid)
    pts = torch.rand(1, 300, 3, generator=torch.Generator().manual_seed(1)) * 1.2 - 0.6
    weights = {"ncc": 1.0, "lncc": 1.0, "mse": 1.0}
    off = stencil_offsets(3, grid.shape)
    same = similarity_terms("sim", pair.moving_at, pair.fixed_at, lambda p: p, pts, weights, off)
    assert set(same) == {"sim", "sim/ncc", "sim/lncc", "sim/mse"}
    for key in same:
        assert float(same[key].value) == pytest.approx(0.0, abs=1e-6)
    shift = torch.tensor([0.1, 0.0, 0.0])
    moved = similarity_terms("sim", pair.moving_at, pair.fixed_at, lambda p: p + shift, pts,
                             weights, off)
    assert float(moved["sim/mse"].value) == pytest.approx(0.01, rel=1e-3)
    assert float(moved["sim/lncc"].value) < 1e-3
    only = similarity_terms("sim", pair.moving_at, pair.fixed_at, lambda p: p + shift, pts,
                            {"mse": 2.0}, off)
    assert set(only) == {"sim"} and float(only["sim"].value) == pytest.approx(0.02, rel=1e-3)


# ------------------------------------------------------------------ networks and maps


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_coordinate_networks_start_at_zero_and_train(activation):
    cfg = CoordinateNetConfig(activation=activation, hidden=32, layers=2,
                              fourier_features=8 if activation == "relu" else 0)
    net = CoordinateNet(3, cfg, seed=1)
    x = torch.rand(1, 64, 3) * 2 - 1
    assert torch.equal(net(x), torch.zeros(1, 64, 3))
    net.out.weight.data.normal_(0, 0.1)
    y = net(x)
    assert y.shape == (1, 64, 3) and torch.isfinite(y).all() and y.abs().max() > 0
    timed = CoordinateNet(2, cfg, time_input=True)
    assert timed(torch.zeros(1, 5, 2), torch.tensor(0.5)).shape == (1, 5, 2)


def test_fixed_point_inverse_of_a_smooth_displacement():
    def disp(p):
        return 0.1 * torch.sin(2.0 * p.flip(-1)) + torch.tensor([0.05, -0.02, 0.03])

    y = torch.rand(1, 500, 3, dtype=torch.float64) * 2 - 1
    for grad in (False, True):
        with torch.set_grad_enabled(grad):
            x = fixed_point_inverse(disp, y, iterations=50, tolerance=1e-10)
        assert float((x + disp(x) - y).abs().max()) < 1e-8


def translation_fields(shift_frame: torch.Tensor, ndim: int = 3, cfg: dict | None = None):
    """NePhi fields with phi_AB(x) = x + shift, phi_BA(y) = y - shift (frame units)."""
    fields, latent = initial_state(cfg or config("nephi"), ndim, torch.device("cpu"))
    with torch.no_grad():
        fields.forward_net.out.bias.copy_(shift_frame)
        fields.backward_net.out.bias.copy_(-shift_frame)
    return fields, latent


@pytest.mark.parametrize("mode", ["inr", "velocity"])
def test_refinement_is_composed_after_the_given_map(shifted, mode):
    """phi_AB = B_AB o R and phi_BA = R^-1 o B_BA, with B a non-trivial given map."""
    cfg = config(mode)
    pair = pair_tensors(load(shifted), cfg, torch.device("cpu"))
    fields, latent = initial_state(cfg, 3, torch.device("cpu"))
    with torch.no_grad():
        for net in (fields.forward_net, fields.backward_net):
            net.out.weight.normal_(0, 0.02)
    io = build_mode(cfg, pair, init=(fields, latent))
    next(io.stages())
    s = torch.tensor([0.05, -0.1, 0.02])
    net = io.refinements[0].net
    with torch.no_grad():
        net.out.bias.copy_(s)
        x = torch.rand(1, 200, 3) * 1.6 - 0.8
        want_ab = fields.phi_ab(x + s, latent)
        want_ba = fields.phi_ba(x, latent) - s
        assert torch.allclose(io.phi_ab(x), want_ab, atol=1e-5)
        assert torch.allclose(io.phi_ba(x), want_ba, atol=1e-5)


def test_tabulated_given_map_matches_the_network():
    """IO reads a given map from a table: exact at the grid points, close in between (this
    random field is rough, with kinks at its latent-grid cells: first-order convergence)."""
    cfg = config("inr")
    fields, latent = initial_state(cfg, 3, torch.device("cpu"))
    with torch.no_grad():
        fields.forward_net.out.weight.normal_(0, 0.01)
        table = tabulate(lambda p: fields.phi_ab(p, latent), (33, 33, 33), torch.device("cpu"))
        nodes = torch.stack(torch.meshgrid(*[torch.linspace(-1, 1, 33)] * 3, indexing="ij"), -1)
        nodes = nodes.reshape(1, -1, 3)
        assert torch.allclose(table(nodes), fields.phi_ab(nodes, latent), atol=1e-6)
        x = torch.rand(1, 300, 3) * 2 - 1
        exact = fields.phi_ab(x, latent)
        err = (table(x) - exact).norm(dim=-1).mean()
        assert err < 0.1 * (exact - x).norm(dim=-1).mean(), err


@pytest.mark.parametrize("mode", ["inr", "velocity"])
def test_given_translation_with_zero_refinement_is_exported_exactly(shifted, tmp_path, mode):
    pair = load(shifted)
    cfg = config(mode, **{mode: {"steps": 0}})
    grid = pair.fixed.grid
    shift_frame = torch.as_tensor(SHIFT_MM / (grid.normalized_mm_scale()), dtype=torch.float32)
    fields, latent = translation_fields(shift_frame, cfg=cfg)
    summary = register(pair, str(tmp_path / "out"), cfg, progress=False, init=(fields, latent))
    expected_lps = SHIFT_MM * np.array([-1.0, -1.0, 1.0])
    fwd = warp_lps(tmp_path / "out" / "warp.nii.gz").reshape(-1, 3)
    inv = warp_lps(tmp_path / "out" / "inverse_warp.nii.gz").reshape(-1, 3)
    assert np.abs(fwd - expected_lps).max() < 1e-3
    assert np.abs(inv + expected_lps).max() < 1e-3
    assert summary["io_mode"] == mode and summary["io_steps"] == 0
    assert summary["inverse_consistency_mm_mean"] < 1e-3


def snapshot(fields, latent):
    return ({k: v.clone() for k, v in fields.state_dict().items()},
            latent.global_.clone(), latent.local.clone(),
            [p.requires_grad for p in fields.parameters()])


@pytest.mark.parametrize("mode", ["nephi", "inr", "velocity"])
def test_io_never_changes_the_given_model(shifted, mode):
    cfg = config(mode, optim={"steps": 3}, inr={"steps": 3}, velocity={"steps": 3})
    pair = pair_tensors(load(shifted), cfg, torch.device("cpu"))
    fields, latent = initial_state(cfg, 3, torch.device("cpu"))
    before = snapshot(fields, latent)
    result = instance_optimize(pair, cfg, init=(fields, latent), progress=False)
    after = snapshot(fields, latent)
    assert before[3] == after[3]
    assert all(torch.equal(before[0][k], after[0][k]) for k in before[0])
    assert torch.equal(before[1], after[1]) and torch.equal(before[2], after[2])
    assert len(result.history) == 3 and result.mode == mode


# ------------------------------------------------------------------ registration per mode


@pytest.fixture(scope="module")
def summaries(shifted, tmp_path_factory):
    """Each mode registers the shifted phantom through register() (the export path)."""
    out = {}
    for mode in ("nephi", "inr", "velocity"):
        folder = tmp_path_factory.mktemp(f"out_{mode}") / "result"
        summary = register(load(shifted), str(folder), config(mode), progress=False)
        out[mode] = (summary, folder)
    return out


@pytest.mark.parametrize("mode", ["nephi", "inr", "velocity"])
def test_each_mode_recovers_the_translation(summaries, mode):
    summary, folder = summaries[mode]
    disp = np.median(centre(warp_lps(folder / "warp.nii.gz")), axis=0)
    expected = SHIFT_MM * np.array([-1.0, -1.0, 1.0])
    assert np.linalg.norm(disp - expected) < 0.25 * SPACING, (disp, expected)
    assert summary["ncc_after"] > summary["ncc_before"] + 0.1
    assert summary["folding_percent"] == 0.0
    with open(folder / "summary.json", encoding="utf-8") as fh:
        assert json.load(fh)["config"]["io"]["mode"] == mode


def test_summaries_have_the_same_keys(summaries):
    keys = [set(s) for s, _ in summaries.values()]
    assert keys[0] == keys[1] == keys[2]
    for key in ("ncc_after", "folding_percent", "inverse_consistency_mm_mean", "wall_time_s",
                "peak_memory_mb", "io_mode", "io_inverse", "config"):
        assert key in keys[0]


def test_velocity_warp_and_inverse_warp_compose_to_identity(summaries):
    summary, folder = summaries["velocity"]
    assert summary["inverse_consistency_mm_mean"] < 0.02 * SPACING
    fwd = warp_lps(folder / "warp.nii.gz")
    inv = warp_lps(folder / "inverse_warp.nii.gz")
    # same grid for both: q = p + d(p) in voxels (LPS->index flips x and y), then q + d'(q)
    to_index = np.array([-1.0, -1.0, 1.0]) / SPACING
    idx = np.stack(np.meshgrid(*[np.arange(20)] * 3, indexing="ij"), -1).astype(float)
    q = idx + fwd * to_index
    norm = torch.as_tensor(q[5:15, 5:15, 5:15].reshape(1, -1, 3) / 19 * 2 - 1)
    from nephi.geometry.sampling import sample_image

    field = torch.as_tensor(inv * to_index).permute(3, 0, 1, 2).unsqueeze(0)
    back = sample_image(field, norm)[0].T.numpy()
    err = np.linalg.norm(q[5:15, 5:15, 5:15].reshape(-1, 3) + back
                         - idx[5:15, 5:15, 5:15].reshape(-1, 3), axis=1)
    assert err.mean() < 0.1, err.mean()


def test_inr_inverse_is_the_fixed_point_inverse(summaries):
    summary, _ = summaries["inr"]
    assert "fixed-point" in summary["io_inverse"]
    assert summary["inverse_consistency_mm_mean"] < 0.01 * SPACING


# ------------------------------------------------------------------ options


def test_cascade_trains_a_second_network_on_a_frozen_first(shifted):
    cfg = config("inr", inr={"steps": 2, "stages": 2, "stage_reg_scale": 3.0})
    pair = pair_tensors(load(shifted), cfg, torch.device("cpu"))
    mode = build_mode(cfg, pair)
    stages = mode.stages()
    first = next(stages)
    assert len(mode.refinements) == 1 and mode.reg_scale == 1.0
    second = next(stages)
    assert len(mode.refinements) == 2 and mode.reg_scale == 3.0
    assert not any(p.requires_grad for p in mode.refinements[0].parameters())
    assert all(p.requires_grad for p in mode.refinements[1].parameters())
    assert first.index == 0 and second.index == 1 and second.count == 2
    result = instance_optimize(pair, cfg, progress=False)
    assert [r["stage"] for r in result.history] == [1, 1, 2, 2]


@pytest.mark.parametrize("options", [
    {"time_dependent": True},
    {"solver": "dopri5", "rtol": 1e-3, "atol": 1e-4},
    {"adjoint": True, "jacobian": "fd", "solver": "euler"},
])
def test_velocity_solver_options_run(shifted, options):
    cfg = config("velocity", velocity={"steps": 2, "points": 128, "reg_points": 32, **options})
    pair = pair_tensors(load(shifted), cfg, torch.device("cpu"))
    result = instance_optimize(pair, cfg, progress=False)
    assert len(result.history) == 2 and np.isfinite(result.history[-1]["loss"])
    x = torch.rand(1, 50, 3) * 2 - 1
    with torch.no_grad():
        assert torch.allclose(result.phi_ba(result.phi_ab(x)), x, atol=1e-3)


def test_any_mode_takes_any_regularizer_and_similarity(shifted):
    regs = {"gradicon": 0.1, "jacobian_det": 0.1, "negative_det": 1.0, "hyperelastic": 0.1,
            "bending_energy": 1e-4, "diffusion": 0.1}
    sim = {"ncc": 1.0, "lncc": 0.5, "mse": 1.0}
    for mode, section in (("inr", "inr"), ("velocity", "velocity"), ("nephi", "loss")):
        cfg = config(mode, io={"similarity": sim, "regularizer_space": "mm"},
                     **{section: {"regularizers": {k: v for k, v in regs.items()
                                                   if mode != "nephi" or k != "gradicon"}}})
        if mode != "nephi":
            cfg = merge(cfg, {mode: {"steps": 1, "points": 64, "reg_points": 16}})
        else:
            cfg = merge(cfg, {"optim": {"steps": 1, "points": 64, "reg_points": 16}})
        pair = pair_tensors(load(shifted), cfg, torch.device("cpu"))
        record = instance_optimize(pair, cfg, progress=False).history[0]
        for name in ("sim_ab/lncc", "sim_ab/mse", "jacobian_det", "bending_energy", "diffusion",
                     "hyperelastic/volume"):
            assert name in record and np.isfinite(record[name]), (mode, name)


@pytest.mark.parametrize("override, key", [
    ({"io": {"mode": "spline"}}, "io.mode"),
    ({"io": {"mode": "inr"}, "inr": {"regularizers": {"elastic": 1.0}}}, "inr.regularizers"),
    ({"io": {"mode": "inr"}, "inr": {"network": {"activation": "tanh"}}}, "inr.network"),
    ({"io": {"mode": "velocity"}, "velocity": {"solver": "leapfrog"}}, "velocity.solver"),
    ({"io": {"mode": "velocity"}, "velocity": {"adjoint": True}}, "velocity.jacobian"),
    ({"io": {"similarity": {"ncc": 0.0}}}, "io.similarity"),
    ({"io": {"lncc_window": 4}}, "io.lncc_window"),
    ({"align": {"rigid_steps": [100, 75]}}, "align.rigid_steps"),
    ({"align": {"significance": -1.0}}, "align.significance"),
])
def test_bad_io_config_names_the_key(override, key):
    def update(node, new):
        for k, v in new.items():
            if isinstance(v, dict) and isinstance(node.get(k), dict):
                update(node[k], v)
            else:
                node[k] = v

    cfg = load_defaults("pairwise")
    update(cfg, override)
    with pytest.raises(NephiInputError, match=key.replace(".", r"\.")):
        validate_pairwise(cfg)


def test_cli_io_mode_sets_the_mode_and_its_options():
    from nephi.cli.infer import build_parser, check_options, resolve_config

    args = build_parser().parse_args(["--pair", "a", "b", "--out", "o", "--io-mode", "velocity",
                                      "--io-steps", "7", "--lr", "0.01", "--points", "99"])
    cfg = resolve_config(args)
    assert cfg["io"]["mode"] == "velocity"
    assert (cfg["velocity"]["steps"], cfg["velocity"]["lr"], cfg["velocity"]["points"]) == \
        (7, 0.01, 99)
    assert cfg["optim"]["steps"] == load_defaults("pairwise")["optim"]["steps"]
    bad = build_parser().parse_args(["--pair", "a", "b", "--out", "o", "--io-mode", "inr",
                                     "--io-steps", "0"])
    with pytest.raises(NephiInputError, match="--io-steps"):
        check_options(bad, resolve_config(bad))


def test_nephi_learning_rates_from_scratch_when_refining_and_explicit(shifted):
    """Null optim.lr / optim.latent_lr: larger steps from scratch than when refining a
    prediction; explicit values (also written as '3e-5' text) win."""
    from nephi.config.loader import set_dotted
    from nephi.optim.modes import NEPHI_LR

    cfg = set_dotted(config("nephi"), "optim.lr", None)
    pair = pair_tensors(load(shifted), cfg, torch.device("cpu"))
    scratch = build_mode(cfg, pair)
    refine = build_mode(cfg, pair, init=(scratch.fields, scratch.latent), io_params="latent")
    for key in ("lr", "latent_lr"):
        assert scratch.learning_rate(key) == NEPHI_LR["scratch"][key]
        assert refine.learning_rate(key) == NEPHI_LR["refine"][key]
    assert (scratch.learning_rate("lr"), scratch.learning_rate("latent_lr")) == (6e-4, 2e-2)
    assert (refine.learning_rate("lr"), refine.learning_rate("latent_lr")) == (1e-4, 1e-3)
    explicit = build_mode(set_dotted(cfg, "optim.latent_lr", "3e-5"), pair)
    assert explicit.learning_rate("latent_lr") == 3e-5
    assert explicit.info()["latent_lr"] == 3e-5


def test_convergence_test_ends_io_early_and_counts_the_steps(shifted):
    """io.tolerance > 0: a stage stops once its loss is flat over two windows; steps taken are
    reported. With tolerance 0 every step runs."""
    cfg = config("nephi", optim={"steps": 60}, io={"window": 5, "tolerance": 0.0})
    pair = pair_tensors(load(shifted), cfg, torch.device("cpu"))
    full = instance_optimize(pair, cfg, progress=False)
    assert full.steps == 60 and len(full.history) == 60
    loose = merge(cfg, {"io": {"tolerance": 10.0}})  # any two windows are "the same"
    early = instance_optimize(pair, loose, progress=False)
    assert early.steps == 10 and len(early.history) == 10
    losses = [r["loss"] for r in full.history]
    old, new = np.mean(losses[-10:-5]), np.mean(losses[-5:])
    tight = merge(cfg, {"io": {"tolerance": 0.5 * abs(old - new) / abs(old)}})
    assert instance_optimize(pair, tight, progress=False).steps > 10


def test_bf16_and_fp32_registrations_agree(shifted, tmp_path):
    """--precision bf16 runs the field networks' hidden layers in bfloat16: the recovered shift
    agrees with fp32 within 0.1 voxel (0.3 mm) and the networks' outputs within 1 % of the
    displacement; the summary says which precision ran. (bf16 is emulated, slow, on CPUs
    without AVX-512 BF16: the problem is tiny.)"""
    fields = {}
    for precision in ("fp32", "bf16"):
        folder = tmp_path / precision
        cfg = config("nephi", precision=precision)
        summary = register(load(shifted), str(folder), cfg, progress=False)
        assert summary["io_info"]["precision"] == precision
        fields[precision] = warp_lps(folder / "warp.nii.gz")
    a, b = (np.median(centre(fields[p]), axis=0) for p in ("fp32", "bf16"))
    assert np.linalg.norm(a - b) < 0.1 * SPACING, (a, b)
    assert np.linalg.norm(b - SHIFT_MM * np.array([-1.0, -1.0, 1.0])) < 0.25 * SPACING

    net_cfg = config("nephi")
    net, latent = initial_state(net_cfg, 3, torch.device("cpu"))
    with torch.no_grad():
        net.forward_net.out.weight.normal_(0.0, 0.05)
        x = torch.rand(1, 4096, 3) * 2 - 1
        u32 = net.phi_ab(x, latent) - x
        u16 = net.set_precision("bf16").phi_ab(x, latent) - x
    assert u16.dtype == torch.float32
    assert (u16 - u32).abs().max() < 0.01 * u32.abs().max()


def test_auto_precision_follows_the_hardware(monkeypatch):
    from nephi.models import fields as fields_module

    monkeypatch.setattr(fields_module, "_cpu_flags", lambda: {"avx2", "avx512f"})
    assert fields_module.resolve_precision("auto", "cpu") == "fp32"
    monkeypatch.setattr(fields_module, "_cpu_flags", lambda: {"avx512_bf16", "amx_bf16"})
    assert fields_module.resolve_precision("auto", "cpu") == "bf16"
    assert fields_module.resolve_precision("fp32", "cpu") == "fp32"
    with pytest.raises(NephiInputError, match="precision"):
        validate_pairwise(config("nephi", precision="half"))


def test_cosine_schedule_decays_to_zero_and_constant_stays():
    from nephi.optim.engine import learning_rate_schedule

    for kind, last in (("cosine", 0.0), ("constant", 0.1)):
        param = torch.nn.Parameter(torch.zeros(1))
        opt = torch.optim.Adam([param], lr=0.1)
        sched = learning_rate_schedule(opt, kind, 10)
        rates = []
        for _ in range(10):
            rates.append(opt.param_groups[0]["lr"])
            opt.step()
            sched.step()
        assert rates[0] == pytest.approx(0.1)
        assert opt.param_groups[0]["lr"] == pytest.approx(last, abs=1e-12)
        if kind == "cosine":
            assert all(a > b for a, b in zip(rates, rates[1:]))


def test_moving_mask_draws_backward_points_and_limits_the_similarity(shifted, tmp_path):
    """A moving mask: backward points lie in it; points that phi_AB carries outside it leave
    the forward similarity; a pairwise run with --moving-mask still recovers the shift."""
    pair = load(shifted)
    box = np.zeros(pair.moving.grid.shape, dtype=bool)
    box[4:16, 4:16, 4:16] = True
    save_nifti(tmp_path / "moving_mask.nii.gz", box.astype(np.float32), pair.moving.grid)
    loaded = LoadedPair(str(shifted / "moving.nii.gz"), str(shifted / "fixed.nii.gz"),
                        moving_mask=str(tmp_path / "moving_mask.nii.gz"))
    tensors = pair_tensors(loaded, config("nephi"), torch.device("cpu"))
    gen = torch.Generator().manual_seed(0)
    y = tensors.sample_moving_points(500, gen)
    assert bool(tensors.moving_mask_at(y).all())
    x = 2 * torch.rand(1, 500, 3, generator=gen) - 1
    seen = []
    similarity_terms("s", lambda p: seen.append(p) or tensors.moving_at(p), tensors.fixed_at,
                     lambda p: p, x, {"ncc": 1.0}, source_mask_at=tensors.moving_mask_at)
    inside = int(tensors.moving_mask_at(x).sum())
    assert seen[0].shape[1] == inside < 500

    summary = register(loaded, str(tmp_path / "out"), config("nephi"), progress=False)
    assert summary["moving_mask"] == str(tmp_path / "moving_mask.nii.gz")
    disp = np.median(centre(warp_lps(tmp_path / "out" / "warp.nii.gz")), axis=0)
    assert np.linalg.norm(disp - SHIFT_MM * np.array([-1.0, -1.0, 1.0])) < 0.25 * SPACING


def test_alignment_without_overlap_is_one_line_error(shifted, tmp_path, capsys):
    from helpers_results import assert_input_error
    from nephi.cli.infer import main

    img = nib.load(str(shifted / "moving.nii.gz"))
    far = img.affine.copy()
    far[:3, 3] += 5000.0
    nib.save(nib.Nifti1Image(img.get_fdata().astype(np.float32), far), str(tmp_path / "far.nii.gz"))
    assert_input_error(main, ["--pair", str(tmp_path / "far.nii.gz"), str(shifted / "fixed.nii.gz"),
                              "--out", str(tmp_path / "out"), "--set", "align.init=none",
                              "--no-progress", "--device", "cpu"], capsys, "do not overlap")
    assert not (tmp_path / "out").exists()


def test_coarse_to_fine_levels_run_in_order_and_recover_the_shift(shifted, tmp_path):
    """io.pyramid: one stage per level on smoothed images (fraction x optim.steps steps each);
    the history counts them per stage and the result still recovers the shift. A pyramid with
    another mode, or a level without its keys, is refused naming the key."""
    levels = [{"sigma": 2.0, "fraction": 0.5}, {"sigma": 0.0, "fraction": 0.5}]
    cfg = config("nephi", io={"pyramid": levels})
    summary = register(load(shifted), str(tmp_path / "out"), cfg, progress=False)
    assert summary["io_steps"] == 60
    disp = np.median(centre(warp_lps(tmp_path / "out" / "warp.nii.gz")), axis=0)
    assert np.linalg.norm(disp - SHIFT_MM * np.array([-1.0, -1.0, 1.0])) < 0.25 * SPACING
    pair = pair_tensors(load(shifted), cfg, torch.device("cpu"))
    blurred = pair.smoothed(2.0)
    assert blurred.fixed.std() < pair.fixed.std() and blurred.fixed.shape == pair.fixed.shape
    stages = list(build_mode(cfg, pair).stages())
    assert [s.steps for s in stages] == [30, 30] and stages[1].pair is pair
    with pytest.raises(NephiInputError, match="io.pyramid"):
        validate_pairwise(config("inr", io={"pyramid": levels}))
    with pytest.raises(NephiInputError, match=r"io.pyramid\[0\]"):
        validate_pairwise(config("nephi", io={"pyramid": [{"sigma": 1.0}]}))


@pytest.mark.parametrize("field_grid", ["network", "auto"])
def test_network_grid_export_is_the_network_at_its_nodes(tmp_path, field_grid):
    """With a network's view of the pair (``--checkpoint``), ``output.field_grid`` network
    (auto's choice there) evaluates the maps on the network's grid and interpolates them onto
    the fixed and moving grids: exact at fixed voxels that are network-grid nodes, close in
    between; ``voxels`` evaluates the network at every voxel."""
    phantom = Phantom(3, extent_mm=20.0, count=14, seed=3)
    fixed_grid = centred_grid((21, 21, 21), np.eye(3) * SPACING, np.zeros(3))
    net_grid = centred_grid((11, 11, 11), np.eye(3) * 2 * SPACING, np.zeros(3))
    save_nifti(tmp_path / "fixed.nii.gz", phantom.render(fixed_grid), fixed_grid)
    save_nifti(tmp_path / "moving.nii.gz", phantom.render(fixed_grid), fixed_grid)
    pair = load(tmp_path)
    # a smooth field (a trained network's scale, not a random network's roughness)
    cfg = config("nephi", optim={"steps": 0}, model={"fourier_scale": 0.5, "latent_grid": 4},
                 precision="fp32")
    fields, latent = initial_state(cfg, 3, torch.device("cpu"))
    with torch.no_grad():
        for net in (fields.forward_net, fields.backward_net):
            net.out.weight.normal_(0, 0.02)
    image = torch.zeros(1, 1, *net_grid.shape)
    view = (PairTensors(image, image, net_grid, net_grid), fixed_grid.frame_to(net_grid))

    def export(how):
        return register_pair(pair, merge(cfg, {"output": {"field_grid": how}}), progress=False,
                             init=(fields, latent), io_params="latent", network_view=view)

    exact, fast = export("voxels"), export(field_grid)
    for inverse in (False, True):
        want, got = exact.field(inverse=inverse).disp, fast.field(inverse=inverse).disp
        assert np.abs(want).max() > 0.5  # mm: a visible field
        nodes = (slice(None, None, 2),) * 3
        assert np.allclose(got[nodes], want[nodes], atol=1e-3)
        err = np.linalg.norm(got - want, axis=-1).mean()
        assert err < 0.1 * np.linalg.norm(want, axis=-1).mean(), err


def test_network_field_grid_needs_a_network(shifted, tmp_path):
    cfg = config("nephi", output={"field_grid": "network"})
    with pytest.raises(NephiInputError, match="output.field_grid"):
        register(load(shifted), str(tmp_path / "out"), cfg, progress=False)
    assert not (tmp_path / "out").exists()
