"""Grow a trained QuartzNet into a wider and deeper one that computes the same function (Net2Net: Chen et al., 2016),
so that a bigger preset starts from a smaller model's weights instead of CTC's all-blank start.

Wider: every channel space (a block's output, the features stay) gets extra channels, each a copy of an old one;
producers (convolution rows, BatchNorm entries, depthwise kernels) are copied, and each consumer splits the old
channel's column among its copies. The copies carry equal values, so the sum is the old one. A symmetric split
would leave the copies with equal gradients forever; the split gets zero-sum noise instead, which keeps the function
exact and lets the copies drift apart.

Deeper: new sub-blocks go into each block right after one of its inner ReLUs (a centred unit depthwise kernel, the
identity pointwise, an identity BatchNorm), so their input is non-negative and ReLU after them passes it unchanged.
`calibrate` then gives each new BatchNorm its input's statistics (with a matching scale and shift), so it is also
close to the identity in training mode, where it normalizes by batch statistics.

Eval-mode outputs equal the source model's to float rounding (tests/test_grow.py).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from .model import ModelConfig, QuartzNet, SubBlock
from .onnx_import import calibrate_batchnorm


class GrowError(ValueError):
    """A target that is not a wider/deeper version of the source model; the message says which block and why."""


def check_growable(src: ModelConfig, dst: ModelConfig) -> None:
    """Raise GrowError unless `dst` is `src` with at least as many filters and repeats in every block."""
    if src.se_reduction_ratio != dst.se_reduction_ratio or src.feat_in != dst.feat_in:
        raise GrowError("the feature count and the Squeeze-Excite ratio must match")
    if src.num_classes != dst.num_classes:
        raise GrowError(f"{src.num_classes} outputs in the source, {dst.num_classes} in the target")
    if len(src.blocks) != len(dst.blocks):
        raise GrowError(f"{len(src.blocks)} blocks in the source, {len(dst.blocks)} in the target")
    for i, (a, b) in enumerate(zip(src.blocks, dst.blocks, strict=True)):
        same = ("kernel", "stride", "dilation", "residual", "separable")
        if any(getattr(a, k) != getattr(b, k) for k in same):
            raise GrowError(f"block {i}: {', '.join(same)} must match")
        if a.se or b.se:
            raise GrowError(f"block {i}: Squeeze-Excite blocks cannot be grown")
        if b.filters < a.filters or b.repeat < a.repeat:
            raise GrowError(
                f"block {i}: the target has fewer filters or repeats ({b.filters}x{b.repeat} < {a.filters}x{a.repeat})"
            )
        if b.repeat > a.repeat and (a.repeat < 2 or a.stride != 1):
            raise GrowError(f"block {i}: new sub-blocks need a stride-1 block with at least 2 (it has {a.repeat})")


def _mapping(old: int, new: int, gen: torch.Generator) -> torch.Tensor:
    """New channel → the old channel it copies: the old ones first, then copies of randomly drawn old ones."""
    extra = new - old
    if extra <= old:
        drawn = torch.randperm(old, generator=gen)[:extra]
    else:
        drawn = torch.randint(old, (extra,), generator=gen)
    return torch.cat([torch.arange(old), drawn])


def _split(w: torch.Tensor, g_in: torch.Tensor, noise: float, gen: torch.Generator) -> torch.Tensor:
    """Consumer weights [out, in, k] → [out, len(g_in), k]: each old input column split among its copies, plus noise
    that sums to zero over each set of copies (same function, unequal gradients)."""
    counts = torch.bincount(g_in, minlength=w.shape[1]).to(w.dtype)
    out = w[:, g_in] / counts[g_in][None, :, None]
    if noise > 0:
        eps = torch.randn(out.shape, generator=gen, dtype=w.dtype) * noise * out.abs()
        group_mean = torch.zeros_like(w).index_add_(1, g_in, eps) / counts[None, :, None]
        out = out + eps - group_mean[:, g_in]
    return out


def _copy_sub(dst: SubBlock, src: SubBlock, g_in: torch.Tensor, g_out: torch.Tensor, noise: float, gen) -> None:
    if src.dw is not None:
        dst.dw.weight.copy_(src.dw.weight[g_in])
    dst.conv.weight.copy_(_split(src.conv.weight, g_in, noise, gen)[g_out])
    _copy_bn(dst.bn, src.bn, g_out)


def _copy_bn(dst: torch.nn.BatchNorm1d, src: torch.nn.BatchNorm1d, g: torch.Tensor) -> None:
    for name in ("weight", "bias", "running_mean", "running_var"):
        getattr(dst, name).copy_(getattr(src, name)[g])
    dst.num_batches_tracked.copy_(src.num_batches_tracked)


def _identity_sub(sub: SubBlock) -> None:
    """A sub-block that passes a non-negative input through unchanged (in eval mode, until calibrated)."""
    k = sub.dw.weight.shape[-1]
    sub.dw.weight.zero_()
    sub.dw.weight[:, 0, k // 2] = 1.0
    sub.conv.weight.copy_(torch.eye(sub.conv.weight.shape[0])[:, :, None])
    sub.bn.reset_parameters()  # mean 0, var 1: eval mode computes x · weight / sqrt(1 + eps)
    sub.bn.weight.fill_((1.0 + sub.bn.eps) ** 0.5)


def _placement(old: int, new: int) -> list[int | None]:
    """The target's sub-blocks in order: the index of the old one each copies, or None for a new identity one.
    New ones go round-robin after old sub-blocks 0 .. old-2 (each followed by a ReLU)."""
    after = [0] * old
    for i in range(new - old):
        after[i % (old - 1)] += 1
    order: list[int | None] = []
    for i in range(old):
        order += [i] + [None] * after[i]
    return order


@torch.no_grad()
def grow(src: QuartzNet, dst_cfg: ModelConfig, seed: int = 0, noise: float = 0.1) -> tuple[QuartzNet, list[str]]:
    """The grown model (eval mode) and the names of its new BatchNorms, for `calibrate`."""
    check_growable(src.cfg, dst_cfg)
    gen = torch.Generator().manual_seed(seed)
    dst = QuartzNet(dst_cfg)
    new_bns = []
    g_prev = torch.arange(src.cfg.feat_in)
    for b, (sblock, dblock, scfg, dcfg) in enumerate(
        zip(src.blocks, dst.blocks, src.cfg.blocks, dst_cfg.blocks, strict=True)
    ):
        g_out = _mapping(scfg.filters, dcfg.filters, gen)
        for i, which in enumerate(_placement(scfg.repeat, dcfg.repeat)):
            if which is None:
                _identity_sub(dblock.subs[i])
                new_bns.append(f"blocks.{b}.subs.{i}.bn")
            else:
                g_in = g_prev if which == 0 else g_out
                _copy_sub(dblock.subs[i], sblock.subs[which], g_in, g_out, noise, gen)
        if sblock.res_conv is not None:
            dblock.res_conv.weight.copy_(_split(sblock.res_conv.weight, g_prev, noise, gen)[g_out])
            _copy_bn(dblock.res_bn, sblock.res_bn, g_out)
        g_prev = g_out
    dst.decoder.weight.copy_(_split(src.decoder.weight, g_prev, noise, gen))
    dst.decoder.bias.copy_(src.decoder.bias)
    return dst.eval(), new_bns


def calibrate(model: QuartzNet, new_bns: list[str], clips: Iterable[torch.Tensor]) -> int:
    """Give the new BatchNorms their input's statistics over `clips` (features (feat_in, frames) each); the eval-mode
    function stays the same. Returns the number of clips."""
    return calibrate_batchnorm(model, clips, only=set(new_bns))
