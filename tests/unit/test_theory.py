"""acdc_lib.theory: the VP-SDE, exact scores, the PF-ODE, KL divergences and the Theorem 2/3 bounds."""
import numpy as np
import pytest

from acdc_lib import theory as th

SDE = th.VPSDE()


def _gauss(dim, rng):
    return th.DiagGaussian(rng.uniform(-0.5, 0.5, dim), rng.uniform(0.1, 0.5, dim) ** 2)


def _mixture(dim, rng, k=3):
    return th.GaussianMixture(rng.dirichlet(np.ones(k)), rng.uniform(-1, 1, (k, dim)), rng.uniform(0.05, 0.3, (k, dim)) ** 2)


def test_alpha_bar_default_schedule():
    # int_0^1 beta = 0.1 + 19.9 / 2 = 10.05; the printed Appendix-A form would give exp(+5.025).
    assert SDE.alpha_bar(1.0) == pytest.approx(np.exp(-10.05), rel=1e-12)
    assert SDE.alpha_bar(0.0) == 1.0
    assert SDE.alpha_bar_printed(1.0) == pytest.approx(np.exp(5.025), rel=1e-12)
    assert SDE.integrating_factor(0.0, 0.4) == pytest.approx(np.sqrt(SDE.alpha_bar(0.4)), rel=1e-12)


def test_kernel_matches_euler_maruyama_simulation():
    # Simulating Eq. (7) itself: the closed-form kernel (mean sqrt(abar) x0, var 1 - abar) must match.
    rng = np.random.default_rng(0)
    x0 = np.full((20000, 1), 2.0)
    t = 0.3
    xt = SDE.euler_maruyama(x0, t, 600, rng)
    mean, var = SDE.kernel(x0[:1], t)
    assert xt.mean() == pytest.approx(mean[0, 0], abs=4 * np.sqrt(var / 20000) + 2e-3)
    assert xt.var() == pytest.approx(var, rel=0.04)
    # the printed abar is > 1 here, i.e. the mean would grow: far from the simulation
    assert abs(np.sqrt(SDE.alpha_bar_printed(t)) * 2.0 - xt.mean()) > 1.0


@pytest.mark.parametrize("kind", ["gaussian", "mixture"])
@pytest.mark.parametrize("t", [0.0, 0.3, 0.9])
def test_exact_score_matches_finite_difference_of_log_density(kind, t):
    rng = np.random.default_rng(1)
    p = (_gauss if kind == "gaussian" else _mixture)(5, rng).at(t, SDE)
    x = rng.normal(size=(4, 5)) * 0.7
    h = 1e-5
    fd = np.stack([(p.log_prob(x + h * e) - p.log_prob(x - h * e)) / (2 * h) for e in np.eye(5)], axis=1)
    np.testing.assert_allclose(p.score(x), fd, rtol=1e-6, atol=1e-6)


def test_mixture_score_is_stable_far_from_all_components():
    # logsumexp weights: a point far out still gets a finite score pointing back to the nearest mean.
    p = th.GaussianMixture([0.5, 0.5], [[0.0], [1.0]], [[0.01], [0.01]])
    s = p.score(np.array([[60.0]]))
    assert np.isfinite(s).all() and s[0, 0] == pytest.approx(-(60.0 - 1.0) / 0.01, rel=1e-9)


@pytest.mark.parametrize("dim", [1, 64])
def test_pf_ode_solution_matches_closed_form_for_gaussian_data(dim):
    rng = np.random.default_rng(2)
    p = _gauss(dim, rng)
    x0 = p.sample(8, rng)
    for tp in (0.1, 0.6, 0.95):
        xt, _ = SDE.perturb(x0, tp, rng)
        sol = th.pf_ode_solve(p, xt, tp, 0.0, SDE)
        exact = th.pf_ode_closed_form(p, xt, tp, 0.0, SDE)
        rel = np.linalg.norm(sol.x_end - exact) / np.linalg.norm(exact)
        assert rel < 1e-5
        assert sol.nfev > 0


def test_pf_ode_transports_marginals():
    # PF-ODE from t=1 maps (nearly) N(0, I) samples to the data: mean and variance of p_0 come back.
    rng = np.random.default_rng(3)
    p = th.DiagGaussian([1.5], [0.04])
    x1 = p.at(1.0, SDE).sample(4000, rng)
    x0 = th.pf_ode_solve(p, x1, 1.0, 0.0, SDE, rtol=1e-8, atol=1e-8).x_end
    assert x0.mean() == pytest.approx(1.5, abs=0.02)
    assert x0.var() == pytest.approx(0.04, rel=0.08)


def test_pf_ode_records_path_and_score_norm():
    rng = np.random.default_rng(4)
    p = _mixture(3, rng)
    x = rng.normal(size=(5, 3))
    sol = th.pf_ode_solve(p, x, 0.7, 0.0, SDE, n_grid=11, keep_path=True)
    assert sol.path.shape == (11, 5, 3) and np.allclose(sol.path[0], x) and np.allclose(sol.path[-1], sol.x_end)
    grid_max = np.max([np.linalg.norm(p.at(t, SDE).score(sol.path[i]), axis=1) for i, t in enumerate(sol.t_grid)], axis=0)
    assert np.all(sol.score_norm_max >= grid_max - 1e-12)


def test_kl_of_equal_distributions_is_zero():
    rng = np.random.default_rng(5)
    g, m = _gauss(4, rng), _mixture(1, rng)
    assert th.kl_gaussians(g, g) == 0.0
    val, err = th.kl_quadrature_1d(m, m)
    assert abs(val) < 1e-12 and err < 1e-9
    est, se = th.kl_monte_carlo(m, m, 500, rng)
    assert est == 0.0 and se == 0.0


def test_kl_quadrature_agrees_with_exact_gaussian_kl():
    p, q = th.DiagGaussian([0.3], [0.5]), th.DiagGaussian([-0.4], [1.7])
    exact = 0.5 * (0.5 / 1.7 - 1 - np.log(0.5 / 1.7) + 0.49 / 1.7)
    assert th.kl_gaussians(p, q) == pytest.approx(exact, rel=1e-12)
    assert th.kl_quadrature_1d(p, q)[0] == pytest.approx(exact, rel=1e-9)


def test_kl_decreases_along_forward_process():
    p = th.DiagGaussian([0.0, 0.2], [0.1, 0.3])
    q = th.DiagGaussian([0.5, 0.2], [0.1, 0.6])
    curve = th.kl_along_forward(p, q, np.linspace(0, 1, 21), "shift+scale")
    assert curve.non_increasing() and curve.kl[0] > 1.0 and curve.kl[-1] < 1e-3


def test_theorem2_bounds_values_and_order():
    a, d, C, eta = 0.25, 100, 10.0, 3.0
    # printed Eq. (19): (1 - 0.5) (3 + 10 / 0.25) + sqrt(0.75 * 100 / 0.25)
    assert th.theorem2_bound_printed(a, d, C, eta) == pytest.approx(0.5 * 43 + np.sqrt(300))
    # corrected: sqrt(0.75 * 100 / 0.25) + 10 * 0.5 / 0.5
    assert th.theorem2_bound_corrected(a, d, C) == pytest.approx(np.sqrt(300) + 10.0)
    grid = np.linspace(0.001, 1.0, 50)
    assert np.all(th.theorem2_bound_corrected(grid, d, C) <= th.theorem2_bound_printed(grid, d, C, 0.0) + 1e-12)
    with pytest.raises(ValueError, match="alpha_bar"):
        th.theorem2_bound_corrected(0.0, d, C)


def test_corrected_eq26_identity_holds_and_printed_does_not():
    rng = np.random.default_rng(6)
    p = _gauss(3, rng)
    res_corr, res_print = th.eq26_residuals(p, th.corrupt(p.sample(4, rng), rng), 0.5, rng)
    assert res_corr < 1e-6 and res_print > 1e-2


def test_sdedit_deviation_below_corrected_bound():
    rng = np.random.default_rng(7)
    p = _gauss(16, rng)
    x = th.corrupt(p.sample(64, rng), rng)
    run = th.sdedit_correct(p, x, 0.4, rng)
    a = float(SDE.alpha_bar(0.4))
    # pathwise form of the corrected bound: ||x^(0) - x|| <= sqrt((1-a)/a) ||eps|| + C_i (1 - sqrt a) / sqrt a
    rhs = np.sqrt((1 - a) / a) * np.linalg.norm(run.eps, axis=1) + run.score_norm_max * (1 - np.sqrt(a)) / np.sqrt(a)
    assert np.all(run.deviation <= rhs * (1 + 1e-6))


def test_classify_and_verdict_line():
    assert th.classify(1.0, 0.1, 1.31) == "holds"
    assert th.classify(1.0, 0.1, 0.69) == "violated"
    assert th.classify(1.0, 0.1, 1.1) == "undecided"
    assert th.verdict_line("B", ["holds", "violated", "holds"]) == "B: holds in 2/3 settings; violated in 1/3"


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="t must lie in"):
        SDE.alpha_bar(1.5)
    with pytest.raises(ValueError, match="weights"):
        th.GaussianMixture([0.7, 0.7], [[0.0], [1.0]], [[1.0], [1.0]])
    with pytest.raises(ValueError, match="shape"):
        th.DiagGaussian([0.0, 0.0], [1.0, 1.0]).score(np.zeros((3, 4)))
    with pytest.raises(ValueError, match="Gaussian"):
        th.pf_ode_closed_form(th.GaussianMixture([1.0], [[0.0]], [[1.0]]), np.zeros((1, 1)), 0.5)
    with pytest.raises(ValueError, match="method"):
        th.kl_along_forward(th.DiagGaussian([0.0], [1.0]), th.DiagGaussian([0.0], [1.0]), [0.1], "x", method="bogus")


def test_wasserstein2_of_shifted_cloud_is_shift():
    rng = np.random.default_rng(8)
    a = rng.normal(size=(50, 2))
    assert th.wasserstein2_empirical(a, a + np.array([3.0, 4.0])) == pytest.approx(5.0, rel=1e-9)


def test_theorem3_grid_true_condition_and_wrong_condition():
    rng = np.random.default_rng(9)
    rows = th.theorem3_grid([2], [0.5], [0.0, 1.0], 32, rng)
    same, wrong = rows
    assert same.cond_dist == 0.0 and same.K == 0.0 and same.mean_gap == 0.0
    assert same.mean_dev == pytest.approx(same.mean_dev_true)
    assert wrong.cond_dist == pytest.approx(np.sqrt(2)) and wrong.K > 0 and wrong.mean_gap > 0
    # the corrected bound is never below the true-condition bound it extends
    assert wrong.bound_corrected > th.theorem2_bound_corrected(wrong.alpha_bar, 2, wrong.C)


def test_sdedit_tradeoff_criteria_move_in_opposite_directions():
    rng = np.random.default_rng(10)
    p = th.GaussianMixture([0.5, 0.5], [[-1.0, 0.0], [1.0, 0.0]], np.full((2, 2), 0.01))
    x = th.corrupt(p.sample(100, rng), rng, noise_std=0.3, shift=0.0)
    res = th.sdedit_tradeoff(p, x, [0.1, 0.5, 0.9], rng)
    assert np.all(np.diff(res.mean_dev) > 0)  # criterion 2: further from the start as t' grows
    assert np.all(res.nll < res.nll_start)  # criterion 1: closer to the data than the start
