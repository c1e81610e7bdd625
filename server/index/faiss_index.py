"""The FAISS side of a collection: building an index from a spec, snapshots, the live set.

A vector's FAISS id is its label: the index is append-only, so the i-th vector added has id
i, and no ID map is needed. Which labels are live is a bitmap, handed to FAISS as an
IDSelector, so dead (deleted or replaced) vectors are skipped inside the search.
"""

from __future__ import annotations

import logging
import os
import struct
import zlib
from pathlib import Path

import faiss
import numpy as np

from embedsense.server.index.errors import InvalidArgument
from embedsense.server.index.specs import EXAMPLES

log = logging.getLogger(__name__)

METRICS = {
    "cosine": faiss.METRIC_INNER_PRODUCT,  # inputs are L2-normalized first
    "ip": faiss.METRIC_INNER_PRODUCT,
    "l2": faiss.METRIC_L2,
}


def new_index(spec: str, dim: int, metric: str) -> faiss.Index:
    """An empty index from a FAISS factory string ("Flat", "HNSW32", "IVF1024,PQ48"...).

    New collections' specs are checked first (specs.py); this builds any spec FAISS takes,
    so that a collection made with one before still opens."""
    if metric not in METRICS:
        raise InvalidArgument(f"metric {metric!r}: expected one of {', '.join(METRICS)}")
    if "IDMap" in spec:
        raise InvalidArgument(f"index spec {spec!r}: ids are managed by the collection")
    try:
        return faiss.index_factory(dim, spec, METRICS[metric])
    except RuntimeError as err:
        raise InvalidArgument(
            f"index spec {spec!r}: FAISS cannot build it at dimension {dim} with metric "
            f"{metric!r} ({faiss_reason(err)}); for example {EXAMPLES}"
        ) from None


def faiss_reason(err: RuntimeError) -> str:
    """FAISS's error without its C++ (function signature, source file and line, asserted
    expression): the sentence meant for people, or what kind of failure it was."""
    text = " ".join(str(err).split())
    if "could not parse" in text:
        return "not a factory string it can parse"
    if (said := text.rpartition(" failed: ")[2]) != text:
        return said.rstrip(".")
    return "it refused the combination"


def training_size(index: faiss.Index, spec: str) -> int:
    """How many vectors an index of this spec wants before it is trained (0: no training).

    FAISS's k-means wants about 39 points per centroid: per IVF list, and per PQ/SQ code.
    """
    if index.is_trained:
        return 0
    size = 1000
    if lists := nlist(index):
        size = max(size, 39 * lists)
    if "PQ" in spec:
        size = max(size, 39 * 256)
    return size


def search_parameters(
    index: faiss.Index, selector: faiss.IDSelector | None, ef_search: int, nprobe: int
) -> faiss.SearchParameters:
    inner = faiss.downcast_index(index)
    if isinstance(inner, faiss.IndexHNSW):
        return faiss.SearchParametersHNSW(sel=selector, efSearch=ef_search)
    ivf = faiss.try_extract_index_ivf(inner)
    if ivf is not None:
        return faiss.SearchParametersIVF(sel=selector, nprobe=min(nprobe, ivf.nlist))
    return faiss.SearchParameters(sel=selector)


def exact_view(index: faiss.Index) -> faiss.Index | None:
    """An exhaustive index over the same vectors (and codes), when there is one at no cost:
    HNSW's storage, flat or scalar-quantized, which searches under a selector; used for very
    selective filters, where a graph walk would find too few. (HNSW over PQ has none: FAISS's
    IndexPQ takes no selector.)"""
    inner = faiss.downcast_index(index)
    if isinstance(inner, faiss.IndexHNSW):
        storage = faiss.downcast_index(inner.storage)
        if isinstance(storage, faiss.IndexFlat | faiss.IndexScalarQuantizer):
            return storage
    return None


def nlist(index: faiss.Index) -> int | None:
    ivf = faiss.try_extract_index_ivf(faiss.downcast_index(index))
    return None if ivf is None else ivf.nlist


_POPCOUNT = np.array([bin(i).count("1") for i in range(256)], dtype=np.int64)


def popcount(bits: np.ndarray) -> int:
    """How many labels a bitmap holds."""
    return int(_POPCOUNT[bits].sum())


class LiveSet:
    """A growable bitmap of live labels, in the bit order FAISS's IDSelectorBitmap reads."""

    def __init__(self) -> None:
        self.bits = np.zeros(1024, dtype=np.uint8)
        self.count = 0

    def add(self, labels: np.ndarray | list[int]) -> None:
        labels = np.asarray(labels, dtype=np.int64)
        if not len(labels):
            return
        needed = int(labels.max() >> 3) + 1
        if needed > len(self.bits):
            grown = np.zeros(max(len(self.bits) * 2, needed), dtype=np.uint8)
            grown[: len(self.bits)] = self.bits
            self.bits = grown
        labels = np.unique(labels)
        # Counted by the labels that change, not by the whole bitmap (61 ms a write at 50M).
        self.count += len(labels) - int(self._held(labels).sum())
        np.bitwise_or.at(self.bits, labels >> 3, (1 << (labels & 7)).astype(np.uint8))

    def discard(self, labels: np.ndarray | list[int]) -> None:
        labels = np.unique(np.asarray(labels, dtype=np.int64))
        labels = labels[(labels >> 3) < len(self.bits)]
        self.count -= int(self._held(labels).sum())
        np.bitwise_and.at(self.bits, labels >> 3, ~(1 << (labels & 7)).astype(np.uint8))

    def _held(self, labels: np.ndarray) -> np.ndarray:
        """1 for each label (within the bitmap) that is live, else 0."""
        return (self.bits[labels >> 3] >> (labels & 7).astype(np.uint8)) & 1

    def selector(self, among: np.ndarray | None = None) -> tuple[faiss.IDSelector, np.ndarray]:
        """An IDSelector of the live labels (only those also in the bitmap `among`, of any
        length, when given). The bitmap it reads is returned too: keep it alive while the
        selector is."""
        if among is None:
            bits = self.bits
        else:
            bits = np.zeros(len(self.bits), dtype=np.uint8)
            shared = min(len(bits), len(among))
            np.bitwise_and(self.bits[:shared], among[:shared], out=bits[:shared])
        # Its size in bytes: FAISS checks a label against it as label / 8 < n.
        return faiss.IDSelectorBitmap(len(bits), faiss.swig_ptr(bits)), bits


def bitmap(labels: np.ndarray) -> np.ndarray:
    """The labels as a bitmap in LiveSet's bit order: one bit per label up to the largest,
    however many there are (what a filter's cached result costs)."""
    labels = np.asarray(labels, dtype=np.int64)
    bits = np.zeros(int(labels.max() >> 3) + 1 if len(labels) else 0, dtype=np.uint8)
    np.bitwise_or.at(bits, labels >> 3, (1 << (labels & 7)).astype(np.uint8))
    return bits


def serialized(index: faiss.Index) -> np.ndarray:
    """The index as the bytes of its snapshot file (a copy: the index may change after)."""
    return faiss.serialize_index(index)


# A snapshot ends in a trailer: a mark and the CRC-32 of the bytes before it. FAISS reads a
# file damaged in its middle (a bad sector, a flipped bit) without complaint and serves wrong
# neighbours from it; checked, such a snapshot is unreadable and the store rebuilds it. FAISS
# reads an index and stops, so the trailer after it is never read as part of it; a snapshot
# without one (written before it was added) is read unchecked.
TRAILER = struct.Struct("<8sI")
TRAILER_MARK = b"esnapcrc"
CHECK_CHUNK = 16 << 20  # bytes read at a time to check a snapshot


def write_snapshot(data: np.ndarray | bytes, path: Path) -> None:
    """Write `serialized(index)` and its trailer to a temporary file, fsync it, rename it
    over the old one, fsync the folder: a crash at any instant leaves either the old
    snapshot or the new one, whole."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    body = memoryview(data).cast("B")
    with open(tmp, "wb") as file:
        file.write(body)
        file.write(TRAILER.pack(TRAILER_MARK, zlib.crc32(body)))
        file.flush()
        os.fsync(file.fileno())
    os.replace(tmp, path)
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)


def read_snapshot(path: Path) -> faiss.Index | None:
    """The snapshot, or None when it is missing or unreadable (then the store rebuilds it)."""
    if not path.exists():
        return None
    try:
        if (damage := snapshot_damage(path)) is not None:
            raise RuntimeError(damage)
        return faiss.read_index(str(path))
    except (RuntimeError, OSError) as err:
        log.warning("snapshot %s is unreadable (%s); rebuilding from the store", path, err)
        return None


def snapshot_damage(path: Path) -> str | None:
    """What is wrong with a snapshot's bytes, by its trailer; None when they are whole (or
    it has no trailer to tell), read a chunk at a time so the check holds no copy of it."""
    size = path.stat().st_size
    with open(path, "rb") as file:
        if size < TRAILER.size:
            return None
        file.seek(size - TRAILER.size)
        mark, expected = TRAILER.unpack(file.read(TRAILER.size))
        if mark != TRAILER_MARK:
            return None
        file.seek(0)
        crc, left = 0, size - TRAILER.size
        while left > 0:
            chunk = file.read(min(CHECK_CHUNK, left))
            if not chunk:
                return "shorter than it was written"
            crc, left = zlib.crc32(chunk, crc), left - len(chunk)
    return None if crc == expected else "its checksum does not match: damaged since written"
