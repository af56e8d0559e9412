"""Tests of deq_modules/data/idx.py: IDX files written here, plain and gzip, good and damaged."""

from __future__ import annotations

import gzip
import random

import pytest
import torch

from deq_modules.data.idx import IdxError, idx_dims, read_idx

ARRAYS = {"labels": torch.arange(7, dtype=torch.uint8),
          "images": (torch.arange(5 * 4 * 3) % 256).to(torch.uint8).reshape(5, 4, 3)}


@pytest.mark.parametrize("gz", [True, False], ids=["gz", "plain"])
@pytest.mark.parametrize("kind", list(ARRAYS))
def test_reads_back_what_was_written(tmp_path, tiny, kind, gz):
    path = tiny.write_idx(tmp_path / kind, ARRAYS[kind], gz=gz)
    assert torch.equal(read_idx(path), ARRAYS[kind])
    assert idx_dims(path) == tuple(ARRAYS[kind].shape)


def damaged_files(tmp_path, tiny) -> dict[str, object]:
    """One file per kind of damage, each named after it."""
    good = tiny.idx_bytes(ARRAYS["images"])
    compressed = gzip.compress(good)
    files = {
        "wrong-magic": b"\x00\x00\x0d\x01" + (7).to_bytes(4, "big") + bytes(28),
        "short-payload": good[:-1],
        "long-payload": good + b"\x00",
        "short-header": good[:9],
        "empty": b"",
        "random-bytes.gz": random.Random(0).randbytes(300),
        "truncated.gz": compressed[: len(compressed) // 2],
        "bad-crc.gz": compressed[:-8] + bytes(4) + compressed[-4:],
        "wrong-magic-inside.gz": gzip.compress(b"\x01\x02\x03\x04" + good[4:]),
    }
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    return {name: tmp_path / name for name in files}


@pytest.mark.parametrize("read", [read_idx, idx_dims], ids=["read_idx", "idx_dims"])
def test_every_damaged_file_is_an_error_naming_it(tmp_path, tiny, read):
    for name, path in damaged_files(tmp_path, tiny).items():
        with pytest.raises(IdxError) as info:
            read(path)
        assert isinstance(info.value, ValueError), name
        assert str(path) in str(info.value) and info.value.path == path, name


def test_messages_say_what_is_wrong(tmp_path, tiny):
    files = damaged_files(tmp_path, tiny)
    expected = {  # the values that show what is wrong, in any wording
        "wrong-magic": r"\b00000d01\b",  # the magic found
        "short-payload": r"\[5, 4, 3\].*\b60\b.*\b59\b",  # the dims, the bytes they need, found
        "short-header": r"\b5\b.*\b12\b",  # header bytes present, needed
        "random-bytes.gz": r"\bgzip\b", "truncated.gz": r"\bgzip\b"}
    for name, pattern in expected.items():
        with pytest.raises(IdxError, match=pattern):
            read_idx(files[name])


def test_missing_file_is_a_file_not_found_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="absent"):
        read_idx(tmp_path / "absent.gz")
