"""Atomic writes: the new content or the old, the usual permissions, no temp files left behind."""

import os
import stat

import pytest

from proslushka import files
from proslushka.files import atomic_write


def test_replaces_the_file_with_the_umask_permissions(tmp_path):
    old = os.umask(0o027)
    try:
        import importlib

        import proslushka.files as files

        importlib.reload(files)  # the umask is read once, at import
        path = tmp_path / "out" / "a.txt"
        files.atomic_write(path, "old")
        files.atomic_write(path, "новое")
        assert path.read_text(encoding="utf-8") == "новое"
        assert stat.S_IMODE(path.stat().st_mode) == 0o640  # 0o666 minus the umask, not mkstemp's 0o600
    finally:
        os.umask(old)
        importlib.reload(files)
    assert [p.name for p in path.parent.iterdir()] == ["a.txt"]


def test_a_failed_write_keeps_the_old_file_and_no_temp(tmp_path):
    path = tmp_path / "a.txt"
    atomic_write(path, "old")

    with pytest.raises(TypeError):
        atomic_write(path, 12345)  # neither bytes nor str: fails inside the write
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"]


def test_check_not_input_refuses_an_output_that_is_an_input_under_any_name(tmp_path, monkeypatch):
    audio = tmp_path / "a.wav"
    audio.write_bytes(b"RIFF")
    (tmp_path / "link.wav").symlink_to(audio)
    monkeypatch.chdir(tmp_path)
    for out in (audio, "a.wav", tmp_path / "link.wav", "./sub/../a.wav"):
        (tmp_path / "sub").mkdir(exist_ok=True)
        with pytest.raises(ValueError, match="is the input"):
            files.check_not_input(out, [tmp_path / "b.wav", "a.wav"])
    files.check_not_input(tmp_path / "new.txt", ["a.wav"])  # a new file, or another existing one, is fine
    (tmp_path / "other.txt").write_text("x")
    files.check_not_input("other.txt", ["a.wav", "missing.wav"])
    files.check_not_input("/dev/null", ["/dev/null"])  # a device is written as it is, never replaced
    assert audio.read_bytes() == b"RIFF"
