"""`portrait_nb.synth` as users run it: the command line on the tiny preset, the regimes' definitions checked on the written
files, byte-identical `meta.npz` for the same seed (in this process and in worker processes), and resuming after a crash
(an exception inside a clip, and the whole process group killed with SIGKILL)."""
import os, re, signal, subprocess, sys, time
from pathlib import Path
import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from portrait_nb import synth
from portrait_nb.viz import read_video

ROOT = Path(__file__).resolve().parents[1]
CFG = synth.get_config('tiny')
N_CLIPS = len(synth.plan_clips(CFG, 0))
DTYPES = dict(K='float32', c2w='float32', shape='float32', expression='float32', pose='float32', translation='float32',
              landmarks='float32', landmarks_visible='bool', appearance='float32', light='float32', background='float32',
              identity='int64', seed='int64', generator_version='int64', fps='int64')
STRINGS = ('regime', 'split', 'clip_id', 'camera', 'driver_clip')


def cli(*args, cwd=ROOT, **kw):
    return subprocess.Popen([sys.executable, '-m', 'portrait_nb.synth', *map(str, args)], cwd=cwd,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def metas(root: Path) -> dict:
    "`{clip_id: bytes of meta.npz}` of every clip folder."
    return {p.name: (p / 'meta.npz').read_bytes() for p in (root / 'clips').iterdir()}


def load(root: Path, clip_id: str) -> dict:
    with np.load(root / 'clips' / clip_id / 'meta.npz', allow_pickle=False) as z: return {k: z[k] for k in z.files}


def read_index(root: Path) -> pd.DataFrame:
    return pd.read_csv(root / 'index.csv', keep_default_na=False)


@pytest.fixture(scope='module')
def ref(tmp_path_factory) -> Path:
    "The tiny dataset with seed 0, made through the command line with no worker processes."
    root = tmp_path_factory.mktemp('ref') / 'tiny'
    p = cli('--preset', 'tiny', '--out', root, '--seed', 0, '--workers', 0, '--quiet')
    out, err = p.communicate(timeout=300)
    assert p.returncode == 0, err
    return root


def test_cli_writes_a_browsable_dataset_in_the_format(ref):
    assert sorted(p.name for p in ref.iterdir()) == ['card.md', 'clips', 'config.json', 'index.csv']
    index = read_index(ref)
    assert list(index.columns) == list(synth.INDEX_COLUMNS)
    assert list(index.clip_id) == [c.clip_id for c in synth.plan_clips(CFG, 0)] and len(index) == N_CLIPS
    assert sorted(p.name for p in (ref / 'clips').iterdir()) == sorted(index.clip_id)        # no temporary folders
    card = (ref / 'card.md').read_text()
    assert f'`python -m portrait_nb.synth --preset tiny --out {ref} --seed 0 --workers 0 --quiet`' in card
    assert '| train | 2 | 2 | 2 | 2 | 8 |' in card
    for row in index.itertuples():
        m = load(ref, row.clip_id)
        assert list(m) == list(synth.META_KEYS)
        assert {k: str(m[k].dtype) for k in DTYPES} == DTYPES
        assert all(m[k].dtype.kind == 'U' and m[k].shape == () for k in STRINGS)
        rgb, nrm = read_video(ref / row.path / 'rgb.mp4'), read_video(ref / row.path / 'normals.mp4')
        T = row.n_frames
        assert rgb.shape == nrm.shape == (3, T, row.height, row.width) == (3, CFG.n_frames, CFG.image_size, CFG.image_size)
        for k, shape in dict(K=(T, 3, 3), c2w=(T, 4, 4), expression=(T, CFG.n_expr), pose=(T, 15), translation=(T, 3),
                             landmarks=(T, 68, 2), landmarks_visible=(T, 68), appearance=(9, 3), shape=(CFG.n_shape,)).items():
            assert m[k].shape == shape, (row.clip_id, k)
        assert (str(m['clip_id']), str(m['regime']), str(m['split']), int(m['identity']), int(m['seed']), str(m['camera']), str(m['driver_clip'])) \
            == (row.clip_id, row.regime, row.split, row.identity, row.seed, row.camera, row.driver_clip)
        assert re.fullmatch(r'cross_test_\d{6}' if row.split == 'cross' else f'{row.regime}_{row.split}_\\d{{6}}', row.clip_id), row.clip_id


def camera_motion(c2w: np.ndarray) -> tuple[float, float]:
    "Largest displacement (m) and rotation (deg) of the cameras from the first frame."
    R = np.einsum('ji,tjk->tik', c2w[0, :3, :3], c2w[:, :3, :3])
    ang = np.degrees(np.arccos(np.clip((np.trace(R, axis1=1, axis2=2) - 1) / 2, -1, 1)))
    return float(np.linalg.norm(c2w[:, :3, 3] - c2w[0, :3, 3], axis=1).max()), float(ang.max())


def test_regimes_obey_their_definitions(ref):
    index = read_index(ref)
    for row in index.itertuples():
        m = load(ref, row.clip_id)
        moved, turned = camera_motion(m['c2w'])
        frozen = all((m[k] == m[k][:1]).all() for k in ('expression', 'pose', 'translation'))
        if row.split == 'cross':
            d = load(ref, row.driver_clip)
            for k in ('expression', 'pose', 'translation', 'c2w', 'K'): np.testing.assert_array_equal(m[k], d[k])
            assert row.identity != int(d['identity']) and not np.array_equal(m['shape'], d['shape'])
            assert str(d['split']) == 'test' and str(d['regime']) == row.regime
        elif row.regime == 'viewsweep': assert frozen and moved > 0.03 and turned > 5, (row.clip_id, moved, turned)
        elif row.regime == 'phone': assert not frozen and moved < 0.01 and turned < 2 and m['expression'].std(0).max() > 0.05
        elif row.regime == 'studio': assert not frozen and moved == 0 and (m['c2w'] == m['c2w'][:1]).all() and row.camera.startswith('studio_')
        elif row.regime == 'dynamicsweep': assert not frozen and moved > 0.03 and row.camera in ('spin', 'spiral')


def test_train_and_test_identities_are_disjoint(ref):
    index = read_index(ref)
    train, held_out = set(index[index.split == 'train'].identity), set(index[index.split != 'train'].identity)
    assert train and held_out and not train & held_out
    assert held_out <= set(synth.identity_ids(CFG, 'test'))


def on_head(mask: torch.Tensor, lmk: np.ndarray, vis: np.ndarray) -> float:
    "Share of visible landmarks whose pixel or a neighbour is head in `mask (T, H, W)`."
    T, H, W = mask.shape
    mask = F.max_pool2d(mask.float()[:, None], 3, 1, 1)[:, 0] > 0
    t, l = np.nonzero(vis)
    j, i = np.clip(np.floor(lmk[t, l]).astype(int), 0, [W - 1, H - 1]).T
    return mask[t, i, j].float().mean().item()


def test_projected_landmarks_land_on_the_face_in_the_decoded_video(ref):
    shifted = []
    for clip_id in read_index(ref).clip_id:
        m = load(ref, clip_id)
        assert m['landmarks_visible'].sum() > 0
        mask = read_video(ref / 'clips' / clip_id / 'normals.mp4')[2] > -0.5          # normals video: black where no surface
        assert on_head(mask, m['landmarks'], m['landmarks_visible']) >= 0.99, clip_id
        W = mask.shape[-1]
        shifted.append(on_head(mask, np.stack([(m['landmarks'][..., 0] + W / 2) % W, m['landmarks'][..., 1]], -1), m['landmarks_visible']))
    assert max(shifted) < 0.6                                                         # the check can fail


def test_same_seed_gives_identical_meta_in_this_process_and_in_workers(ref, tmp_path):
    root = synth.generate_dataset(tmp_path / 'par', 'tiny', seed=0, workers=2, progress=False)
    assert metas(root) == metas(ref)
    other = synth.generate_dataset(tmp_path / 'seed1', 'tiny', seed=1, workers=0, progress=False, regimes=['phone'])
    assert all(b != metas(ref)[k] for k, b in metas(other).items())


def test_a_crash_inside_a_clip_resumes_without_duplicates_or_gaps(ref, tmp_path, monkeypatch):
    calls, real = [], synth.clip_meta
    def failing(*args):
        calls.append(args)
        if len(calls) == 5: raise RuntimeError('injected fault while writing a clip')   # after its two videos
        return real(*args)
    monkeypatch.setattr(synth, 'clip_meta', failing)
    root = tmp_path / 'crash'
    with pytest.raises(RuntimeError, match='injected fault'): synth.generate_dataset(root, 'tiny', progress=False)
    assert sorted(p.name for p in (root / "clips").iterdir()) == sorted(c.clip_id for c in synth.plan_clips(CFG, 0)[:4])
    (root / 'clips' / f'{synth.TMP_PREFIX}phone_test_000000-1').mkdir()                 # a killed run's leftover
    (root / 'clips' / 'studio_test_000000').mkdir()                                      # a clip folder missing its files
    monkeypatch.setattr(synth, 'clip_meta', real)
    synth.generate_dataset(root, 'tiny', progress=False)
    assert metas(root) == metas(ref)
    assert list(read_index(root).clip_id) == list(read_index(ref).clip_id)


def test_a_killed_parallel_run_resumes(ref, tmp_path):
    root = tmp_path / 'killed'
    p = cli('--preset', 'tiny', '--out', root, '--workers', 2, '--quiet', start_new_session=True)
    done = lambda: [c for c in (root / 'clips').glob('*') if not c.name.startswith('.')] if (root / 'clips').exists() else []
    t0 = time.time()
    while len(done()) < 2 and p.poll() is None and time.time() - t0 < 240: time.sleep(0.01)
    os.killpg(p.pid, signal.SIGKILL); p.communicate()
    made = done()
    assert 2 <= len(made) < N_CLIPS, f'the run was not interrupted midway ({len(made)} of {N_CLIPS} clips)'
    assert all(synth.clip_complete(c) for c in made)                                     # clip folders appear complete
    assert not (root / 'index.csv').exists()
    p = cli('--preset', 'tiny', '--out', root, '--workers', 2, '--quiet')
    out, err = p.communicate(timeout=300)
    assert p.returncode == 0, err
    assert metas(root) == metas(ref)                                                     # no duplicates, no gaps, same bytes
    assert len(read_index(root)) == N_CLIPS


def test_bad_arguments_fail_clearly(tmp_path):
    with pytest.raises(ValueError, match="preset: expected one of"): synth.generate_dataset(tmp_path, 'huge')
    with pytest.raises(ValueError, match="unknown \\['frames'\\]"): synth.generate_dataset(tmp_path, 'tiny', frames=9)
    with pytest.raises(ValueError, match='seed: expected a non-negative integer'): synth.generate_dataset(tmp_path, 'tiny', seed=-1)
    p = cli('--preset', 'tiny', '--out', tmp_path / 'x', '--regimes', 'phone,drone')
    _, err = p.communicate(timeout=120)
    assert p.returncode != 0 and "regimes: unknown ['drone']" in err
