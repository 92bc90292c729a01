"""`python -m portrait_nb.animate` as a user runs it: help, a run that writes its files, and one-line errors for bad input."""
import json, shutil, subprocess, sys
from pathlib import Path
import numpy as np
import pytest
from PIL import Image
from portrait_nb.synth import generate_dataset
from portrait_nb.trainer import make_config, paper_stages, run_training
from portrait_nb.viz import read_video

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope='module')
def world(tmp_path_factory):
    "A tiny dataset and a seconds-long tiny run (its samples are noise: the command line is under test, not the model)."
    tmp = tmp_path_factory.mktemp('animate')
    root = generate_dataset(tmp / 'data', 'tiny', seed=0, progress=False, n_frames=17, image_size=32, test_clips=2)
    cfg = make_config('tiny', data_dir=str(root), image_size=32, stages=paper_stages((5, 5, 9, 9), (2, 2, 2, 2), 1e-3, 2), vae_steps=2,
                      vae_frames=5, expression_steps=10)
    run_training(cfg, tmp / 'run', progress=False)
    return tmp, root / 'clips', tmp / 'run'


def cli(*args):
    return subprocess.run([sys.executable, '-m', 'portrait_nb.animate', *map(str, args), '--quiet'], capture_output=True, text=True, cwd=ROOT,
                          timeout=300)


def test_help_documents_every_option():
    r = subprocess.run([sys.executable, '-m', 'portrait_nb.animate', '--help'], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0
    for opt in ('--driving', '--camera', '--model', '--out', '--n_frames', '--steps', '--sampler', '--seed', '--overlap', '--landmarks'):
        assert opt in r.stdout, opt


def test_a_run_writes_the_video_its_frames_and_settings(world):
    tmp, clips, run = world
    out = tmp / 'out' / 'long.mp4'
    r = cli(clips / 'phone_test_000000', '--driving', clips / 'phone_test_000001', '--camera', 'spin', '--model', run, '--out', out,
            '--n_frames', 21, '--steps', 2)
    assert r.returncode == 0, r.stderr
    video = read_video(out)
    assert video.shape == (3, 21, 32, 32)                                   # 21 frames from a 17-frame clip played forth and back
    assert len(list((tmp / 'out' / 'long_frames').glob('frame_*.png'))) == 21
    info = json.loads(out.with_suffix('.json').read_text())
    assert info['n_frames'] == 21 and info['windows'] == [0, 4, 8, 12] and info['camera'] == 'spin'
    assert not list((tmp / 'out').glob('*.tmp')) and not list((tmp / 'out').glob('.tmp-*'))   # no temporary files left


def test_hold_mode_and_the_same_seed_give_the_same_video(world):
    tmp, clips, run = world
    outs = [tmp / f'hold{i}.mp4' for i in range(2)]
    for o in outs: assert cli(clips / 'phone_test_000000', '--driving', 'hold', '--camera', 'spiral', '--model', run, '--out', o, '--steps', 2).returncode == 0
    assert read_video(outs[0]).shape == (3, 9, 32, 32)
    # the exact result is the PNG frames: the H.264 encoding of identical frames differs between processes here (PyAV + libx264 at 32 px)
    a, b = ([np.asarray(Image.open(f)) for f in sorted(o.with_name(o.stem + '_frames').glob('*.png'))] for o in outs)
    assert len(a) == 9 and all((x == y).all() for x, y in zip(a, b))


def bad_inputs(tmp, clips, run):
    "Each bad input with the name the error must carry."
    (tmp / 'bad').mkdir(exist_ok=True)
    text = tmp / 'bad' / 'portrait.png'; text.write_text('not an image')
    broken = tmp / 'bad' / 'clip'
    if not broken.exists():
        shutil.copytree(clips / 'phone_test_000001', broken)
        z = dict(np.load(clips / 'phone_test_000001' / 'meta.npz'))
        np.savez(broken / 'meta.npz', **{k: v for k, v in z.items() if k != 'expression'})
    ref = clips / 'phone_test_000000'
    return {
        'unreadable image': ([text, '--model', run], str(text)),
        'missing annotations': ([ref, '--driving', broken, '--model', run], "missing arrays ['expression']"),
        'unknown trajectory': ([ref, '--camera', 'orbit:yaw=3', '--model', run], "unknown trajectory 'orbit:yaw=3'"),
        'wrong kind of checkpoint': ([ref, '--model', run / 'vae'], 'not a training run'),
        'missing model': ([ref, '--model', tmp / 'nowhere'], str(tmp / 'nowhere')),
        'bad overlap': ([ref, '--driving', clips / 'phone_test_000001', '--model', run, '--overlap', 3], 'overlap'),
    }


@pytest.mark.parametrize('case', ['unreadable image', 'missing annotations', 'unknown trajectory', 'wrong kind of checkpoint',
                                  'missing model', 'bad overlap'])
def test_bad_input_is_one_line_naming_it_and_a_nonzero_status(world, case):
    tmp, clips, run = world
    args, name = bad_inputs(tmp, clips, run)[case]
    r = cli(*args, '--out', tmp / 'bad' / 'x.mp4')
    assert r.returncode != 0
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith('error: ') and name in lines[0], r.stderr
    assert not (tmp / 'bad' / 'x.mp4').exists()


def test_a_magicportrait_baseline_run_is_refused_with_a_reason(world):
    "The MagicPortrait-style baseline is an evaluation method: animate says so instead of failing on inputs it does not build."
    tmp, clips, run = world
    mp = tmp / 'magicportrait'
    cfg = json.loads((run / 'config.json').read_text())
    cfg = make_config(cfg.pop('preset'), **{**cfg, 'ablation': 'magicportrait', 'vae': str(run / 'vae'), 'expression': str(run / 'expression'),
                                            'stages': paper_stages((5, 5, 9, 9), (1, 1, 1, 1), 1e-3, 2), 'n_val': 0})
    run_training(cfg, mp, progress=False)
    r = cli(clips / 'phone_test_000000', '--model', mp, '--out', tmp / 'mp.mp4', '--steps', 2)
    assert r.returncode != 0 and 'MagicPortrait-style baseline' in r.stderr and r.stderr.count('\n') <= 2, r.stderr
