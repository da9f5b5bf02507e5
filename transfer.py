"""Turn a NeMo .nemo QuartzNet (e.g. Sber's QuartzNet15x5_golos.nemo) into a Proslushka checkpoint."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("nemo", help="the .nemo file")
    p.add_argument("-o", "--output", help="checkpoint to write (default: models/<name>.pt, lower case)")
    p.add_argument(
        "--normalize",
        choices=["keep", "none", "per_feature"],
        default="keep",
        help="feature normalization: keep the .nemo's (reproduces NeMo; default) or set it; 'none' is the "
        "fine-tuning setup",
    )
    p.add_argument(
        "--pad_mode",
        choices=["constant", "reflect"],
        default="constant",
        help="STFT centre padding: constant = current NeMo (default), reflect = NeMo 1.0.0b4 (Golos era)",
    )
    p.add_argument("--se", action="store_true", help="add freshly initialized Squeeze-Excite to every residual block")
    p.add_argument("--labels", help="a new alphabet as one string of characters: keeps the encoder, new decoder")
    args = p.parse_args(argv)

    import torch

    from proslushka import checkpoint
    from proslushka.model import QuartzNet, count_parameters
    from proslushka.nemo import NemoError, load_nemo

    out = Path(args.output) if args.output else Path("models") / (Path(args.nemo).stem.lower() + ".pt")
    try:
        nm = load_nemo(args.nemo)
    except NemoError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    cfg, feat, labels = nm.model_config, nm.feature_config, nm.labels
    notes = list(nm.notes)
    if args.normalize != "keep" and args.normalize != feat.normalize:
        notes.append(f"feature normalization: {feat.normalize} -> {args.normalize} (fine-tune before use)")
        feat.normalize = args.normalize
    feat.pad_mode = args.pad_mode
    added_se = []
    if args.se:
        for i, b in enumerate(cfg.blocks):
            if b.residual and not b.se:
                b.se = True
                added_se.append(i)
    torch.manual_seed(0)
    model = QuartzNet(cfg)
    missing, unexpected = model.load_state_dict(nm.state_dict, strict=False)
    assert not unexpected and all(".se." in k for k in missing), (missing, unexpected)
    if added_se:
        notes.append(f"new Squeeze-Excite (random init) in blocks {added_se}: {len(missing)} tensors")
    if args.labels is not None and list(args.labels) != labels:
        new = list(args.labels)
        if len(set(new)) != len(new):
            print("error: --labels has repeated characters", file=sys.stderr)
            return 1
        model.reset_decoder(len(new) + 1)
        notes.append(f"labels changed ({len(labels)} -> {len(new)}): decoder re-initialized, encoder kept")
        labels = new

    blocks = cfg.blocks
    residual = [b for b in blocks if b.residual]
    repeat = residual[0].repeat if residual else 1
    print(
        f"{args.nemo}: QuartzNet {len(residual)}x{repeat} ({len(blocks)} blocks, channels "
        f"{blocks[0].filters}..{max(b.filters for b in blocks)}), SE in {sum(b.se for b in blocks)} blocks"
    )
    print(f"parameters: {count_parameters(model):,}; outputs: {cfg.num_classes} ({len(labels)} labels + blank)")
    print(f"labels: {''.join(labels)!r}")
    print(
        f"features: {feat.n_mels} mels, {feat.sample_rate} Hz, window {feat.win_length}, hop {feat.hop_length}, "
        f"n_fft {feat.n_fft}, normalize {feat.normalize}, pad_mode {feat.pad_mode}"
    )
    print(f"mapped {len(nm.state_dict)} tensors from NeMo keys (encoder.encoder.*, decoder.decoder_layers.0.*)")
    for n in notes:
        print(f"note: {n}")
    checkpoint.save(out, checkpoint.make(model, feat, labels, source=str(args.nemo)))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
