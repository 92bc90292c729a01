"""Training throughput with and without the latent cache (`TrainConfig.cache_latents`), side by side in one process.

Both settings train the four stages of the `cpu` preset (5, 9, 13, 17 frames, batch 4, 64x64 px) for `--steps` steps each from
the same trained data, VAE and expression encoder (a finished `make train` run, `runs/cpu` by default), in fresh run folders.
The cached setting first encodes every training clip once (the `cache` phase, reported on its own); its steps then only load
cached tensors and run the DiT. Rows: per stage, samples/s and the share of step time in the frozen encoders; and the cache's
one-off cost. On a shared 2-core machine another busy process slows both settings; they run one after the other.

    .venv/bin/python benchmarks/cache_bench.py                 # 60 steps per stage
    .venv/bin/python benchmarks/cache_bench.py --steps 20

Writes `results/cache_bench.csv` (or `--out`).
"""
from __future__ import annotations
import argparse, os, platform, shutil, tempfile
from dataclasses import replace
from pathlib import Path
import pandas as pd
import torch
from portrait_nb.trainer import PRESETS, make_config, paper_stages, run_training, throughput

ROOT = Path(__file__).resolve().parents[1]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--run', default=str(ROOT / 'runs' / 'cpu'), help='a finished run whose data, VAE and expression encoder are reused')
    p.add_argument('--steps', type=int, default=60)
    p.add_argument('--frames', type=int, nargs=4, default=(5, 9, 13, 17), help="the stages' clip lengths (the cpu preset's by default)")
    p.add_argument('--out', default=str(ROOT / 'results' / 'cache_bench.csv'))
    a = p.parse_args(argv)
    run = Path(a.run)
    for sub in ('data/index.csv', 'vae/vae/config.json', 'expression'):
        if not (run / sub).exists(): raise SystemExit(f"{run / sub} missing: run `make train` first (or pass --run)")
    base = make_config('cpu', data_dir=str(run / 'data'), vae=str(run / 'vae'), expression=str(run / 'expression'),
                       stages=paper_stages(tuple(a.frames), (a.steps,) * 4, PRESETS['cpu'].stages[0].lr, 4), n_val=1, ckpt_every=10**6)
    rows, tmp = [], Path(tempfile.mkdtemp())
    for cached in (False, True):
        out = run_training(replace(base, cache_latents=cached), tmp / f'cache{int(cached)}', progress=True)
        tp = throughput(out['history'])
        for _, r in tp.iterrows():
            rows.append(dict(setting='cached' if cached else 'encoders every step', stage=int(r.stage), steps=int(r.steps), samples_per_s=r.samples_per_s,
                             encode_share=r.encode_share, train_share=r.train_share, data_share=r.data_share))
        if cached: rows.append(dict(setting='cached', stage='cache build (once)', seconds=out['times']['cache']))
    shutil.rmtree(tmp, ignore_errors=True)
    df = pd.DataFrame(rows)
    speed = df[df.setting == 'cached'].set_index('stage').samples_per_s / df[df.setting != 'cached'].set_index('stage').samples_per_s
    df['speedup'] = df.stage.map(speed)
    df['machine'] = f'{platform.node()} ({os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads)'
    out = Path(a.out); out.parent.mkdir(parents=True, exist_ok=True)
    t = out.with_suffix('.csv.tmp'); df.to_csv(t, index=False); os.replace(t, out)
    print(df.drop(columns='machine').to_markdown(index=False, floatfmt='.3g'))
    print(f'\nwritten to {out}')


if __name__ == '__main__': main()
