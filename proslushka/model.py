"""QuartzNet: BxR Jasper blocks of masked time-separable convolutions, CTC head, optional Squeeze-Excite.

Masking follows NeMo's MaskedConv1d: every convolution zeroes its input past each clip's length, so a clip padded
into a batch gives the same outputs on its valid frames as the clip alone.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

BN_EPS = 1e-3  # NeMo's BatchNorm1d eps for QuartzNet


@dataclass
class BlockConfig:
    filters: int
    repeat: int = 1
    kernel: int = 1
    stride: int = 1
    dilation: int = 1
    residual: bool = False
    separable: bool = True
    se: bool = False


@dataclass
class ModelConfig:
    feat_in: int = 64
    num_classes: int = 34  # labels + blank (blank is the last index)
    blocks: list[BlockConfig] = field(default_factory=list)
    se_reduction_ratio: int = 8

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        d = dict(d)
        d["blocks"] = [BlockConfig(**b) for b in d["blocks"]]
        return cls(**d)

    @property
    def stride(self) -> int:
        s = 1
        for b in self.blocks:
            s *= b.stride
        return s


def _quartznet(bxr: list[tuple[int, int, int]], repeat: int, se: bool) -> list[BlockConfig]:
    """C1, then (filters, kernel, count) groups of residual blocks, then C2 and C3 (NEMO.md §1.1)."""
    blocks = [BlockConfig(256, 1, 33, stride=2)]
    for filters, kernel, count in bxr:
        blocks += [BlockConfig(filters, repeat, kernel, residual=True, se=se) for _ in range(count)]
    blocks += [BlockConfig(512, 1, 87, dilation=2), BlockConfig(1024, 1, 1, separable=False)]
    return blocks


def preset(name: str, num_classes: int = 34, se: bool = False) -> ModelConfig:
    """Named architectures: '15x5' (QuartzNet15x5, 18.9M), '5x5' (6.7M), 'medium' (3.8M), 'small' (1.2M), 'tiny'
    (tests)."""
    b = [(256, 33, 1), (256, 39, 1), (512, 51, 1), (512, 63, 1), (512, 75, 1)]
    if name == "15x5":
        blocks = _quartznet([(f, k, 3) for f, k, _ in b], 5, se)
    elif name == "5x5":
        blocks = _quartznet(b, 5, se)
    elif name == "small":  # a 5x3 at a quarter of the width: trains on a CPU in an hour
        blocks = [BlockConfig(128, 1, 33, stride=2)]
        blocks += [BlockConfig(f // 2, 3, k, residual=True, se=se) for f, k, _ in b]
        blocks += [BlockConfig(256, 1, 87, dilation=2), BlockConfig(256, 1, 1, separable=False)]
    elif name == "medium":  # a 5x5 at three quarters of the width (3.8M): between small and 5x5 in cost
        blocks = [BlockConfig(192, 1, 33, stride=2)]
        blocks += [BlockConfig(f * 3 // 4, 5, k, residual=True, se=se) for f, k, _ in b]
        blocks += [BlockConfig(384, 1, 87, dilation=2), BlockConfig(512, 1, 1, separable=False)]
    elif name == "tiny":  # the shape of the NeMo test fixture
        blocks = [BlockConfig(64, 1, 11, stride=2)]
        blocks += [BlockConfig(64, 2, k, residual=True, se=se) for k in (13, 15, 17)]
        blocks += [BlockConfig(64, 1, 19, dilation=2), BlockConfig(128, 1, 1, separable=False)]
    else:
        raise ValueError(f"unknown model preset {name!r} (choose 15x5, 5x5, medium, small, tiny)")
    return ModelConfig(num_classes=num_classes, blocks=blocks)


class BatchNorm(nn.BatchNorm1d):
    """BatchNorm1d (its parameter names, its statistics over every frame) that also takes [B, C, 1, T]."""

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() not in (2, 3, 4):
            raise ValueError(f"expected a 2-D, 3-D or 4-D input, not {input.dim()}-D")


def sequence_mask(lengths: torch.Tensor, max_len: int) -> torch.Tensor:
    """[B, 1, T] float mask: 1 where t < length."""
    t = torch.arange(max_len, device=lengths.device)
    return (t[None, :] < lengths[:, None]).unsqueeze(1)


class SubBlock(nn.Module):
    """[depthwise conv] → pointwise conv → BatchNorm. Activation is applied by the block."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, dilation: int, separable: bool):
        super().__init__()
        pad = dilation * (kernel - 1) // 2  # "same"
        if separable:
            self.dw = nn.Conv1d(c_in, c_in, kernel, stride, pad, dilation, groups=c_in, bias=False)
            self.conv = nn.Conv1d(c_in, c_out, 1, bias=False)
        else:
            self.dw = None
            self.conv = nn.Conv1d(c_in, c_out, kernel, stride, pad, dilation, bias=False)
        self.bn = BatchNorm(c_out, eps=BN_EPS, momentum=0.1)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.dw is not None:
            x, lengths = _masked(self.dw, x, lengths, self.training)
        x, lengths = _masked(self.conv, x, lengths, self.training)
        return self.bn(x), lengths


def _masked(
    conv: nn.Conv1d | nn.Conv2d, x: torch.Tensor, lengths: torch.Tensor, training: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """conv of x zeroed past each clip's length. Tensors are [B, C, T], or [B, C, 1, T] (QuartzNet.forward's form).
    A 1x1 convolution's valid frames never see the padding, so out of training (where BatchNorm's batch statistics
    would) it runs unmasked: in the export a mask between two convolutions makes onnxruntime reorder its blocked
    layout back and forth."""
    k, s, p, d = conv.kernel_size[-1], conv.stride[-1], conv.padding[-1], conv.dilation[-1]
    if k > 1 or training:
        mask = sequence_mask(lengths, x.shape[-1]).to(x.dtype)
        x = x * mask.view(mask.shape[0], *[1] * (x.dim() - 2), -1)
    x = _conv(conv, x)
    if s > 1:
        lengths = torch.div(lengths + 2 * p - d * (k - 1) - 1, s, rounding_mode="floor") + 1
    return x, lengths


def _conv(conv: nn.Conv1d | nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """conv of x, [B, C, T] or [B, C, 1, T] (a Conv1d then runs as the 1 x K Conv2d it is: conv_1xk)."""
    if x.dim() == 3 or isinstance(conv, nn.Conv2d):
        return conv(x)
    return conv_1xk(x, conv.weight, conv.bias, conv.stride[0], conv.padding[0], conv.dilation[0], conv.groups)


def conv_1xk(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, stride: int, pad: int, dilation: int, groups: int
) -> torch.Tensor:
    """conv1d with a [C_out, C_in/groups, K] weight, of x [B, C, 1, T]. In channels_last memory (time-major) oneDNN
    runs a depthwise one in its vectorised kernels, 4x faster than conv1d forward and backward
    (bench/train_speed.py); those kernels take no dilation, so a dilated one folds time into [T/d, d] (a free view
    of time-major memory) and convolves along T/d, the same sum."""
    d = dilation
    if d > 1 and stride == 1 and pad % d == 0 and groups > 1 and not torch.onnx.is_in_onnx_export():
        b, c, _, t = x.shape
        extra = -t % d
        if extra:
            x = F.pad(x, (0, extra)).contiguous(memory_format=torch.channels_last)
        y = F.conv2d(x.view(b, c, -1, d), weight.unsqueeze(3), bias, 1, (pad // d, 0), 1, groups)
        return y.reshape(b, c, 1, t + extra)[..., :t]
    return F.conv2d(x, weight.unsqueeze(2), bias, (1, stride), (0, pad), (1, d), groups)


class SqueezeExcite(nn.Module):
    """Global masked mean over time → bottleneck MLP → sigmoid gate per channel (Citrinet). Computed in fp32."""

    def __init__(self, channels: int, reduction: int):
        super().__init__()
        self.fc1 = nn.Linear(channels, channels // reduction, bias=False)
        self.fc2 = nn.Linear(channels // reduction, channels, bias=False)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        with torch.autocast(x.device.type, enabled=False):
            x = x.to(torch.promote_types(x.dtype, torch.float32))  # fp32 under autocast; float64 stays
            mask = sequence_mask(lengths, x.shape[-1]).to(x.dtype)
            x = x * mask.view(mask.shape[0], *[1] * (x.dim() - 2), -1)
            pooled = x.flatten(2).sum(2) / lengths[:, None].to(x.dtype)
            gate = torch.sigmoid(self.fc2(F.relu(self.fc1(pooled))))
            return x * gate.view(*gate.shape, *[1] * (x.dim() - 2))


class JasperBlock(nn.Module):
    def __init__(self, c_in: int, cfg: BlockConfig, se_reduction: int):
        super().__init__()
        self.subs = nn.ModuleList()
        c = c_in
        for _ in range(cfg.repeat):
            self.subs.append(SubBlock(c, cfg.filters, cfg.kernel, cfg.stride, cfg.dilation, cfg.separable))
            c = cfg.filters
        self.se = SqueezeExcite(cfg.filters, se_reduction) if cfg.se else None
        if cfg.residual:
            self.res_conv = nn.Conv1d(c_in, cfg.filters, 1, bias=False)
            self.res_bn = BatchNorm(cfg.filters, eps=BN_EPS, momentum=0.1)
        else:
            self.res_conv = self.res_bn = None

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out, out_len = x, lengths
        for i, sub in enumerate(self.subs):
            out, out_len = sub(out, out_len)
            if i < len(self.subs) - 1:
                out = F.relu(out)
        if self.se is not None:
            out = self.se(out, out_len)
        if self.res_conv is not None:
            res, _ = _masked(self.res_conv, x, lengths, self.training)  # the block's input lengths
            out = out + self.res_bn(res)
        return F.relu(out), out_len


class QuartzNet(nn.Module):
    """forward(features [B, feat_in, T], lengths [B]) → (log_probs [B, T', num_classes], out_lengths [B])."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.blocks = nn.ModuleList()
        c = cfg.feat_in
        for b in cfg.blocks:
            self.blocks.append(JasperBlock(c, b, cfg.se_reduction_ratio))
            c = b.filters
        self.decoder = nn.Conv1d(c, cfg.num_classes, 1, bias=True)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # NeMo's init_mode "xavier_uniform" on every conv and linear weight; BN starts at identity.
        for m in self.modules():
            if isinstance(m, nn.Conv1d | nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm1d):
                m.reset_parameters()

    def encode(self, x: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        for block in self.blocks:
            x, lengths = block(x, lengths)
        return x, lengths

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """features [B, feat_in, T] run as [B, C, 1, T] in channels_last memory: see _conv."""
        return self.head(*self.encode(x.unsqueeze(2).contiguous(memory_format=torch.channels_last), lengths))

    def head(self, x: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The encoder's output ([B, C, T] or [B, C, 1, T]) → (log-probs [B, T', num_classes], lengths)."""
        logits = _conv(self.decoder, x).flatten(2).transpose(1, 2)
        return logits.float().log_softmax(-1), lengths

    def reset_decoder(self, num_classes: int) -> None:
        """A fresh output layer for another alphabet (the encoder is kept)."""
        self.cfg.num_classes = num_classes
        self.decoder = nn.Conv1d(self.decoder.in_channels, num_classes, 1, bias=True)
        nn.init.xavier_uniform_(self.decoder.weight)
        nn.init.zeros_(self.decoder.bias)


def training_bytes(model: QuartzNet, padded_seconds: float) -> int:
    """Peak memory of a training step in fp32 with `padded_seconds` of audio in the batch (batch size x its longest
    clip): the run's base, the weights with their gradients and AdamW moments, and the activations kept for the
    backward pass, which grow with the channels every layer of every block carries. Fitted to bench/train_memory.py
    (CPU; 15x5, medium and small at 40-640 s of padded audio: within 7% but one point, over by 31%)."""
    width = sum(b.repeat * b.filters for b in model.cfg.blocks)
    per_second = 1350 * width + (1 << 20)
    return (300 << 20) + 16 * count_parameters(model) + round(per_second * padded_seconds)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
