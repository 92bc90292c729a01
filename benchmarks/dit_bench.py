"""Training-step speed and memory of `portrait_nb.dit.FactorDiT`, side by side with diffusers' `WanTransformer3DModel`.

Both models get the same config, the same weights and the same input, in the same process. diffusers gets the reference
latent prepended as its frame 0 and our learned context as its text, which is what `FactorDiT` computes inside (the
equivalence test in nbs/08_dit.ipynb). One training step is forward, a mean-squared loss on the generated frames, and
backward. The settings are timed in interleaved rounds (A B C A B C ...), so a burst of load from other processes hits
them all alike. Each row reports the best and the median wall-clock step, the median process CPU time, and speedups
as the median over rounds of the paired ratio (the two steps of a pair run moments apart, so a burst of load from another
process mostly cancels); `speedup_vs_diffusers_fp32_cpu_time` is the ratio of median CPU times, which load from other
processes inflates least.

    .venv/bin/python benchmarks/dit_bench.py                          # CPU, `cpu` preset, 64x64 px, 17 frames, batch 2
    .venv/bin/python benchmarks/dit_bench.py --no-compile --repeats 5 # quick, eager only
    .venv/bin/python benchmarks/dit_bench.py --device cuda            # GPU: wan2.1-1.3b, bf16, 81 frames at 480x832

Rows (settings):
  diffusers fp32 eager      diffusers' default: the baseline of every `speedup_vs_diffusers_fp32`
  ours      fp32 eager      the same config (`wan` variant: conditions off): target >= 1.0x at the same precision
  diffusers bf16 eager      autocast to bfloat16
  ours      bf16 eager      the same precision as the row above: `speedup_same_precision`
  ours      bf16 compiled   the trainer's settings (bf16 autocast, torch.compile): target >= 1.5x against diffusers fp32
  ours-full bf16 compiled   with normal latents, ray maps and the expression controller: what the trainer actually runs
On a GPU (`--device cuda`) the model is Wan 2.1 1.3B at a 480p-like token count (21x30x52 tokens plus the reference frame,
or `--frames/--size` that fit), in bf16 with activation checkpointing, and the rows add tokens/s and the model FLOP
utilisation: FLOPs of one step (forward and backward, counted by `torch.utils.flop_counter` on the `meta` device, without
checkpointing's recomputation) per second, over the GPU's dense bf16 peak. The GPU rows are all bf16, so there the
`speedup_vs_diffusers_fp32` column is relative to diffusers' bf16 eager step. Token counts include the reference frame.

Peak memory is the most memory allocated during one step, above what was allocated before it (the parameters and their
gradients). On CPU it is read from the profiler's allocation events; on GPU it is `torch.cuda.max_memory_allocated` minus
the memory allocated before the step. Timings are wall-clock: on a shared 2-core machine, another busy process slows
every row, and the median more than the best. OMP_WAIT_POLICY=PASSIVE keeps OpenMP threads from spin-waiting.
Writes `results/dit_bench.csv` (or `--out`).
"""
from __future__ import annotations
import argparse, os, platform, statistics, time
from pathlib import Path
import pandas as pd
import torch
from portrait_nb.cameras import n_latent_frames
from portrait_nb.dit import EXPR_DIM, RAY_CHANNELS, FactorDiT, dit_config, frame_timesteps

GPU_BF16_PEAK_TFLOPS = {'H100 SXM': 989.4, 'H100 80GB HBM3': 989.4, 'H100 PCIe': 756.5, 'H100 NVL': 835.5, 'H200': 989.4,
                        'A100': 312.0, 'L40S': 362.1, 'A10G': 70.0, 'L4': 121.0}   # dense (no sparsity), vendor data sheets
CPU_DEFAULTS = dict(preset='cpu', batch=2, frames=17, size=(64, 64))
GPU_DEFAULTS = dict(preset='wan2.1-1.3b', batch=1, frames=81, size=(480, 832))


def gpu_peak_tflops(name: str) -> float | None:
    "Dense bf16 peak of a GPU from its name, or None when unknown (give --peak-tflops)."
    name = name.replace('NVIDIA ', '')
    hits = [v for k, v in GPU_BF16_PEAK_TFLOPS.items() if k in name]
    return hits[0] if hits else None


def sync(device: torch.device) -> None:
    if device.type == 'cuda': torch.cuda.synchronize(device)


def make_inputs(c, batch: int, frames: int, size: tuple, device, seed: int = 0) -> dict:
    "Random inputs with the contract's shapes (rays random too: their values do not change the cost)."
    g, Tl, h, w = torch.Generator().manual_seed(seed), n_latent_frames(frames), size[0] // 8, size[1] // 8
    r = lambda *s: torch.randn(*s, generator=g).to(device)
    return dict(x=r(batch, 16, Tl, h, w), timestep=(torch.rand(batch, generator=g) * 1000).to(device), reference=r(batch, 16, 1, h, w),
                normals=r(batch, 16, Tl, h, w), rays=r(batch, RAY_CHANNELS, Tl, h, w), expression=r(batch, frames, EXPR_DIM))


def model_kwargs(model: FactorDiT, inp: dict) -> dict:
    "The inputs `model` takes (the `wan` variant takes no conditions)."
    c = model.config
    keep = {'x', 'timestep', 'reference', *['normals'] * c.use_normals, *['rays'] * c.use_rays, *['expression'] * (c.expression == 'controller')}
    return {k: v for k, v in inp.items() if k in keep}


def ours_step(model, inp: dict, precision: str):
    "One training step of our model: forward, loss on the generated frames, backward."
    kw = model_kwargs(model, inp)
    def step():
        with torch.autocast(inp['x'].device.type, dtype=torch.bfloat16, enabled=precision == 'bf16'):
            v = model(**kw)
        v.float().square().mean().backward()
    return step


def diffusers_step(d, ours: FactorDiT, inp: dict, precision: str):
    "The same step with diffusers: reference prepended as frame 0, our learned context as text, frame 0 dropped from the loss."
    x, B = inp['x'], inp['x'].shape[0]
    hidden = torch.cat([inp['reference'], x], 2)
    t = frame_timesteps(inp['timestep'], B, x.shape[2], ours.config.reference_timestep)[:, 0]
    ctx = ours.context.detach()[None].expand(B, -1, -1)
    def step():
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=precision == 'bf16'):
            v = d(hidden, t, ctx, return_dict=False)[0][:, :, 1:]
        v.float().square().mean().backward()
    return step


def cpu_peak_mb(step) -> float:
    "Most CPU memory allocated during one `step`, above what was allocated before it (profiler allocation events)."
    from torch.profiler import profile, ProfilerActivity
    from torch._C._profiler import _EventType
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof: step()
    stack, peak = list(prof.profiler.kineto_results.experimental_event_tree()), 0
    while stack:
        e = stack.pop(); stack.extend(e.children)
        if e.tag == _EventType.Allocation and e.extra_fields.device.type == 'cpu': peak = max(peak, e.extra_fields.total_allocated)
    return peak / 2**20


def gpu_peak_mb(step, device) -> float:
    sync(device); base = torch.cuda.memory_allocated(device); torch.cuda.reset_peak_memory_stats(device)
    step(); sync(device)
    return (torch.cuda.max_memory_allocated(device) - base) / 2**20


def model_flops(c, batch: int, frames: int, size: tuple) -> float:
    "FLOPs of one training step (forward and backward, no recomputation), counted on the meta device."
    from torch.utils.flop_counter import FlopCounterMode
    with torch.device('meta'):
        m = FactorDiT(c)
        kw = model_kwargs(m, make_inputs_meta(c, batch, frames, size))
        with FlopCounterMode(display=False) as fc: m(**kw).float().square().mean().backward()
    return float(fc.get_total_flops())


def make_inputs_meta(c, batch, frames, size) -> dict:
    Tl, h, w = n_latent_frames(frames), size[0] // 8, size[1] // 8
    e = lambda *s: torch.empty(*s, device='meta')
    return dict(x=e(batch, 16, Tl, h, w), timestep=e(batch), reference=e(batch, 16, 1, h, w), normals=e(batch, 16, Tl, h, w),
                rays=e(batch, RAY_CHANNELS, Tl, h, w), expression=e(batch, frames, EXPR_DIM))


def build(preset: str, variant: str, device, seed: int = 0) -> FactorDiT:
    "A model of `preset` and `variant`, built (and initialised) directly on `device`."
    torch.manual_seed(seed)
    with torch.device(device): return FactorDiT(dit_config(preset, variant))


def settings(args, device) -> list[dict]:
    "Every (label, model, precision, compile) to time, with its step function."
    ours = build(args.preset, 'wan', device)
    d = ours.to_diffusers()
    full = build(args.preset, 'full', device) if args.full else None
    for m in (ours, d, full):
        if m is not None and args.checkpointing:
            m.enable_gradient_checkpointing() if m is d else setattr(m, 'gradient_checkpointing', True)
    inp = make_inputs(ours.config, args.batch, args.frames, args.size, device)
    rows = [('diffusers', 'wan', d, 'fp32', False), ('ours', 'wan', ours, 'fp32', False),
            ('diffusers', 'wan', d, 'bf16', False), ('ours', 'wan', ours, 'bf16', False)]
    if device.type == 'cuda': rows = [r for r in rows if r[3] == 'bf16'] + ([('ours', 'wan', ours, 'bf16', True)] if args.compile else [])
    elif args.compile: rows += [('ours', 'wan', ours, 'bf16', True)]
    if args.compile_diffusers: rows += [('diffusers', 'wan', d, 'bf16', True)]
    if full is not None: rows += [('ours', 'full', full, 'bf16', args.compile)]
    out = []
    for who, variant, m, prec, comp in rows:
        mod = torch.compile(m) if comp else m
        step = diffusers_step(mod, ours, inp, prec) if who == 'diffusers' else ours_step(mod, inp, prec)
        out.append(dict(model=who, variant=variant, precision=prec, compiled=comp, step=step, params=sum(p.numel() for p in m.parameters())))
    return out


def time_rounds(rows: list[dict], repeats: int, device) -> None:
    "Warm up (and compile) each setting, then time `repeats` interleaved rounds: wall-clock and process CPU time per step."
    for r in rows:
        t = time.perf_counter(); r['step'](); r['step'](); sync(device)
        r['warmup_s'] = time.perf_counter() - t
        print(f"  warm-up {r['model']:9s} {r['variant']:4s} {r['precision']} compiled={r['compiled']}: {r['warmup_s']:.1f} s", flush=True)
        r['wall'], r['cpu'] = [], []
    for _ in range(repeats):
        for r in rows:
            sync(device); t, c = time.perf_counter(), time.process_time(); r['step'](); sync(device)
            r['wall'].append(time.perf_counter() - t); r['cpu'].append(time.process_time() - c)


def paired_speedup(ref: dict, row: dict) -> float:
    "Median over rounds of the reference's time over the row's, each pair measured moments apart (robust to bursts of load)."
    return statistics.median(a / b for a, b in zip(ref['wall'], row['wall']))


def summarise(rows, args, device, flops: float | None, peak_tflops: float | None) -> pd.DataFrame:
    Tl, h, w = n_latent_frames(args.frames), args.size[0] // 8, args.size[1] // 8
    tokens = args.batch * (1 + Tl) * (h // 2) * (w // 2)
    base = {(r['precision'], r['compiled']): r for r in rows if r['model'] == 'diffusers'}
    ref = base.get(('fp32', False)) or base.get(('bf16', False))
    med = lambda r, k: statistics.median(r[k])
    out = []
    for r in rows:
        same = base.get((r['precision'], r['compiled'])) or base.get((r['precision'], False))
        row = dict(device=device.type, preset=args.preset, model=r['model'], variant=r['variant'], precision=r['precision'],
                   compiled=r['compiled'], checkpointing=args.checkpointing, batch=args.batch, frames=args.frames,
                   size=f'{args.size[0]}x{args.size[1]}', tokens=tokens, params=r['params'],
                   step_ms_best=1e3 * min(r['wall']), step_ms_median=1e3 * med(r, 'wall'), cpu_ms_median=1e3 * med(r, 'cpu'),
                   speedup_vs_diffusers_fp32=paired_speedup(ref, r), speedup_vs_diffusers_fp32_cpu_time=med(ref, 'cpu') / med(r, 'cpu'),
                   speedup_same_precision=paired_speedup(same, r), tokens_per_s=tokens / med(r, 'wall'), peak_mem_mb=r['peak_mem_mb'],
                   warmup_s=r['warmup_s'], repeats=len(r['wall']))
        if flops: row |= dict(step_tflop=flops / 1e12, achieved_tflops=flops / med(r, 'wall') / 1e12,
                              mfu=(flops / med(r, 'wall')) / (peak_tflops * 1e12) if peak_tflops else float('nan'))
        out.append(row)
    return pd.DataFrame(out)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--device', default='cpu'); p.add_argument('--preset'); p.add_argument('--batch', type=int)
    p.add_argument('--frames', type=int); p.add_argument('--size', type=int, nargs=2)
    p.add_argument('--repeats', type=int, default=None); p.add_argument('--threads', type=int, default=None)
    p.add_argument('--no-compile', dest='compile', action='store_false'); p.add_argument('--compile-diffusers', action='store_true')
    p.add_argument('--no-full', dest='full', action='store_false', help='leave out the full model (conditions and controller)')
    p.add_argument('--checkpointing', action=argparse.BooleanOptionalAction, default=None, help='activation checkpointing (default: on for cuda)')
    p.add_argument('--peak-tflops', type=float, default=None, help='dense bf16 peak of the GPU, if its name is not known')
    p.add_argument('--out', default='results/dit_bench.csv')
    args = p.parse_args(argv)
    device = torch.device(args.device)
    for k, v in (GPU_DEFAULTS if device.type == 'cuda' else CPU_DEFAULTS).items():
        if getattr(args, k) is None: setattr(args, k, tuple(v) if k == 'size' else v)
    args.size = tuple(args.size)
    if args.checkpointing is None: args.checkpointing = device.type == 'cuda'
    if args.repeats is None: args.repeats = 5 if device.type == 'cuda' else 20
    if device.type == 'cpu': torch.set_num_threads(args.threads or os.cpu_count())
    if device.type == 'cuda': torch.backends.cuda.matmul.allow_tf32 = True
    hw = torch.cuda.get_device_name(device) if device.type == 'cuda' else (platform.processor() or platform.machine())
    print(f'{hw}; torch {torch.__version__}; {torch.get_num_threads()} threads; preset {args.preset}, batch {args.batch}, '
          f'{args.frames} frames at {args.size[0]}x{args.size[1]}', flush=True)
    rows = settings(args, device)
    time_rounds(rows, args.repeats, device)
    for r in rows: r['peak_mem_mb'] = gpu_peak_mb(r['step'], device) if device.type == 'cuda' else cpu_peak_mb(r['step'])
    flops = model_flops(dit_config(args.preset, 'wan'), args.batch, args.frames, args.size)
    peak = args.peak_tflops or (gpu_peak_tflops(hw) if device.type == 'cuda' else None)
    df = summarise(rows, args, device, flops, peak).assign(hardware=hw, torch=torch.__version__, threads=torch.get_num_threads(),
                                                           omp_wait_policy=os.environ.get('OMP_WAIT_POLICY', ''))
    out = Path(args.out); out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + '.tmp'); df.to_csv(tmp, index=False); os.replace(tmp, out)
    cols = ['model', 'variant', 'precision', 'compiled', 'step_ms_best', 'step_ms_median', 'cpu_ms_median', 'speedup_vs_diffusers_fp32',
            'speedup_vs_diffusers_fp32_cpu_time', 'speedup_same_precision', 'tokens_per_s', 'peak_mem_mb']
    cols += ['achieved_tflops', 'mfu'] if 'mfu' in df else []
    print(df[cols].round(3).to_string(index=False))
    print(f'wrote {out}')
    return df


if __name__ == '__main__':
    main()
