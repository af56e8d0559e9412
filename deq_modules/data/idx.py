"""Reading IDX files (the MNIST family's format), plain or gzip-compressed.

Format: two zero bytes, a type byte (0x08 = unsigned byte), the number of dims, each dim as a
big-endian int32, then the row-major payload.
"""

from __future__ import annotations

import gzip
import os
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO

import torch

_UBYTE_MAGIC = b"\x00\x00\x08"
_CHUNK = 1 << 20


class IdxError(ValueError):
    """A file that is not a well-formed IDX file of unsigned bytes.

    ``path`` is the file, ``problem`` what is wrong with it; the message is ``"path: problem"``.
    """

    def __init__(self, path: str | os.PathLike, problem: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.path, self.problem = path, problem


def read_idx(path: str | os.PathLike) -> torch.Tensor:
    """Read an IDX file of unsigned bytes (plain or ``.gz``) into a uint8 tensor of its dims.

    Raises :class:`IdxError` (a ``ValueError`` naming the file) for a wrong magic, a truncated
    header, a payload whose length differs from the header's dims, or damaged gzip data.
    """
    with _gzip_errors(path), _open(path) as f:
        dims = _read_header(f, path)
        payload = f.read()
    _check_payload(path, dims, len(payload))
    if not payload:
        return torch.empty(dims, dtype=torch.uint8)
    return torch.frombuffer(bytearray(payload), dtype=torch.uint8).reshape(dims)


def idx_dims(path: str | os.PathLike) -> tuple[int, ...]:
    """Check a whole IDX file as :func:`read_idx` does, without keeping its payload; its dims."""
    with _gzip_errors(path), _open(path) as f:
        dims = _read_header(f, path)
        length = 0
        while chunk := f.read(_CHUNK):
            length += len(chunk)
    _check_payload(path, dims, length)
    return dims


def _open(path: str | os.PathLike) -> IO[bytes]:
    return gzip.open(path, "rb") if str(path).endswith(".gz") else open(path, "rb")


@contextmanager
def _gzip_errors(path: str | os.PathLike) -> Iterator[None]:
    # gzip reports a damaged file without its name: BadGzipFile (not gzip, bad CRC), EOFError
    # (truncated), zlib.error (corrupt stream)
    try:
        yield
    except (gzip.BadGzipFile, EOFError, zlib.error) as err:
        raise IdxError(path, f"damaged gzip data ({type(err).__name__}: {err})") from err


def _read_header(f: IO[bytes], path: str | os.PathLike) -> tuple[int, ...]:
    magic = f.read(4)
    if len(magic) < 4 or magic[:3] != _UBYTE_MAGIC:
        raise IdxError(path, f"not an IDX file of unsigned bytes (magic {magic.hex() or 'missing'}, "
                             f"expected {_UBYTE_MAGIC.hex()} and a dim count)")
    ndim = magic[3]
    raw = f.read(4 * ndim)
    if len(raw) < 4 * ndim:
        raise IdxError(path, f"header truncated: {ndim} dims announced, {len(raw)} of {4 * ndim} bytes present")
    return tuple(int.from_bytes(raw[4 * i: 4 * i + 4], "big") for i in range(ndim))


def _check_payload(path: str | os.PathLike, dims: tuple[int, ...], length: int) -> None:
    count = 1
    for d in dims:
        count *= d
    if length != count:
        raise IdxError(path, f"header says {list(dims)} ({count} bytes), payload has {length}")
