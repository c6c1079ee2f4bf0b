"""TensorFlow 1 checkpoints (tensor bundles) read in pure Python: no TensorFlow needed.

A checkpoint with prefix P is two files:

    P.index                  a LevelDB-style SSTable: tensor name -> BundleEntryProto
                             (dtype, shape, shard, offset, size, masked CRC32C)
    P.data-00000-of-00001    the tensors' raw little-endian bytes, back to back

Only what importing pretrained weights needs is supported: one shard, uncompressed
blocks, dense (unsliced) tensors of the plain numeric dtypes. Every block and every
tensor read is checked against its CRC32C, so a damaged file is an error, not a
silently different model.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import numpy as np

__all__ = ["CheckpointError", "TensorEntry", "crc32c", "read_checkpoint", "read_index"]

_TABLE_MAGIC = 0xDB4775248B80FB57
_FOOTER_SIZE = 48  # two block handles padded to 40 bytes, then the 8-byte magic
_BLOCK_TRAILER = 5  # compression type (1 byte) + masked CRC32C (4 bytes)
_MASK_DELTA = 0xA282EAD8
# tensorflow/core/framework/types.proto DataType -> numpy (little-endian)
_DTYPES = {
    1: np.dtype("<f4"),
    2: np.dtype("<f8"),
    3: np.dtype("<i4"),
    4: np.dtype("u1"),
    5: np.dtype("<i2"),
    6: np.dtype("i1"),
    9: np.dtype("<i8"),
    10: np.dtype("?"),
    19: np.dtype("<f2"),
}


class CheckpointError(ValueError):
    """The files are not a checkpoint this reader understands, or they are damaged."""


@dataclass(frozen=True)
class TensorEntry:
    """Where one tensor lives in the data file (a decoded BundleEntryProto)."""

    name: str
    dtype: int
    shape: tuple[int, ...]
    shard: int
    offset: int
    size: int
    crc32c: int  # masked, as stored


# -- CRC32C (Castagnoli), as LevelDB and TensorFlow use it ---------------------------


def _crc_tables() -> list[list[int]]:
    """Slicing-by-8 tables: the pure-Python loop then takes eight bytes a step, not one."""
    base = []
    for n in range(256):
        c = n
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        base.append(c)
    tables = [base]
    for _ in range(7):
        prev = tables[-1]
        tables.append([(prev[n] >> 8) ^ base[prev[n] & 0xFF] for n in range(256)])
    return tables


_T = _crc_tables()


def crc32c(data: bytes | memoryview, crc: int = 0) -> int:
    """CRC32C of ``data`` (continuing from ``crc``)."""
    t0, t1, t2, t3, t4, t5, t6, t7 = _T
    crc ^= 0xFFFFFFFF
    view = memoryview(data).cast("B")
    n8 = len(view) // 8 * 8
    for lo, hi in struct.iter_unpack("<II", view[:n8]):
        lo ^= crc
        crc = (
            t7[lo & 0xFF]
            ^ t6[(lo >> 8) & 0xFF]
            ^ t5[(lo >> 16) & 0xFF]
            ^ t4[lo >> 24]
            ^ t3[hi & 0xFF]
            ^ t2[(hi >> 8) & 0xFF]
            ^ t1[(hi >> 16) & 0xFF]
            ^ t0[hi >> 24]
        )
    for byte in view[n8:]:
        crc = t0[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def _unmask(masked: int) -> int:
    rot = (masked - _MASK_DELTA) & 0xFFFFFFFF
    return ((rot >> 17) | (rot << 15)) & 0xFFFFFFFF


# -- varints, protobuf, SSTable blocks -------------------------------------------------


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(buf) or shift > 63:
            raise CheckpointError("truncated or malformed varint")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7


def _proto_fields(buf: bytes) -> Iterator[tuple[int, int | bytes]]:
    """(field number, value) of a protobuf message: ints for varint/fixed, bytes for length."""
    pos = 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
        elif wire == 1:
            (value,), pos = struct.unpack_from("<Q", buf, pos), pos + 8
        elif wire == 5:
            (value,), pos = struct.unpack_from("<I", buf, pos), pos + 4
        elif wire == 2:
            length, pos = _varint(buf, pos)
            value, pos = buf[pos : pos + length], pos + length
        else:
            raise CheckpointError(f"unsupported protobuf wire type {wire}")
        if pos > len(buf):
            raise CheckpointError("truncated protobuf message")
        yield number, value


def _block(table: bytes, offset: int, size: int) -> bytes:
    """The contents of the block at a handle, after checking its type and CRC."""
    end = offset + size + _BLOCK_TRAILER
    if offset < 0 or end > len(table):
        raise CheckpointError("block handle points outside the index file")
    contents, kind = table[offset : offset + size], table[offset + size]
    (stored,) = struct.unpack_from("<I", table, offset + size + 1)
    if crc32c(table[offset : offset + size + 1]) != _unmask(stored):
        raise CheckpointError(f"index block at {offset}: CRC mismatch (damaged file)")
    if kind != 0:
        raise CheckpointError(f"index block at {offset}: compression {kind} is not supported")
    return contents


def _block_entries(block: bytes) -> Iterator[tuple[bytes, bytes]]:
    """Key/value pairs of a block (keys are prefix-compressed against the previous key)."""
    if len(block) < 4:
        raise CheckpointError("index block too short")
    (n_restarts,) = struct.unpack_from("<I", block, len(block) - 4)
    limit = len(block) - 4 - 4 * n_restarts
    if limit < 0:
        raise CheckpointError("malformed index block")
    pos, key = 0, b""
    while pos < limit:
        shared, pos = _varint(block, pos)
        unshared, pos = _varint(block, pos)
        value_len, pos = _varint(block, pos)
        if shared > len(key) or pos + unshared + value_len > limit:
            raise CheckpointError("malformed index block entry")
        key = key[:shared] + block[pos : pos + unshared]
        pos += unshared
        yield key, block[pos : pos + value_len]
        pos += value_len


def _handle(buf: bytes, pos: int = 0) -> tuple[int, int, int]:
    offset, pos = _varint(buf, pos)
    size, pos = _varint(buf, pos)
    return offset, size, pos


def _entry(name: str, value: bytes) -> TensorEntry:
    fields: dict[str, object] = {"dtype": 0, "shape": (), "shard": 0, "offset": 0, "size": 0}
    crc = None
    for number, field in _proto_fields(value):
        if number == 1:
            fields["dtype"] = field
        elif number == 2:  # TensorShapeProto: repeated Dim dim = 2 {int64 size = 1}
            dims = []
            for dim_number, dim in _proto_fields(field):
                if dim_number == 3 and dim:  # unknown_rank
                    raise CheckpointError(f"{name}: unknown rank")
                if dim_number == 2:
                    dims.append(dict(_proto_fields(dim)).get(1, 0))
            fields["shape"] = tuple(dims)
        elif number == 3:
            fields["shard"] = field
        elif number == 4:
            fields["offset"] = field
        elif number == 5:
            fields["size"] = field
        elif number == 6:
            crc = field
        elif number == 7:
            raise CheckpointError(f"{name}: sliced tensors are not supported")
    if crc is None:
        raise CheckpointError(f"{name}: entry has no CRC32C")
    return TensorEntry(name=name, crc32c=int(crc), **fields)  # type: ignore[arg-type]


def read_index(index: bytes) -> dict[str, TensorEntry]:
    """Tensor entries of a ``.index`` file, by name (the bundle header is checked, not kept)."""
    if len(index) < _FOOTER_SIZE:
        raise CheckpointError("index file too short")
    footer = index[-_FOOTER_SIZE:]
    (magic,) = struct.unpack_from("<Q", footer, _FOOTER_SIZE - 8)
    if magic != _TABLE_MAGIC:
        raise CheckpointError("not a TensorFlow checkpoint index (bad table magic)")
    _, _, pos = _handle(footer)  # metaindex: unused by tensor bundles
    index_offset, index_size, _ = _handle(footer, pos)
    entries: dict[str, TensorEntry] = {}
    header_seen = False
    for _, handle in _block_entries(_block(index, index_offset, index_size)):
        offset, size, _ = _handle(handle)
        for key, value in _block_entries(_block(index, offset, size)):
            if key == b"":  # BundleHeaderProto {num_shards = 1, endianness = 2, version = 3}
                header = dict(_proto_fields(value))
                if header.get(1, 1) != 1:
                    raise CheckpointError(f"{header[1]} shards; only one is supported")
                if header.get(2, 0) != 0:
                    raise CheckpointError("big-endian checkpoints are not supported")
                header_seen = True
                continue
            name = key.decode()
            entries[name] = _entry(name, value)
    if not header_seen:
        raise CheckpointError("index has no bundle header")
    return entries


def read_checkpoint(
    index: bytes, data: bytes, names: Mapping[str, object] | None = None
) -> dict[str, np.ndarray]:
    """The tensors of a checkpoint as numpy arrays, each checked against its CRC32C.

    ``names`` (any mapping or set of names) reads only those tensors, e.g. to skip the
    optimiser's slots; a name that is not in the checkpoint is an error.
    """
    entries = read_index(index)
    wanted = list(entries) if names is None else list(names)
    missing = [name for name in wanted if name not in entries]
    if missing:
        raise CheckpointError(f"not in the checkpoint: {', '.join(missing)}")
    tensors = {}
    for name in wanted:
        entry = entries[name]
        dtype = _DTYPES.get(entry.dtype)
        if dtype is None:
            raise CheckpointError(f"{name}: unsupported dtype {entry.dtype}")
        if entry.shard != 0:
            raise CheckpointError(f"{name}: shard {entry.shard}; only one is supported")
        count = int(np.prod(entry.shape, dtype=np.int64))
        if entry.size != count * dtype.itemsize or entry.offset + entry.size > len(data):
            raise CheckpointError(f"{name}: size or offset does not fit the data file")
        raw = memoryview(data)[entry.offset : entry.offset + entry.size]
        if crc32c(raw) != _unmask(entry.crc32c):
            raise CheckpointError(f"{name}: CRC mismatch (damaged data file)")
        tensors[name] = (
            np.frombuffer(raw, dtype=dtype).reshape(entry.shape).astype(dtype.newbyteorder("="))
        )
    return tensors
