"""Calibration and evaluation data: text windows (offline corpus, files, `datasets`) and images (pure loading)."""

from .images import ImageCalibration, load_images
from .text import CORPUS_DESCRIPTION, TokenCalibration, build_token_calibration, corpus_text, tokenize_stream

__all__ = [
    "CORPUS_DESCRIPTION",
    "ImageCalibration",
    "TokenCalibration",
    "build_token_calibration",
    "corpus_text",
    "load_images",
    "tokenize_stream",
]
