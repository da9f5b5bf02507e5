"""An input folder's broken symbolic links are failed inputs that say so, not files skipped without a word."""

import os

from conftest import AUDIO

import transcribe
from proslushka.files import regular_files


def _folder(tmp_path):
    d = tmp_path / "in"
    (d / "sub").mkdir(parents=True)
    (d / "a.wav").write_bytes((AUDIO / "utt1.wav").read_bytes())
    (d / "sub" / "b.wav").symlink_to(AUDIO / "utt2.wav")  # a good link: followed
    (d / "gone.wav").symlink_to(tmp_path / "deleted.wav")  # dangling
    (d / "sub" / "loop.wav").symlink_to(d / "sub" / "loop.wav")  # points at itself
    os.mkfifo(d / "pipe.wav")  # not a file: left out, as before
    return d


def test_regular_files_reports_links_that_lead_nowhere(tmp_path):
    d = _folder(tmp_path)
    problems = []
    names = ["sub/loop.wav", "a.wav", "pipe.wav", "gone.wav", "sub/b.wav"]
    assert regular_files([d / n for n in names], problems) == [d / "a.wav", d / "sub" / "b.wav"]
    assert problems == [
        f"{d / 'gone.wav'}: broken symbolic link",
        f"{d / 'sub' / 'loop.wav'}: broken symbolic link (a loop)",
    ]


def test_a_folder_with_broken_links_transcribes_the_rest_and_exits_1(tmp_path, capsys):
    from onnx_models import energy_onnx

    d = _folder(tmp_path)
    rc = transcribe.main([str(d), "--model", str(energy_onnx(tmp_path)), "--threads", "1"])
    out, err = capsys.readouterr()
    assert rc == 1  # as for any input that fails
    assert [line.split("\t")[0] for line in out.splitlines()] == [str(d / "a.wav"), str(d / "sub" / "b.wav")]
    assert (
        f"{d / 'gone.wav'}: broken symbolic link\n" in err and f"{d / 'sub' / 'loop.wav'}: broken symbolic link" in err
    )
