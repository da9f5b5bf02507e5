"""bench/peers.py's NeMo training worker, run with NeMo's venv python: NeMo's EncDecCTCModel QuartzNet15x5 (built from
tools/nemo_fixtures' config, no downloads; SpecAugment left out as on our side) takes one optimizer step per "step"
line on stdin: its preprocessor, forward and CTC loss (model.loss), backward, grad clipping at 1.0 and AdamW with our
trainer's settings, on the manifest's clips as one batch. Lightning's loop is not used: the step is NeMo's model
and loss, as ours is our model and loss.

    /tmp/nemo-venv/bin/python bench/peers_nemo_worker.py --manifest batch.jsonl [--threads 2]
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools/nemo_fixtures"))


def nemo_step(manifest: Path, threads: int):
    import torch
    from make_fixtures import LABELS, load_wav, model_cfg, quartznet15x5_blocks
    from nemo.collections.asr.models import EncDecCTCModel

    torch.set_num_threads(threads)
    rows = [json.loads(line) for line in manifest.read_text(encoding="utf-8").splitlines()]
    waves = [torch.from_numpy(load_wav(str(manifest.parent / r["audio_filepath"]))) for r in rows]
    audio = torch.nn.utils.rnn.pad_sequence(waves, batch_first=True)
    audio_len = torch.tensor([len(w) for w in waves])
    ids = [torch.tensor([LABELS.index(c) for c in r["text"]]) for r in rows]
    targets = torch.nn.utils.rnn.pad_sequence(ids, batch_first=True)
    target_len = torch.tensor([len(t) for t in ids])

    cfg = model_cfg(quartznet15x5_blocks(), 5)
    cfg.pop("spec_augment")
    torch.manual_seed(0)
    model = EncDecCTCModel(cfg=copy.deepcopy(cfg))
    model.train()
    # our trainer's defaults (settings.TrainConfig): lr 1e-3, betas (0.9, 0.98), weight decay 1e-3, clip at 1.0
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.98), weight_decay=1e-3)

    def step() -> None:
        logp, enc_len, _ = model.forward(input_signal=audio, input_signal_length=audio_len)
        loss = model.loss(log_probs=logp, targets=targets, input_lengths=enc_len, target_lengths=target_len)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--manifest", type=Path, required=True, help="the batch: bench/peers.py writes it")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    step = nemo_step(args.manifest, args.threads)
    from peers import serve_steps  # bench/, this file's folder; peers.py imports nothing of the project at the top

    serve_steps(step)


if __name__ == "__main__":
    main()
