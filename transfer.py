"""Turn a NeMo .nemo QuartzNet (e.g. Sber's QuartzNet15x5_golos.nemo) into a Proslushka checkpoint.

Reads every layout NeMo has written for QuartzNet/Jasper (1.0.0 betas to today: cls/params or _target_ configs,
gzip or plain tar) and picks the feature settings of the NeMo version that wrote it; `golos` instead of a file
downloads Sber's Golos QuartzNet15x5 (68 MB, MD5-checked, cached, resumable) and transfers that.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from proslushka.cli import fail, os_error
from proslushka.features import VALID_FRAMES


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("nemo", help="the .nemo file, or 'golos' to download Sber's QuartzNet15x5_golos.nemo first")
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
        help="STFT centre padding (default: that of the NeMo version that wrote the file: reflect up to NeMo 2.4, "
        "constant from 2.5)",
    )
    p.add_argument(
        "--valid_frames",
        choices=list(VALID_FRAMES),
        help="feature frames that count for N samples (default: the writing NeMo's rule): floor = N//160 (NeMo "
        "2.5+), floor+1 (NeMo 1.0-2.4), ceil = ceil(N/160) (NeMo 1.0.0b4, Golos)",
    )
    p.add_argument("--url", action="append", help="with 'golos': download from here (repeatable: mirrors)")
    p.add_argument(
        "--cache_dir", help="with 'golos': the download folder (default: $PROSLUSHKA_CACHE or ~/.cache/proslushka)"
    )
    p.add_argument("--se", action="store_true", help="add freshly initialized Squeeze-Excite to every residual block")
    p.add_argument("--labels", help="a new alphabet as one string of characters: keeps the encoder, new decoder")
    args = p.parse_args(argv)

    if args.labels is not None and len(set(args.labels)) != len(args.labels):
        p.error("--labels has repeated characters")
    if (args.url or args.cache_dir) and args.nemo != "golos":
        p.error("--url and --cache_dir go with 'golos'")

    import torch

    from proslushka import checkpoint
    from proslushka.fetch import FetchError, cache_dir, fetch
    from proslushka.files import check_not_input, check_writable
    from proslushka.golos import MODEL
    from proslushka.model import QuartzNet, count_parameters
    from proslushka.nemo import NemoError, load_nemo

    download = Path(args.cache_dir) if args.cache_dir else cache_dir()
    source = download / MODEL.name if args.nemo == "golos" else Path(args.nemo)
    out = Path(args.output) if args.output else Path("models") / (source.stem.lower() + ".pt")
    try:  # transfer.py v.nemo -o v.nemo would replace the .nemo with a checkpoint; golos -o its cached download too
        check_not_input(out, [source])
    except ValueError as e:
        return fail(e, 2)
    try:
        check_writable(out)
        if args.nemo == "golos":
            print(f"fetching {MODEL.name} ({MODEL.size}, MD5 {MODEL.md5})", file=sys.stderr)
            source = fetch(MODEL, download, args.url)
        nm = load_nemo(source)
    except FetchError as e:  # exit 1: the input could not be had; 2: a bad .nemo or output path
        return fail(e, 1)
    except NemoError as e:
        return fail(e, 2)
    except OSError as e:
        return fail(os_error(e, out), 2)
    cfg, feat, labels = nm.model_config, nm.feature_config, nm.labels
    notes = list(nm.notes)
    if args.normalize != "keep" and args.normalize != feat.normalize:
        notes.append(f"feature normalization: {feat.normalize} -> {args.normalize} (fine-tune before use)")
        feat.normalize = args.normalize
    for key in ("pad_mode", "valid_frames"):
        chosen = getattr(args, key)
        if chosen is not None and chosen != getattr(feat, key):
            notes.append(f"{key}: {chosen} (given) instead of {getattr(feat, key)} ({nm.era.name})")
            setattr(feat, key, chosen)
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
        model.reset_decoder(len(new) + 1)
        notes.append(f"labels changed ({len(labels)} -> {len(new)}): decoder re-initialized, encoder kept")
        labels = new

    blocks = cfg.blocks
    residual = [b for b in blocks if b.residual]
    repeat = residual[0].repeat if residual else 1
    print(f"{source}: {nm.layout}; detected {nm.era.name} ({nm.era.evidence})")
    print(
        f"{source}: QuartzNet {len(residual)}x{repeat} ({len(blocks)} blocks, channels "
        f"{blocks[0].filters}..{max(b.filters for b in blocks)}), SE in {sum(b.se for b in blocks)} blocks"
    )
    print(f"parameters: {count_parameters(model):,}; outputs: {cfg.num_classes} ({len(labels)} labels + blank)")
    print(f"labels: {''.join(labels)!r}")
    print(
        f"features: {feat.n_mels} mels, {feat.sample_rate} Hz, window {feat.win_length}, hop {feat.hop_length}, "
        f"n_fft {feat.n_fft}, normalize {feat.normalize}, pad_mode {feat.pad_mode}, valid frames {feat.valid_frames}"
    )
    print(f"mapped {len(nm.state_dict)} tensors from NeMo keys (encoder.encoder.*, decoder.decoder_layers.0.*)")
    for n in notes:
        print(f"note: {n}")
    try:  # a full disk (or -o /dev/full): atomic_write leaves no partial file, and this is the one line about it
        checkpoint.save(out, checkpoint.make(model, feat, labels, source=str(source)))
    except OSError as e:
        return fail(os_error(e, out), 2)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
