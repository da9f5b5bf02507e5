"""Transcribe audio files with an exported ONNX model: numpy features + onnxruntime + CTC beam search with a KenLM
language model (or greedy CTC with --lm none). No torch. Without --lm, the shipped LM decodes only the model it was
tuned for (the demo model, known by content); any other model is decoded greedily, and stderr says which.

Inputs are files, folders (searched recursively for audio) and --manifest rows. Long files are cut at pauses into
chunks of at most ~20 s, so memory does not grow with their length; word times stay relative to the whole file.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from proslushka.cli import fail, number, os_error

# the shipped demo model (models/README.md), found beside this script whatever the working directory
DEFAULT_MODEL = Path(__file__).resolve().parent / "models" / "demo.onnx"
FORMATS = ("txt", "json", "srt", "vtt", "tsv")  # proslushka.formats.FORMATS, here so --help needs no imports
AUDIO_EXTENSIONS = {
    ".wav", ".flac", ".mp3", ".ogg", ".oga", ".opus", ".m4a", ".aac", ".mp4", ".webm", ".mka", ".mkv", ".wma",
    ".aif", ".aiff", ".amr", ".3gp", ".caf", ".wv", ".ape", ".au", ".ac3",
}  # fmt: skip
# the most audio one onnxruntime run may hold: --batch_size chunks of up to --max_chunk_seconds each. Memory follows
# it, not either number alone (the demo model on a 2-hour file: 0.12 GB peak at 1 chunk of 20 s, 0.50 GB at 32,
# 0.90 GB at 64, 0.71 GB at 1 chunk of 640 s); batches of more than ~32 chunks were measured no faster on a CPU
BATCH_SECONDS = 640
SIGPIPE_EXIT = 141  # 128 + SIGPIPE: what a Unix tool whose reader went away (`| head`) exits with


@dataclass
class Item:
    path: str  # the audio file
    name: Path  # where its output goes under --output_dir (without the format's extension)
    ref: str | None = None  # the manifest's text, normalized
    where: str = ""  # "manifest:line" for a manifest row, so an error names the row


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("inputs", nargs="*", help="audio files (any format ffmpeg reads) or folders of them")
    p.add_argument("--manifest", help="a JSON-lines (or .csv/.tsv) manifest: audio_filepath, optionally text")
    p.add_argument(
        "--model",
        default=str(DEFAULT_MODEL),
        help="ONNX model from export.py (default: the demo model, models/demo.onnx)",
    )
    p.add_argument(
        "--format",
        default="txt",
        choices=FORMATS,
        help="output format (default: %(default)s; txt from several inputs, a folder or a manifest into one stream: "
        "one 'PATH<tab>TEXT' line per file)",
    )
    p.add_argument("--output_dir", help="write one file per input here (NAME.FORMAT, folder structure kept)")
    p.add_argument("-o", "--output", help="write all transcripts to this one file (default: stdout)")
    p.add_argument(
        "--batch_size",
        type=number(1, kind=int),
        default=1,
        help=f"chunks per onnxruntime run (default: %(default)s; at most {BATCH_SECONDS} s of audio a run: "
        f"--batch_size times --max_chunk_seconds, i.e. {BATCH_SECONDS // 20} chunks of 20 s)",
    )
    p.add_argument(
        "--threads", type=number(0, kind=int), default=None, help="onnxruntime intra-op threads (default: all cores)"
    )
    p.add_argument(
        "--max_chunk_seconds",
        type=number(1),
        default=20.0,
        help="cut long audio at pauses into chunks at most this long (default: %(default)s)",
    )
    p.add_argument(
        "--keep_silence",
        action="store_true",
        help="feed pauses to the model too (by default long "
        "audio is cut into chunks of speech and pauses over ~0.6 s are left out)",
    )
    p.add_argument(
        "--max_words_per_line", type=number(1, kind=int), default=None, help="srt/vtt: at most this many words a cue"
    )
    p.add_argument(
        "--report",
        help="with --manifest rows that have text: print WER/CER and write per-utterance "
        "errors, the worst first, to this TSV file (transcripts then go only there, unless -o/--output_dir)",
    )
    p.add_argument(
        "--lm",
        help="KenLM language model (binary or ARPA) for beam search, with its tuned settings from NAME.json and its "
        "vocabulary NAME.words beside it (made from the LM if missing); 'none' decodes greedily (default: "
        "models/demo-lm.bin with the model it was tuned for, the demo model; greedy with any other)",
    )
    p.add_argument(
        "--beam_width", type=number(1, kind=int), help="hypotheses kept per frame (default: the LM's tuned one, or 64)"
    )
    p.add_argument("--lm_alpha", type=number(-math.inf), help="LM weight (default: the LM's tuned one)")
    p.add_argument("--lm_beta", type=number(-math.inf), help="bonus per word (default: the LM's tuned one)")
    p.add_argument(
        "--hotwords",
        help='words to favour, e.g. "прослушка:10,квартц" (weight 10 if not given); also words the LM has never seen',
    )
    p.add_argument(
        "--live",
        metavar="FILE",
        help="transcribe as the audio comes: '-' reads raw 16 kHz mono s16le PCM from stdin (ffmpeg -f pulse -i "
        "default -ac 1 -ar 16000 -f s16le - | python transcribe.py --live -), a file is played in real time; "
        "finals are printed line by line, the partial is shown in place on a terminal's stderr",
    )
    p.add_argument("--speed", type=number(0.01), default=1.0, help="--live FILE: play it this many times faster")
    args = p.parse_args(argv)
    if args.live is not None:
        if args.inputs or args.manifest or args.output or args.output_dir or args.report or args.format != "txt":
            p.error("--live prints text lines on stdout: no other inputs, --manifest, outputs, --report or --format")
        return live(args)
    if (seconds := args.batch_size * args.max_chunk_seconds) > BATCH_SECONDS:
        p.error(
            f"--batch_size times --max_chunk_seconds is {seconds:.0f} s of audio a run, over the ceiling of "
            f"{BATCH_SECONDS} s (memory grows with it)"
        )
    if not args.inputs and not args.manifest:
        p.error("give audio files, folders or --manifest")
    if args.output and args.output_dir:
        p.error("-o/--output and --output_dir exclude each other")
    if args.report and not args.manifest:
        p.error("--report needs --manifest (the reference texts)")
    tolerant_stderr()

    from proslushka.audio import AudioError
    from proslushka.decode import DecoderError
    from proslushka.files import atomic_write, check_not_input, check_writable
    from proslushka.formats import render
    from proslushka.infer import ModelError, Transcriber
    from proslushka.manifest import ManifestError

    try:  # every output is checked before any work, so a typo costs seconds, not an hour of transcription
        for out in filter(None, (args.output, args.report)):
            check_writable(out)
        if args.output_dir:
            check_writable(Path(args.output_dir) / "probe")
    except OSError as e:
        return fail(os_error(e), 2)
    try:
        items, problems = collect(args.inputs, args.manifest)
    except ManifestError as e:
        return fail(e, 2)
    for problem in problems:
        print(problem, file=sys.stderr)
    try:
        for out, sources in outputs_and_sources(args, items):
            check_not_input(out, sources)
    except ValueError as e:
        return fail(e, 2)
    if args.report and all(it.ref is None for it in items):  # the transcripts would go only to a report of nothing
        return fail(f"{args.manifest}: no row has a text to score against", 1)
    if not (args.output or args.output_dir or args.report) and sys.stdout is None:
        return fail("stdout is closed; give -o/--output or --output_dir", 1)
    if args.format in ("srt", "vtt", "tsv") and not args.output_dir and len(items) + len(problems) > 1:
        p.error(f"--format {args.format} with several inputs needs --output_dir (one file each)")
    out_dir = Path(args.output_dir) if args.output_dir else None
    if out_dir:
        clash = [name for name, n in Counter(out_name(it, args.format) for it in items).items() if n > 1]
        if clash:
            return fail(f"several inputs would write {out_dir / clash[0]}; give them separately", 2)
    try:
        tr = Transcriber(args.model, threads=args.threads, skip_silence=not args.keep_silence)
        setup_decoder(tr, args)
    except (ModelError, DecoderError) as e:
        return fail(e, 2)

    bar = progress(len(items))
    texts, scored, failed = [], [], len(problems)
    # one stream of several transcripts: each txt line says its file, as grep does with several files
    named = args.format == "txt" and not out_dir and not single_file(args.inputs, args.manifest)
    results = tr.transcribe_many((it.path for it in items), args.batch_size, args.max_chunk_seconds)
    for item, result in zip(items, results, strict=True):
        if bar:
            bar.update()
        if isinstance(result, AudioError):
            say(f"{item.where}: {result}" if item.where else str(result), bar)
            failed += 1
            continue
        text = render(result, args.format, args.max_words_per_line, audio_filepath=item.path)
        if named:
            text = f"{printable(item.path)}\t{text}"
        if out_dir:
            try:
                atomic_write(out_dir / out_name(item, args.format), text)
            except OSError as e:  # a full disk midway: this output is lost, not the others
                say(f"{out_dir / out_name(item, args.format)}: cannot write ({e.strerror})", bar)
                failed += 1
        elif args.output:
            texts.append(text)
        elif not args.report:  # with --report the hypotheses are in the report file
            try:
                sys.stdout.write(text)
                sys.stdout.flush()
            except OSError as e:  # the rest would go nowhere either: stop now
                if bar:
                    bar.close()
                return stdout_failed(e)
        if item.ref is not None:
            scored.append((item.path, item.ref, result.text))
    if bar:
        bar.close()
    try:
        if args.output:
            atomic_write(args.output, "".join(texts))
        if args.report:
            summary, table = report(scored)
            atomic_write(args.report, table)
    except OSError as e:
        return fail(f"{e.filename or args.output or args.report}: cannot write ({e.strerror})", 1)
    if args.report and summary is None:
        why = "every transcribed row has an empty text" if scored else "no row with a text was read"
        return fail(f"no reference words to score against: {why}", 1)
    if args.report:
        print(f"{summary}; {failed} inputs failed, not scored" if failed else summary, file=sys.stderr)
    return 1 if failed else 0


def live(args: argparse.Namespace) -> int:
    """--live: proslushka.stream over stdin's PCM or a file played at --speed; each final a line on stdout."""
    # numpy's OpenBLAS would spin a thread per core between the small filterbank products of each partial (the
    # server pins it so too: proslushka/serve.py); read when numpy is first imported, just below
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    import shutil
    import time

    from proslushka.audio import AudioError, stream_audio
    from proslushka.decode import DecoderError
    from proslushka.infer import ModelError, Transcriber
    from proslushka.stream import Stream

    tolerant_stderr()
    try:
        tr = Transcriber(args.model, threads=args.threads)
        setup_decoder(tr, args)
    except (ModelError, DecoderError) as e:
        return fail(e, 2)
    stream, rate = Stream(tr), tr.sample_rate

    def blocks():
        if args.live == "-":  # read1: whatever has come, so a slow producer is not waited on for a whole block
            yield from iter(lambda: sys.stdin.buffer.read1(rate // 10 * 2), b"")  # 0.1 s
            return
        start, fed = time.monotonic(), 0
        for block in stream_audio(args.live, rate, block_seconds=0.1):
            fed += len(block)
            time.sleep(max(start + fed / rate / args.speed - time.monotonic(), 0))  # as a microphone gives it
            yield block

    shown = sys.stderr.isatty()

    def show(finals) -> None:
        if shown:
            sys.stderr.write("\r\033[K")  # the partial's line, cleared for the final
        for f in finals:
            if f.text:
                sys.stdout.write(f.text + "\n")
        sys.stdout.flush()

    try:
        partial = ""
        for block in blocks():
            finals = stream.accept(block)
            if finals:
                show(finals)
                partial = ""
            elif shown and (text := stream.partial()) != partial:
                partial, width = text, shutil.get_terminal_size().columns - 1
                sys.stderr.write("\r\033[K" + text[-width:])
                sys.stderr.flush()
        show(stream.finish())
    except AudioError as e:
        return fail(e, 1)
    except KeyboardInterrupt:  # Ctrl-C ends the recording: what was said so far is still printed
        show(stream.finish())
        return 130
    except OSError as e:
        return stdout_failed(e)
    return 0


def outputs_and_sources(args: argparse.Namespace, items: list[Item]):
    """(output path, the inputs it must not be) for each file this run would write: -o and --report against every
    input (audio, manifest, model, LM), each --output_dir file against its own audio and the shared inputs."""
    shared = [f for f in (args.manifest, args.model, args.lm) if f and f != "none"]
    for out in filter(None, (args.output, args.report)):
        yield out, [*shared, *(it.path for it in items)]
    if args.output_dir:
        for it in items:
            yield Path(args.output_dir) / out_name(it, args.format), [*shared, it.path]


def single_file(inputs: list[str], manifest: str | None) -> bool:
    """Whether the inputs are one file named on the command line (not a folder or a manifest, whose number of files
    the output's shape must not depend on)."""
    return manifest is None and len(inputs) == 1 and not Path(inputs[0]).is_dir()


def tolerant_stderr() -> None:
    """Let stderr show any file name: one that is not UTF-8 (b"a\\xff.wav" reaches Python as "a\\udcff.wav") then
    prints as "a\\udcff.wav" instead of failing, e.g. under PYTHONIOENCODING=utf-8:strict or a test's capture."""
    reconfigure = getattr(sys.stderr, "reconfigure", None)
    if reconfigure is not None:
        reconfigure(errors="backslashreplace")


def stdout_failed(e: OSError) -> int:
    """The exit code when stdout stops taking output: quietly 141 for a reader that went away (`| head`), as Unix
    tools exit; one line and 1 otherwise (a full disk). stdout is pointed at /dev/null first, so that Python's
    own flush at exit does not fail again on what is still buffered ("Exception ignored ...")."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):  # no file descriptor (a test's capture): nothing is flushed at exit either
        pass
    if isinstance(e, BrokenPipeError):
        return SIGPIPE_EXIT
    return fail(f"stdout: cannot write ({e.strerror or e})", 1)


def setup_decoder(tr, args: argparse.Namespace) -> None:
    """Beam search with the chosen LM (or none), the settings given on the command line and the hotwords;
    greedy for --lm none without hotwords. Without --lm: the shipped LM with the model it was tuned for, else none,
    and one line on stderr says which. Raises DecoderError for an LM, settings or hotwords that cannot be used."""
    from proslushka.decode import load_settings, parse_hotwords, tuned_for

    hotwords = parse_hotwords(args.hotwords, tr.labels) if args.hotwords else None
    given = {"alpha": args.lm_alpha, "beta": args.lm_beta, "beam_width": args.beam_width}
    given = {k: v for k, v in given.items() if v is not None}
    lm, note = args.lm, None
    if lm is None:
        lm, note = default_lm(args.model, bool(given))
    elif lm != "none" and tuned_for(settings := load_settings(lm), args.model) is False:  # said, not refused
        note = (
            f"lm: {lm} is tuned for {settings['tuned_on'].get('model', 'another model')}, not {args.model}: its "
            f"alpha, beta and beam may not suit it (python -m proslushka.lm tune --lm {lm} --model {args.model} ...)"
        )
    if lm != "none":
        tr.use_lm(lm, given, hotwords)
    elif hotwords or given:  # beam search without an LM
        tr.use_lm(None, given, hotwords)
    if note:
        print(note, file=sys.stderr)


def default_lm(model: str, beam: bool) -> tuple[str | Path, str]:
    """(the LM to use without --lm, the line that says so): the shipped one only for the model it was tuned for."""
    from proslushka.decode import DEMO_LM, demo_lm_for, load_settings

    shown = shown_path(DEMO_LM)
    if demo_lm_for(model):
        return DEMO_LM, f"lm: {shown} (tuned for this model; --lm none for greedy)"
    settings = load_settings(DEMO_LM) if DEMO_LM.is_file() else None
    what = "beam search without a language model" if beam else "greedy"
    if settings is None:
        return "none", f"lm: none ({what}); --lm PATH for beam search with a language model"
    tuned = settings.get("tuned_on")
    target = tuned.get("model") if isinstance(tuned, dict) else None
    return "none", f"lm: none ({what}): {shown} is tuned for {target or 'another model'} only; --lm PATH to use one"


def shown_path(path: Path) -> str:
    """`path` relative to the working directory when it lies under it (models/demo-lm.bin), else absolute."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def collect(inputs: list[str], manifest: str | None) -> tuple[list[Item], list[str]]:
    """The audio to transcribe, and `where: reason` for each input that cannot be (it counts as failed)."""
    items, problems = [], []
    for arg in inputs:
        path = Path(arg)
        try:
            is_dir = path.is_dir()
        except OSError:  # e.g. a name too long for the file system: reading it as a file reports that file alone
            is_dir = False
        if is_dir:
            found = audio_files(path, problems)
            items += [Item(str(f), f.relative_to(path)) for f in found]
            if not found:
                problems.append(f"{arg}: no audio files in the folder")
        else:
            items.append(Item(arg, Path(path.name)))
    if manifest:
        more, bad = manifest_items(manifest)
        items += more
        problems += bad
    return items, problems


def audio_files(folder: Path, problems: list[str]) -> list[Path]:
    """Audio files under `folder`, recursively, sorted; a sub-folder that cannot be read is a problem, not a skip."""
    from proslushka.files import regular_files

    def unreadable(e: OSError) -> None:
        problems.append(f"{e.filename}: cannot read the folder ({e.strerror})")

    found = []
    for root, dirs, files in os.walk(folder, onerror=unreadable):
        dirs.sort()
        found += [Path(root) / f for f in files if Path(f).suffix.lower() in AUDIO_EXTENSIONS]
    return regular_files(found, problems)  # a broken link is a problem too


def manifest_items(manifest: str) -> tuple[list[Item], list[str]]:
    """Rows with an audio_filepath (relative paths resolve against the manifest's folder) and their text if any."""
    from proslushka.manifest import iter_manifest_rows, short
    from proslushka.text import normalize

    folder = Path(manifest).resolve().parent
    items, bad = [], []
    for line, row in iter_manifest_rows(manifest, required=("audio_filepath",)):
        audio = row.get("audio_filepath") if isinstance(row, dict) else None
        if isinstance(row, str) or not isinstance(audio, str) or not audio.strip():
            why = row if isinstance(row, str) else f"no audio_filepath: {short(audio)}"
            bad.append(f"{manifest}:{line}: {why}")
            continue
        rel = Path(audio)
        name = rel if not rel.is_absolute() and ".." not in rel.parts else Path(rel.name)
        text = row.get("text")
        ref = normalize(text) if isinstance(text, str) else None
        items.append(Item(str(folder / rel), name, ref, f"{manifest}:{line}"))
    return items, bad


def out_name(item: Item, fmt: str) -> Path:
    return item.name.with_suffix("." + fmt)


def report(scored: list[tuple[str, str, str]]) -> tuple[str | None, str]:
    """(summary line, TSV of per-utterance errors, the worst first) for (audio path, reference, hypothesis) rows.
    The summary pools the edits and reference sizes of all rows (as metrics.wer/cer do); it is None when there are
    no reference words at all, since no rate then exists (metrics would say inf)."""
    from proslushka.metrics import error_counts

    rows, totals = [], [0, 0, 0, 0]
    for path, ref, hyp in scored:
        counts = char_edits, chars, word_edits, words = error_counts(ref, hyp)
        totals = [t + n for t, n in zip(totals, counts, strict=True)]
        # an empty reference (a clip that should stay silent): each inserted word counts as one error, not inf
        rows.append((word_edits / max(words, 1), char_edits / max(chars, 1), word_edits, words, char_edits, chars,
                     printable(path), ref, hyp))  # fmt: skip
    rows.sort(key=lambda r: (-r[0], -r[1], r[6]))
    header = "wer\tcer\tword_edits\twords\tchar_edits\tchars\taudio_filepath\treference\thypothesis\n"
    table = header + "".join(f"{r[0]:.4f}\t{r[1]:.4f}\t" + "\t".join(map(str, r[2:])) + "\n" for r in rows)
    char_edits, chars, word_edits, words = totals
    if words == 0:
        return None, table
    summary = f"WER {100 * word_edits / words:.2f}%  CER {100 * char_edits / chars:.2f}%  on {len(scored)} utterances"
    return summary, table


def printable(name: str) -> str:
    """`name` as UTF-8 can hold it: a name that is not UTF-8 (b"a\\xff.wav", in Python "a\\udcff.wav") with its
    undecodable bytes as backslash escapes, so that writing it cannot fail."""
    return name.encode("utf-8", "backslashreplace").decode("utf-8")


def progress(total: int):
    """A progress bar on stderr for more than one input (none if tqdm is not installed)."""
    if total < 2:
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=total, unit="file", file=sys.stderr)


def say(message: str, bar) -> None:
    """A line on stderr that does not tear the progress bar."""
    if bar:
        bar.write(message, file=sys.stderr)
    else:
        print(message, file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
