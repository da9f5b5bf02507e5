"""Hostile inputs to manifests, train.py and export.py: each gets one line naming the file (and line), the right
exit code (2 bad settings/model/output, 1 bad data), and leaves nothing behind."""

import errno
import json
import multiprocessing
import re
import shutil
import subprocess
import sys
import time
import tracemalloc

import pytest
from conftest import AUDIO, ROOT
from test_data import row, write_jsonl, write_wav
from test_trainer import tiny_cfg

import export
from proslushka import checkpoint, data, files
from proslushka.data import ManifestError, read_manifest
from proslushka.features import FeatureConfig
from proslushka.model import QuartzNet, preset
from proslushka.rundir import read_metrics
from proslushka.settings import TrainError, lr_lambda
from proslushka.text import LABELS
from proslushka.trainer import Trainer, train

UNWRITABLE = "/sys/kernel"  # sysfs: no file can be created there, not even by root (the tests may run as root)


@pytest.fixture
def corpus(tmp_path):
    for i, seconds in enumerate((0.3, 0.5, 0.8)):
        write_wav(tmp_path / "audio" / f"{i}.wav", seconds, seed=i)
    return tmp_path


def bad_rows(manifest, **kw) -> list[str]:
    with pytest.raises(ManifestError) as e:
        read_manifest(manifest, **kw)
    return str(e.value).splitlines()[1:]


def one_line(text: str) -> str:
    lines = text.strip().splitlines()
    assert len(lines) == 1, text
    return lines[0]


# ----------------------------------------------------------------------------- manifests


def test_a_row_pointing_at_a_program_or_a_text_file_is_a_bad_row(corpus):
    (corpus / "notes.wav").write_text("these are not samples\n" * 50)
    manifest = write_jsonl(
        corpus / "m.jsonl",
        [row(0), {**row(0), "audio_filepath": sys.executable}, {**row(0), "audio_filepath": "notes.wav"}],
    )
    lines = bad_rows(manifest)
    assert [ln.split(": ")[0] for ln in lines] == [f"{manifest}:2", f"{manifest}:3"]
    assert all("not usable audio" in ln for ln in lines)
    assert [u.line for u in read_manifest(manifest, skip_bad=True)] == [1]


def test_non_utf8_bytes_are_reported_by_line(corpus):
    good = json.dumps(row(0), ensure_ascii=False).encode()
    (corpus / "m.jsonl").write_bytes(good + b"\n" + good.replace("привет".encode(), b"\xcf\xf0\xe8") + b"\n" + good)
    at = good.index("привет".encode()) + 1  # where the cp1251 bytes start
    assert bad_rows(corpus / "m.jsonl") == [f"{corpus / 'm.jsonl'}:2: not UTF-8 text (byte {at} of the line)"]
    (corpus / "m.csv").write_bytes(b"audio_filepath,text,duration\naudio/0.wav,\xcf\xf0,0.3\naudio/1.wav,da,0.5\n")
    lines = bad_rows(corpus / "m.csv", labels=tuple("ad "))
    assert lines == [f"{corpus / 'm.csv'}:2: not UTF-8 text (byte 13 of the line)"]


@pytest.mark.parametrize("field", ["text", "audio_filepath"])
def test_a_50_mb_line_is_refused_unread(corpus, field):
    manifest = corpus / "m.jsonl"
    huge = {**row(0), field: "а" * (25 << 20)}  # 50 MB of UTF-8
    manifest.write_text(json.dumps(row(1), ensure_ascii=False) + "\n" + json.dumps(huge, ensure_ascii=False) + "\n")
    tracemalloc.start()
    t0 = time.time()
    try:
        lines = bad_rows(manifest)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert lines == [f"{manifest}:2: line longer than 1 MiB"]
    assert peak < 8 << 20 and time.time() - t0 < 10


def test_long_paths_are_bad_rows_not_crashes(corpus):
    rows = [
        {**row(0), "audio_filepath": "a/" * 3000},
        {**row(0), "audio_filepath": "x" * 300 + ".wav"},
        {**row(0), "audio_filepath": "audio/0.wav\u0000.txt"},
    ]
    lines = bad_rows(write_jsonl(corpus / "m.jsonl", rows))
    assert "audio_filepath longer than 4096 characters" in lines[0]
    assert "File name too long" in lines[1]
    assert "audio_filepath is not a path" in lines[2]


def test_a_transcript_longer_than_its_audio_can_carry(corpus):
    # 0.3 s at 50 CTC frames per second is 15 frames; repeated letters need a blank between them
    rows = [row(0, "да " * 5, 0.3), row(0, "а" * 9, 0.3), row(0, "а" * 8, 0.3)]
    lines = bad_rows(write_jsonl(corpus / "m.jsonl", rows), frames_per_second=50)
    assert lines == [
        f"{corpus / 'm.jsonl'}:2: text too long for its audio: 9 characters need 17 CTC frames, 0.3 s gives 15"
    ]
    assert [u.line for u in read_manifest(corpus / "m.jsonl", skip_bad=True, frames_per_second=50)] == [1, 3]


def test_hostile_json_csv_and_files(corpus, monkeypatch):
    rows = ["[" * 100_000, '{"duration": ' + "9" * 5000 + "}"]
    lines = bad_rows(write_jsonl(corpus / "m.jsonl", rows))
    assert [ln.split(": ")[0] for ln in lines] == [f"{corpus / 'm.jsonl'}:{i}" for i in (1, 2)]
    assert all("malformed JSON" in ln for ln in lines)

    big_cell = "audio_filepath,text,duration\n" + 'audio/0.wav,"' + "а" * 200_000 + '",0.3\naudio/1.wav,да,0.5\n'
    (corpus / "m.csv").write_text(big_cell, encoding="utf-8")
    assert bad_rows(corpus / "m.csv") == [
        f"{corpus / 'm.csv'}:2: unreadable row (field larger than field limit (131072))"
    ]

    for path, reason in [("/dev/zero", "not a regular file"), (corpus, "cannot read the manifest (Is a directory)")]:
        with pytest.raises(ManifestError, match=re.escape(f"{path}: {reason}")):
            read_manifest(path)

    monkeypatch.setattr(data, "MAX_LISTED", 2)
    lines = bad_rows(write_jsonl(corpus / "m.jsonl", ["{"] * 5))
    assert len(lines) == 2


# ----------------------------------------------------------------------------- training


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two tiny runs on four clips in batches of 2: stopped mid-epoch at step 1, and at the end of epoch 0."""
    base = tmp_path_factory.mktemp("runs")
    mid = tiny_cfg(base / "mid", stop_at_step=1)
    train(mid)
    end = tiny_cfg(base / "end", max_epochs=1)
    train(end)
    return mid, end


def copy_run(cfg, tmp_path):
    shutil.copytree(cfg.out_dir, tmp_path / "run")
    return str(tmp_path / "run" / "last.pt")


def test_resume_with_other_model_settings_is_refused_with_the_list(runs, tmp_path):
    mid, _ = runs
    last = copy_run(mid, tmp_path)
    before = (tmp_path / "run" / "last.pt").read_bytes()
    cfg = tiny_cfg(
        tmp_path,
        resume=last,
        out_dir=str(tmp_path / "run"),
        model="small",
        se=True,
        normalize="per_feature",
        labels="".join(LABELS[:-1]),
    )
    with pytest.raises(TrainError) as e:
        Trainer(cfg)
    assert e.value.code == 2
    msg = one_line(str(e.value))
    assert msg.startswith(f"{last}: the run was trained with other settings: ")
    for part in (
        "--model 'small' (saved: 'tiny')",
        "--se True (saved: False)",
        "--normalize 'per_feature'",
        "--labels",
    ):
        assert part in msg
    assert (tmp_path / "run" / "last.pt").read_bytes() == before


def test_resume_mid_epoch_with_other_batches_is_refused(runs, tmp_path):
    mid, _ = runs
    last = copy_run(mid, tmp_path)
    three = tiny_cfg(tmp_path / "m3").train_manifest  # the same clips...
    lines = open(three, encoding="utf-8").readlines()[:3]  # ...less one
    open(three, "w", encoding="utf-8").writelines(lines)
    for change, expect in [({"batch_size": 4}, "batch_size 4 (saved: 2)"), ({"train_manifest": three}, "size 3")]:
        with pytest.raises(TrainError) as e:
            Trainer(tiny_cfg(tmp_path, resume=last, out_dir=str(tmp_path / "run"), **change))
        assert e.value.code == 2
        msg = one_line(str(e.value))
        assert msg.startswith(f"{last}: stopped at batch 1 of epoch 0") and expect in msg


def test_resume_at_an_epoch_end_may_change_batches_and_schedule(runs, tmp_path):
    _, end = runs
    last = copy_run(end, tmp_path)
    cfg = tiny_cfg(tmp_path, resume=last, out_dir=str(tmp_path / "run"), batch_size=4, lr=5e-4, max_epochs=2)
    trainer = Trainer(cfg)
    assert (trainer.step, trainer.epoch, len(trainer.sampler)) == (2, 1, 1)
    lr = trainer.optimizer.param_groups[0]["lr"]
    assert lr == 5e-4 * lr_lambda(cfg, trainer.schedule)(2)  # the new lr and schedule, from this step on
    trainer.fit()
    assert checkpoint.load(tmp_path / "run" / "last.pt")["trainer"]["step"] == 3


def test_stale_temps_are_removed_and_a_cut_metrics_line_is_survived(runs, tmp_path):
    _, end = runs
    last = copy_run(end, tmp_path)
    run = tmp_path / "run"
    for name in (".last.pt.k1ll3d.tmp", ".best.pt.x.tmp", ".curves.png.y.tmp"):
        (run / name).write_bytes(b"half a checkpoint")
    (run / "notes.tmp").write_text("not ours")
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"step": 9, "lo')  # killed mid-write
    train(tiny_cfg(tmp_path, resume=last, out_dir=str(run), max_epochs=2))
    assert sorted(p.name for p in run.iterdir()) == ["curves.png", "last.pt", "metrics.jsonl", "notes.tmp"]
    rows = read_metrics(run / "metrics.jsonl")
    assert rows[-1]["epoch"] == 1 and "valid_wer" not in rows[-1] and sum(r["step"] == 9 for r in rows) == 0
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert sum(1 for ln in lines if ln.startswith('{"step": 9, "lo')) == 1  # kept, on a line of its own


def test_an_existing_run_needs_resume_or_overwrite(runs, tmp_path):
    _, end = runs
    copy_run(end, tmp_path)
    run = tmp_path / "run"
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    with pytest.raises(TrainError) as e:
        Trainer(tiny_cfg(tmp_path, out_dir=str(run)))
    assert e.value.code == 2
    assert one_line(str(e.value)).startswith(f"{run}: holds a previous run (last.pt, metrics.jsonl, curves.png)")
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before
    train(tiny_cfg(tmp_path, out_dir=str(run), overwrite=True, max_steps=1))
    assert [r["step"] for r in read_metrics(run / "metrics.jsonl")] == [1, 1]  # the old rows are gone


@pytest.mark.parametrize("where", ["unwritable", "under_a_file", "a_file"])
def test_an_out_dir_that_cannot_be_written_is_refused_first(tmp_path, where):
    (tmp_path / "file").write_text("x")
    out = {"unwritable": f"{UNWRITABLE}/run", "under_a_file": tmp_path / "file" / "run", "a_file": tmp_path / "file"}
    cfg = tiny_cfg(tmp_path / "t", out_dir=str(out[where]), train_manifest=str(tmp_path / "missing.jsonl"))
    with pytest.raises(TrainError) as e:  # refused before the (missing) manifest is even read
        Trainer(cfg)
    assert e.value.code == 2
    reason = "Permission denied" if where == "unwritable" else "is not a folder"
    assert one_line(str(e.value)).endswith(f"cannot write there ({reason})")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "t"]


def test_a_full_disk_is_refused_at_start_and_stops_a_run_cleanly(tmp_path, monkeypatch):
    real = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage", lambda p: real(p)._replace(free=1 << 20))
    with pytest.raises(TrainError, match=r": 1 MB free, about \d+ MB needed$") as e:
        Trainer(tiny_cfg(tmp_path))
    assert e.value.code == 2 and not (tmp_path / "run").exists()
    monkeypatch.undo()

    trainer = Trainer(tiny_cfg(tmp_path, max_steps=4, save_every=1))
    fsync = files.os.fsync
    saves = []

    def full_after_one(fd):  # the first checkpoint fits, then the disk is full
        saves.append(fd)
        if len(saves) > 1:
            raise OSError(errno.ENOSPC, "No space left on device")
        fsync(fd)

    monkeypatch.setattr(files.os, "fsync", full_after_one)
    with pytest.raises(TrainError) as e:
        trainer.fit()
    monkeypatch.undo()
    assert e.value.code == 1
    assert one_line(str(e.value)).startswith(f"{tmp_path / 'run' / 'last.pt'}: cannot write (No space left on device)")
    assert checkpoint.load(tmp_path / "run" / "last.pt")["trainer"]["step"] == 1  # the save before stays whole
    assert not list((tmp_path / "run").glob(".*.tmp"))


@pytest.mark.parametrize("workers", [0, 1])
def test_audio_that_breaks_after_validation_stops_in_one_line(tmp_path, workers):
    clips = tmp_path / "clips"
    clips.mkdir(parents=True)
    for c in ("utt1.wav", "utt2.wav", "utt3.wav"):
        shutil.copy(AUDIO / c, clips / c)
    cfg = tiny_cfg(tmp_path, num_workers=workers, max_steps=4)
    text = open(cfg.train_manifest, encoding="utf-8").read().replace(str(AUDIO), str(clips))
    open(cfg.train_manifest, "w", encoding="utf-8").write(text.replace("utt1.opus", "utt1.wav"))
    trainer = Trainer(cfg)
    for c in clips.iterdir():
        c.write_bytes(b"RIFF" + b"\x00" * 10)  # replaced by a broken file mid-run
    with pytest.raises(TrainError) as e:
        trainer.fit()
    msg = one_line(str(e.value))
    assert msg.startswith(str(clips)) and e.value.code == 1
    # it died at step 0, before any save: there is no last.pt to resume from, so the hint must not name one
    assert not (trainer.out / "last.pt").exists()
    assert "resume from" not in msg and "no checkpoint saved yet" in msg
    assert not multiprocessing.active_children()  # a worker left behind would block the interpreter's exit
    trainer.save("last.pt")  # once a checkpoint exists, the hint points at it
    with pytest.raises(TrainError) as e:
        trainer.fit()
    assert one_line(str(e.value)).endswith(f"resume from {trainer.out / 'last.pt'} once it is fixed")
    assert not multiprocessing.active_children()


def test_out_of_bounds_settings_are_one_line_exit_2(tmp_path):
    cfg = tiny_cfg(
        tmp_path,
        batch_size=0,
        lr=float("nan"),
        log_every=0,
        speed_perturb=[5.0],
        device="tpu",
        labels="аа",
        min_duration=3.0,
        max_duration=2.0,
        noise_kinds=("pink", "violet"),
    )
    with pytest.raises(TrainError) as e:
        Trainer(cfg)
    msg = one_line(str(e.value))
    for name in ("batch_size", "lr", "log_every", "speed_perturb", "device", "labels", "min_duration", "noise_kinds"):
        assert f"--{name} " in msg
    assert e.value.code == 2 and not (tmp_path / "run").exists()


def test_a_checkpoint_describing_a_huge_model_is_refused_without_allocating(tmp_path):
    model = QuartzNet(preset("tiny"))
    ckpt = checkpoint.make(model, FeatureConfig(), list(LABELS))
    ckpt["model_config"]["blocks"][1]["filters"] = 10**7  # ~ 10^14 parameters
    checkpoint.save(tmp_path / "huge.pt", ckpt)
    with pytest.raises(TrainError) as e:
        Trainer(tiny_cfg(tmp_path, init=str(tmp_path / "huge.pt")))
    assert e.value.code == 2
    assert one_line(str(e.value)).startswith(f"{tmp_path / 'huge.pt'}: not a usable model (RuntimeError: ")


def _train_cli(*args):
    return subprocess.run([sys.executable, str(ROOT / "train.py"), *map(str, args)], capture_output=True, text=True)


def test_train_cli_exit_codes(tmp_path, runs):
    r = _train_cli("--train_manifest", "m.jsonl", "--batch_size", "0", "--out_dir", tmp_path / "r")
    assert r.returncode == 2 and one_line(r.stderr).startswith("error: --batch_size 0: at least 1")
    _, end = runs
    r = _train_cli("--train_manifest", end.train_manifest, "--out_dir", end.out_dir, "--model", "tiny")
    assert r.returncode == 2 and "holds a previous run" in one_line(r.stderr)
    (tmp_path / "m.jsonl").write_text(json.dumps({"audio_filepath": sys.executable, "text": "да", "duration": 1}))
    r = _train_cli("--train_manifest", tmp_path / "m.jsonl", "--out_dir", tmp_path / "r", "--model", "tiny")
    assert r.returncode == 1 and r.stderr.splitlines()[-1].startswith(f"{tmp_path / 'm.jsonl'}:1: not usable audio")
    assert not (tmp_path / "r").exists()


# ----------------------------------------------------------------------------- export


@pytest.fixture(scope="module")
def tiny_pt(tmp_path_factory):
    d = tmp_path_factory.mktemp("export")
    checkpoint.save(d / "m.pt", checkpoint.make(QuartzNet(preset("tiny")), FeatureConfig(), list(LABELS)))
    return d / "m.pt"


@pytest.mark.parametrize(
    "where, reason",
    [
        ("folder", "is a folder, not a file"),
        ("under_a_file", "is not a folder"),
        ("unwritable", "Permission denied"),
    ],
)
def test_export_refuses_an_unwritable_output_first(tiny_pt, tmp_path, capsys, where, reason):
    (tmp_path / "file").write_text("x")
    out = {"folder": tmp_path, "under_a_file": tmp_path / "file" / "m.onnx", "unwritable": f"{UNWRITABLE}/m.onnx"}
    assert export.main(["--checkpoint", str(tiny_pt), "-o", str(out[where])]) == 2
    captured = capsys.readouterr()
    assert one_line(captured.err).endswith(f"cannot write the model there ({reason})")
    assert captured.out == ""  # refused before the export ran
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_export_to_a_full_device_is_one_line(tiny_pt, capsys):
    assert export.main(["--checkpoint", str(tiny_pt), "-o", "/dev/full"]) == 1
    assert one_line(capsys.readouterr().err) == "error: /dev/full: cannot write (No space left on device)"


def test_export_bad_checkpoints_and_calibration_are_one_line(tiny_pt, tmp_path, capsys):
    ckpt = checkpoint.load(tiny_pt)
    ckpt["labels"] = ckpt["labels"][:5]
    checkpoint.save(tmp_path / "bad.pt", ckpt)
    (tmp_path / "text.pt").write_text("not a checkpoint")
    for name, reason in [("bad.pt", "34 outputs for 5 labels (+ blank)"), ("text.pt", "not a readable checkpoint")]:
        assert export.main(["--checkpoint", str(tmp_path / name), "-o", str(tmp_path / "x.onnx")]) == 2
        assert one_line(capsys.readouterr().err).startswith(f"error: {tmp_path / name}: {reason}")
    cal = write_jsonl(tmp_path / "cal.jsonl", [{"audio_filepath": sys.executable}])
    args = [
        "--checkpoint",
        str(tiny_pt),
        "--quantize",
        "int8",
        "--calibration",
        str(cal),
        "-o",
        str(tmp_path / "q.onnx"),
    ]
    assert export.main(args) == 1
    assert one_line(capsys.readouterr().err).startswith(f"error: {cal}:1: {sys.executable}: not readable audio")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.pt", "cal.jsonl", "text.pt"]
