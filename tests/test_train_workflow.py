"""The training workflow as a user meets it: a schedule sized from the run's real steps, a stop that takes effect
within one batch and still resumes exactly, and `train.py --resume last.pt` alone."""

import os
import signal

import pytest
import torch
from conftest import ROOT
from test_trainer import FOUR, _params, _train_cli, tiny_cfg, write_manifest

from proslushka import checkpoint
from proslushka.settings import TrainConfig, describe_schedule, lr_lambda, plan_schedule
from proslushka.trainer import Trainer, train


def test_the_schedule_is_sized_from_the_runs_optimizer_steps():
    # the README's fine-tuning command on ~9,000 clips: 282 batches of 32 an epoch, 64 of them a step
    cfg = TrainConfig(batch_size=32, accumulate=64, max_epochs=15)
    s = plan_schedule(cfg, batches_per_epoch=282)
    assert (s.steps_per_epoch, s.total_steps, s.warmup_steps) == (5, 75, 4)  # ceil(282/64); 15 x 5; 5% of 75
    lines = describe_schedule(cfg, s, world=1)
    assert lines == [lines[0]] and "75 optimizer steps" in lines[0] and "warmup 4 (5% of the run)" in lines[0]
    f = lr_lambda(cfg, s)
    assert f(3) == 1.0 and f(75) == pytest.approx(cfg.min_lr / cfg.lr)  # the peak comes, then the whole decay

    # the old fixed 200-step warmup on the same run: warned, as is an accumulation longer than an epoch
    old = plan_schedule(TrainConfig(batch_size=32, accumulate=64, max_epochs=15, warmup_steps=200), 282)
    warn = describe_schedule(TrainConfig(warmup_steps=200), old, world=1)[1:]
    assert len(warn) == 1 and "covers 100% of the run's 75 steps" in warn[0] and "never come" in warn[0]
    long = TrainConfig(batch_size=32, accumulate=300, max_epochs=15)
    warn = describe_schedule(long, plan_schedule(long, 282), world=1)[1:]
    assert len(warn) == 1 and "longer than an epoch (282 batches)" in warn[0]
    # DDP: each rank's share of the batches (the sampler's length) sets the steps; max_steps caps the total
    s = plan_schedule(TrainConfig(accumulate=4, max_epochs=10, max_steps=50), batches_per_epoch=71)
    assert (s.steps_per_epoch, s.total_steps, s.warmup_steps) == (18, 50, 2)


def test_a_stop_in_the_middle_of_a_long_step_takes_effect_within_one_batch_and_resumes_exactly(tmp_path, capsys):
    eight = FOUR * 2
    common = dict(train_manifest=write_manifest(tmp_path / "m.jsonl", eight), batch_size=1, accumulate=6)
    train(tiny_cfg(tmp_path / "a", max_steps=4, **common))  # 8 batches an epoch: steps of 6 and 2 batches

    part = Trainer(tiny_cfg(tmp_path / "b", max_steps=4, **common))
    forward, calls = part.forward_loss, []

    def forward_then_signal(*args, **kw):
        calls.append(1)
        if len(calls) == 11:  # step 2 done after batch 8; batch 11 is the 3rd of step 3 (epoch 1)
            os.kill(os.getpid(), signal.SIGINT)
        return forward(*args, **kw)

    part.forward_loss = forward_then_signal
    part.fit()
    assert len(calls) == 11  # the signal came during batch 11 and no further batch ran
    err = capsys.readouterr().err
    assert "stopped at step 2 (epoch 1, batch 0); the 3 batches of the unfinished step are redone" in err
    last = tmp_path / "b" / "run" / "last.pt"
    assert f"resume with: python train.py --resume {last}" in err
    t = checkpoint.load(last)["trainer"]
    assert (t["step"], t["epoch"], t["batches_done"]) == (2, 1, 0)

    train(tiny_cfg(tmp_path / "b", max_steps=4, resume=str(last), **common))
    a, b = _params(tmp_path / "a" / "run" / "last.pt"), _params(last)
    assert all(torch.equal(a[k], b[k]) for k in a), "resumed run diverged from the uninterrupted one"


def test_resume_alone_continues_with_the_saved_settings(tmp_path):
    full = tiny_cfg(tmp_path / "a", max_steps=6, accumulate=2, lr=2e-3)
    train(full)
    args = ["--train_manifest", full.train_manifest, "--model", "tiny", "--batch_size", "2", "--accumulate", "2"]
    args += ["--num_workers", "0", "--max_steps", "6", "--lr", "2e-3", "--warmup_steps", "2", "--no_progress"]
    run = tmp_path / "b" / "run"
    r = _train_cli(*args, "--out_dir", run, "--stop_at_step", "3", cwd=ROOT)
    assert r.returncode == 0, r.stderr
    command = r.stderr.strip().splitlines()[-1]
    assert command == f"resume with: python train.py --resume {run / 'last.pt'}"

    # the printed command, as it is: the data, model, schedule and out_dir come from the checkpoint, and the
    # one-off --stop_at_step does not stop it again
    r = _train_cli(*command.removeprefix("resume with: python train.py ").split(), cwd=ROOT)
    assert r.returncode == 0, r.stderr
    assert f"resumed {run / 'last.pt'}: step 3" in r.stderr and "done: 6 steps" in r.stderr
    a, b = _params(tmp_path / "a" / "run" / "last.pt"), _params(run / "last.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)

    # what may not change on a resume is still refused, and a checkpoint with no run in it is named
    r = _train_cli("--resume", run / "last.pt", "--model", "small", cwd=ROOT)
    assert r.returncode == 2 and "--model 'small' (saved: 'tiny')" in r.stderr
    checkpoint.save(tmp_path / "w.pt", checkpoint.load(run / "last.pt") | {"trainer": None})
    r = _train_cli("--resume", tmp_path / "w.pt", cwd=ROOT)
    assert (
        r.returncode == 2
        and r.stderr.strip() == f"error: {tmp_path / 'w.pt'}: not a training checkpoint (no trainer state); use --init"
    )
    r = _train_cli("--model", "tiny", cwd=ROOT)
    assert r.returncode == 2 and "--train_manifest is required (or --resume a run's last.pt)" in r.stderr


def test_the_memory_estimate_follows_the_measured_peaks():
    # bench/train_memory.py on this CPU (fp32, MiB): 15x5 at 4 x 10 s and 8 x 20 s; small at 32 x 20 s
    from proslushka.model import QuartzNet, preset, training_bytes

    for name, seconds, measured in (("15x5", 40, 2256), ("15x5", 160, 7420), ("small", 640, 4091)):
        assert training_bytes(QuartzNet(preset(name)), seconds) / 2**20 == pytest.approx(measured, rel=0.07)


def test_a_batch_likely_not_to_fit_is_warned_about(tmp_path, monkeypatch, capsys):
    import proslushka.trainer as trainer_module

    train(tiny_cfg(tmp_path / "a", max_steps=1))
    fits = capsys.readouterr().err
    assert "\nmemory: ~0.3 GB for the largest batch (8 s of padded audio, fp32)\n" in fits
    monkeypatch.setattr(trainer_module, "memory_available", lambda device: 200 << 20)
    train(tiny_cfg(tmp_path / "b", max_steps=1))
    line = [x for x in capsys.readouterr().err.splitlines() if "padded audio" in x][0]
    assert line.startswith("warning: ~0.3 GB for the largest batch (8 s of padded audio, fp32), and cpu has 0.2 GB")
    # 8.3 s x 0.8 x 200 MiB / ~310 MiB needed: a batch of ~4 s would fit
    assert line.endswith("it is likely not to fit; --batch_seconds 4 (or a smaller --batch_size, with --accumulate to "
                         "keep the step's size) should fit")  # fmt: skip
