"""CPU throughput of `portrait_nb.synth`: generated frames/s for each preset, writing a few clips of each into a temporary folder.

For every preset, `generate_dataset` makes one train and one test clip of each regime and one cross clip (9 clips, the preset's
image size, clip length, head mesh and supersampling), in this process (`workers=0`, one torch thread per clip), and the `cpu`
preset is timed again with 2 worker processes on 81 clips (pool start-up included). The table also gives where a clip's time goes
(making the factors and rendering vs encoding and writing the files, measured on one clip) and what the whole preset would
take at that rate. Prints the table and writes it to `results/synth_bench.csv` (git-ignored).

    .venv/bin/python benchmarks/synth_bench.py                       # tiny, cpu, gpu; cpu also with 2 workers
    .venv/bin/python benchmarks/synth_bench.py --presets tiny cpu --workers 0 2 4

Timings are wall-clock and sensitive to other processes on the machine (run with OMP_WAIT_POLICY=PASSIVE on shared cores).
"""
from __future__ import annotations
import argparse, os, platform, tempfile, time
from pathlib import Path
import pandas as pd
import torch
from portrait_nb import synth
from portrait_nb.viz import write_video


def stage_times(cfg: synth.SynthConfig) -> tuple[float, float]:
    "Seconds to make one clip's factors and frames, and to encode and write its files (after a warm-up clip)."
    spec, head = synth.plan_clips(cfg, 0, ['phone'])[0], synth._head(cfg)
    with tempfile.TemporaryDirectory() as d:
        synth.write_clip(Path(d) / 'warm', spec, cfg, 0, head)
        t0 = time.perf_counter(); factors, frames = synth.make_clip(spec, cfg, 0, head); t1 = time.perf_counter()
        write_video(Path(d) / 'rgb.mp4', frames['rgb'], cfg.fps, cfg.crf); write_video(Path(d) / 'normals.mp4', frames['normals'], cfg.fps, cfg.crf)
        synth.np.savez(Path(d) / 'meta.npz', **synth.clip_meta(spec, factors, frames, cfg))
        return t1 - t0, time.perf_counter() - t1


def bench(preset: str, workers: int, clips_per_split: int = 1) -> dict:
    "Frames/s of `generate_dataset` on a few clips of `preset` (each regime's train and test clips, one cross clip)."
    over = dict(train_clips=clips_per_split, test_clips=clips_per_split, cross_clips=1)
    cfg, full = synth.get_config(preset, **over), synth.get_config(preset)
    with tempfile.TemporaryDirectory() as d:
        t0 = time.perf_counter()
        root = synth.generate_dataset(Path(d) / preset, preset, seed=0, workers=workers, progress=False, **over)
        seconds = time.perf_counter() - t0
        n = len(pd.read_csv(root / 'index.csv'))
    make, write = stage_times(cfg)
    fps = n * cfg.n_frames / seconds
    full_frames = len(synth.plan_clips(full, 0)) * full.n_frames
    return dict(preset=preset, size=f'{cfg.image_size}x{cfg.image_size}', frames_per_clip=cfg.n_frames, head=cfg.head_resolution,
                supersample=cfg.supersample, workers=workers, clips=n, seconds=round(seconds, 2), frames_per_s=round(fps, 1),
                clips_per_s=round(n / seconds, 2), make_s_per_clip=round(make, 3), write_s_per_clip=round(write, 3),
                full_preset_clips=len(synth.plan_clips(full, 0)), full_preset_est_min=round(full_frames / fps / 60, 1))


def main(presets=('tiny', 'cpu', 'gpu'), workers=(0,), parallel_preset='cpu', parallel_workers=2, out='results/synth_bench.csv'):
    print(f'torch {torch.__version__}, {os.cpu_count()} cores, {platform.processor() or platform.machine()}, '
          f'OMP_WAIT_POLICY={os.environ.get("OMP_WAIT_POLICY", "default")}')
    rows = [bench(p, w) for p in presets for w in workers]
    if parallel_workers and parallel_preset in presets and parallel_workers not in workers:
        rows.append(bench(parallel_preset, parallel_workers, clips_per_split=10))   # 81 clips: the pool's start-up amortised
    df = pd.DataFrame(rows)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(out, index=False)
    print(df.to_string(index=False))
    print(f'written to {out}')
    return df


if __name__ == '__main__':
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--presets', nargs='+', default=['tiny', 'cpu', 'gpu'])
    p.add_argument('--workers', type=int, nargs='+', default=[0], help='worker processes for every preset')
    p.add_argument('--parallel', type=int, default=2, help='also time the cpu preset with this many workers (0: no)')
    p.add_argument('--out', default='results/synth_bench.csv')
    a = p.parse_args()
    main(tuple(a.presets), tuple(a.workers), 'cpu', a.parallel, a.out)
