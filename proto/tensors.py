"""numpy <-> the wire's Tensor: raw little-endian float32 bytes and a shape."""

from __future__ import annotations

import math

import numpy as np

from embedsense.proto.v1 import embedsense_pb2 as pb

_WIRE = np.dtype("<f4")


def to_tensor(array: np.ndarray) -> pb.Tensor:
    array = np.ascontiguousarray(array, dtype=_WIRE)
    return pb.Tensor(shape=list(array.shape), data=array.tobytes())


def from_tensor(tensor: pb.Tensor) -> np.ndarray:
    """A float32 array of the tensor's shape (a copy: safe to keep and modify); ValueError
    for a shape without dimensions, or data of another size."""
    shape = tuple(tensor.shape)
    if not shape:
        raise ValueError("a tensor has one dimension at least; got shape []")
    expected = math.prod(shape) * _WIRE.itemsize  # Python's ints: np.prod wraps at 2**63
    if len(tensor.data) != expected:
        raise ValueError(
            f"a tensor of shape {shape} needs {expected} bytes of float32, got {len(tensor.data)}"
        )
    return np.frombuffer(tensor.data, dtype=_WIRE).astype(np.float32).reshape(shape)
