"""Which index specs a new collection takes: a small grammar of FAISS factory strings.

    Flat                  exact search
    HNSW<M>[,<codes>]     a graph of M links per vector (HNSW32); M is 2-256
    IVF<n>,<codes>        n inverted lists (IVF256,Flat); n is 1-65536
    SQ8, SQ6, SQ4, SQfp16 scalar-quantized vectors, searched exhaustively
    where <codes> is Flat, PQ<m> (m sub-quantizers of 8 bits; m divides the dimension),
    SQ8, SQ6, SQ4 or SQfp16

FAISS's own factory takes much more, but not safely: numbers it does not check take the
whole server down later (HNSW1 segfaults on the first add, IVF16,PQ16x0 divides by zero,
IVF0,Flat fails every search, PQ<m> alone refuses the selector that skips deleted
vectors), and its errors are C++ assertion text. So a new spec must
fit this grammar, checked here with one error that names the spec and what would be
valid; a collection made before keeps its spec.
"""

from __future__ import annotations

import re

from embedsense.server.index.errors import InvalidArgument

MAX_HNSW_M = 256
MAX_NLIST = 65_536
# Numbers as written once: "HNSW" alone and "HNSW032" would be HNSW32 stored under other
# names, which exist_ok would then tell apart.
_NUMBER = r"(?:0|[1-9]\d*)"
_GRAPH_OR_LISTS = re.compile(rf"HNSW(?P<m>{_NUMBER})|IVF(?P<nlist>{_NUMBER})")
_CODES = re.compile(rf"Flat|SQ8|SQ6|SQ4|SQfp16|PQ(?P<pq>{_NUMBER})")
EXAMPLES = "Flat, HNSW32, IVF256,Flat, IVF256,PQ16, IVF256,SQ8"


def check_spec(spec: str, dim: int) -> None:
    """InvalidArgument, in one line, unless `spec` fits the grammar above at `dim`."""
    first, comma, rest = spec.partition(",") if isinstance(spec, str) else ("", "", "")
    outer = _GRAPH_OR_LISTS.fullmatch(first)
    if outer is None:  # codes alone: "Flat", "SQ8"
        codes = _CODES.fullmatch(first) if not comma and not first.startswith("PQ") else None
    elif outer["nlist"] is not None or comma:  # IVF always names its codes; HNSW may
        codes = _CODES.fullmatch(rest)
    else:
        codes = _CODES.fullmatch("Flat")
    if codes is None:
        raise InvalidArgument(
            f"index spec {spec!r} is not a factory string this server takes: Flat, "
            "HNSW<M>[,codes], IVF<n>,codes (codes: Flat, PQ<m>, SQ8, SQ6, SQ4, SQfp16) or "
            f"SQ8, SQ6, SQ4, SQfp16 alone, for example {EXAMPLES}",
            "index",
        )
    if outer and outer["m"] is not None and not 2 <= int(outer["m"]) <= MAX_HNSW_M:
        raise InvalidArgument(
            f"index spec {spec!r}: HNSW takes 2-{MAX_HNSW_M} links per vector, got "
            f"{int(outer['m'])} (HNSW32 is the usual choice)",
            "index",
        )
    if outer and outer["nlist"] is not None and not 1 <= int(outer["nlist"]) <= MAX_NLIST:
        raise InvalidArgument(
            f"index spec {spec!r}: IVF takes 1-{MAX_NLIST} lists, got {int(outer['nlist'])} "
            "(about 4*sqrt(N) for N vectors: IVF256,Flat for ~10^4, IVF4096,Flat for ~10^6)",
            "index",
        )
    pq = codes["pq"]
    if pq and not (1 <= int(pq) <= dim and dim % int(pq) == 0):
        divisors = [m for m in (4, 8, 16, 32, 48, 64, 96) if m <= dim and dim % m == 0]
        hint = f", such as {', '.join(map(str, divisors))}" if divisors else ""
        raise InvalidArgument(
            f"index spec {spec!r}: PQ<m> takes a number of sub-quantizers that divides "
            f"the dimension {dim}{hint}; got {int(pq)}",
            "index",
        )
