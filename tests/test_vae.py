"""The video VAE (`portrait_nb.vae`): latent shapes and the T = 1 + 4k rule, training that helps on held-out clips (measured
against the untrained model), save/load round trips (our checkpoints and the diffusers layout of the published Wan 2.1
weights), exact resumption, clear errors on bad input, and the notebook as a papermill run."""
import json
from pathlib import Path
import numpy as np
import papermill as pm
import pytest
import torch
from diffusers import AutoencoderKLWan
from portrait_nb.cameras import n_latent_frames
from portrait_nb.data import PortraitClips
from portrait_nb.synth import generate_dataset
from portrait_nb.vae import (LATENT_CHANNELS, VAE_PRESETS, WAN21_LATENTS_MEAN, WAN21_LATENTS_STD, VideoVAE, make_vae, load_vae,
                             save_vae, set_latent_stats, train_vae, reconstruction_l1, vae_losses, decode_raw, frame_metrics,
                             evaluate_reconstruction, check_video)

ROOT = Path(__file__).resolve().parents[1]
torch.set_num_threads(1)
SIZE = 16   # training and test frames are resized to 16x16 here: the tiny VAE trains in seconds


@pytest.fixture(scope='module')
def tiny(tmp_path_factory):
    "The synthetic `tiny` dataset (32x32, 9 frames), generated once."
    return generate_dataset(tmp_path_factory.mktemp('data') / 'tiny', 'tiny', seed=0, progress=False)


def video(B=1, T=5, H=16, W=16, seed=0):
    return torch.rand(B, 3, T, H, W, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return list(sa) == list(sb) and all(torch.equal(sa[k], sb[k]) for k in sa)


# --- shapes and the 1 + 4k rule ---------------------------------------------------------------------------------------

@pytest.mark.parametrize('T', [1, 5, 9, 13])
def test_latent_shapes_follow_the_strides(T):
    vae = make_vae('tiny').eval()
    with torch.no_grad():
        z = vae.encode(video(2, T, 16, 24))
        y = vae.decode(z)
    assert z.shape == (2, LATENT_CHANNELS, 1 + (T - 1) // 4, 2, 3)
    assert y.shape == (2, 3, T, 16, 24)
    assert y.min() >= -1 and y.max() <= 1


@pytest.mark.parametrize('T', [2, 3, 4, 6, 8, 10])
def test_other_lengths_are_refused(T):
    with pytest.raises(ValueError, match=r'video: expected T = 1 \+ 4k frames .* got T=' + str(T)):
        make_vae('tiny').encode(video(1, T))


def test_the_first_latent_frame_sees_only_the_first_frame():
    "Causality: changing frames 1.. leaves latent frame 0 unchanged; changing frame 0 changes it."
    vae, x = make_vae('tiny').eval(), video(1, 5)
    later, first = x.clone(), x.clone()
    later[:, :, 1:] *= -1; first[:, :, 0] *= -1
    with torch.no_grad(): z, z_later, z_first = vae.encode(x), vae.encode(later), vae.encode(first)
    torch.testing.assert_close(z[:, :, 0], z_later[:, :, 0], atol=1e-5, rtol=0)
    assert (z[:, :, 0] - z_first[:, :, 0]).abs().max() > 1e-3


# --- bad inputs -------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize('bad, message', [
    (torch.zeros(1, 4, 5, 16, 16), r'video: expected 3 channels'),
    (torch.zeros(1, 1, 5, 16, 16), r'video: expected 3 channels'),
    (torch.zeros(1, 3, 5, 20, 16), r'video: expected height and width divisible by 8 .* got 20x16'),
    (torch.zeros(1, 3, 5, 16, 12), r'divisible by 8 .* got 16x12'),
    (torch.full((1, 3, 5, 16, 16), float('nan')), r'video: contains NaN'),
    (torch.full((1, 3, 1, 8, 8), float('inf')), r'video: contains NaN or infinite'),
    (torch.full((1, 3, 1, 8, 8), 255.), r'video: expected values in \[-1, 1\]'),
    (torch.zeros(3, 5, 16, 16), r'video: expected a float tensor \(B, 3, T, H, W\)'),
    (torch.zeros(1, 3, 5, 16, 16, dtype=torch.uint8), r'video: expected a float tensor'),
    (np.zeros((1, 3, 5, 16, 16), np.float32), r'got ndarray'),
])
def test_bad_videos_get_clear_errors(bad, message):
    with pytest.raises(ValueError, match=message): make_vae('tiny').encode(bad)


def test_bad_latents_get_clear_errors():
    vae = make_vae('tiny')
    with pytest.raises(ValueError, match='latents: expected 16 channels'): vae.decode(torch.zeros(1, 4, 2, 2, 2))
    with pytest.raises(ValueError, match='latents: contains NaN'): vae.decode(torch.full((1, 16, 1, 2, 2), float('nan')))
    with pytest.raises(ValueError, match=r"latents: expected a float tensor \(B, 16, T', h, w\)"): vae.decode(torch.zeros(16, 1, 2, 2))


def test_normal_maps_are_checked_by_name():
    with pytest.raises(ValueError, match='normals: expected 3 channels'): check_video(torch.zeros(1, 1, 5, 16, 16), 'normals')


def test_unknown_presets_and_missing_folders(tmp_path):
    with pytest.raises(ValueError, match=r"preset: expected one of \['tiny', 'cpu', 'wan2.1'\]"): make_vae('huge')
    with pytest.raises(FileNotFoundError, match='not a preset'): load_vae(tmp_path / 'nowhere')
    with pytest.raises(FileNotFoundError, match='no VAE here'): load_vae(tmp_path)


# --- presets ----------------------------------------------------------------------------------------------------------

def test_wan21_preset_is_the_published_configuration():
    "Wan 2.1 `_video_vae`: dim=96, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2, attn_scales=[], temperal_downsample=[F, T, T]."
    cfg = VAE_PRESETS['wan2.1']
    assert (cfg['base_dim'], cfg['z_dim'], cfg['dim_mult'], cfg['num_res_blocks'], cfg['attn_scales'], cfg['temperal_downsample']) == \
           (96, 16, [1, 2, 4, 4], 2, [], [False, True, True])
    assert len(WAN21_LATENTS_MEAN) == len(WAN21_LATENTS_STD) == 16 and min(WAN21_LATENTS_STD) > 1
    with torch.device('meta'): n = sum(p.numel() for p in AutoencoderKLWan(**cfg).parameters())
    assert 126e6 < n < 128e6                                                            # Wan 2.1's VAE: 127M parameters


# --- save and load ----------------------------------------------------------------------------------------------------

def test_saved_and_reloaded_weights_give_identical_outputs(tmp_path):
    vae = make_vae('tiny', seed=5).eval()
    set_latent_stats(vae, torch.linspace(-1, 1, 16), torch.linspace(0.5, 2, 16))
    folder = save_vae(vae, tmp_path / 'vae', note='test')
    back = load_vae(folder)
    x = video(2, 9)
    with torch.no_grad():
        assert torch.equal(back.encode(x), vae.encode(x))
        assert torch.equal(back(x), vae(x))
        g = lambda: torch.Generator().manual_seed(1)
        assert torch.equal(back.encode(x, sample=True, generator=g()), vae.encode(x, sample=True, generator=g()))
    assert same_weights(back, vae) and torch.equal(back.latents_std, vae.latents_std)
    assert json.loads((folder / 'vae.json').read_text())['note'] == 'test'
    assert not [p for p in tmp_path.iterdir() if p.name.startswith('.')]               # the temporary folder was renamed


def test_a_diffusers_wan_checkpoint_loads_through_the_same_function(tmp_path):
    "The published weights' layout: <pipeline>/vae/{config.json, diffusion_pytorch_model.safetensors}, written by diffusers itself."
    torch.manual_seed(0)
    wan = AutoencoderKLWan(**{**VAE_PRESETS['tiny'], 'latents_mean': WAN21_LATENTS_MEAN, 'latents_std': WAN21_LATENTS_STD}).eval()
    wan.save_pretrained(tmp_path / 'Wan2.1-T2V-1.3B-Diffusers' / 'vae')
    for path in (tmp_path / 'Wan2.1-T2V-1.3B-Diffusers', tmp_path / 'Wan2.1-T2V-1.3B-Diffusers' / 'vae'):
        vae = load_vae(path)
        x = video(1, 5)
        with torch.no_grad():
            mu = wan.encode(x).latent_dist.mode()
            expected = (mu - torch.tensor(WAN21_LATENTS_MEAN)[:, None, None, None]) / torch.tensor(WAN21_LATENTS_STD)[:, None, None, None]
            torch.testing.assert_close(vae.encode(x), expected)                            # Wan's normalisation, from the config
            torch.testing.assert_close(vae.decode(vae.encode(x)), wan.decode(mu).sample, atol=1e-5, rtol=0)


def test_a_wan22_style_layout_is_refused(tmp_path):
    AutoencoderKLWan(**{**VAE_PRESETS['tiny'], 'z_dim': 48, 'latents_mean': [0.] * 48, 'latents_std': [1.] * 48}).save_pretrained(tmp_path / 'v')
    with pytest.raises(ValueError, match='48 channels'): load_vae(tmp_path / 'v')


# --- training ---------------------------------------------------------------------------------------------------------

def test_decode_raw_is_decode_before_the_clamp():
    vae = make_vae('tiny', seed=1).eval()
    z = torch.randn(1, 16, 2, 2, 2) * 3
    with torch.no_grad(): assert torch.equal(decode_raw(vae.model, z).clamp(-1, 1), vae.model.decode(z).sample)


def test_training_improves_reconstructions_of_held_out_identities(tiny, tmp_path):
    "Train the tiny VAE for 150 steps (16x16 frames, seconds); its reconstruction error on test identities must fall well below the untrained model's."
    held_out = PortraitClips(tiny, n_frames=5, split='test', reference='first', image_size=SIZE)
    untrained = make_vae('tiny', seed=0)
    before = reconstruction_l1(untrained, held_out, n=3)
    vae = make_vae('tiny', seed=0)
    history = train_vae(vae, tiny, steps=150, batch_size=2, lr=3e-3, n_frames=5, image_size=SIZE, seed=0, out_dir=tmp_path / 'run', progress=False)
    after = reconstruction_l1(vae, held_out, n=3)
    assert after < 0.75 * before, (before, after)
    assert history.rec.iloc[-10:].mean() < 0.75 * history.rec.iloc[:10].mean(), history.rec.iloc[::10].tolist()
    trained = load_vae(tmp_path / 'run')                                                # the run folder loads its final model
    assert same_weights(trained, vae) and not torch.equal(trained.latents_std, torch.ones(16))
    frames = evaluate_reconstruction(trained, tiny, n_clips=2, image_size=SIZE)
    assert set(frames.kind) == {'video', 'normals'} and frames.clip_id.str.contains('_test_').all()


def test_training_resumes_exactly(tiny, tmp_path):
    kw = dict(steps=3, batch_size=2, lr=3e-3, n_frames=5, image_size=SIZE, seed=0, ckpt_every=1, progress=False)
    straight = make_vae('tiny', seed=0)
    h1 = train_vae(straight, tiny, out_dir=tmp_path / 'a', **kw)
    train_vae(make_vae('tiny', seed=0), tiny, out_dir=tmp_path / 'b', stop_at=1, **kw)      # interrupted after one step
    resumed = make_vae('tiny', seed=0)
    h2 = train_vae(resumed, tiny, out_dir=tmp_path / 'b', **kw)
    assert same_weights(straight, resumed) and torch.equal(straight.latents_mean, resumed.latents_mean)
    assert h1.drop(columns='seconds').equals(h2.drop(columns='seconds'))
    with pytest.raises(ValueError, match='trained with other arguments'):
        train_vae(make_vae('tiny'), tiny, out_dir=tmp_path / 'b', **{**kw, 'seed': 1})


def test_losses_add_up_and_the_kl_is_the_closed_form():
    vae, x = make_vae('tiny'), video(2, 5)
    post = vae.model.encode(x).latent_dist
    kl = 0.5 * (post.mean ** 2 + post.logvar.exp() - 1 - post.logvar).sum() / x.numel()
    losses = vae_losses(vae, x, torch.Generator().manual_seed(0), kl_weight=0.1, temporal_weight=0.5)
    torch.testing.assert_close(losses['kl'], kl)
    torch.testing.assert_close(losses['loss'], losses['rec'] + 0.1 * losses['kl'] + 0.5 * losses['temporal'])


def test_psnr_of_a_known_error():
    target = torch.rand(3, 5, 16, 16) * 1.6 - 0.8
    psnr, ssim = frame_metrics(target + 0.2, target)                                      # 0.1 in [0, 1]: MSE 0.01, 20 dB
    torch.testing.assert_close(psnr, torch.full((5,), 20.), atol=1e-3, rtol=0)
    torch.testing.assert_close(frame_metrics(target, target)[1], torch.ones(5))


# --- the notebook as a papermill run ----------------------------------------------------------------------------------

def test_the_notebook_trains_through_papermill(tmp_path):
    "The parameters cell defaults to the tiny run; papermill with an out_dir writes checkpoints, the model, metrics and figures."
    run = tmp_path / 'run'
    pm.execute_notebook(ROOT / 'nbs' / '06_vae.ipynb', tmp_path / 'out.ipynb', cwd=ROOT / 'nbs', kernel_name='portrait_nb',
                        parameters=dict(out_dir=str(run), steps=50, eval_clips=2), progress_bar=False)
    assert {'checkpoint', 'vae', 'data', 'metrics.csv', 'frames.csv', 'reconstructions.png', 'frame_psnr.png', 'summary.json'} <= {p.name for p in run.iterdir()}
    summary = json.loads((run / 'summary.json').read_text())
    assert summary['preset'] == 'tiny' and summary['steps'] == 50 and summary['test_clips'] == 2
    assert isinstance(load_vae(run), VideoVAE)
