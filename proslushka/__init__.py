"""Proslushka: a Russian QuartzNet CTC speech recognizer (NeMo-compatible, torch for training, ONNX for inference)."""

__version__ = "0.1.0"
