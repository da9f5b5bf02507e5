"""The torch-free transcriber: audio → numpy log-mel → onnxruntime → greedy CTC. Serverless-sized."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from .audio import load_audio
from .features import FeatureConfig, batch_numpy, log_mel_numpy
from .text import ctc_collapse, decode


class ModelError(ValueError):
    """A model file that cannot be used; the message names the file."""


class Transcriber:
    """Loads model.onnx once (labels and feature settings come from its metadata) and transcribes audio."""

    def __init__(self, model_path: str | os.PathLike, threads: int | None = None):
        import onnxruntime as ort

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
        meta = self.session.get_modelmeta().custom_metadata_map
        try:
            self.labels: list[str] = json.loads(meta["labels"])
            self.feature_config = FeatureConfig.from_dict(json.loads(meta["feature_config"]))
            self.stride = int(meta.get("subsampling_factor", 2))
        except (KeyError, ValueError, TypeError) as e:
            raise ModelError(
                f"{path}: ONNX metadata lacks labels/feature_config ({e}); export it with export.py"
            ) from None
        self.blank = len(self.labels)

    def features(self, audio: np.ndarray) -> tuple[np.ndarray, int]:
        return log_mel_numpy(audio, self.feature_config)

    def logprobs(self, audios: list[np.ndarray]) -> list[np.ndarray]:
        """Per-clip log-probs [T'_i, V] over valid frames; the clips run as one padded batch."""
        feats, lengths = zip(*(self.features(a) for a in audios), strict=True)
        out, out_len = self.session.run(
            None, {"audio_signal": batch_numpy(list(feats)), "length": np.asarray(lengths, dtype=np.int64)}
        )
        return [out[i, : int(n)] for i, n in enumerate(out_len)]

    def text_of(self, logprobs: np.ndarray) -> str:
        return decode(ctc_collapse(logprobs.argmax(-1).tolist(), self.blank), self.labels)

    def transcribe(self, audio: np.ndarray) -> str:
        return self.text_of(self.logprobs([audio])[0])

    def transcribe_file(self, path: str | os.PathLike) -> str:
        return self.transcribe(load_audio(path, self.feature_config.sample_rate))
