"""Where a CPU training step's time goes, and faster ways to run QuartzNet's depthwise convolutions (issue #27).

One run, side by side, on random features (a batch of `--batch` clips of `--frames` 10 ms frames, 64 mels):
 1. torch.profiler over one fp32 step (forward, CTC loss, backward): self CPU time per kind of op, for the model's
    conv1d form (NCW tensors, F.conv1d: how NeMo runs QuartzNet, and this model before) and as it runs now;
 2. each depthwise convolution shape of the preset, forward + backward, as F.conv1d(groups=C) and alternatives,
    each first checked equal to it (output and both gradients);
 3. the whole step, fp32 and bf16 autocast, conv1d form against the model as it is.
The model (model.py) keeps the same parameters (a Conv1d's [C, 1, K] weight is viewed as [C, 1, 1, K]) and runs the
network on [B, C, 1, T] tensors stored time-major (channels_last), where oneDNN has jit depthwise kernels; a dilated
depthwise conv folds time into [T/d, d] and convolves along T/d (those kernels take no dilation). 1x1 convolutions
as F.linear on the same memory were tried and were slower (4.34 s a 15x5 step against 4.04). Timings are medians
[min-max] over interleaved repeats, each with the median 1-minute load average during its repeats (this machine is
shared). --compile adds torch.compile of the model (inductor needs g++; minutes the first time, then cached in /tmp).
    python bench/train_speed.py [--preset 15x5] [--batch 8] [--frames 1000] [--threads 2] [--all] [--compile]
"""

from __future__ import annotations

import argparse
import copy
import os
import shutil
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

Conv = Callable[[torch.Tensor, torch.Tensor, int, int], torch.Tensor]  # (x, weight [C, 1, K], stride, dilation)


# ---- depthwise alternatives: each takes x in its layout below ([B, C, T] or [B, C, 1, T]) and returns y in it


def dw_conv1d(x: torch.Tensor, w: torch.Tensor, s: int, d: int) -> torch.Tensor:
    return F.conv1d(x, w, None, s, d * (w.shape[2] - 1) // 2, d, w.shape[0])


def dw_conv2d(x: torch.Tensor, w: torch.Tensor, s: int, d: int) -> torch.Tensor:
    """[B, C, 1, T] with a (1, K) kernel: what conv1d does inside, in whichever memory format x has."""
    return F.conv2d(x, w.unsqueeze(2), None, (1, s), (0, d * (w.shape[2] - 1) // 2), (1, d), w.shape[0])


def dw_conv2d_cl(x: torch.Tensor, w: torch.Tensor, s: int, d: int) -> torch.Tensor:
    """x: [B, C, 1, T] channels_last, as the model runs it (model.conv_1xk: a dilated one folded into [T/d, d])."""
    from proslushka.model import conv_1xk

    return conv_1xk(x, w, None, s, d * (w.shape[2] - 1) // 2, d, w.shape[0])


def dilate(w: torch.Tensor, d: int) -> torch.Tensor:
    """[C, 1, K] → [C, 1, d(K-1)+1] with zeros between the taps."""
    if d == 1:
        return w
    c, _, k = w.shape
    return torch.cat([w.unsqueeze(3), w.new_zeros(c, 1, k, d - 1)], 3).reshape(c, 1, k * d)[..., : d * (k - 1) + 1]


def dw_toeplitz(x: torch.Tensor, w: torch.Tensor, s: int, d: int, block: int = 64) -> torch.Tensor:
    """unfold + bmm: time cut into blocks of `block` outputs, each the product of its block+K-1 inputs with a
    per-channel [block, block+K-1] banded (Toeplitz) matrix built from w by a strided view (so its gradient is a sum
    along the diagonals). Twice conv's multiplies at K ~ block, but in MKL's batched GEMM."""
    w = dilate(w, d)
    c, _, k = w.shape
    b, _, t = x.shape
    n = -(-t // block)
    p = (k - 1) // 2
    xb = F.pad(x, (p, p + n * block - t)).unfold(2, block + k - 1, block)  # [B, C, n, block+K-1]
    xb = xb.permute(1, 0, 2, 3).reshape(c, b * n, block + k - 1)
    # row j of the band is w shifted right by j: read [0]*block + w repeated, with a stride one short of its length
    z = F.pad(w.squeeze(1), (block, 0)).repeat(1, block + 1)
    band = z[:, block : block + block * (block + k - 1)].reshape(c, block, block + k - 1)
    y = torch.bmm(xb, band.transpose(1, 2)).reshape(c, b, n * block)[:, :, :t].permute(1, 0, 2)
    return y[:, :, ::s] if s > 1 else y


def dw_fft(x: torch.Tensor, w: torch.Tensor, s: int, d: int) -> torch.Tensor:
    """Circular cross-correlation by rfft on a power-of-two length with room for the kernel, rotated by the pad."""
    w = dilate(w, d)
    k, t = w.shape[2], x.shape[2]
    p = (k - 1) // 2
    n = 1 << (t + k - 2).bit_length()
    y = torch.fft.irfft(torch.fft.rfft(x, n) * torch.fft.rfft(w.squeeze(1), n).conj(), n)
    y = torch.cat([y[..., n - p :], y[..., : t - p]], -1) if p else y[..., :t]
    return y[:, :, ::s] if s > 1 else y


def dw_unfold_einsum(x: torch.Tensor, w: torch.Tensor, s: int, d: int) -> torch.Tensor:
    k = w.shape[2]
    p = d * (k - 1) // 2
    y = torch.einsum("bctk,ck->bct", F.pad(x, (p, p)).unfold(2, d * (k - 1) + 1, 1)[..., ::d], w.squeeze(1))
    return y[:, :, ::s] if s > 1 else y


def dw_no_mkldnn(x: torch.Tensor, w: torch.Tensor, s: int, d: int) -> torch.Tensor:
    with torch.backends.mkldnn.flags(enabled=False):
        return dw_conv1d(x, w, s, d)


def ncw(x: torch.Tensor) -> torch.Tensor:
    return x


def nc1t_channels_last(x: torch.Tensor) -> torch.Tensor:
    return x.unsqueeze(2).contiguous(memory_format=torch.channels_last)


def nc1t(x: torch.Tensor) -> torch.Tensor:
    return x.unsqueeze(2)


# name → (function, layout of its input and output, dtype); the first is the reference
ALTERNATIVES: dict[str, tuple[Conv, Callable, torch.dtype]] = {
    "conv1d": (dw_conv1d, ncw, torch.float32),
    "conv2d": (dw_conv2d, nc1t, torch.float32),
    "conv2d_cl": (dw_conv2d_cl, nc1t_channels_last, torch.float32),
    "toeplitz": (dw_toeplitz, ncw, torch.float32),
    "fft": (dw_fft, ncw, torch.float32),
    "unfold_einsum": (dw_unfold_einsum, ncw, torch.float32),
    "no_mkldnn": (dw_no_mkldnn, ncw, torch.float32),
    "bf16 conv1d": (dw_conv1d, ncw, torch.bfloat16),
    "bf16 conv2d_cl": (dw_conv2d_cl, nc1t_channels_last, torch.bfloat16),
}
SLOW = ["unfold_einsum", "no_mkldnn"]  # 3x and 5x conv1d's time at C 512 K 63: only with --all


# ---- measuring


def load() -> float:
    return os.getloadavg()[0]


def fwd_bwd(fn: Conv, x: torch.Tensor, w: torch.Tensor, g: torch.Tensor, s: int, d: int) -> float:
    x.grad = w.grad = None
    t = time.perf_counter()
    fn(x, w, s, d).backward(g)
    return time.perf_counter() - t


def rel_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| / max |b|."""
    a, b = a.double(), b.double()
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-300)).item()


def depthwise_shapes(cfg, frames: int) -> dict[tuple[int, int, int, int, int], int]:
    """(channels, kernel, frames in, stride, dilation) → how many depthwise convs of that shape the model runs."""
    shapes: dict[tuple[int, int, int, int, int], int] = {}
    c, t = cfg.feat_in, frames
    for b in cfg.blocks:
        for _ in range(b.repeat):
            if b.separable:
                key = (c, b.kernel, t, b.stride, b.dilation)
                shapes[key] = shapes.get(key, 0) + 1
            c = b.filters
            t = -(-t // b.stride)
    return shapes


def bench_depthwise(cfg, batch: int, frames: int, names: list[str], repeats: int) -> None:
    print(f"\n2. depthwise conv forward + backward, ms per call, median [min-max] over {repeats} interleaved repeats")
    print("   (x: how many the model runs; err: max|y - conv1d's| / max|conv1d's| over y, dL/dx, dL/dw; load avg)")
    totals = dict.fromkeys(names, 0.0)
    for (c, k, t, s, d), count in depthwise_shapes(cfg, frames).items():
        gen = torch.Generator().manual_seed(0)
        x = torch.randn(batch, c, t, generator=gen)
        w = torch.randn(c, 1, k, generator=gen) * k**-0.5
        g = torch.randn(batch, c, -(-t // s), generator=gen)
        runs, errs, ref = {}, {}, None
        for name in names:  # warm-up, and the equality check
            fn, layout, dtype = ALTERNATIVES[name]
            xr = layout(x).to(dtype).detach().clone().requires_grad_()  # clone keeps the layout
            wr, gr = w.to(dtype).detach().clone().requires_grad_(), layout(g).to(dtype)
            y = fn(xr, wr, s, d)
            y.backward(gr)
            got = [v.detach().reshape(batch, c, -1) for v in (y, xr.grad)] + [wr.grad]
            ref = got if ref is None else ref
            errs[name] = max(rel_diff(a, b) for a, b in zip(got, ref, strict=True))
            runs[name] = (fn, xr, wr, gr)
        times = {name: [] for name in names}
        loads = {name: [] for name in names}
        for _ in range(repeats):
            for name in names:
                fn, xr, wr, gr = runs[name]
                times[name].append(fwd_bwd(fn, xr, wr, gr, s, d) * 1e3)
                loads[name].append(load())
        what = f"C {c} K {k} T {t}" + (f" stride {s}" if s > 1 else "") + (f" dilation {d}" if d > 1 else "")
        print(f"  {what}, x{count}:")
        base = statistics.median(times[names[0]])
        for name in names:
            m = statistics.median(times[name])
            totals[name] += m * count
            print(
                f"    {name:15s} {m:8.1f} [{min(times[name]):7.1f}-{max(times[name]):7.1f}]  {m / base:5.2f}x"
                f"  err {errs[name]:.1e}  load {statistics.median(loads[name]):.1f}"
            )
    print("  all the model's depthwise convs, forward + backward (sum of medians x count):")
    for name in names:
        print(f"    {name:15s} {totals[name] / 1e3:8.2f} s  {totals[name] / totals[names[0]]:5.2f}x")


class Step:
    """One training step (forward, summed CTC loss, backward) of `model` on a fixed random batch."""

    def __init__(self, model: nn.Module, batch: int, frames: int, dtype: torch.dtype = torch.float32):
        gen = torch.Generator().manual_seed(1)
        self.model = model
        self.x = torch.randn(batch, model.cfg.feat_in, frames, generator=gen, dtype=dtype)
        # a duration-bucketed batch: clips from 80% to 100% of the longest, so the masking has work to do
        self.lengths = torch.linspace(0.8 * frames, frames, batch).round().long()
        out_frames = frames // model.cfg.stride
        self.target_len = (self.lengths // model.cfg.stride // 5).clamp_max(out_frames // 2)
        self.targets = torch.randint(0, model.cfg.num_classes - 1, (batch, int(self.target_len.max())), generator=gen)

    def __call__(self, forward: Callable, bf16: bool) -> tuple[float, torch.Tensor, list[torch.Tensor]]:
        self.model.zero_grad(set_to_none=True)
        t = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logp, out_len = forward(self.x, self.lengths)
        blank = self.model.cfg.num_classes - 1
        loss = F.ctc_loss(
            logp.transpose(0, 1), self.targets, out_len, self.target_len, blank, "sum", zero_infinity=True
        )
        loss.backward()
        return time.perf_counter() - t, logp.detach(), [p.grad for p in self.model.parameters()]


CATEGORIES = [
    "depthwise conv fwd",
    "depthwise conv bwd",
    "1x1 conv fwd",
    "1x1 conv bwd",
    "BatchNorm fwd+bwd",
    "masking (mul) fwd+bwd",
    "ReLU fwd+bwd",
    "layout copies",
    "CTC + log_softmax",
    "rest",
]


def category(name: str, shapes: list) -> str:
    def is_dw(weight: list) -> bool:
        return len(weight) >= 3 and weight[1] == 1 and max(weight[2:]) > 1

    if name == "aten::mkldnn_convolution":
        return "depthwise conv fwd" if is_dw(shapes[1]) else "1x1 conv fwd"
    if name == "aten::convolution_backward":
        return "depthwise conv bwd" if is_dw(shapes[2]) else "1x1 conv bwd"
    if "batch_norm" in name:
        return "BatchNorm fwd+bwd"
    if name == "aten::mul" and len(shapes) == 2 and len(shapes[1]) >= 3 and shapes[1][1] == 1:
        return "masking (mul) fwd+bwd"
    if name in ("aten::clamp_min", "aten::relu", "aten::threshold_backward"):
        return "ReLU fwd+bwd"
    if name in ("aten::copy_", "aten::clone", "aten::contiguous"):
        return "layout copies"
    if "ctc" in name or "softmax" in name:
        return "CTC + log_softmax"
    return "rest"


def profile(step: Step, forward: Callable) -> dict[str, float]:
    """Self CPU seconds per category over one fp32 step."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    with torch_profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        step(forward, False)
    out: dict[str, float] = {}
    for e in prof.key_averages(group_by_input_shape=True):
        key = category(e.key, e.input_shapes)
        out[key] = out.get(key, 0.0) + e.self_cpu_time_total / 1e6
    return out


def wiring_check(model: nn.Module, batch: int = 2, frames: int = 200) -> float:
    """The model (channels-last) against its conv1d form in float64, where the order of the sums no longer shows: at
    random init a 15x5 step is chaotic, its fp32 gradients move ~10% with the summation order alone (oneDNN off,
    same formulas) and ~30% with a 1e-6 change of the input. → max relative difference over log-probs and
    gradients."""
    from proslushka.onnx_export import Conv1dForm

    m64 = copy.deepcopy(model).double()
    step = Step(m64, batch, frames, torch.float64)
    _, logp, grads = step(Conv1dForm(m64), False)
    _, lp, gs = step(m64, False)
    return max([rel_diff(lp, logp)] + [rel_diff(a, b) for a, b in zip(gs, grads, strict=True)])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="15x5")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--frames", type=int, default=1000, help="feature frames per clip (100 a second)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--op_repeats", type=int, default=5, help="interleaved repeats of each depthwise alternative")
    p.add_argument("--step_repeats", type=int, default=3, help="interleaved repeats of each whole step")
    p.add_argument("--all", action="store_true", help=f"also the slow depthwise alternatives ({', '.join(SLOW)})")
    p.add_argument("--compile", action="store_true", help="also torch.compile the model as it is (minutes)")
    args = p.parse_args()

    from proslushka.model import QuartzNet, preset
    from proslushka.onnx_export import Conv1dForm

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cpuinfo = Path("/proc/cpuinfo")
    flags = cpuinfo.read_text() if cpuinfo.exists() else ""
    print(
        f"train_speed: preset {args.preset}, batch {args.batch} x {args.frames} frames, random features, "
        f"{torch.get_num_threads()} threads, torch {torch.__version__}, avx512_bf16: "
        f"{'yes' if 'avx512_bf16' in flags else 'no'}, C++ compiler for inductor: {shutil.which('g++') or 'none'}, "
        f"load avg {load():.1f}"
    )
    model = QuartzNet(preset(args.preset)).train()
    step = Step(model, args.batch, args.frames)
    variants: dict[str, tuple[Callable, bool]] = {}
    for bf16 in (False, True):
        kind = "bf16" if bf16 else "fp32"
        variants[f"{kind} conv1d"] = (Conv1dForm(model), bf16)
        variants[f"{kind} channels-last"] = (model, bf16)
    if args.compile:
        t = time.perf_counter()
        compiled = torch.compile(model)
        step(compiled, False)
        print(f"torch.compile of the model: first step (compiling) {time.perf_counter() - t:.0f} s")
        variants["fp32 compiled"] = (compiled, False)

    # warm-up (oneDNN builds its kernels on first use), and the gradients every repeat must reproduce
    first = {name: step(fwd, bf16) for name, (fwd, bf16) in variants.items()}

    print("\n1. one fp32 step under torch.profiler, self CPU seconds (share)")
    shares = {name: profile(step, variants[f"fp32 {name}"][0]) for name in ("conv1d", "channels-last")}
    keys = CATEGORIES + sorted({k for s in shares.values() for k in s} - set(CATEGORIES))
    print(f"  {'':26s}" + "".join(f"{name:>20s}" for name in shares))
    for key in keys:
        cells = [f"{s.get(key, 0.0):6.2f} s ({s.get(key, 0.0) / sum(s.values()):4.0%})" for s in shares.values()]
        print(f"  {key:26s}" + "".join(f"{c:>20s}" for c in cells))
    print(f"  {'total':26s}" + "".join(f"{sum(s.values()):8.2f} s{'':7s}".rjust(20) for s in shares.values()))

    names = [n for n in ALTERNATIVES if args.all or n not in SLOW]
    bench_depthwise(model.cfg, args.batch, args.frames, names, args.op_repeats)

    print(f"\n3. whole training step, s, median [min-max] over {args.step_repeats} interleaved repeats")
    wiring = wiring_check(model)
    print(
        f"   same network: in float64 on batch 2 x 200 frames, channels-last is {wiring:.0e} off conv1d\n"
        "   (max|a - b| / max|b| over log-probs and each gradient); "
        "repeat exact: every repeat's gradients bitwise equal to the warm-up's"
    )
    times = {name: [] for name in variants}
    loads = {name: [] for name in variants}
    same = dict.fromkeys(variants, True)
    for _ in range(args.step_repeats):
        for name, (fwd, bf16) in variants.items():
            seconds, _, grads = step(fwd, bf16)
            times[name].append(seconds)
            loads[name].append(load())
            same[name] &= all(torch.equal(a, b) for a, b in zip(grads, first[name][2], strict=True))
    base = statistics.median(times["fp32 conv1d"])
    for name in variants:
        m = statistics.median(times[name])
        exact = "exact" if same[name] else "DIFFERS"
        print(
            f"  {name:28s} {m:6.2f} [{min(times[name]):6.2f}-{max(times[name]):6.2f}]  {base / m:5.2f}x faster"
            f"  repeat {exact}  load {statistics.median(loads[name]):.1f}"
        )


if __name__ == "__main__":
    main()
