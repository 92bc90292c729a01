"""CPU throughput of `portrait_nb.render`: images/s for a batch of head meshes seen from a spin trajectory.

Times `rasterize` alone and `render` with every map (mask, depth, normal, shaded colour) at several image sizes,
with the head model's two meshes (`portrait_nb.head.HeadModel`, 'flame' and 'light') when it is importable, and
UV spheres of the same sizes otherwise. Prints a table and writes it to `results/render_bench.csv` (git-ignored).

    .venv/bin/python benchmarks/render_bench.py                      # batch 8 at 128, 256, 512
    .venv/bin/python benchmarks/render_bench.py --sizes 256 --repeats 3

Timings are wall-clock and sensitive to other processes: with torch's default OpenMP spin-waiting, a second busy
process on a 2-core machine slows 2-thread runs many times over; OMP_WAIT_POLICY=PASSIVE or --threads 1 avoids that.
"""
from __future__ import annotations
import argparse, os, platform, time
from pathlib import Path
import pandas as pd
import torch
from portrait_nb.cameras import spin_trajectory, HEAD_RADIUS
from portrait_nb.render import uv_sphere, rasterize, render

STAND_INS = {'flame': (71, 72), 'light': (35, 36)}   # UV spheres: 5,042 v / 10,080 f and 1,226 v / 2,448 f


def head_meshes() -> tuple[dict, str]:
    "`{name: (verts (V, 3), faces (F, 3))}` of the head model's two sizes, or UV-sphere stand-ins, and where they came from."
    try:
        from portrait_nb.head import HeadModel
        meshes = {}
        for name in STAND_INS:
            head = HeadModel(resolution=name)
            with torch.no_grad(): verts = head().vertices                     # neutral head, (V, 3)
            meshes[f'head {name}'] = (verts.reshape(-1, verts.shape[-2], 3)[0].float(), head.faces.long())
        return meshes, 'portrait_nb.head.HeadModel'
    except Exception as e:
        why = f'UV-sphere stand-ins (head model not usable: {type(e).__name__}: {e})'
        return {f'sphere ({name} size)': uv_sphere(*n, radius=HEAD_RADIUS) for name, n in STAND_INS.items()}, why


def images_per_s(fn, batch: int, repeats: int) -> float:
    "Best-of-`repeats` throughput after one warm-up call (the best run is the least disturbed by other processes)."
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter(); fn(); times.append(time.perf_counter() - t)
    return batch / min(times)


def main(sizes=(128, 256, 512), batch: int = 8, repeats: int = 5, threads: int | None = None, out='results/render_bench.csv'):
    torch.set_num_threads(threads or os.cpu_count())
    meshes, source = head_meshes()
    print(f'meshes: {source}; torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.processor() or platform.machine()}')
    rows = []
    for name, (v, f) in meshes.items():
        verts = v.expand(batch, -1, -1)
        for S in sizes:
            c2w, K = spin_trajectory(batch, seed=0, image_size=(S, S))
            with torch.no_grad():
                fr = rasterize(verts, f, c2w, K, (S, S))
                rows.append(dict(mesh=name, verts=len(v), faces=len(f), size=f'{S}x{S}', batch=batch,
                                 coverage=round(fr.mask.float().mean().item(), 3),
                                 rasterize_img_s=images_per_s(lambda: rasterize(verts, f, c2w, K, (S, S)), batch, repeats),
                                 render_all_img_s=images_per_s(lambda: render(verts, f, c2w, K, (S, S)), batch, repeats)))
            print(rows[-1])
    df = pd.DataFrame(rows).round(1)
    df['threads'] = torch.get_num_threads()
    df['omp_wait_policy'] = os.environ.get('OMP_WAIT_POLICY', 'default')
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(out, index=False)
    print(df.to_string(index=False))
    print(f'written to {out}')
    return df


if __name__ == '__main__':
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--sizes', type=int, nargs='+', default=[128, 256, 512])
    p.add_argument('--batch', type=int, default=8)
    p.add_argument('--repeats', type=int, default=5)
    p.add_argument('--threads', type=int, default=None, help='torch threads (default: all cores)')
    p.add_argument('--out', default='results/render_bench.csv')
    a = p.parse_args()
    main(tuple(a.sizes), a.batch, a.repeats, a.threads, a.out)
