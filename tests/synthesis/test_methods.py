"""Every synthesis method against the spec's formulas and guarantees on random gradient lists
(many seeds, mixed shapes, some missing gradients), and against a flat reference within 1e-6."""

import numpy as np
import pytest
import torch

from raysweep.synthesis import SYNTHESIS, build_synthesis
from raysweep.synthesis.mgda import min_norm_weights

from . import flat_reference as ref

SEEDS = range(25)
SHAPES = [(7, 5), (11,), (3, 4, 2), (1,), (6,)]


def random_grads(seed, n_tasks=2, none_rate=0.2, heavy=False):
    """Task gradient lists; some tensors missing in some tasks (frozen or unused parameters)."""
    gen = torch.Generator().manual_seed(seed)
    tasks = []
    for t in range(n_tasks):
        grads = []
        for k, shape in enumerate(SHAPES):
            if torch.rand((), generator=gen) < none_rate:
                grads.append(None)
                continue
            g = torch.randn(shape, generator=gen)
            if heavy:
                g = g * torch.rand(shape, generator=gen).pow(-1.5).clamp_max(30)
            grads.append(g)
        tasks.append(grads)
    # Correlate the tasks sometimes so both conflict and agreement occur.
    if seed % 3 == 0:
        for k, g in enumerate(tasks[1]):
            if g is not None and tasks[0][k] is not None:
                tasks[1][k] = -0.7 * tasks[0][k] + 0.3 * g
    return tasks


def flat(grads):
    return ref.flatten(grads, SHAPES)


def close(ours, expected, tol=1e-6):
    np.testing.assert_allclose(flat(ours), expected, atol=tol, rtol=tol)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("gamma,alpha", [(1.0, 1.0), (1.0, 0.1), (0.3, 2.0)])
def test_graddiff_is_the_weighted_sum(seed, gamma, alpha):
    gf, gr = random_grads(seed)
    out = build_synthesis("graddiff", {"gamma": gamma, "alpha": alpha})([gf, gr])
    close(out, ref.graddiff(flat(gf), flat(gr), gamma, alpha))


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("gamma,alpha", [(1.0, 1.0), (1.0, 0.1), (0.1, 1.0)])
def test_sago_exact_rule_and_coordinate_sign_agreement(seed, gamma, alpha):
    gf, gr = random_grads(seed, heavy=seed % 2 == 1)
    out = build_synthesis("sago", {"gamma": gamma, "alpha": alpha})([gf, gr])
    g, r, f = flat(out), flat(gr), flat(gf)
    close(out, ref.sago(f, r, gamma, alpha))
    assert np.all(g * r >= 0), "SAGO must agree in sign with g_R at every coordinate"
    # The rule itself, coordinate by coordinate: only-retain on conflicts, only-forget elsewhere.
    conflict = f * r < 0
    np.testing.assert_allclose(g[conflict], alpha * r[conflict], atol=1e-6)
    np.testing.assert_allclose(g[~conflict], gamma * f[~conflict], atol=1e-6)


@pytest.mark.parametrize("seed", SEEDS)
def test_sago_prefer_retain_ablation(seed):
    gf, gr = random_grads(seed)
    out = build_synthesis("sago_prefer_retain", {"gamma": 0.5, "alpha": 2.0})([gf, gr])
    close(out, ref.sago(flat(gf), flat(gr), 0.5, 2.0, prefer_retain=True))
    assert np.all(flat(out) * flat(gr) >= 0)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("gamma,alpha", [(1.0, 1.0), (1.0, 0.1), (2.0, 0.5)])
def test_pcgrad_r_module_guarantee_per_tensor(seed, gamma, alpha):
    gf, gr = random_grads(seed, heavy=seed % 2 == 0)
    out = build_synthesis("pcgrad_r", {"gamma": gamma, "alpha": alpha, "scope": "module"})([gf, gr])
    segs = ref.segments(SHAPES)
    close(out, ref.pcgrad_r(flat(gf), flat(gr), gamma, alpha, segs), tol=1e-5)
    g, r = flat(out), flat(gr)
    for s in segs:  # <g_k, g_R,k> >= alpha ||g_R,k||^2 for every tensor
        assert g[s] @ r[s] >= alpha * (r[s] @ r[s]) - 1e-5 * (1 + abs(r[s] @ r[s]))


@pytest.mark.parametrize("seed", SEEDS)
def test_pcgrad_r_global_scope(seed):
    gf, gr = random_grads(seed)
    out = build_synthesis("pcgrad_r", {"gamma": 1.0, "alpha": 0.5, "scope": "global"})([gf, gr])
    close(out, ref.pcgrad_r(flat(gf), flat(gr), 1.0, 0.5), tol=1e-5)
    g, r = flat(out), flat(gr)
    assert g @ r >= 0.5 * (r @ r) - 1e-4


@pytest.mark.parametrize("seed", SEEDS)
def test_ngdiff_formula_and_first_order_guarantees(seed):
    gf_hat, gr = random_grads(seed, heavy=seed % 2 == 0)
    out = build_synthesis("ngdiff")([gf_hat, gr])
    f, r = flat(gf_hat), flat(gr)
    close(out, ref.ngdiff(f, r))
    g, g_F = flat(out), -f  # g_F: gradient of the forget loss that is ascended
    assert g @ r >= -1e-6 and g @ g_F <= 1e-6
    cos_phi = (r @ g_F) / np.linalg.norm(r) / np.linalg.norm(g_F)
    expected = np.sqrt((1 - cos_phi) / 2)  # the bisector: equal angles to g_R and -g_F
    assert g @ r / np.linalg.norm(g) / np.linalg.norm(r) == pytest.approx(expected, abs=1e-5)
    assert -g @ g_F / np.linalg.norm(g) / np.linalg.norm(g_F) == pytest.approx(expected, abs=1e-5)
    assert np.linalg.norm(g) == pytest.approx(np.sqrt(2 * (1 - cos_phi)), abs=1e-5)


def test_ngdiff_equal_norms_is_graddiff_up_to_scale():
    gf, gr = random_grads(3, none_rate=0.0)
    scale = np.linalg.norm(flat(gr)) / np.linalg.norm(flat(gf))
    gf = [t * scale for t in gf]
    ng = flat(build_synthesis("ngdiff")([gf, gr]))
    gd = flat(build_synthesis("graddiff")([gf, gr]))
    np.testing.assert_allclose(ng * np.linalg.norm(flat(gr)), gd, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("retain_in_objective", [True, False])
def test_gru_removes_exactly_the_conflicting_component(seed, retain_in_objective):
    steps = [random_grads(seed * 10 + i) for i in range(4)]
    method = build_synthesis("gru", {"mu": 0.8, "retain_in_objective": retain_in_objective})
    expected = ref.gru_steps([(flat(f), flat(r)) for f, r in steps], 0.8, 1.0, 1.0, retain_in_objective)
    ema = np.zeros(sum(int(np.prod(s)) for s in SHAPES))
    for (gf, gr), want in zip(steps, expected):
        out = method([gf, gr])
        close(out, want, tol=1e-5)
        f, r, g = flat(gf), flat(gr), flat(out)
        ema = 0.8 * r + 0.2 * ema
        gu = f + (r if retain_in_objective else 0)
        c = gu @ ema
        assert g @ ema == pytest.approx(max(c, 0.0), abs=1e-4)  # <g, ḡ_r> = max(c, 0)
        removed = gu - g
        if c >= 0:
            assert np.allclose(removed, 0, atol=1e-6)
        else:  # only along ḡ_r: the minimal change that removes the conflict
            assert np.linalg.norm(removed - (removed @ ema) / (ema @ ema) * ema) < 1e-5


def test_gru_state_round_trips():
    steps = [random_grads(100 + i) for i in range(3)]
    a = build_synthesis("gru")
    a(steps[0])
    b = build_synthesis("gru")
    b.load_state_dict(a.state_dict())
    np.testing.assert_allclose(flat(a(steps[1])), flat(b(steps[1])))


def brute_force_min_norm(gram, resolution=400):
    m = gram.shape[0]
    best = (np.inf, None)
    grid = np.linspace(0, 1, resolution + 1)
    if m == 2:
        cands = [np.array([a, 1 - a]) for a in grid]
    else:
        cands = [np.array([a, b, 1 - a - b]) for a in grid for b in grid if a + b <= 1 + 1e-12]
    for lam in cands:
        v = lam @ gram @ lam
        if v < best[0]:
            best = (v, lam)
    return best


@pytest.mark.parametrize("seed", SEEDS)
def test_mgda_two_task_closed_form_and_common_descent(seed):
    g1, g2 = random_grads(seed)
    out = build_synthesis("mgda")([g1, g2])
    d_ref, lam = ref.mgda_two_task(flat(g1), flat(g2))
    close(out, d_ref, tol=1e-5)
    d = flat(out)
    for g in (flat(g1), flat(g2)):
        assert d @ g >= d @ d - 1e-5 * (1 + d @ d)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("n_tasks", [2, 3])
def test_mgda_matches_brute_force_min_norm(seed, n_tasks):
    grads = random_grads(seed, n_tasks=n_tasks)
    vecs = np.stack([flat(g) for g in grads])
    gram = vecs @ vecs.T
    lam = min_norm_weights(torch.tensor(gram)).numpy()
    value = lam @ gram @ lam
    brute_value, _ = brute_force_min_norm(gram, 400 if n_tasks == 2 else 120)
    assert lam.min() >= 0 and lam.sum() == pytest.approx(1.0)
    assert value <= brute_value + 1e-9  # exact solver is never worse than any grid point
    assert value >= brute_value - 0.02 * (1 + brute_value)  # and the grid gets close to it
    out = flat(build_synthesis("mgda")(grads))
    np.testing.assert_allclose(out, lam @ vecs, atol=1e-5)
    for g in vecs:
        assert out @ g >= out @ out - 1e-4 * (1 + out @ out)


def test_every_registered_method_is_covered():
    assert set(SYNTHESIS.names()) == {"graddiff", "sago", "sago_prefer_retain", "pcgrad_r", "ngdiff", "gru", "mgda"}


def test_methods_leave_their_inputs_untouched():
    for name in SYNTHESIS.names():
        gf, gr = random_grads(7)
        before = [flat(gf).copy(), flat(gr).copy()]
        build_synthesis(name)([gf, gr])
        np.testing.assert_array_equal(flat(gf), before[0])
        np.testing.assert_array_equal(flat(gr), before[1])


def test_missing_gradients_count_as_zero_and_stay_missing():
    gf = [torch.ones(2), None, None]
    gr = [None, -torch.ones(3), None]
    for name in SYNTHESIS.names():
        out = build_synthesis(name)([gf, gr])
        assert out[2] is None, name
        assert out[0] is not None and out[1] is not None, name


def test_wrong_task_count_is_a_clear_error():
    gf, gr = random_grads(1)
    with pytest.raises(ValueError, match="takes 2 task gradients, got 3"):
        build_synthesis("sago")([gf, gr, gr])
