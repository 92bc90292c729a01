"""`portrait_nb.dit` as the rest of the project uses it: output shapes at every preset and variant (on the `meta` device,
so the 14 B model allocates nothing), zero-initialised conditions, the frame-local effect of an expression code, the same
outputs as diffusers' `WanTransformer3DModel`, checkpoint round trips in three formats (ours, Wan 2.1's original names,
diffusers' names, folders and shards, checked against diffusers' own original-to-diffusers converter), clear errors for
bad inputs, gradients through the zero-initialised condition paths, activation checkpointing and mixed precision."""
import json
import pytest
import torch
import torch.nn as nn
from portrait_nb.cameras import pack_rays, plucker_rays, spin_trajectory, n_latent_frames
from portrait_nb.dit import (DIT_PRESETS, EXPR_DIM, N_LANDMARKS, RAY_CHANNELS, GUIDANCE_CHANNELS, FactorDiT, dit_config,
                             frame_timesteps, load_pretrained, load_checkpoint, save_checkpoint, diffusers_config, read_safetensors)

diffusers = pytest.importorskip('diffusers')
torch.set_num_threads(2)


class StandInLandmarkEncoder(nn.Module):
    "The documented shapes of `portrait_nb.expression.LandmarkEncoder`: `(B, T, 68, 2)` → `(B, T, 68, dim)`."
    def __init__(self, dim=64):
        super().__init__(); self.proj = nn.Linear(2, dim)
    def forward(self, lmk): return self.proj(lmk)


def build(preset='tiny', variant='full', stand_in=False, **kw):
    "A model; C3 with the real landmark encoder when `portrait_nb.expression` exists (and not `stand_in`), a stand-in with its shapes otherwise."
    c = dit_config(preset, variant, **kw)
    if c.expression != 'landmarks': return FactorDiT(c)
    try:
        if not stand_in: return FactorDiT(c)
    except ImportError: pass
    return FactorDiT(c, landmark_encoder=StandInLandmarkEncoder(c.landmark_dim))


def randomize_(model, seed=0, std=0.1):
    "Every parameter from N(0, std²): a stand-in for trained weights."
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters(): p.copy_(torch.randn(p.shape, generator=g) * std)
    return model


def inputs(B=1, T=9, H=32, W=48, seed=0, variant='full'):
    "Inputs with the contract's shapes: rays from a spin trajectory, packed to the latent grid."
    g, Tl, h, w = torch.Generator().manual_seed(seed), n_latent_frames(T), H // 8, W // 8
    out = dict(x=torch.randn(B, 16, Tl, h, w, generator=g), timestep=torch.rand(B, generator=g) * 1000,
               reference=torch.randn(B, 16, 1, h, w, generator=g))
    c = dit_config('tiny', variant)
    if c.use_normals: out['normals'] = torch.randn(B, 16, Tl, h, w, generator=g)
    if c.use_rays:
        c2w, K = spin_trajectory(T, seed=seed, image_size=(H, W))
        out['rays'] = pack_rays(plucker_rays(c2w, K, H, W))[None].expand(B, -1, -1, -1, -1)
    if c.expression == 'controller': out['expression'] = torch.randn(B, T, EXPR_DIM, generator=g)
    if c.expression == 'landmarks': out['landmarks'] = torch.rand(B, T, N_LANDMARKS, 2, generator=g) * H
    if c.guidance: out['guidance'] = {n: torch.rand(B, ch, T, H, W, generator=g) for n, ch in GUIDANCE_CHANNELS.items()}
    return out


def velocity_diffusers(d, model, x, timestep, reference):
    "diffusers' output for our inputs: reference prepended as frame 0, our learned context as the text, frame 0 dropped."
    B, (h, w), (_, ph, pw) = x.shape[0], x.shape[3:], model.config.patch_size
    t = frame_timesteps(timestep, B, x.shape[2], model.config.reference_timestep)
    t = t[:, 0] if timestep.ndim == 1 else t.repeat_interleave(h * w // (ph * pw), 1)
    return d(torch.cat([reference, x], 2), t, model.context[None].expand(B, -1, -1), return_dict=False)[0][:, :, 1:]


@pytest.mark.parametrize('preset', list(DIT_PRESETS))
@pytest.mark.parametrize('variant', ['full', 'C3', 'magicportrait'])
def test_shapes_meta(preset, variant):
    "Every preset and variant at a 480p-like size (81 frames, 480x832: 21x30x52 tokens plus the reference), without weights."
    T, H, W = 81, 480, 832
    Tl, h, w = n_latent_frames(T), H // 8, W // 8
    c = dit_config(preset, variant)
    with torch.device('meta'):
        m = build(preset, variant, stand_in=True)      # the real landmark encoder checks values, which meta tensors do not have
        inp = dict(x=torch.empty(1, 16, Tl, h, w), timestep=torch.empty(1), reference=torch.empty(1, 16, 1, h, w))
        if c.use_normals: inp['normals'] = torch.empty(1, 16, Tl, h, w)
        if c.use_rays: inp['rays'] = torch.empty(1, RAY_CHANNELS, Tl, h, w)
        if c.expression == 'controller': inp['expression'] = torch.empty(1, T, EXPR_DIM)
        if c.expression == 'landmarks': inp['landmarks'] = torch.empty(1, T, N_LANDMARKS, 2)
        if c.guidance: inp['guidance'] = {n: torch.empty(1, ch, T, H, W) for n, ch in GUIDANCE_CHANNELS.items()}
        out = m(**inp)
    assert out.shape == (1, 16, 21, 60, 104) and out.device.type == 'meta'


def test_backbone_parameter_counts_match_diffusers():
    for p in ('wan2.1-1.3b', 'wan2.1-14b'):
        with torch.device('meta'):
            ours, theirs = FactorDiT(dit_config(p, 'wan')), diffusers.WanTransformer3DModel(**diffusers_config(DIT_PRESETS[p]))
        n = lambda m: sum(x.numel() for x in m.parameters())
        assert n(ours) - ours.context.numel() == n(theirs)


@pytest.mark.parametrize('variant', ['full', 'C2', 'C3', 'magicportrait'])
def test_zero_init_conditions_leave_output_unchanged(variant):
    m = randomize_(build('tiny', variant)); m.zero_init_conditions()
    inp = inputs(B=2, variant=variant)
    base = {k: inp[k] for k in ('x', 'timestep', 'reference')}
    with torch.no_grad():
        y, y0 = m(**inp), m(**base)
        assert torch.equal(y, y0) and y.abs().mean() > 0.1
        for mod in m.condition_outputs(): nn.init.normal_(mod.weight, std=0.1)
        m.patch_embedding.weight[:, 16:].normal_(0, 0.1)
        assert (m(**inp) - m(**base)).abs().mean() > 1e-3


def test_zero_init_paths_still_learn():
    "Zero-initialised condition layers get non-zero gradients, so training can open them."
    m = randomize_(build('tiny')); m.zero_init_conditions()
    m(**inputs()).square().mean().backward()
    assert m.controller.proj.weight.grad.abs().sum() > 0
    assert m.patch_embedding.weight.grad[:, 16:32].abs().sum() > 0 and m.patch_embedding.weight.grad[:, 32:].abs().sum() > 0


def test_expression_code_changes_only_its_latent_frames():
    "Pixel frame 6 is in latent frame 2 (frames 5-8), token frame 3 after the reference; checked at the first block's modulation."
    m = randomize_(build('tiny'), seed=1)
    with torch.no_grad():
        for layer in m.controller.layers: layer.self_attn.out_proj.weight.zero_(); layer.self_attn.out_proj.bias.zero_()
    codes = torch.randn(1, 17, EXPR_DIM); codes2 = codes.clone(); codes2[:, 6] += 1.
    mod = lambda c: m.blocks[0].modulation + m.frame_embedding(torch.tensor([500.]), 1, 5, c)[1]
    with torch.no_grad(): changed = (mod(codes) - mod(codes2)).abs().amax((-1, -2))[0] > 0
    assert changed.tolist() == [False, False, False, True, False, False]


@pytest.mark.parametrize('per_frame', [False, True])
def test_matches_diffusers(per_frame):
    "Conditions and controller switched off: the same output as diffusers' WanTransformer3DModel with the same weights."
    m = randomize_(FactorDiT(dit_config('tiny', 'wan')), seed=2)
    d = m.to_diffusers()
    inp = inputs(B=2, T=9, H=48, W=64, seed=3, variant='wan')
    t = torch.tensor([[100., 300., 900.], [0., 500., 1000.]]) if per_frame else torch.tensor([250., 937.])
    with torch.no_grad():
        ours, theirs = m(inp['x'], t, reference=inp['reference']), velocity_diffusers(d, m, inp['x'], t, inp['reference'])
    assert theirs.abs().max() > 1 and (ours - theirs).abs().max() < 1e-4


def test_full_model_matches_diffusers_after_loading_its_checkpoint(tmp_path):
    "A diffusers checkpoint (save_pretrained, sharded) loads into the full model, which then ignores its zero-initialised conditions."
    d = randomize_(diffusers.WanTransformer3DModel(**diffusers_config(DIT_PRESETS['tiny'])), seed=5)
    d.save_pretrained(tmp_path / 'wan', max_shard_size='40KB')
    assert len(list((tmp_path / 'wan').glob('*.safetensors'))) > 1
    m = load_pretrained(tmp_path / 'wan', 'tiny')
    inp = inputs(B=2)
    with torch.no_grad():
        assert (m(**inp) - velocity_diffusers(d, m, inp['x'], inp['timestep'], inp['reference'])).abs().max() < 1e-4


def test_checkpoint_heads_checked_against_config_json(tmp_path):
    d = diffusers.WanTransformer3DModel(**diffusers_config(DIT_PRESETS['tiny']))
    d.save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / 'config.json').read_text()) | {'num_attention_heads': 4, 'attention_head_dim': 8}
    (tmp_path / 'config.json').write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match='config: the checkpoint has 4 heads, the model 2'): load_pretrained(tmp_path, 'tiny')


def test_roundtrip_ours(tmp_path):
    m = randomize_(build('tiny'))
    m2 = load_checkpoint(save_checkpoint(m, tmp_path / 'm.safetensors'))
    assert m2.config == m.config and [p.name for p in tmp_path.iterdir()] == ['m.safetensors']
    assert all(torch.equal(a, b) for a, b in zip(m.state_dict().values(), m2.state_dict().values()))
    inp = inputs()
    with torch.no_grad(): assert torch.equal(m(**inp), m2(**inp))
    with pytest.raises(ValueError, match='not a portrait_nb.dit checkpoint'):
        from safetensors.torch import save_file
        save_file(m.wan_state_dict(), tmp_path / 'wan.safetensors'); load_checkpoint(tmp_path / 'wan.safetensors')


def test_roundtrip_wan_original_names(tmp_path):
    "Our Wan-format export loads back, and diffusers' own converter from Wan's original names accepts it unchanged."
    from safetensors.torch import save_file
    from diffusers.loaders.single_file_utils import convert_wan_transformer_to_diffusers
    m = randomize_(build('tiny'), seed=6)
    save_file(m.wan_state_dict(), tmp_path / 'wan.safetensors')
    m2 = load_pretrained(tmp_path / 'wan.safetensors', 'tiny')
    sd_ours = {k: v for k, v in m.state_dict().items() if k in m.wan_state_dict() and k != 'patch_embedding.weight'}
    assert all(torch.equal(v, m2.state_dict()[k]) for k, v in sd_ours.items())
    assert torch.equal(m2.patch_embedding.weight[:, :16], m.patch_embedding.weight[:, :16])
    assert m2.patch_embedding.weight[:, 16:].abs().sum() == 0 and m2.controller.proj.weight.abs().sum() == 0
    d = diffusers.WanTransformer3DModel(**diffusers_config(m.config))
    d.load_state_dict(convert_wan_transformer_to_diffusers(dict(read_safetensors(tmp_path / 'wan.safetensors')[0])), strict=True)
    m2.context.data.copy_(m.context)
    inp = inputs(B=2, variant='wan')
    with torch.no_grad():
        assert (m2(**inp) - velocity_diffusers(d, m2, inp['x'], inp['timestep'], inp['reference'])).abs().max() < 1e-4


def test_roundtrip_diffusers_names():
    m = randomize_(FactorDiT(dit_config('tiny', 'wan')), seed=7)
    d = diffusers.WanTransformer3DModel(**diffusers_config(m.config))
    d.load_state_dict(m.diffusers_state_dict(), strict=True)
    m2 = FactorDiT(dit_config('tiny', 'wan')).load_backbone(d.state_dict())
    m2.context.data.copy_(m.context)
    assert all(torch.equal(a, b) for a, b in zip(m.state_dict().values(), m2.state_dict().values()))
    with pytest.raises(ValueError, match="unexpected \\['blocks.0.attn2.add_k_proj.weight'\\]"):
        FactorDiT(dit_config('tiny', 'wan')).load_backbone(d.state_dict() | {'blocks.0.attn2.add_k_proj.weight': torch.zeros(1)})


BAD = [(dict(reference=None), 'reference: the reference latent (B, 16, 1, h, w) is required'),
       (dict(reference=torch.zeros(1, 16, 1, 4, 4)), 'reference: expected shape (1, 16, 1, 4, 6)'),
       (dict(expression=torch.zeros(1, 8, EXPR_DIM)), 'expression: expected T = 1 + 4k frames'),
       (dict(expression=torch.zeros(1, 5, EXPR_DIM)), "expression: expected T = 1 + 4(T'-1) = 9 frames for the latents' T'=3, got 5"),
       (dict(expression=torch.zeros(1, 9, 64)), 'expression: expected shape (1, 9, 128)'),
       (dict(normals=torch.zeros(1, 16, 2, 4, 6)), 'normals: expected shape (1, 16, 3, 4, 6)'),
       (dict(rays=torch.zeros(1, 6, 3, 4, 6)), 'rays: expected shape (1, 1536, 3, 4, 6) (cameras.pack_rays)'),
       (dict(x=torch.zeros(1, 16, 3, 4, 5)), 'x: expected h, w divisible by the patch (2, 2), got 4x5'),
       (dict(timestep=torch.zeros(1, 2)), "timestep: expected (B,) = (1,) or (B, T') = (1, 3), got (1, 2)"),
       (dict(landmarks=torch.zeros(1, 9, N_LANDMARKS, 2)), 'landmarks: this model was built without it'),
       (dict(context=torch.zeros(1, 4, 7)), 'context: expected shape (1, 4, 32)')]


@pytest.mark.parametrize('change,message', BAD)
def test_bad_inputs(change, message):
    m = build('tiny')
    with pytest.raises(ValueError) as e: m(**(inputs() | change))
    assert message in str(e.value)


def test_ablation_c2_refuses_normals():
    with pytest.raises(ValueError, match='normals: this model was built without it'):
        build('tiny', 'C2')(**inputs())


def test_bad_configs():
    with pytest.raises(ValueError, match='dim: expected a multiple of num_heads'): dit_config(dim=30, num_heads=4)
    with pytest.raises(ValueError, match='patch_size: expected'): dit_config(patch_size=(2, 2, 2))
    with pytest.raises(ValueError, match='guidance: unknown condition maps'): dit_config(guidance=('albedo',))
    with pytest.raises(ValueError, match="variant: expected one of"): dit_config('tiny', 'C9')


def test_gradient_checkpointing_gives_the_same_gradients():
    inp = inputs(B=2)
    grads = []
    for ckpt in (False, True):
        m = randomize_(build('tiny'), seed=8); m.gradient_checkpointing = ckpt
        m(**inp).square().mean().backward()
        grads.append(torch.cat([p.grad.flatten() for p in m.parameters() if p.grad is not None]))
    assert torch.allclose(grads[0], grads[1], atol=1e-6)


def test_mixed_precision():
    "bf16 autocast stays close to float32; a model cast to bf16 runs and returns float32."
    m = randomize_(build('tiny'), seed=9)
    inp = inputs(B=2)
    with torch.no_grad():
        y = m(**inp)
        with torch.autocast('cpu', dtype=torch.bfloat16): yb = m(**inp)
        assert yb.dtype == torch.float32 and (yb - y).abs().mean() < 0.05 * y.abs().mean()
        y16 = m.to(torch.bfloat16)(**inp)
        assert y16.dtype == torch.float32 and (y16 - y).abs().mean() < 0.1 * y.abs().mean()


def test_benchmark_script_runs(tmp_path):
    "benchmarks/dit_bench.py end to end at the tiny preset (eager, one round, with activation checkpointing): it writes its table."
    import importlib.util
    from pathlib import Path
    spec = importlib.util.spec_from_file_location('dit_bench', Path(__file__).resolve().parents[1] / 'benchmarks' / 'dit_bench.py')
    bench = importlib.util.module_from_spec(spec); spec.loader.exec_module(bench)
    df = bench.main(['--preset', 'tiny', '--no-compile', '--repeats', '2', '--checkpointing', '--frames', '5', '--size', '32', '32',
                     '--out', str(tmp_path / 'bench.csv')])
    assert (tmp_path / 'bench.csv').is_file() and len(df) == 5
    assert set(df.model) == {'ours', 'diffusers'} and (df.step_tflop > 0).all() and (df.peak_mem_mb > 0).all()
    assert bench.gpu_peak_tflops('NVIDIA H100 80GB HBM3') == 989.4 and bench.gpu_peak_tflops('NVIDIA GeForce GTX 1080') is None
