"""The inference and training-cache benchmark scripts run end to end on tiny settings and write their tables (the timings are not checked)."""
import subprocess, sys
from pathlib import Path
import pandas as pd
from portrait_nb.synth import generate_dataset
from portrait_nb.trainer import make_config, paper_stages, run_training

ROOT = Path(__file__).resolve().parents[1]


def test_animate_bench_writes_its_table(tmp_path):
    out = tmp_path / 'animate_bench.csv'
    r = subprocess.run([sys.executable, 'benchmarks/animate_bench.py', '--steps', '2', '--frames', '9', '21', '--out', str(out),
                        '--run', str(tmp_path / 'no_run')],                                 # random weights: what a fresh clone has
                       cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    df = pd.read_csv(out)
    assert list(df.frames) == [9, 21] and list(df.windows) == [1, 2] and (df.s_per_frame > 0).all() and (df.weights == 'random').all()
    assert (df.inputs_s + df.conditions_s + df.decode_s + df.sample_s - df.seconds).abs().max() < 1e-6


def test_cache_bench_compares_both_settings(tmp_path):
    root = generate_dataset(tmp_path / 'data', 'tiny', seed=0, progress=False)
    cfg = make_config('tiny', data_dir=str(root), stages=paper_stages((5, 5, 9, 9), (1, 1, 1, 1), 1e-3, 2), vae_steps=2, expression_steps=5,
                      expression_pool=8, n_val=1)
    run_training(cfg, tmp_path / 'run', progress=False)
    (tmp_path / 'run' / 'data').symlink_to(root)                                    # the benchmark reads the run's data folder
    out = tmp_path / 'cache_bench.csv'
    r = subprocess.run([sys.executable, 'benchmarks/cache_bench.py', '--run', str(tmp_path / 'run'), '--steps', '2', '--frames', '5', '5', '9', '9',
                        '--out', str(out)], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    df = pd.read_csv(out)
    assert set(df.setting) == {'cached', 'encoders every step'} and (df.stage == 'cache build (once)').sum() == 1
    per_stage = df[df.stage != 'cache build (once)']
    assert len(per_stage) == 8 and per_stage.speedup.notna().all()


def test_vae_recipe_bench_scores_each_recipe(tmp_path):
    root = generate_dataset(tmp_path / 'data', 'tiny', seed=0, progress=False, n_frames=17, image_size=64)
    out = tmp_path / 'vae_recipe_bench.csv'
    r = subprocess.run([sys.executable, 'benchmarks/vae_recipe_bench.py', '--data', str(root), '--recipes', 'crop32', 'images_then_crop32',
                        '--scale', '0.005', '--clips', '2', '--out', str(out)], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    df = pd.read_csv(out)
    assert list(df.recipe[:2]) == ['crop32', 'images_then_crop32'] and (df.steps[:2] == [2, 2]).all() and df.steps[2:].isna().all()
    assert df.psnr.between(0, 60).all() and df.edge_energy.gt(0).all() and df.normals_psnr.notna().all()
    thumb = df.set_index('recipe').psnr
    assert thumb['16x16 thumbnail (no training)'] > thumb['8x8 thumbnail (no training)']     # more pixels kept, closer to the truth
