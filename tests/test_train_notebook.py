"""`nbs/train.ipynb` through papermill, as `make train` and users run it."""
import json
from pathlib import Path
import numpy as np
import pandas as pd
import papermill as pm
import pytest

ROOT = Path(__file__).resolve().parents[1]

def run_train(tmp_path, **params):
    return pm.execute_notebook(ROOT / 'nbs' / 'train.ipynb', tmp_path / 'out.ipynb', cwd=ROOT / 'nbs',
                               kernel_name='portrait_nb', parameters=dict(out_dir=str(tmp_path / 'run'), **params),
                               progress_bar=False)

def test_tiny_run_writes_its_outputs(tmp_path):
    run_train(tmp_path, preset='tiny', seed=3, steps=1)
    run = tmp_path / 'run'
    assert {'config.json', 'data', 'vae', 'expression', 'checkpoints', 'samples', 'log.csv', 'validation.csv', 'times.json',
            'throughput.csv', 'tb'} <= {p.name for p in run.iterdir()}
    assert list(run.joinpath('tb').glob('events.out.tfevents.*'))                # TensorBoard (installed by the dev extra)
    tp = pd.read_csv(run / 'throughput.csv')
    assert list(tp.stage) == [1, 2, 3, 4] and (tp.samples_per_s > 0).all()
    # tiny: 32 px, 2x2 patches of the 4x4 latent grid; 5 frames -> 2 latent frames, 9 -> 3, plus the reference frame
    assert np.allclose(tp.tokens_per_s / tp.samples_per_s, [12, 12, 16, 16])
    cfg = json.loads((run / 'config.json').read_text())
    assert cfg['preset'] == 'tiny' and cfg['seed'] == 3 and [s['steps'] for s in cfg['stages']] == [1, 1, 1, 1]
    log = pd.read_csv(run / 'log.csv')
    assert list(log.stage) == [1, 2, 3, 4] and log.loss.notna().all()
    assert sorted(p.name for p in (run / 'samples').iterdir()) == [f'stage{k}.mp4' for k in (1, 2, 3, 4)]
    val = pd.read_csv(run / 'validation.csv')
    assert set(val.stage) == {1, 2, 3, 4} and val.psnr.between(0, 100).all()
    assert not list(run.rglob('*.tmp')) and not list(run.rglob('.tmp_*'))

def test_unknown_preset_fails_with_a_clear_error(tmp_path):
    with pytest.raises(pm.PapermillExecutionError, match=r"preset: expected one of \['tiny', 'cpu', 'gpu'\], got 'huge'"):
        run_train(tmp_path, preset='huge')

def test_parameters_cell_is_tagged_and_defaults_to_tiny():
    nb = json.loads((ROOT / 'nbs' / 'train.ipynb').read_text())
    params = [c for c in nb['cells'] if 'parameters' in c.get('metadata', {}).get('tags', [])]
    assert len(params) == 1 and "preset = 'tiny'" in ''.join(params[0]['source'])
