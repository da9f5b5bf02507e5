import subprocess
import sys

import numpy as np
import onnxruntime as ort
import pytest
from conftest import AUDIO, CLIPS, NEMO, ROOT

from proslushka import checkpoint
from proslushka.model import QuartzNet
from proslushka.nemo import load_nemo
from proslushka.text import LABELS, ctc_collapse, decode


def _run(script, *args):
    return subprocess.run([sys.executable, str(ROOT / script), *map(str, args)], capture_output=True, text=True)


@pytest.fixture(scope="module", params=["quartznet_tiny", "quartznet_tiny_se"])
def exported(request, tmp_path_factory):
    d = tmp_path_factory.mktemp(request.param)
    nm = load_nemo(NEMO / request.param / "model.nemo")
    model = QuartzNet(nm.model_config)
    model.load_state_dict(nm.state_dict)
    checkpoint.save(d / "m.pt", checkpoint.make(model, nm.feature_config, nm.labels))
    r = _run("export.py", "--checkpoint", d / "m.pt", "-o", d / "m.onnx")
    assert r.returncode == 0, r.stderr
    assert "max abs diff" in r.stdout
    return request.param, d / "m.onnx"


def test_onnx_matches_nemo_on_the_padded_batch(exported, reference):
    name, path = exported
    r = reference[name]
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in sess.get_inputs()] == ["audio_signal", "length"]
    assert [o.name for o in sess.get_outputs()] == ["logprobs", "encoded_lengths"]
    meta = sess.get_modelmeta().custom_metadata_map
    assert meta["vocab_size"] == "34" and meta["subsampling_factor"] == "2" and meta["normalize_type"] == "per_feature"
    lp, lens = sess.run(None, {"audio_signal": r["batch_features"], "length": r["batch_feature_lengths"]})
    assert lens.tolist() == r["batch_encoded_lengths"].tolist()
    for i, n in enumerate(lens):
        assert np.abs(lp[i, :n] - r["batch_logprobs"][i, :n]).max() < 1e-4


def test_export_is_planar(exported):
    """Every convolution is 2-D with a 1 x K kernel (onnxruntime's blocked layout runs those fast), and its weight
    is the checkpoint's with a unit height axis."""
    import onnx
    from onnx import numpy_helper

    name, path = exported
    proto = onnx.load(path)
    weights = {i.name: numpy_helper.to_array(i) for i in proto.graph.initializer}
    convs = [n for n in proto.graph.node if n.op_type == "Conv"]
    assert convs and all(weights[n.input[1]].ndim == 4 and weights[n.input[1]].shape[2] == 1 for n in convs)
    model, *_ = checkpoint.load_model(path.with_suffix(".pt"))
    dw = model.blocks[1].subs[0].dw.weight.detach().numpy()
    node = next(n for n in convs if n.name == "/blocks.1/subs.0/dw/Conv")
    assert np.array_equal(weights[node.input[1]][:, :, 0], dw)


def test_onnx_matches_torch(exported):
    from proslushka import onnx_export

    name, path = exported
    model, *_ = checkpoint.load_model(path.with_suffix(".pt"))
    assert onnx_export.compare(model, path, lengths=(517, 64, 300)) < 1e-4


def test_transcribe_wav_prints_nemos_greedy_text(exported, reference, tmp_path):
    name, path = exported
    r = _run("transcribe.py", *(AUDIO / f"{c}.wav" for c in CLIPS), "--model", path)
    assert r.returncode == 0, r.stderr
    want = [decode(ctc_collapse(reference[name][f"{c}_greedy_ids"][0].tolist(), 33), LABELS) for c in CLIPS]
    clips = [str(AUDIO / f"{c}.wav") for c in CLIPS]  # several inputs: PATH<tab>TEXT lines
    assert [tuple(line.split("\t", 1)) for line in r.stdout.splitlines()] == list(zip(clips, want, strict=True))
    out = tmp_path / "t.txt"
    r = _run("transcribe.py", AUDIO / "utt1.opus", "--model", path, "-o", out)
    assert r.returncode == 0 and r.stdout == "" and len(out.read_text().splitlines()) == 1


def test_transcribe_opus_gives_same_frames_as_wav(exported):
    from proslushka.audio import load_audio
    from proslushka.infer import Transcriber

    tr = Transcriber(exported[1])
    for c in CLIPS:
        (wav,), (opus,) = tr.logprobs([load_audio(AUDIO / f"{c}.wav")]), tr.logprobs([load_audio(AUDIO / f"{c}.opus")])
        assert abs(len(wav) - len(opus)) <= 1
        assert all(isinstance(w.word, str) for w in tr.words_of(opus))


def test_transcribe_never_imports_torch(exported):
    code = (
        "import sys; sys.path.insert(0, sys.argv[3]); import transcribe;"
        "rc = transcribe.main([sys.argv[1], '--model', sys.argv[2]]);"
        "print('TORCH' if 'torch' in sys.modules else 'NO_TORCH', rc)"
    )
    args = [str(AUDIO / "utt1.opus"), str(exported[1]), str(ROOT)]
    r = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().splitlines()[-1] == "NO_TORCH 0"


def test_transcribe_bad_inputs(exported, tmp_path):
    path = exported[1]
    (tmp_path / "bad.wav").write_text("not audio")
    out = tmp_path / "out.txt"
    r = _run("transcribe.py", AUDIO / "utt1.wav", tmp_path / "bad.wav", "--model", path, "-o", out)
    assert r.returncode == 1
    assert f"{tmp_path / 'bad.wav'}: not readable audio" in r.stderr
    assert len(out.read_text().splitlines()) == 1  # the good file is still transcribed
    r = _run("transcribe.py", AUDIO / "utt1.wav", "--model", tmp_path / "nope.onnx", "-o", tmp_path / "o2.txt")
    assert r.returncode == 2 and "nope.onnx: no such model file" in r.stderr and not (tmp_path / "o2.txt").exists()
    (tmp_path / "junk.onnx").write_bytes(b"\x00junk")
    r = _run("transcribe.py", AUDIO / "utt1.wav", "--model", tmp_path / "junk.onnx")
    assert r.returncode == 2 and "junk.onnx: not a loadable ONNX model" in r.stderr


def test_export_rejects_a_truncated_checkpoint(exported, tmp_path):
    data = exported[1].with_suffix(".pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    r = _run("export.py", "--checkpoint", tmp_path / "cut.pt", "-o", tmp_path / "cut.onnx")
    assert r.returncode == 2 and "cut.pt: not a readable checkpoint" in r.stderr
    assert not (tmp_path / "cut.onnx").exists()


def test_export_writes_sherpa_onnx_tokens(exported):
    # sherpa-onnx reads "<symbol> <id>" lines, a line holding only an id as the space, and needs a blank token
    table = {}
    for line in exported[1].with_suffix(".tokens.txt").read_text(encoding="utf-8").splitlines():
        parts = line.strip().split()
        symbol, index = (" ", parts[0]) if len(parts) == 1 else parts
        table[int(index)] = symbol
    assert [table[i] for i in range(len(LABELS))] == list(LABELS) and table[len(LABELS)] == "<blk>"
    assert len(table) == len(LABELS) + 1
