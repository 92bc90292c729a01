"""`nbs/train.ipynb` through papermill, as `make train` and users run it."""
import json
from pathlib import Path
import pandas as pd
import papermill as pm
import pytest

ROOT = Path(__file__).resolve().parents[1]

def run_train(tmp_path, **params):
    return pm.execute_notebook(ROOT / 'nbs' / 'train.ipynb', tmp_path / 'out.ipynb', cwd=ROOT / 'nbs',
                               kernel_name='portrait_nb', parameters=dict(out_dir=str(tmp_path / 'run'), **params),
                               progress_bar=False)

def test_tiny_run_writes_its_outputs(tmp_path):
    run_train(tmp_path, preset='tiny', seed=3)
    run = tmp_path / 'run'
    assert sorted(p.name for p in run.iterdir()) == ['cameras_summary.csv', 'config.json', 'spin_rays.png', 'trajectories.html']
    assert json.loads((run / 'config.json').read_text()) == dict(preset='tiny', seed=3, frames=5, size=32)
    summary = pd.read_csv(run / 'cameras_summary.csv')
    assert len(summary) == 5
    # 5 frames -> 2 latent frames; 32 px -> 4 latent px; 6 * 4 * 8 * 8 channels
    assert set(summary.latent_rays) == {'(1536, 2, 4, 4)'}
    spin = summary.set_index('trajectory').loc['spin']
    assert 0.25 <= spin.distance_min_m <= spin.distance_max_m <= 0.40
    assert not list(run.glob('*.tmp'))

def test_unknown_preset_fails_with_a_clear_error(tmp_path):
    with pytest.raises(pm.PapermillExecutionError, match=r"preset: expected one of \['cpu', 'gpu', 'tiny'\], got 'huge'"):
        run_train(tmp_path, preset='huge')

def test_parameters_cell_is_tagged_and_defaults_to_tiny():
    nb = json.loads((ROOT / 'nbs' / 'train.ipynb').read_text())
    params = [c for c in nb['cells'] if 'parameters' in c.get('metadata', {}).get('tags', [])]
    assert len(params) == 1 and "preset = 'tiny'" in ''.join(params[0]['source'])
