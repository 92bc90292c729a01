"""`nbs/evaluate.ipynb` and `nbs/ablations.ipynb` through papermill, as users run them (tiny presets)."""
import json
from pathlib import Path
import numpy as np
import pandas as pd
import papermill as pm
import pytest
from portrait_nb.trainer import load_run

ROOT = Path(__file__).resolve().parents[1]


def run(name, tmp_path, **params):
    return pm.execute_notebook(ROOT / 'nbs' / name, tmp_path / f'out_{name}', cwd=ROOT / 'nbs', kernel_name='portrait_nb',
                               parameters=params, progress_bar=False)


def test_evaluate_notebook_writes_the_tables(tmp_path):
    out = tmp_path / 'ev'
    run('evaluate.ipynb', tmp_path, out_dir=str(out), n_clips=2)
    table = pd.read_csv(out / 'table.csv')
    assert set(table.method) == {'full (run)', 'magicportrait (magicportrait)', 'reference copy', '3DMM re-render'}   # and the MagicPortrait-style run
    assert set(zip(table['mode'], table.regime)) == {('self', r) for r in ('phone', 'studio', 'viewsweep', 'dynamicsweep')} | {('cross', 'phone'), ('cross', 'dynamicsweep')}
    assert table[table.metric == 'lpips'].value.isna().all()                          # missing here, never substituted
    psnr = table[(table.metric == 'psnr') & (table['mode'] == 'self')].groupby('method').value.mean()
    assert psnr['3DMM re-render'] > psnr['full (run)'] and psnr['reference copy'] > psnr['full (run)']   # an untrained model is worse than copying
    assert table.groupby('method').config.nunique().eq(1).all() and table.config.nunique() == 4
    mp = json.loads((out / 'magicportrait' / 'config.json').read_text())
    assert mp['ablation'] == 'magicportrait' and mp['vae'] == str(out / 'run' / 'vae') and mp['data_dir'] == json.loads((out / 'run' / 'config.json').read_text())['data_dir']
    assert np.isfinite(table[table.metric.isin(['psnr', 'ssim', 'csim', 'aed_videos', 'apd_videos', 'fid'])].value).all()
    md = (out / 'tab3.md').read_text()
    assert 'PSNR↑' in md and 'synthetic-arcface-tiny' in md and (out / 'tab3.tex').read_text().count('textbf') > 0
    assert (out / 'metrics.png').stat().st_size > 0 and len(list(out.glob('grid_*.png'))) == 6
    follow = pd.read_csv(out / 'follow.csv')                                          # the control-following probe
    assert set(follow.method) == {'full (run)', 'magicportrait (magicportrait)', '3DMM re-render'} and set(follow.factor) == {'camera', 'expression', 'all'}
    assert set(follow.regime) == {'viewsweep', 'dynamicsweep'} and (follow.response >= 0).all()
    assert (follow[(follow.method == '3DMM re-render') & (follow.factor == 'all')].response > 0).all()   # the re-render moves with the driving landmarks


def test_evaluate_notebook_refuses_a_folder_that_is_not_a_run(tmp_path):
    with pytest.raises(pm.PapermillExecutionError, match='is not a training run folder'):
        run('evaluate.ipynb', tmp_path, out_dir=str(tmp_path / 'ev'), runs=[str(tmp_path)])


def test_ablations_notebook_trains_each_switch_on_shared_data_and_encoders(tmp_path):
    out = tmp_path / 'ab'
    run('ablations.ipynb', tmp_path, out_dir=str(out), steps=1, n_clips=2)
    cfgs = {ab: json.loads((out / ab / 'config.json').read_text()) for ab in ('full', 'C1', 'C2', 'C3')}
    assert {c['ablation'] for c in cfgs.values()} == {'full', 'C1', 'C2', 'C3'}
    assert len({c['data_dir'] for c in cfgs.values()}) == 1                           # one dataset
    assert all(cfgs[ab]['vae'] == str(out / 'full' / 'vae') for ab in ('C1', 'C2', 'C3'))   # the full run's frozen encoders
    assert cfgs['C1']['stages'][2]['mixture'] == {'phone': 0.2, 'studio': 0.4, 'viewsweep': 0.4}   # no DynamicSweep (supp. Sec. 8.2)
    assert cfgs['full']['stages'][2]['mixture'].get('dynamicsweep', 0) > 0
    models = {ab: load_run(out / ab)[0].config for ab in ('full', 'C2', 'C3')}
    assert models['full'].use_normals and not models['C2'].use_normals                # C2: no normal maps
    assert models['full'].expression == 'controller' and models['C3'].expression == 'landmarks'   # C3: landmarks
    table = pd.read_csv(out / 'evaluation' / 'table.csv')
    psnr = table[table.metric == 'psnr']
    assert set(psnr.method) == {'full', 'C1', 'C2', 'C3', 'C3 + FLT', 'reference copy', '3DMM re-render'} and np.isfinite(psnr.value).all()
    assert psnr.groupby('method').size().nunique() == 1                               # every method on every set
    both = psnr[psnr.method.isin(['C3', 'C3 + FLT']) & (psnr['mode'] == 'self')].pivot_table(index='regime', columns='method', values='value')
    assert np.allclose(both['C3'], both['C3 + FLT'])                                 # self-reenactment: FLT's landmarks are the driver's own

    # a finished full run reused (make train's): only the ablations train, on its data and encoders, and it is evaluated from its own folder
    again = tmp_path / 'ab2'
    run('ablations.ipynb', tmp_path, out_dir=str(again), steps=1, n_clips=2, ablations=['full', 'C2'], full_run=str(out / 'full'),
        eval_dir=str(out / 'evaluation' / 'eval'))
    assert not (again / 'full').exists() and not (again / 'data').exists()
    c2 = json.loads((again / 'C2' / 'config.json').read_text())
    assert c2['vae'] == str(out / 'full' / 'vae') and c2['data_dir'] == cfgs['full']['data_dir']
    t2 = pd.read_csv(again / 'evaluation' / 'table.csv')
    first = table[(table.method == 'full') & (table.metric == 'psnr')].set_index(['mode', 'regime']).value
    assert np.allclose(t2[(t2.method == 'full') & (t2.metric == 'psnr')].set_index(['mode', 'regime']).value.reindex(first.index), first)   # the same model, the same seeds
    # a full run of another seed (or preset, or budget) is refused before any work
    bad = tmp_path / 'bad'; bad.mkdir(); (bad / 'config.json').write_text(json.dumps(dict(cfgs['full'], seed=1)))
    with pytest.raises(pm.PapermillExecutionError, match="full_run: .* has seed=1"):
        run('ablations.ipynb', tmp_path, out_dir=str(tmp_path / 'ab3'), steps=1, full_run=str(bad))
