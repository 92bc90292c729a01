"""`portrait_nb.flow` against independent truths: the shift's odds form and diffusers' own shift, the path's derivative,
the exact velocity field of one data point (every sampler lands on it), diffusers' FlowMatchEulerDiscreteScheduler
(our Euler sampler must agree with it), hand-computed guidance, dropout frequencies, clear errors for bad inputs, and a
tiny DiT that overfits one clip (the loss falls tenfold and the samplers reproduce the clip)."""
import math
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from portrait_nb import flow
from portrait_nb.flow import (add_noise, velocity_target, shift_sigma, sample_sigma, sample_drop_masks, drop_conditions, flow_loss,
                              guided_velocity, guidance_terms, sigma_schedule, sample, SAMPLERS, NUM_TRAIN_TIMESTEPS)

torch.set_num_threads(1)
SHAPE = (2, 16, 3, 4, 4)          # (B, C, T', h, w)


def randn(*shape, seed=0, dtype=torch.float32):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def point_field(x0):
    "The exact velocity of data that is the single point `x0`, derived by hand: x_t = (1-s) x0 + s e, v = e - x0 = (x_t - x0) / s."
    def field(x, t, **cond):
        sig = t / NUM_TRAIN_TIMESTEPS                       # (B,) or (B, T'): one noise level per sample or per frame
        return (x - x0) / (sig[:, None, :, None, None] if sig.ndim == 2 else sig.reshape(-1, 1, 1, 1, 1))
    return field


def smooth_latents(shape, seed):
    z = F.interpolate(randn(shape[0], shape[1], 2, 2, 2, seed=seed), size=shape[2:], mode='trilinear', align_corners=True)
    return (z - z.mean()) / z.std()


COND = dict(reference=torch.zeros(2, 16, 1, 4, 4))


# ---- the path, the target, the shift --------------------------------------------------------------------------------------

def test_shift_is_wans_formula_and_scales_the_noise_odds():
    u = torch.linspace(0.005, 0.995, 199, dtype=torch.float64)
    for s in (0.25, 1., 3., 5., 17.):
        got = shift_sigma(u, s)
        literal = torch.tensor([s * v / (1 + (s - 1) * v) for v in u.tolist()], dtype=torch.float64)   # the definition
        torch.testing.assert_close(got, literal, rtol=1e-12, atol=0)
        torch.testing.assert_close(got / (1 - got), s * u / (1 - u), rtol=1e-9, atol=0)            # odds times s
        torch.testing.assert_close(shift_sigma(got, 1 / s), u, rtol=1e-12, atol=1e-14)             # 1/s undoes it
        assert shift_sigma(0., s) == 0 and shift_sigma(1., s) == 1


def test_shift_matches_diffusers_flow_match_scheduler():
    from diffusers import FlowMatchEulerDiscreteScheduler
    u = torch.linspace(1, 0.02, 12)
    for s in (1., 3., 5.):
        sched = FlowMatchEulerDiscreteScheduler(shift=s)
        sched.set_timesteps(sigmas=u.numpy().copy())
        torch.testing.assert_close(sched.sigmas[:-1], shift_sigma(u, s), rtol=1e-6, atol=1e-7)


def test_velocity_is_the_derivative_of_the_path():
    x0, eps = randn(*SHAPE, seed=1, dtype=torch.float64), randn(*SHAPE, seed=2, dtype=torch.float64)
    for s in (torch.tensor([0.2, 0.8], dtype=torch.float64), torch.rand(2, 3, dtype=torch.float64) * 0.9 + 0.05):
        h = 1e-5
        fd = (add_noise(x0, eps, s + h) - add_noise(x0, eps, s - h)) / (2 * h)
        torch.testing.assert_close(fd, velocity_target(x0, eps), rtol=0, atol=1e-8)
    assert torch.equal(add_noise(x0, eps, 0.), x0) and torch.equal(add_noise(x0, eps, 1.), eps)


def test_timestep_sampling_follows_its_distribution():
    "Logit-normal: P(sigma' <= v) = Phi(logit(shift_{1/s}(v))); checked at a few quantiles on 40k draws."
    sig = sample_sigma(40000, 'logit_normal', 3., torch.Generator().manual_seed(0)).double()
    for v in (0.2, 0.5, 0.8, 0.95):
        u = shift_sigma(v, 1 / 3).item()
        expected = 0.5 * (1 + math.erf(math.log(u / (1 - u)) / math.sqrt(2)))
        assert abs((sig <= v).double().mean().item() - expected) < 0.01
    uni = sample_sigma(40000, 'uniform', 1., torch.Generator().manual_seed(0))
    assert abs(uni.mean().item() - 0.5) < 0.01 and uni.min() >= 0 and uni.max() <= 1


# ---- samplers -----------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize('sampler', SAMPLERS)
@pytest.mark.parametrize('steps,shift', [(1, 1.), (5, 3.), (30, 5.)])
def test_every_sampler_returns_the_single_data_point(sampler, steps, shift):
    x0, eps = randn(*SHAPE, seed=3), randn(*SHAPE, seed=4)
    out = sample(point_field(x0), eps, COND, steps=steps, sampler=sampler, shift=shift, progress=False)
    torch.testing.assert_close(out, x0, rtol=0, atol=1e-4)


def test_euler_stays_on_the_straight_path_of_a_single_point():
    x0, eps, seen = randn(*SHAPE, seed=3), randn(*SHAPE, seed=4), []
    sample(point_field(x0), eps, COND, steps=8, shift=5., progress=False, callback=lambda i, s, x, v: seen.append((s, x.clone())))
    assert len(seen) == 8
    for s, x in seen: torch.testing.assert_close(x, (1 - s) * x0 + s * eps, rtol=0, atol=1e-5)


def test_euler_agrees_with_diffusers_flow_match_euler():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv3d(16, 32, 3, padding=1), nn.GELU(), nn.Conv3d(32, 16, 3, padding=1))
    field = lambda x, t, **c: net(x) * (1 + (t / NUM_TRAIN_TIMESTEPS) ** 2).reshape(-1, 1, 1, 1, 1) - x
    eps = randn(*SHAPE, seed=5)
    for kw in (dict(steps=4, shift=1.), dict(steps=17, shift=5.), dict(sigmas=[0.9, 0.5, 0.45, 0.1, 0.])):
        ours = sample(field, eps, COND, sampler='euler', progress=False, **kw)
        theirs = sample(field, eps, COND, sampler='flow_euler', progress=False, **kw)
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
        assert (ours - eps).abs().mean() > 0.1           # the field moved the sample: the agreement is not trivial


def test_euler_is_first_order_on_gaussian_data():
    "x0 ~ N(m, s^2): the exact flow maps noise e to m + s e; Euler's error halves when the steps double."
    m, s, eps = randn(1, 16, 3, 4, 4, seed=6, dtype=torch.float64), 0.3 + torch.rand(1, 16, 3, 4, 4, dtype=torch.float64), randn(1, 16, 3, 4, 4, seed=7, dtype=torch.float64)
    def field(x, t, **c):      # E[e - x0 | x_t], written out independently of flow.GaussianVelocity
        sig = t.reshape(-1, 1, 1, 1, 1).double() / NUM_TRAIN_TIMESTEPS
        a = 1 - sig
        x0_hat = m + a * s ** 2 / (a ** 2 * s ** 2 + sig ** 2) * (x - a * m)
        return (x - x0_hat) / sig
    errs = [(sample(field, eps, COND, steps=n, shift=1., progress=False) - (m + s * eps)).norm().item() for n in (8, 16, 32, 64)]
    for e1, e2 in zip(errs, errs[1:]): assert 1.7 < e1 / e2 < 2.3, errs
    unipc = (sample(field, eps, COND, steps=32, sampler='unipc', shift=1., progress=False) - (m + s * eps)).norm().item()
    assert unipc < errs[2] / 5
    torch.testing.assert_close(flow.GaussianVelocity(m, s)(eps, torch.tensor([700.])), field(eps, torch.tensor([700.])), rtol=1e-5, atol=1e-6)


def test_sample_is_deterministic_with_a_generator():
    field = point_field(randn(*SHAPE, seed=8))
    a, b = (sample(field, SHAPE, COND, steps=3, generator=torch.Generator().manual_seed(9), progress=False) for _ in range(2))
    c = sample(field, SHAPE, COND, steps=3, generator=torch.Generator().manual_seed(10), progress=False)
    assert torch.equal(a, b)
    # a single point's field ends at the point whatever the noise; the noise itself must differ
    assert not torch.equal(flow.initial_noise(SHAPE, torch.Generator().manual_seed(9)), flow.initial_noise(SHAPE, torch.Generator().manual_seed(10)))
    torch.testing.assert_close(a, c, rtol=0, atol=1e-4)


# ---- loss, dropout, guidance ------------------------------------------------------------------------------------------

def test_loss_is_zero_for_the_exact_field_and_known_for_a_wrong_one():
    x0 = randn(*SHAPE, seed=11, dtype=torch.float64)
    batch = dict(latents=x0, reference=randn(2, 16, 1, 4, 4, dtype=torch.float64))
    for kw in ({}, dict(per_frame=True), dict(mode='uniform', p_drop_reference=0.5, p_drop_expression=0.5)):
        loss, info = flow_loss(point_field(x0), batch, torch.Generator().manual_seed(0), **kw)
        assert loss.item() < 1e-20
    assert info['sigma'].shape == (2,) and info['loss_per_sample'].shape == (2,)
    # the field of the point 0 at sigma: v = x_t / sigma, target e - x0, so v - target = x0 (1 - sigma) / sigma + x0 = x0 / sigma
    loss, _ = flow_loss(point_field(torch.zeros_like(x0)), batch, sigma=torch.tensor([0.25, 0.5], dtype=torch.float64))
    expected = ((x0[0] / 0.25).square().mean() + (x0[1] / 0.5).square().mean()) / 2
    torch.testing.assert_close(loss, expected, rtol=1e-10, atol=0)


def test_per_frame_sigma_reaches_the_model_and_the_noise():
    x0, seen = randn(*SHAPE, seed=12), {}
    def model(x, t, **c):
        seen['t'] = t
        return torch.zeros_like(x)
    sig = torch.tensor([[0., 0.5, 1.], [1., 1., 0.]])
    loss, info = flow_loss(model, dict(latents=x0, reference=torch.zeros(2, 16, 1, 4, 4)), sigma=sig)
    torch.testing.assert_close(seen['t'], NUM_TRAIN_TIMESTEPS * sig)
    assert flow_loss(model, dict(latents=x0, reference=COND['reference']), per_frame=True)[1]['sigma'].shape == (2, 3)


def test_dropout_frequencies_and_zeroing():
    drop = sample_drop_masks(20000, 0.2, 0.05, torch.Generator().manual_seed(0))
    assert abs(drop['expression'].float().mean() - 0.2) < 0.01 and abs(drop['reference'].float().mean() - 0.05) < 0.005
    cond = dict(reference=torch.ones(3, 16, 1, 4, 4), expression=torch.ones(3, 9, 128), landmarks=torch.ones(3, 9, 68, 2),
                normals=torch.ones(3, 16, 3, 4, 4))
    out = drop_conditions(cond, {'expression': torch.tensor([True, False, True]), 'reference': torch.tensor([False, False, True])})
    assert out['expression'].flatten(1).any(1).tolist() == [False, True, False]
    assert out['landmarks'].flatten(1).any(1).tolist() == [False, True, False]           # the C3 variant's expression condition
    assert out['reference'].flatten(1).any(1).tolist() == [True, True, False]
    assert torch.equal(out['normals'], cond['normals']) and cond['expression'].all()        # others and the input untouched


def test_training_dropout_reaches_the_model():
    x0, seen = randn(8, 16, 3, 4, 4, seed=13), []
    def model(x, t, *, reference, expression=None, **c):
        seen.append((reference.flatten(1).any(1), expression.flatten(1).any(1)))
        return torch.zeros_like(x)
    batch = dict(latents=x0, reference=torch.ones(8, 16, 1, 4, 4), expression=torch.ones(8, 9, 128))
    _, info = flow_loss(model, batch, torch.Generator().manual_seed(1), p_drop_expression=0.5, p_drop_reference=0.5)
    ref_kept, expr_kept = seen[0]
    assert torch.equal(ref_kept, ~info['drop_reference']) and torch.equal(expr_kept, ~info['drop_expression'])
    assert 0 < info['drop_reference'].sum() < 8


@pytest.mark.parametrize('w_r,w_e', [(1., 1.), (1., 4.), (2.5, 4.), (3., 3.), (0., 0.), (0.5, -1.)])
def test_guidance_is_the_nested_formula(w_r, w_e):
    torch.manual_seed(0)
    a, b, c = (torch.randn(2, 16, 3, 4, 4) for _ in range(3))
    def model(x, t, *, reference, expression=None, **cond):        # a different velocity for each set of conditions
        r, e = reference.flatten(1).any(1).float().reshape(-1, 1, 1, 1, 1), expression.flatten(1).any(1).float().reshape(-1, 1, 1, 1, 1)
        return x + a + r * b + r * e * c
    x = torch.randn(*SHAPE)
    cond = dict(reference=torch.ones(2, 16, 1, 4, 4), expression=torch.ones(2, 9, 128))
    v00, vr0, vre = x + a, x + a + b, x + a + b + c
    expected = v00 + w_r * (vr0 - v00) + w_e * (vre - vr0)
    torch.testing.assert_close(guided_velocity(model, x, 0.3, cond, {'reference': w_r, 'expression': w_e}), expected)
    assert len(guidance_terms({'reference': w_r, 'expression': w_e})) == (w_r != 1) + (w_r != w_e) + (w_e != 0)


# ---- bad inputs ---------------------------------------------------------------------------------------------------------

def test_bad_inputs_get_clear_errors():
    x0, eps = randn(*SHAPE), randn(*SHAPE, seed=1)
    batch = dict(latents=x0, reference=torch.zeros(2, 16, 1, 4, 4))
    cases = [
        (lambda: add_noise(x0, eps[:, :, :2], 0.5), "noise: expected the shape of x0 (2, 16, 3, 4, 4), got (2, 16, 2, 4, 4)"),
        (lambda: add_noise(x0, eps, 1.5), "sigma: expected noise levels in [0, 1], got [1.5]"),
        (lambda: add_noise(x0, eps, torch.tensor([-0.1, 0.5])), "sigma: expected noise levels in [0, 1], got [-0.1"),
        (lambda: add_noise(x0, eps, float('nan')), "sigma: expected noise levels in [0, 1], got [nan]"),
        (lambda: add_noise(x0, eps, torch.rand(3)), "sigma: expected a number, (B,) = (2,) or (B, T') = (2, 3)"),
        (lambda: velocity_target(x0, eps[0]), "noise: expected the shape of x0"),
        (lambda: shift_sigma(0.5, -2.), "shift: expected a positive finite number, got -2.0"),
        (lambda: sample_sigma(4, 'beta'), "mode: expected one of ('logit_normal', 'uniform'), got 'beta'"),
        (lambda: sample_drop_masks(4, p_drop_expression=-0.1), "p_drop_expression: expected a probability in [0, 1]"),
        (lambda: flow_loss(point_field(x0), dict(x=x0)), "batch: expected a 'latents' entry"),
        (lambda: flow_loss(point_field(x0), dict(latents=x0[0], reference=batch['reference'])), "batch['latents']: expected (B, C, T', h, w)"),
        (lambda: flow_loss(point_field(x0), batch, sigma=torch.tensor([0.5, 2.])), "sigma: expected noise levels in [0, 1], got [2.0]"),
        (lambda: flow_loss(lambda x, t, **c: x[:, :, 1:], batch), "model output: expected a velocity of the latents' shape (2, 16, 3, 4, 4)"),
        (lambda: sample(point_field(x0), eps, COND, sampler='ddpm'), "sampler: expected one of ('euler', 'unipc', 'flow_euler'), got 'ddpm'"),
        (lambda: sample(point_field(x0), eps, COND, steps=0), "steps: expected a positive integer, got 0"),
        (lambda: sample(point_field(x0), eps, COND, sigmas=[1., 0.5, 0.7, 0.]), "sigmas: expected a strictly decreasing"),
        (lambda: sample(point_field(x0), eps, COND, sigmas=[1., 0.5]), "ending at 0"),
        (lambda: sample(point_field(x0), eps, COND, guidance={'camera': 2.}), "guidance: expected keys from ('reference', 'expression')"),
        (lambda: sample(point_field(x0), eps, COND, guidance={'expression': 2.}), "guidance: 'expression' has weight 2.0 but cond has none of"),
    ]
    for fn, message in cases:
        with pytest.raises(ValueError) as e: fn()
        assert message in str(e.value), (message, str(e.value))


# ---- the tiny overfit ---------------------------------------------------------------------------------------------------

def test_tiny_dit_overfits_one_clip_and_the_samplers_reproduce_it():
    from portrait_nb.dit import FactorDiT, dit_config
    clip = smooth_latents((1, 16, 3, 4, 4), seed=0)
    cond = dict(reference=smooth_latents((1, 16, 1, 4, 4), seed=1), expression=randn(1, 9, 128, seed=2))
    torch.manual_seed(0)
    model = FactorDiT(dit_config('tiny', dim=128, ffn_dim=256))     # the tiny preset's width 32 < a patch's 64 numbers
    noise = randn(4, 16, 3, 4, 4, seed=10)
    cond4 = {k: v.expand(4, *v.shape[1:]) for k, v in cond.items()}
    rel = lambda out: ((out - clip).square().mean() / clip.square().mean()).sqrt().item()
    before = rel(sample(model, noise, cond4, steps=10, shift=3., progress=False))
    steps, g = 400, torch.Generator().manual_seed(0)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: 0.5 * (1 + math.cos(math.pi * i / steps)))
    batch, losses = dict(latents=clip.expand(4, -1, -1, -1, -1), **cond4), []
    for _ in range(steps):
        loss, _ = flow_loss(model, batch, g, shift=3.)
        opt.zero_grad(); loss.backward(); opt.step(); sched.step(); losses.append(loss.item())
    first, last = sum(losses[:20]) / 20, sum(losses[-20:]) / 20
    assert last < first / 10, (first, last)
    assert before > 0.9                                              # untrained: nowhere near the clip
    for sampler in SAMPLERS:
        assert rel(sample(model, noise, cond4, steps=20, sampler=sampler, shift=3., progress=False)) < 0.2, sampler
