"""Check an ``index.faiss`` file's structure before FAISS reads it.

FAISS's reader trusts the lengths a file states: a vector length field is used to allocate the vector before
the bytes are read, so a short file whose header claims 2^29 floats costs gigabytes of memory before the read
fails. :func:`check_index_file` walks the index types siamstream writes (flat, HNSW over flat, IVF-flat, IVF-PQ;
the layouts of FAISS's ``index_write.cpp``) reading only the fixed-size fields, checks every length against the
bytes left in the file and that the file ends where the index does. It allocates nothing the file does not hold.
"""

from __future__ import annotations

import os
import struct
from typing import BinaryIO

_MAX_DIM = 1 << 20


class IndexFileError(ValueError):
    """The file is not an index FAISS wrote for siamstream, or it states lengths it does not hold."""


class _Reader:
    """Reads the fixed-size fields of an open binary file, stepping over the payload without reading it."""

    def __init__(self, fh: BinaryIO) -> None:
        self.fh = fh
        self.size = fh.seek(0, os.SEEK_END)
        self.pos = 0

    def left(self) -> int:
        return self.size - self.pos

    def skip(self, n: int, what: str) -> None:
        """Step over ``n`` bytes without reading them (the vectors themselves)."""
        if n < 0 or n > self.left():
            raise IndexFileError(f"{what} needs {n} bytes at offset {self.pos}, the file has {self.left()} left")
        self.pos += n

    def take(self, n: int, what: str) -> bytes:
        start = self.pos
        self.skip(n, what)
        self.fh.seek(start)
        data = self.fh.read(n)
        if len(data) != n:
            raise IndexFileError(f"{what}: the file ended while it was read")
        return data

    def unpack(self, fmt: str, what: str) -> int:
        return int(struct.unpack("<" + fmt, self.take(struct.calcsize("<" + fmt), what))[0])

    def fourcc(self) -> str:
        return self.take(4, "a type tag").decode("latin-1")

    def vector(self, item: int, what: str) -> int:
        """A length-prefixed vector of ``item``-byte elements; skipped after checking its length."""
        n = self.unpack("Q", f"the length of {what}")
        if n > self.left() // item:
            raise IndexFileError(f"{what}: the file states {n} elements of {item} bytes but has "
                                 f"{self.left()} bytes left")
        self.skip(n * item, what)
        return n


def _header(r: _Reader) -> tuple[int, int]:
    d = r.unpack("i", "the dimension")
    ntotal = r.unpack("q", "the vector count")
    r.skip(16 + 1, "the header")  # two unused int64, is_trained
    metric = r.unpack("i", "the metric")
    if metric > 1:
        r.skip(4, "the metric argument")
    if not 0 < d <= _MAX_DIM or ntotal < 0:
        raise IndexFileError(f"header states dimension {d} and {ntotal} vectors")
    return d, ntotal


def _flat(r: _Reader) -> tuple[int, int]:
    d, ntotal = _header(r)
    floats = r.vector(4, "the vectors")
    if floats != d * ntotal:
        raise IndexFileError(f"holds {floats} floats for {ntotal} vectors of dimension {d}")
    return d, ntotal


def _invlists(r: _Reader, nlist: int, code_size: int) -> int:
    if (tag := r.fourcc()) != "ilar":
        raise IndexFileError(f"inverted lists of type {tag!r}, expected 'ilar'")
    if r.unpack("Q", "the list count") != nlist or r.unpack("Q", "the code size") != code_size:
        raise IndexFileError("inverted lists disagree with their index on the list count or the code size")
    kind = r.fourcc()
    n = r.unpack("Q", "the length of the list sizes")
    if n > r.left() // 8:
        raise IndexFileError(f"the list sizes: the file states {n} elements of 8 bytes but has {r.left()} bytes left")
    sizes = struct.unpack(f"<{n}Q", r.take(8 * n, "the list sizes"))
    if kind == "full":
        if n != nlist:
            raise IndexFileError(f"{n} list sizes for {nlist} lists")
        counts = list(sizes)
    elif kind == "sprs":
        if n % 2 or any(i >= nlist for i in sizes[0::2]):
            raise IndexFileError("sparse list sizes out of range")
        counts = list(sizes[1::2])
    else:
        raise IndexFileError(f"inverted lists stored as {kind!r}")
    for count in counts:
        r.skip(count * code_size, "a list's codes")
        r.skip(count * 8, "a list's ids")
    return sum(counts)


def _ivf(r: _Reader, tag: str) -> tuple[int, int]:
    d, ntotal = _header(r)
    nlist = r.unpack("Q", "the cell count")
    r.unpack("Q", "nprobe")
    if not 0 < nlist <= ntotal + (1 << 20):
        raise IndexFileError(f"states {nlist} cells")
    if (qtag := r.fourcc()) not in ("IxF2", "IxFI"):
        raise IndexFileError(f"quantiser of type {qtag!r}, expected a flat one")
    qd, qn = _flat(r)
    if qd != d or qn != nlist:
        raise IndexFileError(f"quantiser holds {qn} centroids of dimension {qd} for {nlist} cells of dimension {d}")
    map_type = r.take(1, "the direct map type")[0]
    r.vector(8, "the direct map")
    if map_type == 2:
        r.vector(16, "the direct map's hash table")
    if tag == "IwFl":
        code_size = 4 * d
    else:
        r.skip(1, "by_residual")
        code_size = r.unpack("Q", "the code size")
        pq_d, m, nbits = (r.unpack("Q", f"the quantiser's {f}") for f in ("dimension", "sub-quantisers", "bits"))
        if pq_d != d or not 0 < m <= d or not 0 < nbits <= 16 or code_size != (m * nbits + 7) // 8:
            raise IndexFileError(f"product quantiser of dimension {pq_d}, {m} x {nbits} bits, code size {code_size}")
        if r.vector(4, "the PQ centroids") != d * (1 << nbits):
            raise IndexFileError("PQ centroid count does not match its shape")
    if _invlists(r, nlist, code_size) != ntotal:
        raise IndexFileError(f"inverted lists hold another number of vectors than the {ntotal} stated")
    return d, ntotal


def _hnsw(r: _Reader) -> tuple[int, int]:
    d, ntotal = _header(r)
    r.vector(8, "the level probabilities")
    r.vector(4, "the neighbours per level")
    if r.vector(4, "the levels") != ntotal:
        raise IndexFileError("HNSW levels do not match the vector count")
    if r.vector(8, "the offsets") != ntotal + 1:
        raise IndexFileError("HNSW offsets do not match the vector count")
    r.vector(4, "the neighbours")
    r.skip(20, "the HNSW parameters")
    if r.fourcc() not in ("IxF2", "IxFI"):
        raise IndexFileError("HNSW storage is not a flat index")
    sd, sn = _flat(r)
    if (sd, sn) != (d, ntotal):
        raise IndexFileError("HNSW storage disagrees with the graph on the dimension or the count")
    return d, ntotal


def check_index_file(fh: BinaryIO) -> tuple[int, int]:
    """``(dimension, vectors)`` of the well-formed index file open in ``fh``; :class:`IndexFileError` otherwise.
    Only the fixed-size fields are read; ``fh`` is left at an unspecified position."""
    r = _Reader(fh)
    tag = r.fourcc()
    if tag in ("IxF2", "IxFI"):
        shape = _flat(r)
    elif tag == "IHNf":
        shape = _hnsw(r)
    elif tag in ("IwFl", "IwPQ"):
        shape = _ivf(r, tag)
    else:
        raise IndexFileError(f"index type {tag!r} is not one siamstream writes (flat, HNSW, IVF-flat, IVF-PQ)")
    if r.left():
        raise IndexFileError(f"{r.left()} bytes follow the end of the index")
    return shape
