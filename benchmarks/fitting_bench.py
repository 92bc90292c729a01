"""Landmark fitting on the CPU: `portrait_nb.fitting.fit_landmarks` side by side with eos-py's `fit_shape_and_pose`.

Both fitters get the same model and the same landmarks, in one process:
- the model: the procedural FLAME head (`portrait_nb.head.HeadModel`, 'flame' resolution, 5,152 vertices) with its first
  50 shape and 30 expression components; ours sees it as a `LandmarkModel` on the 68 vertices nearest to FLAME's
  landmark embedding, eos as a `MorphableModel` (a shape `PcaModel` and an expression `PcaModel`) with those vertex
  ids as its landmark mapping. No contour fitting on either side (eos's `fit_shape_and_pose` without contours).
- the landmarks: random identities (N(0, 1) coefficients), expressions (N(0, 0.7^2)) and head rotations (N(0, 0.3^2) rad
  per axis), projected by a scaled orthographic camera (eos's camera model) into 256 x 256 pixels, plus 1 px noise.
Both fit a scaled orthographic camera with their default priors (eos: 5 iterations, lambdas 30).

Columns: frames/s; median over frames of the RMS landmark error (px) against the observed (noisy) landmarks and
against the noise-free ones (how close the fit is to the truth); iterations (eos: fixed; ours: the most any frame used).

    .venv/bin/pip install -e ".[bench]"                    # eos-py, a benchmark-only dependency
    .venv/bin/python benchmarks/fitting_bench.py             # batches 1, 64, 1024; writes results/fitting_bench.csv
    .venv/bin/python benchmarks/fitting_bench.py --frames 256 --eos-frames 100 --repeats 1

Timings are wall-clock: run on a quiet machine (other busy processes on a 2-core CPU distort them badly).
"""
from __future__ import annotations
import argparse, platform, time
from pathlib import Path
import numpy as np
import pandas as pd
import torch
from portrait_nb.head import HeadModel
from portrait_nb.fitting import FitResult, fit_landmarks, landmark_model_from_arrays, project, so3_exp

N_SHAPE, N_EXPR, SIZE, SCALE = 50, 30, 256, 1000.     # components; image size (px); pixels per metre of the ortho camera
FLIP = torch.diag(torch.tensor([1., -1., -1.]))        # FLAME axes (y up, z out of the face) to image axes (y down)


def landmark_vertices(head: HeadModel) -> np.ndarray:
    "The 68 vertex ids nearest to the head's landmarks at rest (eos maps landmarks to vertices, not to barycentric points)."
    with torch.no_grad(): out = head()
    return torch.cdist(out.landmarks, out.vertices).argmin(-1).numpy()


def model_arrays(head: HeadModel) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    "Mean `(V, 3)`, shape `(V, 3, Ns)` and expression `(V, 3, Ne)` bases, and triangles, as float32 numpy."
    fl = head.flame
    f = lambda t: t.detach().float().numpy()
    return f(fl.v_template + head.offset), f(fl.shapedirs[..., :N_SHAPE]), f(fl.expr_dirs[..., :N_EXPR]), head.faces.numpy()


def make_landmarks(model, n: int, seed: int = 0, noise: float = 1.) -> dict:
    "Random faces seen by a scaled orthographic camera: noise-free and noisy landmarks `(n, 68, 2)` in pixels."
    g = torch.Generator().manual_seed(seed)
    beta, psi = torch.randn(n, N_SHAPE, generator=g), 0.7 * torch.randn(n, N_EXPR, generator=g)
    R = FLIP @ so3_exp(0.3 * torch.randn(n, 3, generator=g))
    cam = torch.tensor([SCALE, SIZE / 2, SIZE / 2]).expand(n, 3)
    clean = project(R, cam, model.points(beta, psi), camera='ortho')[0]
    return dict(clean=clean, noisy=clean + noise * torch.randn(clean.shape, generator=g))


def eos_model(mean, shape, expr, faces):
    "An eos `MorphableModel` with the same bases (eigenvalues 1: the bases are already scaled by their standard deviations)."
    import eos
    pca = lambda m, b: eos.morphablemodel.PcaModel(m.reshape(-1), b.reshape(-1, b.shape[-1]), np.ones(b.shape[-1], np.float32), faces.tolist())
    return eos.morphablemodel.MorphableModel(pca(mean, shape), pca(np.zeros_like(mean), expr), eos.morphablemodel.PcaModel())


def run_eos(mm, verts: np.ndarray, lmk: np.ndarray) -> tuple[np.ndarray, float]:
    "eos fits one image at a time: the fitted landmark pixels `(n, 68, 2)` and the seconds it took."
    import eos
    mapper, out = eos.core.LandmarkMapper(), []                        # identity mapping: landmark name = vertex id
    t0 = time.perf_counter()
    for pts in lmk:
        lms = [eos.core.Landmark(str(v), [float(x), float(y)]) for v, (x, y) in zip(verts, pts)]
        mesh, pose, _, _ = eos.fitting.fit_shape_and_pose(mm, lms, mapper, SIZE, SIZE, 5)
        P = pose.get_projection() @ pose.get_modelview()                 # OpenGL-style: clip coordinates, then the viewport
        X = np.c_[np.asarray(mesh.vertices)[verts], np.ones(len(verts))] @ P.T
        out.append(np.c_[(X[:, 0] + 1) * SIZE / 2, (1 - X[:, 1]) * SIZE / 2])
    return np.stack(out), time.perf_counter() - t0


def rms(a, b) -> np.ndarray:
    "RMS landmark distance per frame (px)."
    return np.sqrt(((np.asarray(a) - np.asarray(b)) ** 2).sum(-1).mean(-1))


def run_ours(model, lmk: torch.Tensor, batch: int, repeats: int) -> tuple[torch.Tensor, float, int]:
    "Our fitter over `lmk` in batches of `batch` frames: fitted pixels, best-of-`repeats` seconds, iterations."
    best, fits = float('inf'), []
    for _ in range(repeats):
        t0, fits = time.perf_counter(), []
        for i in range(0, len(lmk), batch): fits.append(fit_landmarks(model, lmk[i:i + batch], camera='ortho'))
        best = min(best, time.perf_counter() - t0)
    uv = torch.cat([project(f.rotation, f.cam, model.points(f.shape, f.expression), camera='ortho')[0] for f in fits])
    return uv, best, max(f.iterations for f in fits)


def main(frames: int = 1024, eos_frames: int = 200, batches=(1, 64, 1024), repeats: int = 3, threads: int | None = None, seed: int = 0):
    if threads: torch.set_num_threads(threads)
    head = HeadModel(resolution='flame', n_shape=N_SHAPE, n_expr=N_EXPR)
    mean, shape, expr, faces = model_arrays(head)
    verts = landmark_vertices(head)
    model = landmark_model_from_arrays(mean, shape, expr, verts)
    data = make_landmarks(model, frames, seed)
    rows = []
    try:
        uv, secs = run_eos(eos_model(mean, shape, expr, faces), verts, data['noisy'][:eos_frames].numpy())
        rows.append(dict(fitter='eos-py fit_shape_and_pose', batch=1, frames=eos_frames, frames_per_s=eos_frames / secs,
                         err_observed_px=np.median(rms(uv, data['noisy'][:eos_frames])),
                         err_truth_px=np.median(rms(uv, data['clean'][:eos_frames])), iterations=5))
    except ImportError:
        print("eos-py is not installed (pip install -e '.[bench]'): its row is missing")
    for b in batches:
        n = min(frames, max(b, 64)) if b == 1 else frames      # batch 1: 64 single-frame calls are enough to time
        uv, secs, it = run_ours(model, data['noisy'][:n], b, repeats if b > 1 else 1)
        rows.append(dict(fitter='portrait_nb fit_landmarks', batch=b, frames=n, frames_per_s=n / secs,
                         err_observed_px=np.median(rms(uv, data['noisy'][:n])), err_truth_px=np.median(rms(uv, data['clean'][:n])),
                         iterations=it))
    df = pd.DataFrame(rows)
    if df.fitter.str.startswith('eos').any():
        df['x_eos'] = df.frames_per_s / df.frames_per_s.iloc[0]
    df['threads'], df['cpu'] = torch.get_num_threads(), platform.processor() or platform.machine()
    out = Path(__file__).resolve().parent.parent / 'results' / 'fitting_bench.csv'
    out.parent.mkdir(exist_ok=True); tmp = out.with_suffix('.tmp'); df.to_csv(tmp, index=False); tmp.replace(out)
    print(df.drop(columns=['cpu']).to_string(index=False, float_format=lambda x: f'{x:.3g}'))
    print(f'written to {out}')
    return df


if __name__ == '__main__':
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--frames', type=int, default=1024)
    p.add_argument('--eos-frames', type=int, default=200)
    p.add_argument('--batches', type=int, nargs='+', default=[1, 64, 1024])
    p.add_argument('--repeats', type=int, default=3)
    p.add_argument('--threads', type=int, default=None)
    p.add_argument('--seed', type=int, default=0)
    a = p.parse_args()
    main(a.frames, a.eos_frames, tuple(a.batches), a.repeats, a.threads, a.seed)
