"""Word n-gram language models for beam search: build one from text with KenLM, tune its weights on a manifest.

    python -m proslushka.lm build lm.txt -o models/my-lm.bin [--order 3] [--exclude valid/manifest.jsonl ...]
    python -m proslushka.lm tune --manifest valid/manifest.jsonl --lm models/my-lm.bin [--model m.onnx]
    python -m proslushka.lm words any-kenlm.bin [-o any-kenlm.words]

`build` normalizes the text with our alphabet, drops every line that contains an --exclude manifest's sentence (so
the LM has never seen what it is measured on), runs KenLM's lmplz and build_binary (tools/build_kenlm.sh builds them)
and writes beside the LM its vocabulary (NAME.words, the decoder's lexicon) and its settings (NAME.json).
`tune` grid-searches the LM weight α, the word bonus β and the beam on a manifest, prints the table it searched
and writes the best setting into NAME.json, with the model it tuned for (by content: size and SHA-256), so that
`transcribe.py --lm NAME.bin` alone decodes with it. `words` writes the vocabulary of any KenLM model (someone
else's, e.g. Golos's), from its ARPA 1-grams or the words a KenLM binary stores at its end; transcribe.py's --lm
does the same on its own when NAME.words is missing.
"""

from __future__ import annotations

import argparse
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path

from .cli import fail, number
from .decode import (
    DEFAULTS,
    SETTINGS,
    arpa_words,
    lm_kind,
    model_identity,
    settings_path,
    stored_words,
    vocab_path,
    write_settings,
)
from .files import atomic_write, check_not_input, check_writable
from .text import LABELS, check, normalize

ROOT = Path(__file__).resolve().parent.parent
KENLM_DIR = ROOT / "build" / "kenlm"  # where tools/build_kenlm.sh puts lmplz and build_binary
DEFAULT_MODEL = ROOT / "models" / "demo.onnx"
MAX_THREADS = 256  # onnxruntime's intra-op threads: more than any machine's cores would only contend


class LMError(ValueError):
    """Input or output that `build` or `tune` cannot use, said in one line naming the file; `code` is the exit status
    (1 for bad data: texts, manifests, audio; 2 for a bad output path)."""

    def __init__(self, message: str, code: int = 1):
        super().__init__(message)
        self.code = code


def clean_line(line: str, labels: tuple[str, ...] = LABELS) -> str | None:
    """The line normalized, or None when that leaves it empty or with a character outside the alphabet (such a line
    is dropped whole: a sentence with a digit or a Latin word would teach the LM a broken word)."""
    text = normalize(line)
    return text if text and check(text, labels) is None else None


Sentences = dict[tuple[str, ...], list[list[str]]]


def sentence_index(sentences: Iterable[str]) -> Sentences:
    """The sentences' words, indexed by their first word pair: a line then costs a look-up per word, not one per
    sentence."""
    by_start: Sentences = {}
    for s in sentences:
        words = s.split()
        if words:
            by_start.setdefault(tuple(words[:2]), []).append(words)
    return by_start


def holds_sentence(line: str, by_start: Sentences) -> bool:
    """Whether the line contains one of the indexed sentences as a run of whole words."""
    words = line.split()
    return any(words[i : i + len(s)] == s for i in range(len(words)) for s in by_start.get(tuple(words[i : i + 2]), ()))


def _rows(path: str | os.PathLike, fields: Sequence[str]) -> Iterator[tuple[int, dict]]:
    """(line, row) of every manifest row holding each of `fields` as a string; LMError naming the file if it cannot
    be read. Only `fields` are required of a CSV's header: neither building nor tuning needs a duration."""
    from .manifest import ManifestError, iter_manifest_rows

    try:
        for line, row in iter_manifest_rows(path, required=fields):
            if isinstance(row, dict) and all(isinstance(row.get(f), str) for f in fields):
                yield line, row
    except ManifestError as e:
        raise LMError(str(e)) from None


def manifest_rows(path: str | os.PathLike) -> list[tuple[Path, str]]:
    """(audio path, normalized text) of every manifest row that has both (bench/decode.py scores with these)."""
    return [(audio, text) for _, audio, text in _numbered_rows(path)]


def _numbered_rows(path: str | os.PathLike) -> list[tuple[int, Path, str]]:
    """(line, audio path, normalized text) of every manifest row that has both; relative paths resolve against its
    folder."""
    folder = Path(path).resolve().parent
    return [
        (line, folder / row["audio_filepath"], normalize(row["text"]))
        for line, row in _rows(path, ("audio_filepath", "text"))
    ]


def manifest_sentences(path: str | os.PathLike) -> list[str]:
    """The normalized texts of a manifest (its audio does not matter: a sentence to keep out of the LM)."""
    return [normalize(row["text"]) for _, row in _rows(path, ("text",))]


def kenlm_program(name: str, kenlm_dir: str | os.PathLike | None) -> str:
    """The path of lmplz or build_binary: in --kenlm_dir, else on PATH, else in build/kenlm."""
    for folder in [kenlm_dir] if kenlm_dir else [None, KENLM_DIR]:
        found = shutil.which(name, path=None if folder is None else str(folder))
        if found:
            return found
    raise LMError(f"KenLM's {name} not found (build it with tools/build_kenlm.sh, or give --kenlm_dir)")


def build(
    texts: list[str],
    out: str | os.PathLike,
    order: int = 3,
    exclude: Sequence[str] = (),
    kenlm_dir: str | None = None,
    arpa: bool = False,
) -> dict:
    """Build the LM `out` (a quantized KenLM trie, or ARPA text with arpa=True) with its .words and .json.

    Every input is checked before KenLM runs, and each output file is replaced only once it is complete, so a failed
    build leaves an existing LM of that name (and its .words and .json) as it was. Returns the settings written to
    the .json; raises LMError naming the file at fault."""
    out = Path(out)
    check_output(out, [*texts, *exclude])
    lmplz, build_binary = kenlm_program("lmplz", kenlm_dir), kenlm_program("build_binary", kenlm_dir)
    drop = exclusions(exclude)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            corpus, model = Path(tmp) / "corpus.txt", Path(tmp) / "lm.arpa"
            kept = write_corpus(texts, drop, corpus)
            # --discount_fallback: a small text lacks the counts that Kneser-Ney's discounts are estimated from
            run([lmplz, "-o", str(order), "-S", "20%", "-T", tmp, "--discount_fallback", "--text", str(corpus),
                 "--arpa", str(model)])  # fmt: skip
            words = arpa_words(model)
            if arpa:
                install(out, lambda staged: shutil.copyfile(model, staged))
            else:  # 8-bit quantized probabilities and backoffs in a trie: a quarter of the probing format's size
                install(out, lambda staged: run([build_binary, "-q", "8", "-b", "8", "trie", str(model), str(staged)]))
        atomic_write(vocab_path(out), "".join(w + "\n" for w in words))
        settings = {
            **DEFAULTS,
            "labels": "".join(LABELS),
            "order": order,
            "built_from": [Path(t).name for t in texts],
            "excluded": [str(m) for m in exclude],
            "lines": kept,
            "words": len(words),
        }
        write_settings(out, settings)
    except OSError as e:  # the disk filled up meanwhile: each file is whole, old or new
        raise LMError(f"{e.filename or out}: cannot write ({e.strerror})") from None
    return settings


def write_corpus(texts: Sequence[str | os.PathLike], drop: list[str], corpus: Path) -> int:
    """Write the normalized lines of `texts` that contain no `drop` sentence to `corpus`; returns how many.

    A line at a time, so a text of any size takes the memory of its longest line (a 300 MB text read whole took
    1.3 to 7 GB as Python strings). LMError if none is kept: KenLM would fail on an empty corpus with a cryptic
    MissingSentenceMarker."""
    kept = total = read = 0
    by_start = sentence_index(drop)
    with open(corpus, "w", encoding="utf-8") as f:
        for text in texts:
            for line in read_lines(text):
                read += 1
                clean = clean_line(line)
                if clean is None:
                    continue
                total += 1
                if not holds_sentence(clean, by_start):
                    f.write(clean + "\n")
                    kept += 1
    if not kept:
        why = "all contain an --exclude sentence" if total else "none wholly in the alphabet after normalization"
        raise LMError(f"{', '.join(map(str, texts))}: no usable lines ({read} lines, {why})")
    print(f"{kept} lines kept, {total - kept} dropped for containing an --exclude sentence", file=sys.stderr)
    return kept


def check_output(out: Path, inputs: Sequence[str | os.PathLike]) -> None:
    """LMError (exit 2) now, before any work, if the LM or the .words and .json beside it cannot be written, or
    would replace an input (-o equal to the text, or NAME.json being one)."""
    if out in (vocab_path(out), settings_path(out)):
        raise LMError(f"{out}: an LM's name must not end in .words or .json (those files go beside it)", 2)
    for path in (out, vocab_path(out), settings_path(out)):  # a FIFO would block the write, a device take it
        if path.exists() and not path.is_file() and not path.is_dir():
            raise LMError(f"{path}: not a regular file (an LM, its .words and .json are renamed into place)", 2)
    try:
        for path in (out, vocab_path(out), settings_path(out)):
            check_not_input(path, list(inputs))
            check_writable(path)
    except ValueError as e:
        raise LMError(str(e), 2) from None
    except OSError as e:
        raise LMError(f"{e.filename or out}: cannot write the LM there ({e.strerror})", 2) from None


def exclusions(manifests: Sequence[str]) -> list[str]:
    """The sentences of the --exclude manifests. A manifest without any is refused: the point of --exclude is that
    the LM never sees them, and a wrong file would silently exclude nothing."""
    sentences = []
    for m in manifests:
        found = [s for s in manifest_sentences(m) if s]
        if not found:
            raise LMError(f"{m}: no rows with a text to exclude (is it a manifest?)")
        sentences += found
    return sentences


def read_lines(path: str | os.PathLike) -> Iterator[str]:
    """The lines of a text file, one at a time (undecodable bytes replaced); LMError naming it if it cannot be read.
    A FIFO is read too (`<(zcat text.gz)`)."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            mode = os.fstat(f.fileno()).st_mode
            if not (stat.S_ISREG(mode) or stat.S_ISFIFO(mode)):  # /dev/zero would never end
                raise LMError(f"{path}: not a regular file")
            yield from f
    except OSError as e:
        why = "is a folder, not a text file" if isinstance(e, IsADirectoryError) else f"cannot read ({e.strerror})"
        raise LMError(f"{path}: {why}") from None


def install(out: Path, write: Callable[[Path], object]) -> None:
    """Have `write(path)` write the file at a fresh path in out's folder, then rename it over `out`: a write that
    fails (KenLM exits, the disk fills) leaves the old `out` as it was, never a truncated one.

    The fresh path is in a temp folder, so the writer creates the file itself, with the usual permissions."""
    out.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        staged = stage / out.name
        write(staged)
        with open(staged, "rb") as f:
            os.fsync(f.fileno())
        os.replace(staged, out)
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def run(cmd: list[str]) -> None:
    done = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, errors="replace")
    if done.returncode != 0:
        tail = done.stderr.strip().splitlines()[-3:]
        raise LMError(f"{Path(cmd[0]).name} failed: {' / '.join(tail)}")


def tune(
    manifest: str,
    lm: str | os.PathLike,
    model: str,
    alphas: list[float],
    betas: list[float],
    beams: list[int],
    threads: int | None = None,
) -> tuple[dict, list[tuple[int, float, float, float, float]]]:
    """Grid-search α × β at the first beam width, then the beams at the best α/β, by WER + CER on `manifest`
    (WER alone picks a high α that trades letters for whole words: +0.4 CER for -0.04 WER on the demo).

    Returns (best settings, table rows of (beam, α, β, WER, CER)); the log-probs are computed once."""
    from .decode import BeamDecoder, load_settings
    from .infer import Transcriber
    from .metrics import cer, wer

    rows = _numbered_rows(manifest)
    refs = [ref for _, _, ref in rows]
    if not any(refs):  # WER 0 on nothing would make the first setting "best" and overwrite NAME.json with it
        raise LMError(f"{manifest}: no references to tune on (no row has both an audio_filepath and a text)")
    tr = Transcriber(model, threads=threads)
    base = load_settings(lm)
    BeamDecoder(tr.labels, lm, base)  # an unusable LM fails now, not after the log-probs of every clip
    print(f"log-probs of {len(rows)} utterances ...", file=sys.stderr)
    chunked = [_logprobs(tr, audio, f"{manifest}:{line}") for line, audio, _ in rows]
    table = []

    def score(beam: int, alpha: float, beta: float) -> tuple[float, float]:
        dec = BeamDecoder(tr.labels, lm, {**base, "alpha": alpha, "beta": beta, "beam_width": beam})
        hyps = [" ".join(filter(None, (dec.text(lp) for lp in lps))) for lps in chunked]
        row = (beam, alpha, beta, 100 * wer(refs, hyps), 100 * cer(refs, hyps))
        table.append(row)
        print(f"{beam:5d} {alpha:6.2f} {beta:6.2f} {row[3]:7.2f} {row[4]:7.2f}", flush=True)
        return row[3], row[4]

    print(" beam  alpha   beta     WER     CER")
    grid = {(a, b): score(beams[0], a, b) for a in alphas for b in betas}
    alpha, beta = min(grid, key=lambda k: sum(grid[k]))
    at_beam = {beams[0]: grid[alpha, beta], **{k: score(k, alpha, beta) for k in beams[1:]}}
    beam = min(at_beam, key=lambda k: sum(at_beam[k]))
    best = {"alpha": alpha, "beta": beta, "beam_width": beam}
    wer_, cer_ = at_beam[beam]
    print(f"best: beam {beam}, alpha {alpha}, beta {beta}: WER {wer_:.2f}%, CER {cer_:.2f}%")
    tuned_on = {"manifest": str(manifest), "model": Path(model).name, **model_identity(model)}
    return best | {"tuned_on": tuned_on | {"wer": round(wer_, 2), "cer": round(cer_, 2)}}, table


def write_words(lm: str | os.PathLike, out: str | os.PathLike | None = None) -> int:
    """Write the vocabulary of the LM `lm` (ARPA or KenLM binary) to `out` (default: NAME.words beside it), one word a
    line; returns how many. DecoderError for an LM without one, LMError (exit 2) for an output that cannot be."""
    lm = Path(lm)
    out = Path(out) if out else vocab_path(lm)
    words = stored_words(lm, lm_kind(lm))
    try:
        check_not_input(out, [lm])
        check_writable(out)
        atomic_write(out, "".join(w + "\n" for w in words))
    except ValueError as e:
        raise LMError(str(e), 2) from None
    except OSError as e:
        raise LMError(f"{e.filename or out}: cannot write the vocabulary there ({e.strerror})", 2) from None
    return len(words)


def _logprobs(tr, audio: Path, where: str) -> list:
    """The log-probs of each chunk of a clip; LMError naming the manifest row if its audio cannot be read."""
    from .audio import AudioError

    try:
        return [lp for _, lp in tr.chunk_logprobs(audio)]
    except AudioError as e:
        raise LMError(f"{where}: {e}") from None


def setting(key: str, what: str, kind: type = float) -> dict:
    """add_argument's type and help for a decoder setting: the range NAME.json may hold it in (decode.SETTINGS)."""
    _, lo, hi = SETTINGS[key]
    return {"type": number(lo, hi, kind), "help": f"{what}, {lo:g} to {hi:g}"}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m proslushka.lm", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = p.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="build a KenLM word n-gram model from text files")
    b.add_argument("text", nargs="+", help="text files, one sentence a line (normalized here)")
    b.add_argument("-o", "--output", required=True, help="the LM to write (NAME.bin; .words and .json beside it)")
    b.add_argument(
        "--order",
        type=number(2, 6, int),
        default=3,
        help="n-gram order, 2 to 6 (tools/build_kenlm.sh builds KenLM for orders up to 6; default: %(default)s)",
    )
    b.add_argument("--exclude", nargs="*", default=[], help="manifests whose sentences the LM must not see")
    b.add_argument("--arpa", action="store_true", help="write ARPA text instead of a quantized binary trie")
    b.add_argument("--kenlm_dir", help="where lmplz and build_binary are (default: PATH, then build/kenlm)")
    t = sub.add_parser("tune", help="grid-search alpha/beta/beam on a manifest and write them into NAME.json")
    t.add_argument("--manifest", required=True, help="rows with audio_filepath and text (e.g. valid)")
    t.add_argument("--lm", required=True, help="the LM (NAME.bin or NAME.arpa)")
    t.add_argument("--model", default=str(DEFAULT_MODEL), help="ONNX model (default: models/demo.onnx)")
    t.add_argument("--alpha", nargs="+", default=[1.0, 1.5, 2.0, 2.5, 3.0], **setting("alpha", "LM weights to try"))
    t.add_argument("--beta", nargs="+", default=[0.0, 1.0, 2.0], **setting("beta", "word bonuses to try"))
    beams = setting("beam_width", "beam widths to try", int)
    beams["help"] += "; the first is used for the alpha/beta grid, the others are then tried at the best alpha/beta"
    t.add_argument("--beam_width", nargs="+", default=[64, 32, 16], **beams)
    t.add_argument(
        "--threads",
        type=number(1, MAX_THREADS, int),
        default=None,
        help=f"onnxruntime intra-op threads, 1 to {MAX_THREADS} (default: all cores)",
    )
    w = sub.add_parser("words", help="write a KenLM model's vocabulary (NAME.words, the decoder's lexicon)")
    w.add_argument("lm", help="the LM: ARPA text, or a KenLM binary (which stores its words at its end)")
    w.add_argument("-o", "--output", help="where to write it (default: NAME.words beside the LM)")
    args = p.parse_args(argv)

    from .decode import DecoderError, load_settings
    from .infer import ModelError

    try:
        if args.command == "build":
            settings = build(args.text, args.output, args.order, args.exclude, args.kenlm_dir, args.arpa)
            size = Path(args.output).stat().st_size / 1e6
            print(
                f"{args.output}: {size:.1f} MB, {settings['words']} words; tune it with python -m proslushka.lm "
                f"tune --manifest valid.jsonl --lm {args.output}"
            )
        elif args.command == "words":
            n = write_words(args.lm, args.output)
            print(f"wrote {args.output or vocab_path(args.lm)}: {n} words")
        else:
            settings = load_settings(args.lm)
            best, _ = tune(args.manifest, args.lm, args.model, args.alpha, args.beta, args.beam_width, args.threads)
            write_settings(args.lm, settings | best)
            print(f"wrote {settings_path(args.lm)}")
    except (DecoderError, ModelError) as e:
        return fail(e, 2)
    except LMError as e:
        return fail(e, e.code)
    return 0


if __name__ == "__main__":
    sys.exit(main())
