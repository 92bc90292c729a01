"""Inference speed of `portrait_nb.animate`: seconds per generated frame, and peak memory.

CPU (default): the `cpu` preset at 64x64 px, 20 and 50 Euler steps, for a one-window video (17 frames) and a long one (33 frames:
three windows denoised together), end to end through `animate()`: the reference and driving clips are read, the conditions
rendered (structured alignment, ray maps), the video sampled and decoded. The model is the trained `runs/cpu` of `make train`
when it exists; otherwise the `cpu` preset's architectures with random weights on a generated 64-px dataset (the cost of a
step does not depend on the weights). Each row also splits the time: conditions (reading and rendering), sampling (the DiT
steps, with the frozen encoders) and decoding are timed by wrapping the functions `animate` calls; `inputs_s` is the reading
and decoding of the reference and driving clips.

GPU (`--device cuda`): the `wan2.1-1.3b` configuration (random weights, which are fine for timing) with Wan 2.1's VAE
architecture, 81 frames at 480x832, 50 steps, bf16 autocast, one window, from a synthetic batch of conditions. For reference,
Wan 2.1's own text-to-video code takes 261 s and 8.2 GB peak memory for the same video on an RTX 4090 (its README's table,
with model offloading and T5 on the CPU). That figure is published, not run here. Our DiT step is compared side by side with
diffusers' `WanTransformer3DModel` in `benchmarks/dit_bench.py`.

    .venv/bin/python benchmarks/animate_bench.py                 # CPU
    .venv/bin/python benchmarks/animate_bench.py --device cuda   # GPU

Peak memory: the process's peak resident set (CPU; it only grows, so a row shows the peak so far) or
`torch.cuda.max_memory_allocated` (GPU). Writes `results/animate_bench.csv` (or `--out`).
"""
from __future__ import annotations
import argparse, os, platform, resource, tempfile, time
from contextlib import contextmanager
from pathlib import Path
import pandas as pd
import torch
import portrait_nb.animate as A

ROOT = Path(__file__).resolve().parents[1]
WAN_REFERENCE = dict(seconds=261.0, peak_gb=8.2, device='RTX 4090', source='Wan 2.1 README (T2V-1.3B, 480p, 81 frames, 50 steps)')


@contextmanager
def timed(totals: dict, key: str, module, name: str):
    "Add the wall time of every call of `module.name` to `totals[key]` inside the block."
    fn = getattr(module, name)
    def wrapper(*a, **k):
        t = time.perf_counter()
        try: return fn(*a, **k)
        finally: totals[key] = totals.get(key, 0.) + time.perf_counter() - t
    setattr(module, name, wrapper)
    try: yield
    finally: setattr(module, name, fn)


def cpu_world(run: Path) -> tuple[A.Animator, Path, str]:
    "The trained cpu run and its test clips, or random-weight cpu architectures on a generated 64-px dataset."
    if (run / 'config.json').is_file():
        try: return A.load_animator(run), run / 'data' / 'clips', f'trained ({run.name})'
        except (FileNotFoundError, ValueError) as e: print(f'{run} not usable ({e}); random weights instead')
    from portrait_nb.dit import FactorDiT, dit_config
    from portrait_nb.expression import ENCODER_PRESETS, build_encoder
    from portrait_nb.synth import generate_dataset
    from portrait_nb.trainer import FrozenEncoders, make_config
    from portrait_nb.vae import make_vae
    root = generate_dataset(Path(tempfile.mkdtemp()) / 'data', 'tiny', seed=0, progress=False, n_frames=17, image_size=64, test_clips=2)
    enc = FrozenEncoders(make_vae('cpu').eval(), build_encoder(ENCODER_PRESETS['cpu']).eval())
    return A.Animator(FactorDiT(dit_config('cpu')).eval(), enc, make_config('cpu'), A.HeadModel()), root / 'clips', 'random'


def cpu_rows(steps_list, frames_list, run: Path) -> list[dict]:
    anim, clips, weights = cpu_world(run)
    ref, drv = clips / 'phone_test_000000', clips / 'phone_test_000001'
    A.animate(ref, drv, 'spin', anim, n_frames=9, steps=1, progress=False)            # warm-up
    rows = []
    for steps in steps_list:
        for frames in frames_list:
            parts = {}
            with timed(parts, 'inputs_s', A, 'load_reference'), timed(parts, 'inputs_s', A, 'load_driving'), \
                 timed(parts, 'conditions_s', A, 'conditions'), timed(parts, 'decode_s', anim.enc.vae, 'decode'):
                t = time.perf_counter()
                r = A.animate(ref, drv, 'spin', anim, n_frames=frames, steps=steps, progress=False)
                total = time.perf_counter() - t
            rows.append(dict(preset='cpu', weights=weights, device='cpu', frames=frames, size=f'{anim.cfg.image_size}x{anim.cfg.image_size}',
                             windows=len(r.info['windows']), steps=steps, seconds=total, s_per_frame=total / frames,
                             inputs_s=parts['inputs_s'], conditions_s=parts['conditions_s'], decode_s=parts['decode_s'],
                             sample_s=total - parts['inputs_s'] - parts['conditions_s'] - parts['decode_s'],
                             peak_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024))
            print(rows[-1])
    return rows


def gpu_rows(steps: int, frames: int, size: tuple, device) -> list[dict]:
    from portrait_nb.cameras import plucker_rays, make_trajectory
    from portrait_nb.dit import FactorDiT, dit_config
    from portrait_nb.expression import ENCODER_PRESETS, build_encoder
    from portrait_nb.trainer import FrozenEncoders, generate
    from portrait_nb.vae import make_vae
    model = FactorDiT(dit_config('wan2.1-1.3b')).to(device).eval()
    enc = FrozenEncoders(make_vae('wan2.1').eval(), build_encoder(ENCODER_PRESETS['gpu']).eval()).to(device)
    H, W = size
    g = torch.Generator().manual_seed(0)
    traj = make_trajectory('spin', frames, image_size=size)
    batch = dict(video=torch.rand(1, 3, frames, H, W, generator=g) * 2 - 1, reference=torch.rand(1, 3, H, W, generator=g) * 2 - 1,
                 normals=torch.rand(1, 3, frames, H, W, generator=g) * 2 - 1,
                 rays=plucker_rays(traj.c2w, traj.K, H, W).transpose(0, 1)[None],
                 landmarks=torch.tensor([W / 2, H / 2]) + torch.randn(1, frames, 68, 2, generator=g) * min(H, W) / 8)
    batch = {k: v.to(device) for k, v in batch.items()}
    torch.cuda.reset_peak_memory_stats(device); torch.cuda.synchronize(device)
    t = time.perf_counter()
    with torch.autocast('cuda', dtype=torch.bfloat16):
        video = generate(model, enc, batch, steps=steps, generator=torch.Generator().manual_seed(0))
    torch.cuda.synchronize(device)
    total = time.perf_counter() - t
    assert video.shape == (1, 3, frames, H, W)
    ours = dict(preset='wan2.1-1.3b', weights='random', device=torch.cuda.get_device_name(device), frames=frames, size=f'{H}x{W}', windows=1,
                steps=steps, seconds=total, s_per_frame=total / frames, peak_mb=torch.cuda.max_memory_allocated(device) / 2**20)
    wan = dict(preset='Wan 2.1 T2V-1.3B (published, not run here)', weights='trained', device=WAN_REFERENCE['device'], frames=81,
               size='480x832', windows=1, steps=50, seconds=WAN_REFERENCE['seconds'], s_per_frame=WAN_REFERENCE['seconds'] / 81,
               peak_mb=WAN_REFERENCE['peak_gb'] * 1024)
    return [ours, wan]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--device', default='cpu')
    p.add_argument('--run', default=str(ROOT / 'runs' / 'cpu'), help='CPU: a trained cpu run (random weights when it is missing)')
    p.add_argument('--steps', type=int, nargs='+', default=None, help='CPU: 20 50; GPU: 50')
    p.add_argument('--frames', type=int, nargs='+', default=None, help='CPU: 17 33; GPU: 81')
    p.add_argument('--size', type=int, nargs=2, default=(480, 832), help='GPU frame size H W')
    p.add_argument('--out', default=str(ROOT / 'results' / 'animate_bench.csv'))
    a = p.parse_args(argv)
    torch.manual_seed(0)
    if a.device == 'cpu': rows = cpu_rows(a.steps or [20, 50], a.frames or [17, 33], Path(a.run))
    else: rows = gpu_rows((a.steps or [50])[0], (a.frames or [81])[0], tuple(a.size), torch.device(a.device))
    df = pd.DataFrame(rows)
    df['machine'] = f'{platform.node()} ({os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads)'
    out = Path(a.out); out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix('.csv.tmp'); df.to_csv(tmp, index=False); os.replace(tmp, out)
    print(df.drop(columns='machine').to_markdown(index=False, floatfmt='.3g'))
    print(f'\nwritten to {out}')
    return df


if __name__ == '__main__': main()
