"""numpy <-> the wire's Tensor: raw little-endian float32 bytes and a shape."""

from __future__ import annotations

import numpy as np

from embedsense.proto.v1 import embedsense_pb2 as pb

_WIRE = np.dtype("<f4")


def to_tensor(array: np.ndarray) -> pb.Tensor:
    array = np.ascontiguousarray(array, dtype=_WIRE)
    return pb.Tensor(shape=list(array.shape), data=array.tobytes())


def from_tensor(tensor: pb.Tensor) -> np.ndarray:
    """A float32 array of the tensor's shape (a copy: safe to keep and modify)."""
    shape = tuple(tensor.shape)
    expected = int(np.prod(shape)) * _WIRE.itemsize if shape else 0
    if len(tensor.data) != expected:
        raise ValueError(
            f"a tensor of shape {shape} needs {expected} bytes of float32, got {len(tensor.data)}"
        )
    return np.frombuffer(tensor.data, dtype=_WIRE).astype(np.float32).reshape(shape)
