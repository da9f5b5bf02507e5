"""Live transcription through the server (python -m proslushka.serve, started here on a free port, pinned to --cores
cores with as many threads, 1 by default), with the websockets package as Vosk's client and urllib as the OpenAI API's:

1. final text: the long eval files streamed as fast as the server answers; CER of the finals and of transcribe.py's
   text against the reference, and of the finals against transcribe.py's (target: within 0.3 points);
2. latency at real time: from a word's end in the audio to the first partial holding that many words of its
   segment, and to its final; p50 and p95 (targets: partial p95 <= 0.8 s, final p95 <= 1.5 s after the pause);
3. streams the server's cores sustain: N real-time streams at once for --seconds; per frame, the lag from sending
   it to its answer; a level sustains when no frame is lost, p95 lag stays under 0.5 s and the last quarter's mean
   lag is no more than 0.2 s over the first quarter's (no growth); the server's RSS at start and end;
4. the OpenAI endpoint: requests per second on samples/*.opus (one client, and 4 at once) against transcribe.py's
   Transcriber in-process on the same clips, one thread.
With --model15x5, also (3) for a random-weight QuartzNet 15x5 fp32 (needs torch to export it).

    python tools/make_eval_sets.py   # data/ru-synth/eval/long: a few ~3.5 min files (needs data/ru-synth/valid)
    python bench/stream.py [--files 2] [--seconds 60] [--levels 8 16 24 32] [--model15x5] [--greedy_partials]
    python bench/stream.py --cores 2 --parts 3 --levels 16 --seconds 300   # the issue's 5-minute soak on 2 cores

The load average is printed beside the figures: on a shared machine they are a floor, not the server's best.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
from common import load, random_model
from websockets.asyncio.client import connect

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from proslushka.audio import load_audio  # noqa: E402
from proslushka.infer import Transcriber  # noqa: E402
from proslushka.manifest import iter_manifest_rows  # noqa: E402
from proslushka.metrics import cer  # noqa: E402

SR = 16000
FRAME = 3200  # samples: 0.2 s, as Vosk's example clients send
LONG = ROOT / "data/ru-synth/eval/long/manifest.jsonl"
MODEL, LM = ROOT / "models/demo.onnx", ROOT / "models/demo-lm.bin"


def pct(values, q: float) -> float:
    return float(np.percentile(values, q)) if len(values) else float("nan")


class Server:
    """python -m proslushka.serve on a free port, pinned to the first `cores` cores (taskset), as many onnxruntime
    threads."""

    def __init__(self, model: Path, lm: str, greedy_partials: bool = False, cores: int = 1):
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        sock.close()
        pin = ["taskset", "-c", f"0-{cores - 1}"] if os.cpu_count() > cores else []
        command = [
            *pin,
            sys.executable,
            "-m",
            "proslushka.serve",
            "--model",
            str(model),
            "--lm",
            lm,
            "--port",
            str(self.port),
            "--threads",
            str(cores),
            "--max_streams",
            "256",
            "--idle_seconds",
            "120",
            *(["--greedy_partials"] if greedy_partials else []),
        ]
        self.proc = subprocess.Popen(command, cwd=ROOT, stderr=subprocess.DEVNULL)
        for _ in range(600):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=5).read()
                return
            except OSError:
                time.sleep(0.1)
        raise SystemExit("the server did not come up")

    def rss_mb(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


async def stream(port: int, audio: np.ndarray, speed: float | None, seconds: float | None = None) -> dict:
    """One Vosk stream: frames at `speed` x real time (None: each as soon as the last is answered). Per frame, the
    send and answer times; the answers; finals with their arrival time."""
    # the file's own 16-bit samples (load_audio gave k / 32768): a scale of 32767 and truncation would move each
    # sample by one step towards zero, and transcribe.py would be hearing other audio than the stream
    pcm = np.clip(np.round(audio * 32768), -32768, 32767).astype("<i2")
    if seconds is not None:
        pcm = pcm[: int(seconds * SR)]
    frames = [pcm[i : i + FRAME].tobytes() for i in range(0, len(pcm), FRAME)]
    sent, got, answers = [], [], []
    async with connect(f"ws://127.0.0.1:{port}/", max_size=None) as ws:
        await ws.send(json.dumps({"config": {"sample_rate": SR}}))

        async def receive():
            for _ in frames:
                answers.append(json.loads(await ws.recv()))
                got.append(time.monotonic())

        reader = asyncio.create_task(receive())
        t0 = time.monotonic()
        for i, frame in enumerate(frames):
            if speed is not None:  # frame i ends at (i + 1) * FRAME samples of audio
                await asyncio.sleep(max(0.0, t0 + (i + 1) * FRAME / SR / speed - time.monotonic()))
            else:
                while len(answers) < i:
                    await asyncio.sleep(0.001)
            sent.append(time.monotonic())
            await ws.send(frame)
        await reader
        await ws.send('{"eof" : 1}')
        answers.append(json.loads(await ws.recv()))
        got.append(time.monotonic())
    return {"t0": t0, "sent": np.array(sent), "got": np.array(got), "answers": answers, "frames": len(frames)}


def finals_text(run: dict) -> str:
    return " ".join(a["text"] for a in run["answers"] if a.get("text"))


def long_files(manifest: Path, n: int) -> list[tuple[Path, str]]:
    if not manifest.is_file():
        raise SystemExit(f"{manifest}: not there; make it with: python tools/make_eval_sets.py")
    rows = [r for _, r in iter_manifest_rows(manifest) if isinstance(r, dict)][:n]
    return [(manifest.parent / r["audio_filepath"], r["text"]) for r in rows]


def final_text_cer(port: int, tr: Transcriber, files: list[tuple[Path, str]]) -> None:
    refs, live, offline = [], [], []
    for path, text in files:
        run = asyncio.run(stream(port, load_audio(path), None))
        refs.append(text)
        live.append(finals_text(run))
        offline.append(tr.transcribe_path(path).text)
    minutes = sum(len(load_audio(p)) for p, _ in files) / SR / 60
    a, b = 100 * cer(refs, live), 100 * cer(refs, offline)
    print(
        f"1. final text, {len(files)} long files ({minutes:.1f} min): CER streamed {a:.2f}%, transcribe.py "
        f"{b:.2f}% (difference {a - b:+.2f} points); streamed vs transcribe.py: {100 * cer(offline, live):.2f}%"
    )


def latency(port: int, path: Path, seconds: float) -> None:
    """Word by word: the words of each final (their times are the audio's), the partials before it."""
    run = asyncio.run(stream(port, load_audio(path), 1.0, seconds))
    t0, partial_lat, final_lat, pause_lat = run["t0"], [], [], []
    seen: list[tuple[float, int]] = []  # (arrival, number of words) of the partials of the segment being built
    for answer, at in zip(run["answers"], run["got"], strict=True):
        if "partial" in answer:
            seen.append((at - t0, len(answer["partial"].split())))
            continue
        words = answer.get("result", [])
        for i, w in enumerate(words):
            first = next((t for t, n in seen if n > i), at - t0)  # no partial that long: the final is its first
            partial_lat.append(first - w["end"])
            final_lat.append(at - t0 - w["end"])
        if words:
            pause_lat.append(at - t0 - words[-1]["end"])
        seen = []
    print(f"2. latency at real time ({seconds:g} s of {path.name}, {len(final_lat)} words): word end -> first partial "
          f"p50 {pct(partial_lat, 50):.2f} s, p95 {pct(partial_lat, 95):.2f} s; -> final p50 {pct(final_lat, 50):.2f} "
          f"s, p95 {pct(final_lat, 95):.2f} s; segment's last word -> its final (the pause) p50 "
          f"{pct(pause_lat, 50):.2f} s, p95 {pct(pause_lat, 95):.2f} s")  # fmt: skip


async def many(port: int, audios: list[np.ndarray], seconds: float, server: Server, rss: list[float]) -> list[dict]:
    """The streams at once; the server's RSS at a quarter, half and three quarters of the run appended to rss."""

    async def sample():
        for _ in range(3):
            await asyncio.sleep(seconds / 4)
            rss.append(server.rss_mb())

    sampler = asyncio.create_task(sample())
    runs = await asyncio.gather(*(stream(port, a, 1.0, seconds) for a in audios))
    sampler.cancel()
    return runs


def streams_per_core(server: Server, audios: list[np.ndarray], levels: list[int], seconds: float, name: str) -> None:
    best = 0
    for n in levels:
        rss = [server.rss_mb()]
        runs = asyncio.run(many(server.port, [audios[i % len(audios)] for i in range(n)], seconds, server, rss))
        rss = " -> ".join(f"{x:.0f}" for x in [*rss, server.rss_mb()])
        lag = np.concatenate([r["got"][: r["frames"]] - r["sent"] for r in runs])
        quarter = [(np.mean(d[: len(d) // 4]), np.mean(d[-len(d) // 4 :])) for r in runs
                   for d in [r["got"][: r["frames"]] - r["sent"]]]  # fmt: skip
        growth = float(np.mean([b - a for a, b in quarter]))
        lost = sum(r["frames"] + 1 - len(r["answers"]) for r in runs)
        ok = lost == 0 and pct(lag, 95) < 0.5 and growth < 0.2
        best = n if ok else best
        print(f"3. {name}: {n} real-time streams x {seconds:g} s: lag p50 {pct(lag, 50):.3f} s, p95 "
              f"{pct(lag, 95):.3f} s, max {lag.max():.3f} s; last quarter - first quarter {growth:+.3f} s; frames "
              f"lost {lost}; server RSS {rss} MB (start, 1/4, 1/2, 3/4, end); "
              f"{'sustained' if ok else 'NOT sustained'}; {load()}")  # fmt: skip
        if not ok:
            break
    print(f"   {name}: sustains {best} real-time streams (of the levels tried)")


def post(port: int, path: Path) -> str:
    boundary = "proslushkabench"
    body = (f'--{boundary}\r\nContent-Disposition: form-data; name="model"\r\n\r\nx\r\n--{boundary}\r\n'
            f'Content-Disposition: form-data; name="file"; filename="{path.name}"\r\n'
            f"Content-Type: application/octet-stream\r\n\r\n").encode() + path.read_bytes() + \
        f"\r\n--{boundary}--\r\n".encode()  # fmt: skip
    request = urllib.request.Request(f"http://127.0.0.1:{port}/v1/audio/transcriptions", body,
                                     {"Content-Type": f"multipart/form-data; boundary={boundary}"})  # fmt: skip
    with urllib.request.urlopen(request, timeout=60) as r:
        return json.loads(r.read())["text"]


def openai_rps(port: int, tr: Transcriber, repeats: int) -> None:
    from concurrent.futures import ThreadPoolExecutor

    clips = sorted((ROOT / "samples").glob("*.opus")) * repeats
    assert [post(port, c) for c in clips[:4]] == [tr.transcribe_path(c).text for c in clips[:4]]
    t = time.perf_counter()
    for c in clips:
        post(port, c)
    one = len(clips) / (time.perf_counter() - t)
    t = time.perf_counter()
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda c: post(port, c), clips))
    four = len(clips) / (time.perf_counter() - t)
    t = time.perf_counter()
    for c in clips:
        tr.transcribe_path(c)
    local = len(clips) / (time.perf_counter() - t)
    print(f"4. OpenAI endpoint on samples/*.opus ({len(clips)} requests of 2-3.3 s clips): {one:.1f} requests/s "
          f"from one client, {four:.1f}/s from 4 at once; transcribe.py's Transcriber in-process, one thread: "
          f"{local:.1f} clips/s; {load()}")  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--long", default=str(LONG), help="long eval files' manifest (default: %(default)s)")
    p.add_argument("--files", type=int, default=2, help="long eval files for (1) (default: %(default)s)")
    p.add_argument("--seconds", type=float, default=60, help="of each stream in (2) and (3); the issue: 300")
    p.add_argument("--levels", type=int, nargs="+", default=[8, 16, 24, 32], help="streams at once in (3)")
    p.add_argument("--levels15x5", type=int, nargs="+", default=[1, 2, 4], help="the same for --model15x5")
    p.add_argument("--repeats", type=int, default=5, help="passes over samples/*.opus in (4)")
    p.add_argument("--model15x5", action="store_true", help="also (3) for a random-weight 15x5 fp32")
    p.add_argument("--greedy_partials", action="store_true", help="the server decodes partials greedily")
    p.add_argument("--cores", type=int, default=1, help="the server's cores and threads (default: %(default)s)")
    p.add_argument("--parts", type=int, nargs="+", default=[1, 2, 3, 4], help="which of 1-4 to run (default: all)")
    args = p.parse_args()
    partials = "greedy" if args.greedy_partials else "with the LM, beam 8"
    print(f"bench/stream.py: demo model + its LM (partials {partials}), server on {args.cores} core(s); {load()}")
    files = long_files(Path(args.long), args.files)
    tr = Transcriber(MODEL, lm=LM, threads=1)
    server = Server(MODEL, str(LM), args.greedy_partials, args.cores)
    try:
        if 1 in args.parts:
            final_text_cer(server.port, tr, files)
        if 2 in args.parts:
            latency(server.port, files[0][0], args.seconds)
        audios = [load_audio(f) for f, _ in files]
        if 3 in args.parts:
            streams_per_core(server, audios, args.levels, args.seconds, f"demo model + LM, {args.cores} core(s)")
        if 4 in args.parts:
            openai_rps(server.port, tr, args.repeats)
    finally:
        server.close()
    if args.model15x5:
        with tempfile.TemporaryDirectory() as tmp:
            server = Server(random_model(Path(tmp)), "none")
            try:
                streams_per_core(server, audios, args.levels15x5, args.seconds, "15x5 fp32 (random weights, greedy)")
            finally:
                server.close()


if __name__ == "__main__":
    main()
