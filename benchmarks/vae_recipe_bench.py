"""VAE training recipes at (about) equal compute: reconstruction quality on held-out clips, side by side in one process.

Each recipe trains the `cpu` VAE preset from the same initialisation (seed 0) on the same dataset (a finished `make train` run's
data, `runs/cpu/data` by default) with `train_vae`, for a step count chosen so that every recipe costs about the same CPU time
(crops and short clips make a step cheaper, so they get more steps). Then each VAE encodes and decodes `--clips` held-out test
clips (whole 17-frame clips at 64 px, evenly spread over the regimes) and the table gives PSNR and SSIM of the videos (all frames),
PSNR of the normal maps, and the edge energy of the reconstructions relative to the truth's (mean absolute spatial gradient:
below 1 is blur). Two rows need no training and say what the latent grid allows: every frame squeezed to an 8 x 8 or a
16 x 16 thumbnail (area average) and blown back up (bicubic). An 8 x 8 RGB thumbnail keeps 192 numbers a frame and a 16 x 16 one 768;
the latents keep 16 x 8 x 8 = 1,024 for the first frame and as many for each later group of four (256 a frame). The recipes run one after the other; `s_per_step` is measured, so on a busy machine the budgets drift.

    .venv/bin/python benchmarks/vae_recipe_bench.py                      # the six recipes below, about an hour on 2 cores
    .venv/bin/python benchmarks/vae_recipe_bench.py --recipes full crop32 --scale 0.5

Writes `results/vae_recipe_bench.csv` (or `--out`).
"""
from __future__ import annotations
import argparse, os, platform, time
from pathlib import Path
import numpy as np
import pandas as pd
import torch
from torch.utils.data import default_collate
from portrait_nb.data import PortraitClips
from portrait_nb.trainer import frame_scores
from portrait_nb.vae import make_vae, train_vae

ROOT = Path(__file__).resolve().parents[1]
# name -> (train_vae keywords, steps): the steps give each about 10 minutes of a quiet 2-core machine (measured s/step:
# whole frames 2.9, 32 px crops 1.2, 16 px crops 0.8, 32 px crops of 4 clips 2.0, single 32 px frames in batches of 16 0.55)
RECIPES = {
    'full': (dict(batch_size=2, lr=5e-4), 200),                               # whole 64 px frames: what `make train` did before
    'crop32': (dict(batch_size=2, lr=5e-4, crop_size=32), 480),               # the `cpu` preset now
    'crop32_bs4': (dict(batch_size=4, lr=5e-4, crop_size=32), 300),
    'crop32_lr1e-3': (dict(batch_size=2, lr=1e-3, crop_size=32), 480),
    'crop16': (dict(batch_size=2, lr=5e-4, crop_size=16), 720),
    'images_then_crop32': (dict(batch_size=2, lr=5e-4, crop_size=32, images=(240, 16)), 360),   # 240 steps of 16 single frames first
}


def edge_energy(v: torch.Tensor) -> float:
    "Mean absolute horizontal and vertical difference of videos `(B, 3, T, H, W)` in [-1, 1], on [0, 1]."
    v = (v + 1) / 2
    return ((v[..., 1:, :] - v[..., :-1, :]).abs().mean() + (v[..., 1:] - v[..., :-1]).abs().mean()).item() / 2


def held_out(data: Path, n: int) -> dict:
    "`n` whole test clips, evenly spread (the index is sorted by regime)."
    ds = PortraitClips(data, n_frames=17, split='test', image_size=64, seed=0, reference='first')
    return default_collate([ds[i] for i in np.unique(np.linspace(0, len(ds) - 1, n).round().astype(int))])


@torch.no_grad()
def score(vae, batch: dict) -> dict:
    vae.eval()
    rec, nrec = (vae.decode(vae.encode(batch[k])).clamp(-1, 1) for k in ('video', 'normals'))
    v, n = frame_scores(rec, batch['video']), frame_scores(nrec, batch['normals'])
    return dict(psnr=v.psnr.mean(), ssim=v.ssim.mean(), normals_psnr=n.psnr.mean(), edge_energy=edge_energy(rec) / edge_energy(batch['video']))


def thumbnail(v: torch.Tensor, size: int) -> torch.Tensor:
    "Videos `(B, 3, T, H, W)` squeezed to `size` x `size` frames (area average) and blown back up (bicubic): a reference with no training."
    import torch.nn.functional as F
    B, C, T, H, W = v.shape
    f = v.transpose(1, 2).reshape(B * T, C, H, W)
    f = F.interpolate(F.interpolate(f, size=(size, size), mode='area'), size=(H, W), mode='bicubic', align_corners=False).clamp(-1, 1)
    return f.reshape(B, T, C, H, W).transpose(1, 2)


def thumbnail_row(batch: dict, size: int) -> dict:
    rec, nrec = thumbnail(batch['video'], size), thumbnail(batch['normals'], size)
    v, n = frame_scores(rec, batch['video']), frame_scores(nrec, batch['normals'])
    return dict(recipe=f'{size}x{size} thumbnail (no training)', psnr=v.psnr.mean(), ssim=v.ssim.mean(), normals_psnr=n.psnr.mean(),
                edge_energy=edge_energy(rec) / edge_energy(batch['video']))


def run(name: str, data: Path, batch: dict, scale: float, frames: int) -> dict:
    kw, steps = RECIPES[name]
    kw, steps = dict(kw), max(1, round(steps * scale))
    vae, t0 = make_vae('cpu', seed=0), time.perf_counter()
    if 'images' in kw:
        n_img, bs = kw.pop('images')
        bs = min(bs, len(PortraitClips(data, n_frames=1, split='train', image_size=64)))   # a batch of single frames, one per clip
        train_vae(vae, data, steps=max(1, round(n_img * scale)), batch_size=bs, lr=kw['lr'], n_frames=1, image_size=64, crop_size=kw.get('crop_size'),
                  seed=0, progress=False)
    hist = train_vae(vae, data, steps=steps, n_frames=frames, image_size=64, seed=0, progress=True, **kw)
    return dict(recipe=name, steps=steps, minutes=(time.perf_counter() - t0) / 60, s_per_step=hist.seconds.iloc[1:].mean() if len(hist) > 1 else hist.seconds.mean(),
                train_l1_last=hist.rec.tail(50).mean(), **score(vae, batch))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--data', default=str(ROOT / 'runs' / 'cpu' / 'data'), help='a dataset of the cpu preset (64 px, 17 frames)')
    p.add_argument('--recipes', nargs='+', default=list(RECIPES), choices=list(RECIPES))
    p.add_argument('--scale', type=float, default=1.0, help='multiply every step budget (0.1: a quick look)')
    p.add_argument('--frames', type=int, default=17, help='training clip length')
    p.add_argument('--clips', type=int, default=24, help='held-out clips scored')
    p.add_argument('--out', default=str(ROOT / 'results' / 'vae_recipe_bench.csv'))
    a = p.parse_args(argv)
    data = Path(a.data)
    if not (data / 'index.csv').is_file(): raise SystemExit(f"--data: {data} is not a dataset folder (no index.csv); run `make train` first")
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    batch = held_out(data, a.clips)
    df = pd.DataFrame([run(r, data, batch, a.scale, a.frames) for r in a.recipes] + [thumbnail_row(batch, s) for s in (8, 16)])
    df['machine'] = f'{platform.node()} ({os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads)'
    out = Path(a.out); out.parent.mkdir(parents=True, exist_ok=True)
    t = out.with_suffix('.csv.tmp'); df.to_csv(t, index=False); os.replace(t, out)
    print(df.drop(columns='machine').to_markdown(index=False, floatfmt='.3g'))
    print(f'\nwritten to {out}')


if __name__ == '__main__': main()
