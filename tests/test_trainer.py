"""The trainer as a process: same seed, same losses; killed mid-stage and resumed, the same losses step for step."""
import json, shutil, signal, subprocess, sys, time
from pathlib import Path
import numpy as np
import pandas as pd
import pytest
from portrait_nb.trainer import (FrozenEncoders, StepBatches, StepClips, config_dict, ensure_data, ensure_expression, ensure_vae,
                                 make_config, paper_stages, run_training)

STEPS = (2, 3, 3, 2)


def quick(**kw):
    return make_config('tiny', stages=paper_stages((5, 5, 9, 9), STEPS, 1e-3, 2), vae_steps=2, expression_steps=3, expression_pool=8,
                       ckpt_every=1, n_val=1, sample_steps=2, **kw)


@pytest.fixture(scope='module')
def base(tmp_path_factory):
    "A run folder with the data and the frozen encoders already made (copied into each test's run)."
    d = tmp_path_factory.mktemp('base')
    cfg = quick(); root = ensure_data(cfg, d); ensure_vae(cfg, d, root); ensure_expression(cfg, d, root)
    return d


def fresh(base, path: Path) -> Path:
    "A run folder holding copies of the base run's frozen encoders (the dataset is shared through `data_dir`)."
    for sub in ('vae', 'expression'): shutil.copytree(base / sub, path / sub)
    return path


def cfg_on(base, **kw): return quick(data_dir=str(base / 'data'), **kw)


def losses(out) -> np.ndarray: return pd.DataFrame(out['history']).loss.to_numpy()


def test_same_seed_same_losses(base, tmp_path):
    a = run_training(cfg_on(base), fresh(base, tmp_path / 'a'), progress=False)
    b = run_training(cfg_on(base), fresh(base, tmp_path / 'b'), progress=False)
    assert len(losses(a)) == sum(STEPS) and np.array_equal(losses(a), losses(b))
    c = run_training(cfg_on(base, seed=1), fresh(base, tmp_path / 'c'), stages=[1], progress=False)
    assert not np.array_equal(losses(c), losses(a)[:STEPS[0]])          # the seed matters


def test_killed_and_resumed_run_equals_uninterrupted(base, tmp_path):
    ref = losses(run_training(cfg_on(base), fresh(base, tmp_path / 'ref'), progress=False))
    run = fresh(base, tmp_path / 'killed')
    (tmp_path / 'cfg.json').write_text(json.dumps(config_dict(cfg_on(base))))
    code = ("import json, sys; from portrait_nb.trainer import make_config, run_training; "
            f"d = json.load(open({str(tmp_path / 'cfg.json')!r})); p = d.pop('preset'); "
            f"run_training(make_config(p, **d), {str(run)!r}, progress=False)")
    proc = subprocess.Popen([sys.executable, '-c', code])
    target = run / 'checkpoints' / 'stage3_step000001'                   # kill in the middle of stage 3
    t0 = time.time()
    while not target.exists() and proc.poll() is None and time.time() - t0 < 600: time.sleep(0.05)
    proc.send_signal(signal.SIGKILL); proc.wait()
    assert target.exists() and not (run / 'times.json').exists()         # it really died mid-run (times.json is written last)
    resumed = losses(run_training(cfg_on(base), run, progress=False))
    assert np.array_equal(resumed, ref)


def test_step_batches_follow_the_mixture(base):
    cfg = quick()
    ds = StepClips(base / 'data', n_frames=5, split='train', regimes=['phone', 'studio'], seed=0)
    sampler = StepBatches(ds, {'phone': .6, 'studio': .4}, 8, 0, 2000, seed=0, stage=1)
    regimes = ds.clips.regime.to_numpy()[np.concatenate(list(sampler)) % len(ds)]
    p, n = (regimes == 'phone').mean(), len(regimes)
    assert abs(p - 0.6) < 4 * np.sqrt(0.6 * 0.4 / n)                     # 4 binomial standard deviations
    assert list(StepBatches(ds, {'phone': .6, 'studio': .4}, 8, 5, 7, seed=0, stage=1)) == list(sampler)[5:7]   # resumable


def test_bad_config_is_refused_before_any_work(tmp_path):
    with pytest.raises(ValueError, match='unknown keys'): make_config('tiny', lr=1.)
    with pytest.raises(ValueError, match=r'summing to 1'):
        make_config('tiny', stages=[dict(n_frames=5, steps=1, lr=1e-3, batch_size=1, mixture={'phone': .7})])
    with pytest.raises(ValueError, match='n_frames'):
        make_config('tiny', stages=[dict(n_frames=8, steps=1, lr=1e-3, batch_size=1, mixture={'phone': 1.})])
    assert not any(tmp_path.iterdir())
