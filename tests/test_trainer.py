import json
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch
import torch.multiprocessing as mp
from conftest import AUDIO, ROOT

from proslushka import checkpoint
from proslushka.settings import TrainConfig, TrainError
from proslushka.trainer import Trainer, train

TEXTS = {
    "utt1": "привет как дела",
    "utt2": "съешь же ещё этих мягких французских булок да выпей чаю",
    "utt3": "в лесу родилась ёлочка в лесу она росла зимой и летом стройная зелёная была",
}
SECONDS = {"utt1": 1.405, "utt2": 3.990, "utt3": 4.170}


def write_manifest(path, clips):
    rows = [{"audio_filepath": str(AUDIO / f"{c}.{ext}"), "text": TEXTS[c], "duration": SECONDS[c]} for c, ext in clips]
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return str(path)


FOUR = [("utt1", "wav"), ("utt2", "wav"), ("utt3", "wav"), ("utt1", "opus")]


def tiny_cfg(tmp_path, **kw):
    tmp_path.mkdir(parents=True, exist_ok=True)
    base = dict(
        train_manifest=write_manifest(tmp_path / "train.jsonl", FOUR),
        out_dir=str(tmp_path / "run"),
        model="tiny",
        batch_size=2,
        num_workers=0,
        progress=False,
        warmup_steps=2,
        lr=3e-3,
        max_epochs=100,
        log_every=1,
    )
    return TrainConfig(**{**base, **kw})


def test_tiny_model_overfits_four_clips(tmp_path):
    # each clip 5 times per epoch, so epoch-end work (validation, checkpoint, plot) does not dominate the test
    cfg = tiny_cfg(
        tmp_path,
        train_manifest=write_manifest(tmp_path / "train5.jsonl", FOUR * 5),
        valid_manifest=write_manifest(tmp_path / "valid.jsonl", FOUR),
        batch_size=4,
        max_steps=150,
        lr=1e-2,
        min_lr=1e-3,
        warmup_steps=10,
        spec_augment=False,
        weight_decay=0.0,
    )
    trainer = Trainer(cfg)
    trainer.fit()
    result = trainer.validate()
    assert result["valid_wer"] == 0.0, result["samples"]
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert sum("valid_cer" in r for r in rows) == 30 and rows[-1]["valid_wer"] == 0.0
    assert (tmp_path / "run" / "curves.png").stat().st_size > 1000
    assert checkpoint.load(tmp_path / "run" / "best.pt")["trainer"]["best_wer"] == 0.0


def _params(path):
    return checkpoint.load(path)["model"]


def test_stop_and_resume_gives_identical_weights(tmp_path):
    train(tiny_cfg(tmp_path / "a", max_steps=8))
    part = tiny_cfg(tmp_path / "b", max_steps=8, stop_at_step=3)  # step 3 is in the middle of epoch 1
    train(part)
    ckpt = checkpoint.load(tmp_path / "b" / "run" / "last.pt")
    assert ckpt["trainer"]["step"] == 3 and ckpt["trainer"]["batches_done"] == 1
    train(tiny_cfg(tmp_path / "b", max_steps=8, resume=str(tmp_path / "b" / "run" / "last.pt")))
    a, b = _params(tmp_path / "a" / "run" / "last.pt"), _params(tmp_path / "b" / "run" / "last.pt")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), "resumed run diverged from the uninterrupted one"


def _first_step_grads(cfg):
    trainer = Trainer(cfg)
    captured = []
    step = trainer.optimizer.step

    def record(*args, **kw):
        captured.append([p.grad.clone() for p in trainer.model.parameters()])
        return step(*args, **kw)

    trainer.optimizer.step = record
    trainer.fit()
    return captured[0]


@pytest.mark.filterwarnings("ignore:Seems like `optimizer.step")
def test_accumulation_gives_the_same_gradient_as_one_big_batch(tmp_path):
    eight = [(c, e) for e in ("wav", "opus") for c in ("utt1", "utt2", "utt3")] + [("utt1", "wav"), ("utt2", "opus")]
    common = dict(
        train_manifest=write_manifest(tmp_path / "eight.jsonl", eight),
        max_steps=1,
        freeze_bn=True,
        dither=0.0,
        spec_augment=False,
        grad_clip=1e9,
    )
    big = _first_step_grads(tiny_cfg(tmp_path / "big", batch_size=8, accumulate=1, **common))
    small = _first_step_grads(tiny_cfg(tmp_path / "small", batch_size=4, accumulate=2, **common))
    worst = max(float((a - b).abs().max()) for a, b in zip(big, small, strict=True))
    scale = max(float(a.abs().max()) for a in big)
    assert scale > 1e-3 and worst < 1e-6 * max(1.0, scale)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank, world, port, cfg_dict, out):
    import os

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world))
    torch.set_num_threads(1)
    model = train(TrainConfig(**cfg_dict))
    torch.save({k: v for k, v in model.named_parameters()}, f"{out}/rank{rank}.pt")


def test_ddp_two_cpu_processes_end_with_the_same_weights(tmp_path):
    cfg = tiny_cfg(tmp_path, batch_size=1, max_steps=3)
    mp.spawn(_ddp_worker, args=(2, _free_port(), cfg.__dict__, str(tmp_path)), nprocs=2, join=True)
    r0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    r1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    assert all(torch.equal(r0[k], r1[k]) for k in r0)
    init = Trainer(tiny_cfg(tmp_path / "fresh", batch_size=1)).model.state_dict()
    assert any(not torch.equal(r0[k], init[k]) for k in r0), "the weights did not change"
    assert checkpoint.load(tmp_path / "run" / "last.pt")["trainer"]["step"] == 3


def _train_cli(*args, **kw):
    return subprocess.run(
        [sys.executable, str(ROOT / "train.py"), *map(str, args)], capture_output=True, text=True, **kw
    )


def test_bad_manifest_rows_are_reported_with_file_and_line(tmp_path):
    m = tmp_path / "bad.jsonl"
    good = {"audio_filepath": str(AUDIO / "utt1.wav"), "text": "привет", "duration": 1.4}
    m.write_text(
        "\n".join(
            [
                json.dumps(good, ensure_ascii=False),
                "{not json",
                json.dumps({**good, "text": "hello"}),
                json.dumps({**good, "audio_filepath": "missing.wav"}),
                json.dumps({**good, "duration": -1}),
            ]
        )
        + "\n"
    )
    r = _train_cli("--train_manifest", m, "--out_dir", tmp_path / "run", "--model", "tiny", "--num_workers", "0")
    assert r.returncode == 1
    for line in (2, 3, 4, 5):
        assert f"{m}:{line}:" in r.stderr
    assert not (tmp_path / "run" / "last.pt").exists()


def test_truncated_checkpoint_to_resume_is_a_clear_error(tmp_path):
    cfg = tiny_cfg(tmp_path, max_steps=1)
    train(cfg)
    last = tmp_path / "run" / "last.pt"
    cut = tmp_path / "cut.pt"
    cut.write_bytes(last.read_bytes()[:1000])
    r = _train_cli("--train_manifest", cfg.train_manifest, "--resume", cut, "--out_dir", tmp_path / "run2")
    assert r.returncode == 2
    assert r.stderr.strip().splitlines()[-1].startswith(f"error: {cut}: not a readable checkpoint")


def test_sigterm_saves_a_checkpoint_and_resume_continues(tmp_path):
    cfg = tiny_cfg(tmp_path)
    args = ["--train_manifest", cfg.train_manifest, "--out_dir", tmp_path / "run", "--model", "tiny"]
    args += ["--batch_size", "2", "--num_workers", "0", "--max_steps", "400", "--log_every", "1", "--no_progress"]
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "train.py"), *map(str, args)], stderr=subprocess.PIPE, text=True
    )
    metrics = tmp_path / "run" / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and not (metrics.exists() and metrics.read_text().count("\n") >= 2):
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert "stopped at step" in err
    step = checkpoint.load(tmp_path / "run" / "last.pt")["trainer"]["step"]
    assert 2 <= step < 400
    r = _train_cli(*args[:-5], "--max_steps", str(step + 2), "--resume", tmp_path / "run" / "last.pt", "--no_progress")
    assert r.returncode == 0, r.stderr
    assert f"resumed {tmp_path / 'run' / 'last.pt'}: step {step}" in r.stderr
    assert checkpoint.load(tmp_path / "run" / "last.pt")["trainer"]["step"] == step + 2


@pytest.mark.parametrize("flag", ["--accumulate_grad_batches", "--checkpoint_path"])
def test_recipe_aliases(flag):
    sys.path.insert(0, str(ROOT))
    import train as train_script

    argv = ["--train_manifest", "m.jsonl", flag, "4" if "accumulate" in flag else "x.pt"]
    if "accumulate" in flag:
        assert train_script.parse_args(argv).accumulate == 4
    else:  # a resume reads its settings from the checkpoint named
        with pytest.raises(TrainError, match="^x.pt: no such checkpoint"):
            train_script.parse_args(argv)


def test_keep_leaves_the_weights_of_the_last_saves_for_averaging(tmp_path):
    run = tmp_path / "run"
    run.mkdir(parents=True)
    (run / ".step-0000002.pt.abc.tmp").write_bytes(b"half")  # a step file's save killed before its rename
    train(tiny_cfg(tmp_path, max_steps=7, save_every=2, keep=2))  # saves at steps 2, 4, 6; 7 ends the run
    kept = sorted(p.name for p in run.glob("step-*.pt"))
    assert kept == ["step-0000004.pt", "step-0000006.pt"] and not list(run.glob(".*.tmp"))
    four, six = checkpoint.load(run / kept[0]), checkpoint.load(run / kept[1])
    assert four["step"] == 4 and six["step"] == 6 and "trainer" not in six  # weights alone, no optimizer state
    assert any(not torch.equal(four["model"][k], six["model"][k]) for k in six["model"])
    checkpoint.unpack(six)  # a usable model, as tools/average_checkpoints.py needs

    # the same run stopped at step 6 has last.pt's weights equal to step 6's kept ones
    train(tiny_cfg(tmp_path / "b", max_steps=7, save_every=2, keep=2, stop_at_step=6))
    b = tmp_path / "b" / "run"
    assert all(torch.equal(_params(b / "last.pt")[k], v) for k, v in _params(b / "step-0000006.pt").items())

    # step files count as a previous run; --overwrite removes them with the rest
    for name in ("last.pt", "best.pt", "metrics.jsonl", "curves.png"):
        (run / name).unlink(missing_ok=True)
    with pytest.raises(TrainError, match="holds a previous run \\(step-0000004.pt\\)"):
        train(tiny_cfg(tmp_path, max_steps=1))
    train(tiny_cfg(tmp_path, max_steps=1, overwrite=True))
    assert not list(run.glob("step-*.pt"))
