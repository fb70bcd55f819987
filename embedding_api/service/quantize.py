"""Compact vectors: float vectors to int8, uint8, binary or ubinary, exactly as sentence-transformers'
`quantize_embeddings` defines them, and the per-dimension ranges int8 and uint8 need (a model's calibration). No
HTTP here: callers get numpy arrays and decide how to write them.

- ubinary: one bit per dimension, `x > 0`, packed most significant bit first (`np.packbits`); a size that is not a
  multiple of 8 ends with a byte whose low bits are 0 (ceil(dimensions / 8) bytes).
- binary: the ubinary bytes minus 128, as int8.
- uint8 / int8: each dimension's [min, max] range cut into 255 equal steps; a value becomes
  `clip(floor((x - min) / step), 0, 255)` (float32 arithmetic; a zero-width range uses a step of 1), minus 128 for
  int8.

The ranges come from calibration vectors finished the way the request's are (the same `dimensions`, the same
normalisation), so a cut vector is quantised against ranges of cut vectors, not against a cut of the full ranges.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

PRECISIONS = ("float", "int8", "uint8", "binary", "ubinary")
NEEDS_RANGES = frozenset({"int8", "uint8"})
# Bytes one dimension costs: float32 4, int8/uint8 1, (u)binary 1/8.
BYTES_PER_DIMENSION = {"float": 4.0, "int8": 1.0, "uint8": 1.0, "binary": 0.125, "ubinary": 0.125}

# The built-in calibration set: short sentences in several languages and scripts, embedded at start-up (as
# documents and, for models that take instructions, as queries) when a model has no calibration file.
CALIBRATION_TEXTS: tuple[str, ...] = (
    "The cat is sleeping on the sofa.",
    "How do I reset my password?",
    "Quarterly revenue grew by twelve percent.",
    "A red bicycle leans against a brick wall.",
    "What is the boiling point of water at high altitude?",
    "The train to Berlin leaves at seven.",
    "Photosynthesis turns light into chemical energy.",
    "Add two cups of flour and stir gently.",
    "Le chat dort sur le canapé.",
    "Où se trouve la gare la plus proche ?",
    "El mercado abre todos los días a las nueve.",
    "¿Cuál es la capital de Australia?",
    "Der Hund spielt im Garten mit einem Ball.",
    "Wie funktioniert ein Elektromotor?",
    "Il tempo oggi è soleggiato e caldo.",
    "O livro está em cima da mesa.",
    "Het museum is op maandag gesloten.",
    "Kot śpi na parapecie.",
    "Кошка спит на диване.",
    "Как приготовить борщ?",
    "Η θάλασσα είναι ήρεμη σήμερα.",
    "Bugün hava çok güzel.",
    "القطة نائمة على الأريكة.",
    "ما هي عاصمة المغرب؟",
    "החתול ישן על הספה.",
    "बिल्ली सोफे पर सो रही है।",
    "दिल्ली में आज बारिश हो रही है।",
    "বিড়ালটি সোফায় ঘুমাচ্ছে।",
    "பூனை சோபாவில் தூங்குகிறது.",
    "แมวนอนหลับอยู่บนโซฟา",
    "Con mèo đang ngủ trên ghế sofa.",
    "Kucing itu tidur di atas sofa.",
    "猫がソファで寝ています。",
    "東京駅までどのくらいかかりますか？",
    "고양이가 소파에서 자고 있어요.",
    "서울의 인구는 얼마입니까?",
    "猫在沙发上睡觉。",
    "如何学习机器学习？",
    "今天的股市下跌了百分之三。",
    "Paka amelala kwenye sofa.",
    "def add(a, b): return a + b",
    "SELECT name FROM users WHERE age > 30;",
    "E = mc^2 relates mass and energy.",
    "Order #4521 shipped on 2024-03-18.",
    "🌍🚀 Launch day!",
    "ok",
)

Finisher = Callable[[np.ndarray, int | None, bool], np.ndarray]


class CalibrationError(ValueError):
    """A calibration file that cannot be used; the message is one sentence saying what to fix."""


def quantize(vectors: np.ndarray, precision: str, ranges: np.ndarray | None = None) -> np.ndarray:
    """`vectors` (n, d) float as `precision`: float32 (n, d); int8/uint8 (n, d) with `ranges` (2, d);
    binary/ubinary (n, ceil(d / 8))."""
    embeddings = np.asarray(vectors, dtype=np.float32)
    if precision == "float":
        return embeddings
    if precision in NEEDS_RANGES:
        if ranges is None:
            raise ValueError(f"{precision} needs per-dimension ranges")
        ranges = np.asarray(ranges).astype(np.float32, copy=False)
        starts = ranges[0, :]
        steps = (ranges[1, :] - starts) / 255
        steps = np.where(steps == 0, 1, steps)
        levels: np.ndarray = np.clip(np.floor((embeddings - starts) / steps), 0, 255)
        if precision == "uint8":
            return levels.astype(np.uint8)
        return (levels - 128).astype(np.int8)
    if precision in ("binary", "ubinary"):
        packed: np.ndarray = np.packbits(embeddings > 0, axis=-1)
        return packed if precision == "ubinary" else (packed.astype(np.int16) - 128).astype(np.int8)
    raise ValueError(f"unknown precision {precision!r}; one of {', '.join(PRECISIONS)}")


def ranges_of(embeddings: np.ndarray) -> np.ndarray:
    """(2, d): each dimension's minimum and maximum over the calibration vectors."""
    return np.vstack((np.min(embeddings, axis=0), np.max(embeddings, axis=0)))


def bytes_per_vector(precision: str, dimensions: int) -> int:
    """What one vector of `dimensions` costs stored raw in `precision`."""
    if precision in ("binary", "ubinary"):
        return (dimensions + 7) // 8
    return int(BYTES_PER_DIMENSION[precision] * dimensions)


@dataclass
class Calibration:
    """Where a model's int8/uint8 ranges come from, and those ranges for each (dimensions, normalize) asked.

    `vectors` are finished per request shape by `finish` (the family's own: normalise, cut, normalise again) before
    their ranges are taken; a ranges file (`ranges`) can only be cut to `dimensions`."""

    source: Literal["builtin", "file"]
    samples: int  # how many vectors the ranges come from (0: the file holds ranges, not vectors)
    finish: Finisher
    vectors: np.ndarray | None = None
    ranges: np.ndarray | None = None
    path: str | None = None
    _cache: dict[tuple[int | None, bool], np.ndarray] = field(default_factory=dict, repr=False)

    def ranges_for(self, dimensions: int | None, normalize: bool) -> np.ndarray:
        """(2, dimensions) ranges for vectors finished with these options (computed once per shape)."""
        key = (dimensions, normalize)
        cached = self._cache.get(key)
        if cached is not None:
            return cached
        if self.vectors is not None:
            result = ranges_of(self.finish(self.vectors, dimensions, normalize))
        else:
            assert self.ranges is not None
            result = self.ranges if dimensions is None else self.ranges[:, :dimensions]
        self._cache[key] = result
        return result

    def describe(self) -> dict[str, object]:
        """What /v1/models says about it."""
        described: dict[str, object] = {"source": self.source, "samples": self.samples}
        if self.path is not None:
            described["path"] = Path(self.path).name
        return described


def from_pooled(pooled: np.ndarray, finish: Finisher) -> Calibration:
    """The built-in set's pooled (unfinished) vectors, finished per request shape when ranges are asked."""
    return Calibration("builtin", int(pooled.shape[0]), finish, vectors=np.asarray(pooled, dtype=np.float32))


def from_file(path: str, dimension: int, finish: Finisher) -> Calibration:
    """A `.npy` file: (n, dimension) embeddings (n >= 3; the model's full-size vectors), or a (2, dimension) array of
    [min; max] ranges (sentence-transformers' `ranges`)."""
    where = f"calibration file {path}"
    try:
        array = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise CalibrationError(f"{where} cannot be read as a .npy array ({exc}); fix the path") from None
    if array.ndim != 2 or array.shape[1] != dimension or not np.issubdtype(array.dtype, np.floating):
        raise CalibrationError(
            f"{where} holds a {array.dtype} array of shape {array.shape}; it needs float (n, {dimension}) "
            f"embeddings of this model or (2, {dimension}) ranges"
        )
    if not np.isfinite(array).all():
        raise CalibrationError(f"{where} holds NaN or infinite values")
    matrix = array.astype(np.float32)
    if matrix.shape[0] == 2:
        if (matrix[0] > matrix[1]).any():
            raise CalibrationError(
                f"{where} is a (2, {dimension}) array read as [min; max] ranges, but some min is above its max; "
                "give at least 3 embeddings to calibrate from vectors"
            )
        return Calibration("file", 0, finish, ranges=matrix, path=path)
    if matrix.shape[0] < 2:
        raise CalibrationError(f"{where} holds one vector; ranges need several (a few hundred is better)")
    return Calibration("file", int(matrix.shape[0]), finish, vectors=matrix, path=path)
