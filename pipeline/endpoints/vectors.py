"""Embedding vectors as stored: float32, little-endian, one after another, in input order (the
answer's `data` sorted by `index` when it came otherwise).

A 3,072-float vector is ~60 KB as JSON text and 12 KB as float32. The API's own `base64` encoding is base64
of exactly these bytes, and its JSON floats are float32 values printed as the doubles they are
(-0.006929283495992422); so float32 -> Python float -> JSON gives back what the API sent, value for value
and digit for digit (orjson spells the smallest without an exponent: 0.0000454... for 4.54...e-05).
"""

from __future__ import annotations

import sys
from array import array

#: Bytes of one vector element.
FLOAT32 = 4
_SWAP = sys.byteorder != "little"


def pack(values: list[float]) -> bytes:
    """JSON floats as float32 little-endian bytes; TypeError when an item is not a number."""
    packed = array("f", values)
    if _SWAP:
        packed.byteswap()
    return packed.tobytes()


def unpack(data: bytes) -> list[float]:
    """float32 little-endian bytes as Python floats (each the exact double of its float32)."""
    floats = array("f")
    floats.frombytes(data)
    if _SWAP:
        floats.byteswap()
    return floats.tolist()


def split(data: bytes, dimensions: int) -> list[bytes]:
    """The stored bytes of a response, one slice per vector."""
    size = dimensions * FLOAT32
    if size <= 0:
        return []
    return [data[start : start + size] for start in range(0, len(data), size)]
