"""64-bit row hashes, so duplicates can be found across chunks while keeping only 8 bytes per row."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

U64 = np.uint64
GOLDEN = U64(0x9E3779B97F4A7C15)
_NULL_HASH = U64(0x5BD1E9955BD1E995)
_HASHED_STRING_MAX_BYTES = 64  # longer strings are hashed by pandas


def mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: every input bit affects every output bit (uint64 arithmetic wraps)."""
    x = x ^ (x >> U64(30))
    x = x * U64(0xBF58476D1CE4E5B9)
    x = x ^ (x >> U64(27))
    x = x * U64(0x94D049BB133111EB)
    return x ^ (x >> U64(31))


def _hash_strings(text: pa.Array) -> np.ndarray:
    """A 64-bit hash of each string's bytes (one value always gets one hash, whatever the chunk)."""
    encoded = pc.dictionary_encode(text)
    if not len(encoded.dictionary):  # all missing (no dictionary to index)
        return np.full(len(text), _NULL_HASH, dtype=U64)
    if len(encoded.dictionary) * 4 < len(text):  # few distinct values (categories): hash each value once
        indices = encoded.indices.to_numpy(zero_copy_only=False)
        hashes = _hash_distinct_strings(encoded.dictionary)[np.nan_to_num(indices, nan=0).astype(np.int64)]
        hashes[~text.is_valid().to_numpy(zero_copy_only=False)] = _NULL_HASH
        return hashes
    return _hash_distinct_strings(text)


def _hash_distinct_strings(text: pa.Array) -> np.ndarray:
    count = len(text)
    hashes = np.full(count, _NULL_HASH, dtype=U64)
    if count == 0:
        return hashes
    buffers = text.buffers()
    offsets = np.frombuffer(buffers[1], np.int32, count=count + 1, offset=text.offset * 4).astype(np.int64)
    data = np.frombuffer(buffers[2], np.uint8) if buffers[2] is not None and buffers[2].size else np.zeros(1, np.uint8)
    lengths = np.diff(offsets)
    valid = text.is_valid().to_numpy(zero_copy_only=False)
    short = valid & (lengths <= _HASHED_STRING_MAX_BYTES)
    if short.any():
        # The bytes as a zero-padded matrix, read eight at a time as integers: vectorised, no Python strings.
        width = max(8, -(-int(lengths[short].max()) // 8) * 8)
        span = np.arange(width)
        positions = np.minimum(offsets[:-1][short, None] + span, data.size - 1)
        matrix = np.where(span < lengths[short, None], data[positions], 0).astype(np.uint8)
        words = np.ascontiguousarray(matrix).view(U64)
        combined = mix(lengths[short].astype(U64) + GOLDEN)
        for column in range(words.shape[1]):
            # Only the words that hold the string's bytes: the padding's width depends on the chunk's longest value.
            inside = lengths[short] > column * 8
            combined = np.where(inside, mix(combined ^ mix(words[:, column] + U64(column))), combined)
        hashes[short] = combined
    long = valid & ~short
    if long.any():
        strings = np.array(text.filter(pa.array(long)).to_pylist(), dtype=object)
        hashes[long] = mix(pd.util.hash_array(strings, categorize=False) ^ GOLDEN)
    return hashes


def hash_values(values: pa.Array, spec_type: str) -> np.ndarray:
    if spec_type in ("numeric", "integer"):
        numbers = values.to_numpy(zero_copy_only=False) + 0.0  # -0.0 -> 0.0: equal values, equal hashes
        numbers[np.isnan(numbers)] = np.nan  # one NaN bit pattern
        return mix(numbers.view(U64))
    if spec_type == "boolean":
        codes = pc.fill_null(pc.cast(values, pa.int8()), 2).to_numpy(zero_copy_only=False)
        return mix(codes.astype(U64) + GOLDEN)
    if spec_type == "date":
        return mix(pc.fill_null(pc.cast(values, pa.int64()), np.iinfo(np.int64).min).to_numpy().view(U64))
    return _hash_strings(values)
