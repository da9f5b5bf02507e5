"""The Golos download and evaluation paths against a local HTTP server on 127.0.0.1 (no machine here reaches the
real hosts): checksums good and bad, a redirect, a connection cut mid-file then resumed, a gzipped mirror (OpenSLR's),
a fake test.tar."""

import gzip
import hashlib
import io
import json
import sys
import tarfile
import threading
import wave
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
from conftest import NEMO, ROOT

from proslushka import fetch, golos
from proslushka.fetch import FetchError, Remote


class Files(BaseHTTPRequestHandler):
    """GET /NAME serves FILES[NAME] with Range support; /redirect/NAME answers 302 to /NAME; /cut/NAME sends half
    of the file and drops the connection the first time it is asked, then serves normally; /nolength/NAME sends it
    without a Content-Length (the end of the file is the end of the connection), as some mirrors do."""

    files: dict[str, bytes] = {}
    cut_done: set[str] = set()
    requests: list[tuple[str, str | None]] = []

    def log_message(self, *args):  # keep pytest's output clean
        pass

    def do_GET(self):  # noqa: N802 - the http.server API
        self.requests.append((self.path, self.headers.get("Range")))
        path = self.path.lstrip("/")
        if path.startswith("redirect/"):
            self.send_response(302)
            self.send_header("Location", "/" + path.removeprefix("redirect/"))
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        cut = path.startswith("cut/") and path not in self.cut_done
        data = self.files.get(path.removeprefix("cut/").removeprefix("nolength/"))
        if data is None:
            self.send_error(404)
            return
        if path.startswith("nolength/"):
            self.send_response(200)
            self.end_headers()
            self.wfile.write(data)
            return
        start = int(self.headers["Range"].split("=")[1].split("-")[0]) if self.headers.get("Range") else 0
        self.send_response(206 if start else 200)
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.send_header("Content-Length", str(len(data) - start))
        self.end_headers()
        if cut:
            self.cut_done.add(path)
            self.wfile.write(data[start : start + (len(data) - start) // 2])
            self.wfile.flush()
            self.connection.shutdown(2)  # the connection breaks mid-file
            return
        self.wfile.write(data[start:])


@pytest.fixture
def server():
    Files.files, Files.cut_done, Files.requests = {}, set(), []
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Files)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def _remote(name, data):
    return Remote(name, (), hashlib.md5(data).hexdigest(), "small")


def test_download_verifies_md5_and_caches(tmp_path, server):
    data = np.random.default_rng(0).bytes(300_000)
    Files.files["m.nemo"] = data
    got = fetch.fetch(_remote("m.nemo", data), tmp_path, [f"{server}/m.nemo"], progress=False)
    assert got == tmp_path / "m.nemo" and got.read_bytes() == data
    n = len(Files.requests)
    assert fetch.fetch(_remote("m.nemo", data), tmp_path, [f"{server}/m.nemo"], progress=False) == got
    assert len(Files.requests) == n  # the cached file is verified, not downloaded again


def test_md5_mismatch_leaves_nothing_behind(tmp_path, server):
    Files.files["m.nemo"] = b"not the file you wanted" * 1000
    bad = Remote("m.nemo", (), "5bdf7ce2ba610db4d309413ca3cb4064", "68 MB")
    with pytest.raises(FetchError) as e:
        fetch.fetch(bad, tmp_path, [f"{server}/m.nemo"], progress=False)
    assert "MD5 mismatch" in str(e.value) and "\n" not in str(e.value)
    assert list(tmp_path.iterdir()) == []


def test_redirect_is_followed(tmp_path, server):
    data = b"redirected bytes" * 5000
    Files.files["m.nemo"] = data
    got = fetch.fetch(_remote("m.nemo", data), tmp_path, [f"{server}/redirect/m.nemo"], progress=False)
    assert got.read_bytes() == data
    assert [p for p, _ in Files.requests] == ["/redirect/m.nemo", "/m.nemo"]


def test_cut_connection_resumes_with_a_range_request(tmp_path, server):
    data = np.random.default_rng(1).bytes(2_000_000)
    Files.files["m.nemo"] = data
    got = fetch.fetch(_remote("m.nemo", data), tmp_path, [f"{server}/cut/m.nemo"], progress=False)
    assert got.read_bytes() == data
    ranges = [r for _, r in Files.requests]
    assert ranges[0] is None and ranges[1] == f"bytes={len(data) // 2}-"  # the second request resumed mid-file


def test_interrupted_download_resumes_in_the_next_run(tmp_path, server):
    data = np.random.default_rng(2).bytes(500_000)
    Files.files["m.nemo"] = data
    (tmp_path / "m.nemo.part").write_bytes(data[:123_456])  # what an earlier, killed run left
    got = fetch.fetch(_remote("m.nemo", data), tmp_path, [f"{server}/m.nemo"], progress=False)
    assert got.read_bytes() == data and Files.requests[0][1] == "bytes=123456-"
    assert not (tmp_path / "m.nemo.part").exists()


def test_a_mirror_without_content_length_downloads_with_a_bar_of_bytes_counted(tmp_path, server, capsys):
    data = np.random.default_rng(6).bytes(3_000_000)
    Files.files["m.nemo"] = data
    got = fetch.fetch(_remote("m.nemo", data), tmp_path, [f"{server}/nolength/m.nemo"], progress=True)
    assert got.read_bytes() == data and Files.requests == [("/nolength/m.nemo", None)]
    assert "m.nemo: " in capsys.readouterr().err  # the bar was drawn, with no total to show


def test_dead_mirror_falls_through_to_the_next(tmp_path, server):
    data = b"x" * 1000
    Files.files["m.nemo"] = data
    got = fetch.fetch(_remote("m.nemo", data), tmp_path, [f"{server}/gone.nemo", f"{server}/m.nemo"], progress=False)
    assert got.read_bytes() == data
    with pytest.raises(FetchError) as e:
        fetch.fetch(_remote("n.nemo", data), tmp_path, [f"{server}/gone.nemo"], progress=False)
    assert "HTTP 404" in str(e.value)


def test_a_gzipped_mirror_is_unpacked_and_its_content_checked(tmp_path, server):
    data = np.random.default_rng(3).bytes(400_000)
    Files.files["m.nemo.gz"] = gzip.compress(data)
    urls = [f"{server}/gone.nemo", f"{server}/redirect/m.nemo.gz"]  # a dead mirror first, as OpenSLR's come last
    got = fetch.fetch(_remote("m.nemo", data), tmp_path, urls, progress=False)
    assert got == tmp_path / "m.nemo" and got.read_bytes() == data
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.nemo"]  # neither the .gz nor a .part left


def test_a_damaged_gzip_is_deleted_and_the_next_mirror_tried(tmp_path, server):
    data = np.random.default_rng(4).bytes(300_000)
    packed = gzip.compress(data)
    Files.files["garbage.nemo.gz"] = b"not gzip at all" * 100
    Files.files["cut.nemo.gz"] = packed[: len(packed) // 2]  # served whole, but the gzip stream stops midway
    flipped = bytearray(packed)
    flipped[-8] ^= 0xFF  # the stored CRC-32: gzip's own check at the end fails
    Files.files["flipped.nemo.gz"] = bytes(flipped)
    Files.files["m.nemo"] = data
    for bad, why in [
        ("garbage", "Not a gzipped file"),
        ("cut", "end-of-stream marker"),
        ("flipped", "CRC check failed"),
    ]:
        with pytest.raises(FetchError) as e:
            fetch.fetch(_remote("m.nemo", data), tmp_path, [f"{server}/{bad}.nemo.gz"], progress=False)
        assert f"{server}/{bad}.nemo.gz: not a valid gzip file" in str(e.value) and why in str(e.value)
        assert "\n" not in str(e.value) and list(tmp_path.iterdir()) == [], bad  # nothing half-unpacked is kept
    urls = [f"{server}/garbage.nemo.gz", f"{server}/m.nemo"]
    assert fetch.fetch(_remote("m.nemo", data), tmp_path, urls, progress=False).read_bytes() == data


def test_a_gzipped_mirror_of_the_wrong_file_fails_the_md5_of_what_it_unpacks(tmp_path, server):
    Files.files["m.nemo.gz"] = gzip.compress(b"another file" * 1000)
    with pytest.raises(FetchError) as e:
        fetch.fetch(_remote("m.nemo", b"the right file"), tmp_path, [f"{server}/m.nemo.gz"], progress=False)
    want = hashlib.md5(b"another file" * 1000).hexdigest()  # the unpacked file's, not the .gz's
    assert f"MD5 mismatch (got {want}, expected" in str(e.value) and list(tmp_path.iterdir()) == []


def test_a_gzipped_download_resumes_in_the_run_and_in_the_next(tmp_path, server):
    data = np.random.default_rng(5).bytes(2_000_000)
    packed = gzip.compress(data, compresslevel=1)
    Files.files["m.nemo.gz"] = packed
    got = fetch.fetch(_remote("m.nemo", data), tmp_path, [f"{server}/cut/m.nemo.gz"], progress=False)
    assert got.read_bytes() == data
    assert [r for _, r in Files.requests] == [None, f"bytes={len(packed) // 2}-"]  # the second resumed mid-file
    got.unlink()
    Files.requests.clear()
    (tmp_path / "m.nemo.gz.part").write_bytes(packed[:54_321])  # what an earlier, killed run left
    got = fetch.fetch(_remote("m.nemo", data), tmp_path, [f"{server}/m.nemo.gz"], progress=False)
    assert got.read_bytes() == data and Files.requests == [("/m.nemo.gz", "bytes=54321-")]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.nemo"]


def test_the_openslr_mirrors_serve_the_checkpoint_gzipped():
    openslr = [u for u in golos.MODEL.urls if "openslr" in u]
    assert openslr and all(u.endswith("/resources/114/QuartzNet15x5_golos.nemo.gz") for u in openslr)
    assert all(fetch.gzipped(u, golos.MODEL.name) for u in openslr)
    assert not any(fetch.gzipped(u, golos.MODEL.name) for u in golos.MODEL.urls if u not in openslr)


def test_transfer_golos_downloads_then_transfers(tmp_path, server, monkeypatch, capsys):
    sys.path.insert(0, str(ROOT))
    import transfer

    data = (NEMO / "quartznet_tiny" / "model.nemo").read_bytes()
    Files.files["QuartzNet15x5_golos.nemo"] = data
    url = f"{server}/redirect/QuartzNet15x5_golos.nemo"
    # the published MD5 is that of the real 68 MB file: this one fails it, and leaves nothing behind
    assert transfer.main(["golos", "--url", url, "--cache_dir", str(tmp_path / "c"), "-o", str(tmp_path / "g.pt")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert "MD5 mismatch" in err[-1] and not any((tmp_path / "c").iterdir()) and not (tmp_path / "g.pt").exists()
    monkeypatch.setattr(golos, "MODEL", _remote("QuartzNet15x5_golos.nemo", data))
    assert transfer.main(["golos", "--url", url, "--cache_dir", str(tmp_path / "c"), "-o", str(tmp_path / "g.pt")]) == 0
    assert "wrote" in capsys.readouterr().out and (tmp_path / "g.pt").is_file()
    assert (tmp_path / "c" / "QuartzNet15x5_golos.nemo").read_bytes() == data
    # -o onto the cached download would replace the archive with a checkpoint: refused before anything is read
    cached = tmp_path / "c" / "QuartzNet15x5_golos.nemo"
    assert transfer.main(["golos", "--url", url, "--cache_dir", str(tmp_path / "c"), "-o", str(cached)]) == 2
    assert "is the input" in capsys.readouterr().err and cached.read_bytes() == data


def _wav(seconds, seed):
    buf = io.BytesIO()
    x = (np.random.default_rng(seed).standard_normal(int(16000 * seconds)) * 3000).astype("<i2")
    with wave.open(buf, "wb") as w:
        w.setnchannels(1), w.setsampwidth(2), w.setframerate(16000), w.writeframes(x.tobytes())
    return buf.getvalue()


def _fake_test_tar():
    """The layout of Golos's test.tar: test/DOMAIN/DOMAIN.jsonl and test/DOMAIN/files/*.wav, plus hostile members."""
    members = {}
    for d, domain in enumerate(golos.DOMAINS):
        rows = []
        for i in range(2):
            name = f"files/{domain}{i}.wav"
            members[f"test/{domain}/{name}"] = _wav(1.0 + i, 10 * d + i)
            rows.append({"id": f"{domain}{i}", "audio_filepath": name, "text": "привет как дела", "duration": 1.0 + i})
        lines = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
        members[f"test/{domain}/{domain}.jsonl"] = lines.encode()
    members["test/crowd/../../evil.wav"] = b"no"
    members["/etc/evil.jsonl"] = b"no"
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        link = tarfile.TarInfo("test/farfield/files/link.wav")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(link)
    return buf.getvalue()


def test_golos_eval_on_a_fake_test_set(tmp_path, server, monkeypatch, capsys):
    from onnx_models import fixture_onnx

    data = _fake_test_tar()
    Files.files["test.tar"] = data
    monkeypatch.setattr(golos, "TEST", Remote("golos_test.tar", (), hashlib.md5(data).hexdigest(), "small"))
    model = fixture_onnx(tmp_path)
    out = tmp_path / "out"
    args = ["eval", "--model", str(model), "--url", f"{server}/test.tar", "--cache_dir", str(tmp_path / "c"),
            "--out_dir", str(out)]  # fmt: skip
    assert golos.main(args) == 0
    printed = capsys.readouterr().out
    for domain, published in golos.PUBLISHED["greedy"].items():
        line = next(ln for ln in printed.splitlines() if domain in ln)
        assert f"{published:.3f}%" in line and " 2 " in line  # both files of the set were scored
        wer, n = golos.word_error_rate(out / f"{domain}-greedy.tsv")
        assert n == 2 and f"{wer:.3f}%" in line
    unpacked = sorted(p.relative_to(tmp_path / "c" / "golos_test").as_posix()
                      for p in (tmp_path / "c" / "golos_test").rglob("*") if p.is_file())  # fmt: skip
    assert unpacked == ["crowd/crowd.jsonl", "crowd/files/crowd0.wav", "crowd/files/crowd1.wav",
                        "farfield/farfield.jsonl", "farfield/files/farfield0.wav", "farfield/files/farfield1.wav",
                        "unpacked.json"]  # fmt: skip
    assert not (tmp_path / "evil.wav").exists() and (out / "table.txt").read_text().strip() == printed.strip()


def test_golos_eval_with_a_kenlm_binary_that_has_no_words_file(tmp_path, server, monkeypatch, capsys):
    """GOLOS_LM=lm.binary, as Golos's KenLMs.tar holds them: a binary alone, its vocabulary read from its end."""
    from onnx_models import fixture_onnx

    data = _fake_test_tar()
    Files.files["test.tar"] = data
    monkeypatch.setattr(golos, "TEST", Remote("golos_test.tar", (), hashlib.md5(data).hexdigest(), "small"))
    lm = tmp_path / "lm.binary"
    lm.write_bytes((ROOT / "tests" / "data" / "lm" / "tiny.bin").read_bytes())
    args = ["eval", "--model", str(fixture_onnx(tmp_path)), "--lm", str(lm), "--url", f"{server}/test.tar",
            "--cache_dir", str(tmp_path / "c"), "--out_dir", str(tmp_path / "out")]  # fmt: skip
    assert golos.main(args) == 0, capsys.readouterr().err
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("beam + LM")]
    assert len(rows) == 2 and all(" 2 " in row for row in rows)  # both sets, both files each, decoded with the LM
    assert sorted(lm.with_suffix(".words").read_text(encoding="utf-8").split()) == ["венок", "висел", "квас", "на",
                                                                                  "стене"]  # fmt: skip


def test_word_error_rate_sums_edits_over_words(tmp_path):
    report = tmp_path / "r.tsv"
    report.write_text(
        "wer\tcer\tword_edits\twords\tchar_edits\tchars\taudio_filepath\treference\thypothesis\n"
        "1.0\t0.5\t3\t3\t4\t8\ta.wav\tx y z\tq\n"
        "0.0\t0.0\t0\t5\t0\t9\tb.wav\ta b c d e\ta b c d e\n"
    )
    assert golos.word_error_rate(report) == (100 * 3 / 8, 2)
