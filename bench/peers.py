"""Proslushka side by side with its peers (issue #27): sherpa-onnx for inference, NVIDIA NeMo for training.

A QuartzNet15x5 with random weights (speed does not depend on the values), exported fresh with the project's exporter
(onnx_export.to_onnx, with the sherpa-onnx tokens file), on clips made from tests/data/nemo/audio (espeak-ng speech):
a 10 s WAV, a 60 s WAV and the 10 s clip as Opus.

infer: on --threads threads (1), interleaved (ours, sherpa, ours, sherpa, ...), median and range of --repeats runs:
  1. whole path, file on disk to greedy text: ours = infer.Transcriber(lm=None).transcribe_path (which leaves out
     pauses), the same with skip_silence=False (every sample through the model, as sherpa does); sherpa =
     OfflineRecognizer.from_nemo_ctc on the WAV read with the wave module (as sherpa's own Python examples read one),
     running the same weights as the 1-D graph NeMo's exporter writes (Conv1d: what a sherpa-onnx user of a NeMo
     QuartzNet runs; the ratio the issue asks for), and on our planar file (the runtimes alone compared).
     sherpa reads no Opus: for the Opus clip it is given the samples of our audio.load_audio, inside its timing;
  2. model alone: one onnxruntime session.run on the clip's features (ours only: sherpa times no part of its path);
  3. onnxruntime's GEMM peak on those threads (MatMul 1024x1024 @ 1024x2048, and the 15x5's 1x1 conv shape 512x512 @
     512x500, best of 20), and the model alone's FLOP rate (its best run) as a share of it (FLOPs counted from the
     ModelConfig: every conv's 2*k*c_in*c_out/groups*T_out; 1.885 GFLOP per second of audio); the share of the
     model's onnxruntime kernel time spent in depthwise convs (its profiler, on the optimized graph).
train: one optimizer step (features, forward, CTC, backward, AdamW with grad clipping) on the same batch (--batch
  copies of the 10 s clip; SpecAugment off on both sides) in separate processes on --train_threads threads (2),
  stepped in turn: ours fp32 (trainer.Trainer's forward_loss + optimizer_step), NeMo's EncDecCTCModel QuartzNet15x5
  (its forward and its CTC loss, built from tools/nemo_fixtures' config; no Lightning loop) and ours with --amp (bf16
  autocast). Medians, ranges, ratios, and each process's peak RSS. The first step of each is a warm-up, not counted.

    pip install sherpa-onnx                                    # not a project requirement
    python3 -m venv /tmp/nemo-venv && /tmp/nemo-venv/bin/pip install torch==2.13.0 "nemo_toolkit[asr]==3.0.0"
    python bench/peers.py [--repeats 5] [--threads 1] [--train_threads 2] [--parts infer,train]

A part whose peer is missing is skipped with a line saying how to install it. The load average is printed at the
start and end of each part: on a shared machine the figures are a floor.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from common import load  # bench/common.py: the standard library only, so NeMo's venv imports it too

if TYPE_CHECKING:
    import numpy as np

    from proslushka.model import ModelConfig

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
SR = 16000
NEMO_PYTHON = "/tmp/nemo-venv/bin/python"
GEMM_RUNS = 20  # a best of many: ~40 ms each, and a busy machine slows some of them
# Imports of the project and of numpy wait until they are needed: bench/peers_nemo_worker.py imports serve_steps from
# here inside NeMo's venv, which has neither the project's dependencies nor its threads settings.


def spread(times: list[float], unit: float = 1e3, name: str = "ms") -> str:
    """Median and range of `times` (seconds) in `name`."""
    med = statistics.median(times)
    return f"{med * unit:8.1f} {name} ({min(times) * unit:.1f}-{max(times) * unit:.1f})"


def timed(fn: Callable[[], object]) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


# ---- the model and its FLOPs


def conv_flops(cfg: ModelConfig, frames: int) -> tuple[float, float]:
    """(all, depthwise) FLOPs of one forward pass over `frames` feature frames: 2*k*c_in*c_out/groups*T_out for every
    conv of the ModelConfig (as model.py builds them: each sub-block with the block's stride; the residual 1x1 over
    the block's input). BatchNorm, ReLU and the masks are left out: a few per element, against hundreds."""
    total = dw = 0.0
    c, t = cfg.feat_in, frames
    for b in cfg.blocks:
        c_in, t_in = c, t
        for _ in range(b.repeat):
            span = b.dilation * (b.kernel - 1)
            t_out = (t + 2 * (span // 2) - span - 1) // b.stride + 1
            if b.separable:
                dw += 2 * b.kernel * c * t_out
                total += 2 * c * b.filters * t_out
            else:
                total += 2 * b.kernel * c * b.filters * t_out
            c, t = b.filters, t_out
        if b.residual:
            total += 2 * c_in * b.filters * t_in
    total += 2 * c * cfg.num_classes * t  # the decoder
    return total + dw, dw


def export_15x5(folder: Path) -> tuple[Path, Path, Path]:
    """A random-weight 15x5 exported by the project's exporter as it is now (bench/common.py's), the same weights as
    the 1-D graph NeMo's exporter writes (Conv1d: what a sherpa-onnx user runs), and the sherpa-onnx tokens file."""
    from common import random_model

    from proslushka.files import atomic_write
    from proslushka.onnx_export import sherpa_tokens, tokens_path
    from proslushka.text import LABELS

    model, nemo_graph = random_model(folder), random_model(folder, planar=False)
    tokens = tokens_path(model)
    atomic_write(tokens, sherpa_tokens(list(LABELS)).encode())
    return model, nemo_graph, tokens


def make_clips(folder: Path) -> dict[str, Path]:
    """10 s and 60 s WAVs (bench/inference.py's: the NeMo fixtures' espeak-ng speech, tiled), the 10 s one as Opus."""
    import soundfile
    from inference import make_clip

    from proslushka.audio import load_audio

    clips = {"10 s wav": folder / "clip10.wav", "60 s wav": folder / "clip60.wav", "10 s opus": folder / "clip10.opus"}
    make_clip(clips["10 s wav"], 10.0)
    make_clip(clips["60 s wav"], 60.0)
    soundfile.write(clips["10 s opus"], load_audio(clips["10 s wav"]), SR, format="OGG", subtype="OPUS")
    return clips


# ---- inference


def read_wav(path: Path) -> np.ndarray:
    """A 16-bit mono WAV's samples as float32 / 32768, with the standard library, as sherpa-onnx's examples read one."""
    import wave

    import numpy as np

    with wave.open(str(path)) as w:
        return np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").astype(np.float32) / 32768


def infer(args: argparse.Namespace, onnx_path: Path, nemo_graph: Path, tokens: Path, clips: dict[str, Path]) -> None:
    import numpy as np
    import onnxruntime as ort

    from proslushka.audio import load_audio
    from proslushka.infer import Transcriber

    tr = Transcriber(onnx_path, threads=args.threads, lm=None)
    every = Transcriber(onnx_path, threads=args.threads, lm=None, skip_silence=False)
    print(f"onnxruntime {ort.__version__}: session intra_op {args.threads}, inter_op 1 (OMP_NUM_THREADS "
          f"{os.environ['OMP_NUM_THREADS']})")  # fmt: skip
    systems: dict[str, Callable[[Path], str]] = {
        "ours": lambda path: tr.transcribe_path(path).text,
        "ours, every sample": lambda path: every.transcribe_path(path).text,
    }
    try:
        import sherpa_onnx
    except ImportError:
        print("sherpa-onnx: not importable, its rows are skipped (pip install sherpa-onnx)")
    else:

        def recognizer(model: Path):
            return sherpa_onnx.OfflineRecognizer.from_nemo_ctc(
                model=str(model), tokens=str(tokens), num_threads=args.threads, feature_dim=tr.feature_config.n_mels,
                decoding_method="greedy_search",
            )  # fmt: skip

        print(f"sherpa-onnx {sherpa_onnx.__version__}: from_nemo_ctc, num_threads {args.threads}, greedy; on NeMo's "
              "1-D graph (Conv1d, as NeMo exports a QuartzNet) and on our planar file")  # fmt: skip

        def sherpa(rec) -> Callable[[Path], str]:
            def run(path: Path) -> str:
                samples = read_wav(path) if path.suffix == ".wav" else load_audio(path)
                stream = rec.create_stream()
                stream.accept_waveform(SR, samples)
                rec.decode_stream(stream)
                return stream.result.text

            return run

        systems["sherpa-onnx"] = sherpa(recognizer(nemo_graph))
        systems["sherpa-onnx, our file"] = sherpa(recognizer(onnx_path))

    print(
        f"1. whole path, file to greedy text, {args.repeats} runs interleaved, median (min-max); ours leaves "
        "out pauses over ~0.6 s (segment.py), 'every sample' and sherpa-onnx run the model on all the audio:"
    )
    for name, path in clips.items():
        before = os.getloadavg()[0]
        texts = {who: fn(path) for who, fn in systems.items()}  # a warm-up of each
        times: dict[str, list[float]] = {who: [] for who in systems}
        for _ in range(args.repeats):
            for who, fn in systems.items():
                times[who].append(timed(lambda fn=fn, path=path: fn(path)))
        for i, who in enumerate(systems):
            print(f"   {name if i == 0 else '':9s}  {who:18s} {spread(times[who])}   {len(texts[who])} chars")
        ratios = ""
        if "sherpa-onnx" in systems:
            theirs = statistics.median(times["sherpa-onnx"])
            ratios = ", ".join(f"{who} {statistics.median(times[who]) / theirs:.2f}" for who in list(systems)[:2])
            same = statistics.median(times["ours"]) / statistics.median(times["sherpa-onnx, our file"])
            ratios = f"time / sherpa-onnx's (NeMo's graph): {ratios}; ours / sherpa-onnx on our file {same:.2f}; "
        print(f"   {'':9s}  {ratios}1-min load average {before:.2f} at the start, {os.getloadavg()[0]:.2f} at the end")
    if "sherpa-onnx" in systems:
        print("   (sherpa-onnx computes its own features, so its text differs on random weights; for the Opus clip it")
        print("   is given the samples of our audio.load_audio, decoded inside its timing: it reads only WAV)")

    print(f"2. model alone, one onnxruntime session.run on the clip's features, ours, {args.repeats} runs:")
    model_alone = {}
    for name, path in clips.items():
        if "wav" not in name:
            continue
        feats, n = tr.features(load_audio(path))
        inputs = {"audio_signal": feats[None], "length": np.array([n], dtype=np.int64)}
        tr.session.run(None, inputs)
        times = [timed(lambda inputs=inputs: tr.session.run(None, inputs)) for _ in range(args.repeats)]
        model_alone[name] = (min(times), feats.shape[-1])  # best, as the peak is a best
        seconds = len(load_audio(path)) / SR
        print(f"   {name:9s}  {spread(times)}   RTF {statistics.median(times) / seconds:.4f}")
    gemm_share(args, onnx_path, tr, model_alone)


def matmul_model(a_shape: tuple[int, int], b_shape: tuple[int, int], weight_first: bool):
    """One MatMul: an input times a constant (or, weight_first, a constant times an input, as a 1x1 conv is)."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper

    w_shape = a_shape if weight_first else b_shape
    x_shape = b_shape if weight_first else a_shape
    weight = onnx.numpy_helper.from_array(np.random.default_rng(0).standard_normal(w_shape, dtype=np.float32), "w")
    ab = ["w", "x"] if weight_first else ["x", "w"]
    graph = helper.make_graph(
        [helper.make_node("MatMul", ab, ["y"])],
        "gemm",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x_shape))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [a_shape[0], b_shape[1]])],
        [weight],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), x_shape


def gemm_peak(threads: int) -> float:
    """onnxruntime's best GFLOP/s on `threads` threads over the two MatMul shapes (printed)."""
    import numpy as np
    import onnxruntime as ort

    best = 0.0
    for (m, k), (_, n), weight_first in (((1024, 1024), (1024, 2048), False), ((512, 512), (512, 500), True)):
        proto, x_shape = matmul_model((m, k), (k, n), weight_first)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
        sess = ort.InferenceSession(proto.SerializeToString(), opts, providers=["CPUExecutionProvider"])
        x = {"x": np.random.default_rng(1).standard_normal(x_shape, dtype=np.float32)}
        sess.run(None, x)
        t = min(timed(lambda sess=sess, x=x: sess.run(None, x)) for _ in range(GEMM_RUNS))
        rate = 2 * m * k * n / t / 1e9
        best = max(best, rate)
        print(f"   MatMul [{m} x {k}] @ [{k} x {n}] fp32: {rate:6.1f} GFLOP/s (best of {GEMM_RUNS})")
    return best


def depthwise_share(onnx_path: Path, threads: int, inputs: dict, folder: Path) -> tuple[float, float]:
    """(depthwise, all convs) shares of the model's kernel time in onnxruntime's profile of 3 runs; the group of
    each node is read from the optimized graph onnxruntime saves, whose node names the profile uses."""
    import onnx
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
    opts.enable_profiling = True
    opts.log_severity_level = 3  # not the warning that an optimized graph saved here fits only this machine
    opts.profile_file_prefix = str(folder / "profile")
    opts.optimized_model_filepath = str(folder / "optimized.onnx")
    sess = ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])
    for _ in range(3):
        sess.run(None, inputs)
    events = json.loads(Path(sess.end_profiling()).read_text())
    graph = onnx.load(folder / "optimized.onnx", load_external_data=False).graph
    group = {n.name: next((a.i for a in n.attribute if a.name == "group"), 1) for n in graph.node}
    conv = {n.name for n in graph.node if "Conv" in n.op_type}
    total = dw = convs = 0.0
    for e in events:
        if e.get("cat") != "Node" or not e["name"].endswith("_kernel_time"):
            continue
        node = e["name"].removesuffix("_kernel_time")
        total += e["dur"]
        convs += e["dur"] if node in conv else 0
        dw += e["dur"] if node in conv and group.get(node, 1) > 1 else 0
    return dw / total, convs / total


def gemm_share(args: argparse.Namespace, onnx_path: Path, tr, model_alone: dict[str, tuple[float, int]]) -> None:
    import numpy as np

    from proslushka.model import ModelConfig

    cfg = ModelConfig.from_dict(json.loads(tr.session.get_modelmeta().custom_metadata_map["model_config"]))
    per_second, dw_second = conv_flops(cfg, round(1 / tr.feature_config.window_stride))
    print(f"3. onnxruntime's GEMM peak on {args.threads} thread(s):")
    peak = gemm_peak(args.threads)
    print(f"   15x5: {per_second / 1e9:.3f} GFLOP per second of audio ({dw_second / 1e9:.3f} of it depthwise, "
          f"{100 * dw_second / per_second:.1f}%)")  # fmt: skip
    for name, (seconds, frames) in model_alone.items():
        flops, _ = conv_flops(cfg, frames)
        rate = flops / seconds / 1e9
        print(f"   model alone, {name} ({frames} frames with padding): {flops / 1e9:.1f} GFLOP in "
              f"{seconds * 1e3:.1f} ms (best) = {rate:.1f} GFLOP/s, {100 * rate / peak:.0f}% of the peak "
              f"{peak:.1f}")  # fmt: skip
    feats, n = tr.features(np.zeros(10 * SR, dtype=np.float32) + 1e-3 * np.sin(np.arange(10 * SR)))
    with tempfile.TemporaryDirectory() as tmp:
        dw, convs = depthwise_share(onnx_path, args.threads, {"audio_signal": feats[None], "length": np.array([n])},
                                    Path(tmp))  # fmt: skip
    print(f"   onnxruntime profile, 10 s: convs {100 * convs:.0f}% of the kernel time, depthwise convs "
          f"{100 * dw:.0f}% (for {100 * dw_second / per_second:.1f}% of the FLOPs)")  # fmt: skip


# ---- training


def serve_steps(step: Callable[[], None]) -> None:
    """A training worker's loop: one step per "step" line on stdin, its time on stdout; at the end (any other line or
    EOF) the process's peak RSS. Lines for the bench start with PEERS: NeMo prints its own on stdout too."""
    print("PEERS ready", flush=True)
    for line in sys.stdin:
        if line.strip() != "step":
            break
        print(f"PEERS step {timed(step):.6f}", flush=True)
    print(f"PEERS rss {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f}", flush=True)


def ours_step(manifest: Path, out_dir: Path, amp: bool, threads: int) -> Callable[[], None]:
    """One training step of the project's loop (bench/train_throughput.py's) on the manifest's single batch."""
    import torch

    from proslushka.settings import TrainConfig
    from proslushka.trainer import Trainer

    torch.set_num_threads(threads)
    rows = len(manifest.read_text().splitlines())
    cfg = TrainConfig(train_manifest=str(manifest), out_dir=str(out_dir), model="15x5", batch_size=rows,
                      num_workers=0, spec_augment=False, progress=False, save_every=10**9, device="cpu", amp=amp,
                      normalize="per_feature")  # fmt: skip
    trainer = Trainer(cfg)
    trainer.model.train()
    batch = next(iter(trainer.loader()))

    def step() -> None:
        loss, _, _ = trainer.forward_loss(batch)
        trainer.scaler.scale(loss).backward()
        trainer.optimizer_step(batch[0].shape[0])

    return step


class Worker:
    """A training worker process, stepped one step at a time."""

    def __init__(self, name: str, command: list[str], threads: int, log: Path):
        self.name, self.log = name, log
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONWARNINGS": "ignore"}
        with open(log, "wb") as err:
            self.proc = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err,
                                         env=env, text=True, cwd=ROOT)  # fmt: skip
        self.times: list[float] = []
        self.rss = float("nan")
        self._expect("ready")

    def _expect(self, kind: str) -> str:
        for line in self.proc.stdout:
            if line.startswith("PEERS "):
                got, _, value = line[6:].strip().partition(" ")
                if got == kind:
                    return value
        tail = self.log.read_text(errors="replace").strip().splitlines()[-5:]
        raise SystemExit(f"{self.name}: the worker ended (exit {self.proc.wait()}): " + " | ".join(tail))

    def step(self, keep: bool = True) -> None:
        self.proc.stdin.write("step\n")
        self.proc.stdin.flush()
        took = float(self._expect("step"))
        if keep:
            self.times.append(took)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.write("end\n")
            self.proc.stdin.flush()
            self.rss = float(self._expect("rss"))
            self.proc.wait(60)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def batch_manifest(folder: Path, clip: Path, n: int) -> Path:
    """A manifest of `n` rows of the 10 s clip with its text (the NeMo fixtures' sentences as tiled in the clip)."""
    from proslushka.text import normalize

    import_fixture = ROOT / "tools/nemo_fixtures/make_fixtures.py"
    sentences = [normalize(s) for s in _fixture_sentences(import_fixture)]
    row = {"audio_filepath": clip.name, "text": " ".join(sentences), "duration": 10.0}
    path = folder / "batch.jsonl"
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for _ in range(n)), encoding="utf-8")
    return path


def _fixture_sentences(path: Path) -> list[str]:
    """make_fixtures.py's SENTENCES, read from its source (importing it needs NeMo)."""
    import ast

    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "SENTENCES":
            return ast.literal_eval(node.value)
    raise SystemExit(f"{path}: no SENTENCES")


def train(args: argparse.Namespace, clip: Path, folder: Path) -> None:
    manifest = batch_manifest(folder, clip, args.batch)
    print(f"train: {args.batch} x 10 s clips, 15x5, forward + CTC + backward + AdamW, {args.train_threads} threads, "
          f"{args.repeats} steps each in turn after a warm-up step; {load()}")  # fmt: skip
    me = [sys.executable, str(Path(__file__).resolve()), "--manifest", str(manifest), "--train_threads",
          str(args.train_threads)]  # fmt: skip
    specs = [("ours fp32", [*me, "--worker", "ours"])]
    if Path(args.nemo_python).is_file():
        worker = [args.nemo_python, str(ROOT / "bench/peers_nemo_worker.py"), "--manifest", str(manifest)]
        specs.append(("NeMo fp32", [*worker, "--threads", str(args.train_threads)]))
    else:
        print(f"NeMo: no {args.nemo_python}, its part is skipped (python3 -m venv /tmp/nemo-venv && "
              '/tmp/nemo-venv/bin/pip install torch==2.13.0 "nemo_toolkit[asr]==3.0.0"; or --nemo_python)')  # fmt: skip
    specs.append(("ours bf16", [*me, "--worker", "ours_bf16"]))
    workers: list[Worker] = []
    try:
        for name, command in specs:
            workers.append(Worker(name, command, args.train_threads, folder / f"{name.replace(' ', '_')}.log"))
        for w in workers:
            w.step(keep=False)
        for _ in range(args.repeats):
            for w in workers:
                w.step()
        for w in workers:
            w.close()
    finally:
        for w in workers:
            w.kill()
    for w in workers:
        rate = args.batch * 10 / statistics.median(w.times)
        print(f"   {w.name:9s}  {spread(w.times, 1, 's')} a step, {rate:5.1f} audio-s/s, peak RSS {w.rss:.0f} MB; "
              f"steps: {' '.join(f'{t:.1f}' for t in w.times)}")  # fmt: skip
    times = {w.name: w.times for w in workers}
    pairs = [("ours fp32", "NeMo fp32", "ours/NeMo (fp32)"), ("ours bf16", "ours fp32", "ours bf16/fp32")]
    for a, b, what in pairs:
        if a in times and b in times:
            print(f"   step time {what}: {ratios(times[a], times[b])}")
    print(f"   {load()}")


def ratios(a: list[float], b: list[float]) -> str:
    """a / b three ways, since others' load on a shared machine slows some steps several times: of the medians, the
    median of each round's ratio (steps taken one after the other), and of the best steps."""
    rounds = statistics.median(x / y for x, y in zip(a, b, strict=True))
    return (f"{statistics.median(a) / statistics.median(b):.2f} (medians), {rounds:.2f} (median of the rounds' "
            f"ratios), {min(a) / min(b):.2f} (best steps)")  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=5, help="timed runs and steps of each (default: %(default)s)")
    p.add_argument("--threads", type=int, default=1, help="inference threads (default: %(default)s)")
    p.add_argument("--train_threads", type=int, default=2, help="training threads of each (default: %(default)s)")
    p.add_argument("--batch", type=int, default=8, help="10 s clips in the training batch (default: %(default)s)")
    p.add_argument("--parts", default="infer,train", help="comma list of infer, train (default: %(default)s)")
    p.add_argument("--nemo_python", default=NEMO_PYTHON, help="NeMo's venv python (default: %(default)s)")
    p.add_argument("--worker", choices=["ours", "ours_bf16"], help=argparse.SUPPRESS)
    p.add_argument("--manifest", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args()
    parts = set(args.parts.split(","))
    if bad := parts - {"infer", "train"}:
        p.error(f"--parts: unknown {', '.join(sorted(bad))} (choose from infer, train)")
    if min(args.repeats, args.threads, args.train_threads, args.batch) < 1:
        p.error("--repeats, --threads, --train_threads and --batch must be at least 1")
    if args.worker:
        with tempfile.TemporaryDirectory(prefix="peers_run_") as out:
            serve_steps(ours_step(args.manifest, Path(out), args.worker == "ours_bf16", args.train_threads))
        return
    os.environ["OMP_NUM_THREADS"] = str(args.threads)  # before onnxruntime and torch load (export uses torch)
    sys.path.insert(0, str(ROOT / "bench"))
    print(f"bench/peers.py: QuartzNet15x5, random weights; {load()}")
    with tempfile.TemporaryDirectory(prefix="peers_") as tmp:
        folder = Path(tmp)
        clips = make_clips(folder)
        if "infer" in parts:
            onnx_path, nemo_graph, tokens = export_15x5(folder)
            infer(args, onnx_path, nemo_graph, tokens, clips)
            print(f"   {load()}")
        if "train" in parts:
            train(args, clips["10 s wav"], folder)


if __name__ == "__main__":
    main()
