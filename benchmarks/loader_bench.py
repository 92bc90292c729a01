"""Throughput of the training data loader (`portrait_nb.data.make_loader`): samples/s with 0, 1 and 2 worker processes.

For each number of workers, the loader is built, its first batch (worker start-up) is timed apart, and the steady
rate is measured over the following batches. With `--step-ms`, a simulated training step (busy torch compute of that
length, in the main process) follows each batch, and the table reports how long the trainer waited for the next
batch: the loader keeps up when that wait is close to zero. Prints a table and writes it to `results/loader_bench.csv`
(git-ignored).

    .venv/bin/python benchmarks/loader_bench.py                                # tiny dataset, generated into a temp dir
    .venv/bin/python benchmarks/loader_bench.py --preset cpu --train-clips 4 --n-frames 17 --step-ms 500
    .venv/bin/python benchmarks/loader_bench.py runs/data/cpu --n-frames 17 --step-ms 500   # an existing dataset

Timings are wall-clock and sensitive to other processes; each setting is measured `--repeats` times and the best
rate is kept (the run least disturbed by other processes).
"""
from __future__ import annotations
import argparse, os, platform, tempfile, time
from pathlib import Path
import pandas as pd
import torch
from portrait_nb.data import make_loader, set_epoch, read_index


def busy(ms: float, x: torch.Tensor) -> None:
    "Torch compute for about `ms` milliseconds, standing in for a training step."
    end = time.perf_counter() + ms / 1000
    while time.perf_counter() < end: x = (x @ x).tanh()


def measure(root, workers: int, batch: int, batches: int, step_ms: float, epoch: int, **kw) -> dict:
    "Start-up time, steady samples/s and the trainer's mean wait per batch for one loader setting."
    loader = make_loader(root, batch, workers=workers, num_samples=batch * (batches + 1), **kw)
    set_epoch(loader, epoch)
    x = torch.randn(64, 64) / 8
    t0 = time.perf_counter(); it = iter(loader); next(it); startup = time.perf_counter() - t0
    waits, t1 = [], time.perf_counter()
    for _ in range(batches):
        if step_ms: busy(step_ms, x)
        t = time.perf_counter(); next(it); waits.append(time.perf_counter() - t)
    total = time.perf_counter() - t1
    del it, loader
    return dict(startup_s=startup, samples_per_s=batch * batches / (total if step_ms else sum(waits)),
                wait_ms_per_batch=1000 * sum(waits) / batches)


def generate(tmp, preset: str, train_clips: int | None) -> Path:
    "A small dataset of `preset` (all of it, or `train_clips` training clips per regime at the preset's size) in `tmp`."
    from portrait_nb.synth import generate_dataset
    small = {} if train_clips is None else dict(train_clips=train_clips, test_clips=1, cross_clips=0)
    t = time.perf_counter(); root = generate_dataset(Path(tmp) / preset, preset, seed=0, progress=False, **small)
    print(f'generated the {preset} dataset {small or ""} in {time.perf_counter() - t:.1f} s')
    return root


def main(root=None, workers=(0, 1, 2), batch: int = 4, batches: int = 20, n_frames: int = 9, image_size=None,
         stage: int | None = 3, step_ms: float = 0., repeats: int = 2, threads: int = 1, out='results/loader_bench.csv',
         preset: str = 'tiny', train_clips: int | None = None):
    torch.set_num_threads(threads)
    generated = root is None
    with tempfile.TemporaryDirectory() as tmp:
        if generated: root = generate(tmp, preset, train_clips)
        index = read_index(root)
        H, W = (image_size, image_size) if image_size else (int(index.height.iloc[0]), int(index.width.iloc[0]))
        print(f'{root}: {len(index)} clips; torch {torch.__version__}, {threads} thread(s) in the main process, '
              f'{os.cpu_count()} cores, {platform.processor() or platform.machine()}')
        rows = []
        for w in workers:
            runs = [measure(root, w, batch, batches, step_ms, epoch=r, n_frames=n_frames, image_size=image_size, stage=stage)
                    for r in range(repeats)]
            best = max(runs, key=lambda r: r['samples_per_s'])
            rows.append(dict(workers=w, batch=batch, n_frames=n_frames, size=f'{H}x{W}', stage=stage, step_ms=step_ms, **best))
            print(rows[-1])
    df = pd.DataFrame(rows).round(3)
    df['dataset'] = f'{preset} (generated, train_clips={train_clips or "preset"})' if generated else str(root)
    df['omp_wait_policy'] = os.environ.get('OMP_WAIT_POLICY', 'default')
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    tmp_out = Path(out).with_suffix('.csv.tmp'); df.to_csv(tmp_out, index=False); os.replace(tmp_out, out)
    print(df.drop(columns=['dataset', 'omp_wait_policy']).to_string(index=False))
    print(f'written to {out}')
    return df


if __name__ == '__main__':
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('root', nargs='?', default=None, help='dataset folder (default: generate the tiny preset into a temp dir)')
    p.add_argument('--preset', default='tiny', help='synth preset generated when no root is given')
    p.add_argument('--train-clips', type=int, default=None, help='training clips per regime to generate (default: the preset\'s)')
    p.add_argument('--workers', type=int, nargs='+', default=[0, 1, 2])
    p.add_argument('--batch', type=int, default=4)
    p.add_argument('--batches', type=int, default=20, help='batches timed after the first')
    p.add_argument('--n-frames', type=int, default=9)
    p.add_argument('--image-size', type=int, default=None)
    p.add_argument('--stage', type=int, default=3, help='regime mixture of FactorPortrait Tab. 1 (0: every clip, no mixture)')
    p.add_argument('--step-ms', type=float, default=0., help='simulated training step after each batch (0: loader alone)')
    p.add_argument('--repeats', type=int, default=2)
    p.add_argument('--threads', type=int, default=1, help='torch threads in the main process')
    p.add_argument('--out', default='results/loader_bench.csv')
    a = p.parse_args()
    main(a.root, tuple(a.workers), a.batch, a.batches, a.n_frames, a.image_size, a.stage or None, a.step_ms, a.repeats, a.threads,
         a.out, a.preset, a.train_clips)
