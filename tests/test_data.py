"""The training data loader (`portrait_nb.data`) on a tiny generated dataset: round trip against the generator's ground
truth, cameras and rays, corrupt files (each error names the file), the regime mixture, worker determinism."""
import shutil
from pathlib import Path
import numpy as np
import pandas as pd
import pytest
import torch
from einops import rearrange
from portrait_nb.cameras import plucker_rays, project_points, relative_to
from portrait_nb.data import (PortraitClips, RegimeMixtureSampler, STAGE_MIXTURES, NO_DYNAMICSWEEP_MIXTURE, SAMPLE_KEYS,
                              make_loader, set_epoch, read_index, validate_dataset, crop_frames, pixel_at)
from portrait_nb.viz import read_video, write_video
from portrait_nb.synth import generate_dataset, background_image, get_config

torch.set_num_threads(1)
T = 9   # frames per sample: the tiny preset's clips have 9


@pytest.fixture(scope='session')
def tiny(tmp_path_factory):
    "The tiny preset, generated once per test session."
    return generate_dataset(tmp_path_factory.mktemp('data') / 'tiny', 'tiny', seed=0, progress=False)


@pytest.fixture
def broken(tiny, tmp_path):
    "A scratch copy of the tiny dataset to damage, and its index."
    root = Path(shutil.copytree(tiny, tmp_path / 'tiny'))
    return root, read_index(root)


def background(root, clip_path):
    "The clip's background colour (the top of the generator's vertical gradient)."
    with np.load(Path(root) / clip_path / 'meta.npz') as z: return z['background'].astype(np.float32)


def on_face(sample, colour, landmarks=None) -> float:
    "Fraction of visible landmarks whose pixel in the decoded video differs from the generator's background there."
    lm = sample['landmarks'] if landmarks is None else landmarks
    video = rearrange(sample['video'], 'c t h w -> t c h w')                              # (T, 3, H, W) in [-1, 1]
    bg = background_image(colour, *video.shape[-2:]).expand_as(video)
    return ((pixel_at(video, lm) - pixel_at(bg, lm)).abs().amax(-1) > 0.1)[sample['landmarks_visible']].float().mean().item()


# --- round trip -------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize('image_size', [None, 64])
def test_ground_truth_landmarks_land_on_the_rendered_face(tiny, image_size):
    scores = []
    for split in ('train', 'test', 'cross'):
        ds = PortraitClips(tiny, n_frames=T, split=split, reference='first', image_size=image_size)
        for i in range(len(ds)):
            s, bg = ds[i], background(tiny, ds.clips.path[i])
            assert s['landmarks_visible'].float().mean() > 0.4, s['clip_id']
            W = s['video'].shape[-1]
            # the check can fail: the same landmarks half an image to the side land on the background
            scores.append((on_face(s, bg), on_face(s, bg, s['landmarks'] + torch.tensor([W / 2, 0.]))))
    hit, aside = np.array(scores).T
    assert hit.min() > 0.85 and hit.mean() > 0.95, hit         # edge landmarks of a 32 px face (side views) may fall on a blended pixel
    assert aside.max() < 0.5 and aside.mean() < 0.2, aside


def test_landmarks_are_the_head_models_landmarks_seen_by_the_samples_cameras(tiny):
    """The per-frame arrays stay aligned through crop and resize: the head model's 3D landmarks for the sample's
    parameters, projected with the sample's (rescaled) cameras, are the sample's landmarks."""
    from portrait_nb.head import HeadModel
    ds = PortraitClips(tiny, n_frames=5, stride=2, image_size=48, reference='first')
    s = ds[0]
    cfg = get_config('tiny')                                                              # which head model made the data
    head = HeadModel(resolution=cfg.head_resolution, n_shape=s['shape'].shape[-1], n_expr=s['expression'].shape[-1])
    with torch.no_grad():
        X = head(s['shape'].expand(5, -1), s['expression'], s['pose'], s['translation']).landmarks   # (T, 68, 3)
    uv, _ = project_points(X, s['c2w'], s['K'])                                           # pixels at 48 x 48
    assert (uv - s['landmarks']).norm(dim=-1).max() < 0.01
    # and a frame's parameters with another frame's camera do not fit: the check can fail
    assert (project_points(X, s['c2w'].roll(1, 0), s['K'])[0] - s['landmarks']).norm(dim=-1).max() > 0.5


def test_sample_is_the_clip_files_crop(tiny):
    ds = PortraitClips(tiny, n_frames=T - 4, stride=(1, 2))
    assert list(ds[0]) == list(SAMPLE_KEYS)
    for i in (0, len(ds) - 1):
        s, row = ds[i], ds.clips.iloc[i]
        frames = crop_frames(row.n_frames, T - 4, ds.strides, ds.rng(i))
        video = read_video(tiny / row.path / 'rgb.mp4')[:, :, :row.height, :row.width]
        assert torch.equal(s['video'], video[:, frames])
        with np.load(tiny / row.path / 'meta.npz') as z:
            for k in ('c2w', 'K', 'landmarks', 'expression', 'pose', 'translation'):
                assert torch.equal(s[k], torch.from_numpy(z[k][frames])), k
            assert torch.equal(s['shape'], torch.from_numpy(z['shape']))
            assert s['identity'] == int(z['identity']) and s['regime'] == str(z['regime']) and s['clip_id'] == str(z['clip_id'])


def test_resize_rescales_intrinsics_and_landmarks(tiny):
    native, big = PortraitClips(tiny, n_frames=T), PortraitClips(tiny, n_frames=T, image_size=(64, 48))
    a, b = native[2], big[2]
    H, W = a['video'].shape[-2:]
    sx, sy = 48 / W, 64 / H
    assert b['video'].shape == (3, T, 64, 48) and b['rays'].shape == (6, T, 64, 48) and b['reference'].shape == (3, 64, 48)
    torch.testing.assert_close(b['landmarks'], a['landmarks'] * torch.tensor([sx, sy]))
    torch.testing.assert_close(b['K'][:, 0], a['K'][:, 0] * sx); torch.testing.assert_close(b['K'][:, 1], a['K'][:, 1] * sy)
    torch.testing.assert_close(b['reference_K'][:2], a['reference_K'][:2] * torch.tensor([[sx], [sy]]))
    torch.testing.assert_close(b['c2w'], a['c2w'])


def test_rays_of_the_reference_frame_are_the_identity_cameras(tiny):
    ds = PortraitClips(tiny, n_frames=T, reference='first', image_size=32)
    for i in (0, len(ds) - 1):
        s = ds[i]
        torch.testing.assert_close(s['rays'][:, 0], plucker_rays(torch.eye(4)[None], s['K'][:1], 32, 32)[0], atol=1e-5, rtol=0)
        rel = relative_to(s['c2w'], s['reference_c2w'])
        torch.testing.assert_close(s['rays'], rearrange(plucker_rays(rel, s['K'], 32, 32, ref_c2w=torch.eye(4)), 't c h w -> c t h w'),
                                   atol=1e-4, rtol=0)


def test_reference_from_another_clip_of_the_same_identity(tiny):
    ds = PortraitClips(tiny, n_frames=T)
    several = [i for i in range(len(ds)) if len(ds.same_identity[i])]
    assert several, 'the tiny preset should give some identities several clips'
    for i in several[:3]:
        s = ds[i]
        cams = {j: np.load(tiny / ds.clips.path[j] / 'meta.npz')['c2w'] for j in ds.same_identity[i]}
        assert any(np.allclose(c, s['reference_c2w'].numpy()) for cs in cams.values() for c in cs)


# --- validation: every error names the broken file --------------------------------------------------------------------

def clip_dir(root, index, k=0): return root / index.path[k]


def test_missing_video(broken):
    root, index = broken
    (clip_dir(root, index) / 'rgb.mp4').unlink()
    with pytest.raises(FileNotFoundError, match=rf"{index.clip_id[0]}/rgb.mp4: missing file"):
        PortraitClips(root, n_frames=T, split=index.split[0])
    assert 'rgb.mp4: missing video' in validate_dataset(root).status[0]


def test_video_deleted_after_the_dataset_was_built(broken):
    root, index = broken
    ds = PortraitClips(root, n_frames=T, reference='first', split=index.split[0])
    (clip_dir(root, index) / 'normals.mp4').unlink()
    with pytest.raises(FileNotFoundError, match=rf"{index.clip_id[0]}/normals.mp4: missing video"):
        ds[0]


@pytest.mark.parametrize('damage', ['garbage', 'truncated', 'empty'])
def test_corrupt_video(broken, damage):
    root, index = broken
    p = clip_dir(root, index) / 'normals.mp4'
    data = p.read_bytes()
    p.write_bytes({'garbage': np.random.default_rng(0).bytes(len(data)), 'truncated': data[:len(data) // 2], 'empty': b''}[damage])
    ds = PortraitClips(root, n_frames=T, reference='first', split=index.split[0])
    with pytest.raises(ValueError, match=rf"{index.clip_id[0]}/normals.mp4: corrupt or unreadable video"):
        ds[0]
    report = validate_dataset(root)
    assert 'normals.mp4: corrupt or unreadable video' in report.status[0] and (report.status[1:] == 'ok').all()


def test_frame_count_mismatch_between_videos_and_meta(broken):
    root, index = broken
    d = clip_dir(root, index)
    write_video(d / 'normals.mp4', read_video(d / 'normals.mp4')[:, :-1])                   # one frame short
    ds = PortraitClips(root, n_frames=T, reference='first', split=index.split[0])
    with pytest.raises(ValueError, match=rf"{index.clip_id[0]}/normals.mp4: frame-count mismatch: the video has {index.n_frames[0] - 1} frames"):
        ds[0]


def save_meta(path, **changes):
    with np.load(path) as z: m = dict(z)
    m.update(changes); np.savez(path, **{k: v for k, v in m.items() if v is not None})


def test_frame_count_mismatch_inside_meta_and_with_the_index(broken):
    root, index = broken
    d = clip_dir(root, index)
    meta = dict(np.load(d / 'meta.npz'))
    save_meta(d / 'meta.npz', expression=meta['expression'][:-1])
    with pytest.raises(ValueError, match=rf"{index.clip_id[0]}/meta.npz: frame-count mismatch: 'expression' has"):
        PortraitClips(root, n_frames=T, reference='first', split=index.split[0])[0]
    # all arrays one frame short: meta.npz agrees with itself but not with the videos and index.csv
    save_meta(d / 'meta.npz', **{k: v[:-1] for k, v in meta.items() if v.ndim and len(v) == index.n_frames[0] and k != 'shape'})
    with pytest.raises(ValueError, match=rf"{index.clip_id[0]}/meta.npz: frame-count mismatch: {index.n_frames[0] - 1} frames, index.csv says"):
        PortraitClips(root, n_frames=5, reference='first', split=index.split[0])[0]


@pytest.mark.parametrize('key,bad', [('landmarks', lambda a: a[:, :60]), ('pose', lambda a: a[:, :12]),
                                     ('K', lambda a: a[:, :2]), ('c2w', lambda a: a[0])])
def test_wrong_array_shape(broken, key, bad):
    root, index = broken
    p = clip_dir(root, index) / 'meta.npz'
    save_meta(p, **{key: bad(np.load(p)[key])})
    with pytest.raises(ValueError, match=rf"{index.clip_id[0]}/meta.npz: array '{key}' has shape"):
        PortraitClips(root, n_frames=T, reference='first', split=index.split[0])[0]
    assert f"array '{key}' has shape" in validate_dataset(root).status[0]


def test_missing_array_and_unreadable_meta(broken):
    root, index = broken
    p = clip_dir(root, index) / 'meta.npz'
    save_meta(p, landmarks_visible=None)
    with pytest.raises(ValueError, match=rf"meta.npz: missing arrays \['landmarks_visible'\]"):
        PortraitClips(root, n_frames=T, reference='first', split=index.split[0])[0]
    p.write_bytes(b'PK\x03\x04 not really a zip')
    assert 'meta.npz: unreadable meta.npz' in validate_dataset(root).status[0]


def test_clip_too_short_for_the_requested_frames(broken):
    root, index = broken
    index.loc[0, 'n_frames'] = 4                                                                # index says 4 frames
    index.to_csv(root / 'index.csv', index=False)
    with pytest.raises(ValueError, match=rf"{index.clip_id[0]}/rgb.mp4: clip {index.clip_id[0]} has 4 frames, too short for n_frames=5"):
        PortraitClips(root, n_frames=5, split=index.split[0])
    ds = PortraitClips(root, n_frames=5, split=index.split[0], drop_short=True)
    assert index.clip_id[0] not in set(ds.clips.clip_id) and len(ds) == (index.split == index.split[0]).sum() - 1
    with pytest.raises(ValueError, match='too short for n_frames=13'):
        PortraitClips(root, n_frames=13, split=index.split[1], regimes=[index.regime[1]], stride=(2, 3))


def test_index_errors_name_the_file(broken):
    root, index = broken
    index.drop(columns=['identity']).to_csv(root / 'index.csv', index=False)
    with pytest.raises(ValueError, match=r"index.csv: missing columns \['identity'\]"):
        PortraitClips(root, n_frames=T)
    (root / 'index.csv').unlink()
    with pytest.raises(FileNotFoundError, match='index.csv: missing index.csv'):
        validate_dataset(root)


# --- sampling and loading --------------------------------------------------------------------------------------------

@pytest.mark.parametrize('ratios', [*STAGE_MIXTURES.values(), NO_DYNAMICSWEEP_MIXTURE], ids=['stage1', 'stage2', 'stage3', 'stage4', 'no_dyn'])
def test_mixture_frequencies_match_the_ratios(tiny, ratios):
    ds = PortraitClips(tiny, n_frames=T)
    n = 20000
    drawn = pd.Series(ds.clips.regime.to_numpy()[list(RegimeMixtureSampler(ds, ratios, n, seed=1))]).value_counts()
    for regime in set(ds.clips.regime):
        p = ratios.get(regime, 0.)
        assert abs(drawn.get(regime, 0) - n * p) <= 4 * np.sqrt(n * p * (1 - p)), (regime, drawn.get(regime, 0), n * p)


def test_mixture_errors(tiny):
    ds = PortraitClips(tiny, n_frames=T, regimes=['phone', 'viewsweep'])
    with pytest.raises(ValueError, match=r"regimes \['studio'\] have clips to draw but the dataset has none"):
        RegimeMixtureSampler(ds, STAGE_MIXTURES[2], 10)
    assert set(ds.clips.regime[list(RegimeMixtureSampler(ds, {'phone': 1., 'studio': 0.}, 200))]) == {'phone'}


def test_default_collate_batches_samples(tiny):
    loader = make_loader(tiny, batch_size=3, n_frames=5, image_size=32, stage=2, num_samples=6)
    b = next(iter(loader))
    assert b['video'].shape == (3, 3, 5, 32, 32) and b['rays'].shape == (3, 6, 5, 32, 32) and b['K'].shape == (3, 5, 3, 3)
    assert b['identity'].dtype == torch.int64 and isinstance(b['clip_id'], list) and set(b['regime']) <= {'phone', 'studio'}


def test_workers_give_the_same_samples_as_in_process_loading(tiny):
    kw = dict(batch_size=2, stage=3, n_frames=5, stride=(1, 2), num_samples=6, image_size=32, seed=3)
    def epochs(loader):
        out = []
        for e in (0, 1):
            set_epoch(loader, e); out.append(list(loader))
        return out
    a, b = epochs(make_loader(tiny, workers=0, **kw)), epochs(make_loader(tiny, workers=2, **kw))
    for ea, eb in zip(a, b):
        assert len(ea) == len(eb) == 3
        for x, y in zip(ea, eb):
            for k in SAMPLE_KEYS:
                assert (torch.equal(x[k], y[k]) if torch.is_tensor(x[k]) else x[k] == y[k]), k
    assert not torch.equal(a[0][0]['video'], a[1][0]['video'])                                # epochs differ
