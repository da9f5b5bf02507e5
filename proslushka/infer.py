"""The torch-free transcriber: audio → numpy log-mel → onnxruntime → CTC decoding → text and word timestamps.

Decoding (decode.py, the layer below) is greedy, or beam search with a KenLM language model and hotwords when given
an LM.

Files are read as a stream and cut into chunks of speech of at most ~20 s (segment.py: pauses longer than ~0.6 s
are left out, so the model never reads long silence as speech), so an hour of audio needs no more memory than a
minute; chunks of many files run through onnxruntime together in padded batches of similar lengths.
Serverless-sized: numpy and onnxruntime only.
"""

from __future__ import annotations

import json
import os
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .audio import AudioError
from .decode import BeamDecoder, DecoderError, Word, ctc_words, load_settings, settings_path
from .features import FeatureConfig, batch_numpy, log_mel_numpy, num_frames
from .segment import MAX_CHUNK_SECONDS, split, stream_audio
from .text import labels_problem

POOL_BATCHES = 4  # chunks held for sorting by length: batch_size × this (a longer pool pads less but holds more)
# what logprobs() feeds the model: export.py's (NeMo's) input names and types
INPUTS = {"audio_signal": "tensor(float)", "length": "tensor(int64)"}


class ModelError(ValueError):
    """A model file that cannot be used; the message names the file."""


def read_metadata(values: dict[str, str]) -> tuple[list[str], FeatureConfig, int]:
    """(labels, feature config, subsampling factor) from an ONNX model's metadata (key → value, as export.py writes
    it), checked: ValueError/KeyError/TypeError saying what is wrong."""
    labels = json.loads(values["labels"])
    if not isinstance(labels, list) or not 1 <= len(labels) <= 4096:
        raise ValueError("labels must be a JSON list of 1 to 4096 characters")
    if why := labels_problem(labels):
        raise ValueError(why)
    feature_config = FeatureConfig.from_dict(json.loads(values["feature_config"]))
    stride = values.get("subsampling_factor", "2")
    if not stride.isdigit() or not 1 <= int(stride) <= 64:
        raise ValueError(f"subsampling_factor must be an integer from 1 to 64, not {stride[:20]!r}")
    return labels, feature_config, int(stride)


def graph_problem(session, labels: Sequence[str], feature_config: FeatureConfig) -> str | None:
    """Why an onnxruntime session's graph does not take the inputs logprobs() feeds it, or does not match its
    metadata (mel bands in, labels + blank out); None when it fits. Checked once at load, so a mismatch is one
    line naming the model, not onnxruntime's error on the first file."""
    inputs = {i.name: i for i in session.get_inputs()}
    if {name: i.type for name, i in inputs.items()} != INPUTS:
        got = ", ".join(f"{name!r} ({i.type})" for name, i in inputs.items())  # repr: a hostile name stays one line
        want = ", ".join(f"{name!r} ({kind})" for name, kind in INPUTS.items())
        return f"the model's inputs are {got or 'none'}, not {want} as export.py writes them"
    shape = inputs["audio_signal"].shape
    if len(shape) != 3:
        return f"the model's audio_signal has {len(shape)} dimensions, not 3 (batch, mel bands, time)"
    if isinstance(shape[1], int) and shape[1] != feature_config.n_mels:
        return f"the model takes {shape[1]} mel bands but its feature_config says n_mels {feature_config.n_mels}"
    outputs = session.get_outputs()
    if len(outputs) != 2:
        return f"the model gives {len(outputs)} results, not 2 (logprobs and encoded_lengths)"
    width = outputs[0].shape[-1] if outputs[0].shape else None
    if isinstance(width, int) and width != len(labels) + 1:
        return f"the model has {width} outputs but the metadata {len(labels)} labels + blank"
    return None


@dataclass
class Transcript:
    text: str  # the words joined by single spaces
    words: list[Word]
    duration: float  # seconds of audio


@dataclass
class _Job:
    """One source in flight: its chunks' words, how many chunks are still to run, and any error."""

    parts: list[tuple[int, list[Word]]] = field(default_factory=list)
    pending: int = 0
    samples: int = 0
    closed: bool = False  # all its chunks are known
    error: AudioError | None = None


class Transcriber:
    """Loads model.onnx once (labels and feature settings come from its metadata) and transcribes audio.

    Decodes greedily, or with beam search when `lm` is a language model (a KenLM binary or ARPA file, with the
    settings of its NAME.json unless `lm_settings` overrides them; see decode.py)."""

    def __init__(
        self,
        model_path: str | os.PathLike,
        threads: int | None = None,
        lm: str | os.PathLike | None = None,
        lm_settings: dict | None = None,
        hotwords: dict[str, float] | None = None,
        skip_silence: bool = True,
    ):
        import onnxruntime as ort

        self.skip_silence = skip_silence  # False: every sample goes to the model (chunks cut at pauses only)
        path = Path(model_path)
        if not path.is_file():
            raise ModelError(f"{path}: no such model file (export one with export.py)")
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        try:
            self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own exception types for a bad file
            raise ModelError(f"{path}: not a loadable ONNX model ({str(e).splitlines()[0][:200]})") from None
        try:
            meta = self.session.get_modelmeta().custom_metadata_map
            self.labels, self.feature_config, self.stride = read_metadata(meta)
        except (KeyError, ValueError, TypeError) as e:
            reason = str(e)[:200]
            raise ModelError(f"{path}: unusable ONNX metadata ({reason}); export the model with export.py") from None
        if why := graph_problem(self.session, self.labels, self.feature_config):
            raise ModelError(f"{path}: unusable ONNX model ({why[:300]}); export the model with export.py")
        self.blank = len(self.labels)
        self.sample_rate = self.feature_config.sample_rate
        self.frame_seconds = self.feature_config.window_stride * self.stride  # one output frame: 20 ms
        self.frame_samples = self.feature_config.hop_length * self.stride  # the same in samples: chunks cut on it
        self.decoder: BeamDecoder | None = None
        if lm is not None or hotwords:
            self.use_lm(lm, lm_settings, hotwords)

    def use_lm(
        self, lm: str | os.PathLike | None, settings: dict | None = None, hotwords: dict[str, float] | None = None
    ) -> None:
        """Decode with beam search from now on: with the LM `lm` (its NAME.json's settings, overridden by
        `settings`) or, with lm=None, without one. Raises DecoderError naming a file that cannot be used."""
        if lm is not None:
            saved = load_settings(lm)
            if saved.get("labels", "".join(self.labels)) != "".join(self.labels):
                raise DecoderError(f"{settings_path(lm)}: the LM was built for another alphabet than the model's")
            settings = {**saved, **(settings or {})}
        self.decoder = BeamDecoder(self.labels, lm, settings, hotwords)

    def features(self, audio: np.ndarray) -> tuple[np.ndarray, int]:
        return log_mel_numpy(audio, self.feature_config)

    def logprobs(self, audios: list[np.ndarray]) -> list[np.ndarray]:
        """Per-clip log-probs [T'_i, V] over valid frames; the clips run as one padded batch."""
        feats, lengths = zip(*(self.features(a) for a in audios), strict=True)
        out, out_len = self.session.run(
            None, {"audio_signal": batch_numpy(list(feats)), "length": np.asarray(lengths, dtype=np.int64)}
        )
        return [out[i, : int(n)] for i, n in enumerate(out_len)]

    def words_of(
        self,
        logprobs: np.ndarray,
        offset: float = 0.0,
        end: float | None = None,
        greedy: bool = False,
        beam_width: int | None = None,
    ) -> list[Word]:
        """The words of one chunk's log-probs [T', V] with times in seconds, `offset` being the chunk's start and
        `end` its end (no word ends later: the last output frame can reach past the audio by up to one frame).
        greedy: the best label per frame even where an LM is set; beam_width: a narrower beam than the LM's tuned
        one (both for stream.py's partials)."""
        fs = self.frame_seconds
        if self.decoder is None or greedy:
            words = ctc_words(logprobs.argmax(-1), self.blank, self.labels, fs, offset)
        else:
            found = self.decoder.words(logprobs, beam_width)
            words = [Word(w, offset + a * fs, offset + b * fs) for w, a, b in found]
        for w in words if end is not None else ():
            w.end = min(w.end, end)
        return words

    def chunk_logprobs(self, source: str | os.PathLike | np.ndarray) -> Iterator[tuple[int, np.ndarray]]:
        """(first sample, log-probs) of each chunk of a source, one at a time (for tuning a decoder)."""
        for start, audio in self.chunks(source):
            yield start, self.logprobs([audio])[0]

    def transcribe(self, audio: np.ndarray) -> str:
        return self.transcribe_audio(audio).text

    def transcribe_file(self, path: str | os.PathLike) -> str:
        return self.transcribe_path(path).text

    def transcribe_audio(self, audio: np.ndarray, max_seconds: float = MAX_CHUNK_SECONDS) -> Transcript:
        """Text and word times of 16 kHz mono float32 samples (long audio is cut at pauses into chunks)."""
        return _one(self.transcribe_many([audio], max_seconds=max_seconds))

    def transcribe_path(self, path: str | os.PathLike, max_seconds: float = MAX_CHUNK_SECONDS) -> Transcript:
        """Text and word times of an audio file of any length. Raises AudioError naming the file."""
        return _one(self.transcribe_many([path], max_seconds=max_seconds))

    def transcribe_many(
        self,
        sources: Iterable[str | os.PathLike | np.ndarray],
        batch_size: int = 1,
        max_seconds: float = MAX_CHUNK_SECONDS,
    ) -> Iterator[Transcript | AudioError]:
        """A Transcript, or the AudioError that stopped it, for each source (a path or samples), in order.

        Chunks of consecutive sources share padded batches of `batch_size`, sorted by length so that a batch
        pads little; at most batch_size × POOL_BATCHES chunks are held at a time.
        """
        pool_size = batch_size * POOL_BATCHES if batch_size > 1 else 1
        jobs: deque[_Job] = deque()
        pool: list[tuple[_Job, int, np.ndarray]] = []
        for source in sources:
            job = _Job()
            jobs.append(job)
            try:
                for start, audio in self.chunks(source, max_seconds, job):
                    job.pending += 1
                    pool.append((job, start, audio))
                    if len(pool) >= pool_size:
                        self._run(pool, batch_size)
                        pool = []
                        yield from _finished(jobs, self.sample_rate)
            except AudioError as e:
                job.error = e
            job.closed = True
            yield from _finished(jobs, self.sample_rate)
        self._run(pool, batch_size)
        yield from _finished(jobs, self.sample_rate)

    def chunks(
        self, source: str | os.PathLike | np.ndarray, max_seconds: float = MAX_CHUNK_SECONDS, job: _Job | None = None
    ) -> Iterator[tuple[int, np.ndarray]]:
        """(first sample, samples) of each chunk of speech, as transcription cuts a source (segment.split on the
        model's frame grid); job.samples counts all the source's samples."""
        blocks = [source] if isinstance(source, np.ndarray) else stream_audio(source, self.sample_rate)

        def counted(blocks: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
            for block in blocks:
                if job is not None:
                    job.samples += len(block)
                yield block

        chunks = split(
            counted(blocks), self.sample_rate, max_seconds, align=self.frame_samples, skip_silence=self.skip_silence
        )
        # a chunk shorter than one hop (a file's last few samples with skip_silence off) has no valid frame: the
        # model would hear nothing in it, and normalizing its empty features would only warn about empty means
        return ((start, audio) for start, audio in chunks if num_frames(len(audio), self.feature_config) > 0)

    def _run(self, pool: list[tuple[_Job, int, np.ndarray]], batch_size: int) -> None:
        pool.sort(key=lambda item: len(item[2]))
        for b in range(0, len(pool), batch_size):
            batch = pool[b : b + batch_size]
            for (job, start, audio), lp in zip(batch, self.logprobs([a for _, _, a in batch]), strict=True):
                offset, end = start / self.sample_rate, (start + len(audio)) / self.sample_rate
                job.parts.append((start, self.words_of(lp, offset, end)))
                job.pending -= 1


def _finished(jobs: deque[_Job], sample_rate: int) -> Iterator[Transcript | AudioError]:
    """Results of the jobs at the front of the queue that are complete, in source order."""
    while jobs and jobs[0].closed and jobs[0].pending == 0:
        job = jobs.popleft()
        if job.error is not None:
            yield job.error
            continue
        words = [w for _, part in sorted(job.parts, key=lambda p: p[0]) for w in part]
        yield Transcript(" ".join(w.word for w in words), words, job.samples / sample_rate)


def _one(results: Iterator[Transcript | AudioError]) -> Transcript:
    (result,) = results
    if isinstance(result, AudioError):
        raise result
    return result
