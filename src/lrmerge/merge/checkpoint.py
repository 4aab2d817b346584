"""Safetensors checkpoints: lazy reads of one tensor at a time, and sharded writes in place.

Reading parses the shard headers only; a tensor's bytes are read (pread) straight into a buffer the
caller owns, so nothing is memory-mapped and resident memory stays at the tensors in flight. Writing
plans every shard from the known output shapes first, writes the headers, and then each tensor's bytes
go to their final offset whenever it is ready, in any order.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import os
import struct
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import MergeError

# safetensors dtype -> (numpy storage dtype, kernel kind)
# bf16 and fp16 bits travel in different integer dtypes so the kernels know the format by type
DTYPES = {"F32": (np.float32, 0), "BF16": (np.uint16, 1), "F16": (np.int16, 2)}
DTYPE_NAMES = {"float32": "F32", "bfloat16": "BF16", "float16": "F16"}
ITEMSIZE = {"F32": 4, "BF16": 2, "F16": 2, "F64": 8, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1,
            "BOOL": 1}
SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"


@dataclass(frozen=True)
class TensorInfo:
    name: str
    dtype: str  # safetensors code, e.g. "BF16"
    shape: tuple[int, ...]
    file: Path
    offset: int  # absolute byte offset in file
    nbytes: int

    @property
    def numel(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) if self.shape else 1


def _read_header(path: Path) -> tuple[dict, int]:
    try:
        with open(path, "rb") as f:
            raw = f.read(8)
            if len(raw) < 8:
                raise MergeError(f"{path}: not a safetensors file (too short)")
            (length,) = struct.unpack("<Q", raw)
            if length > 100_000_000:
                raise MergeError(f"{path}: not a safetensors file (header length {length})")
            header = json.loads(f.read(length))
    except FileNotFoundError as e:
        raise MergeError(f"{path}: shard listed in the index is missing") from e
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise MergeError(f"{path}: unreadable safetensors header ({e})") from e
    return header, 8 + length


class Checkpoint:
    """A model folder's tensors (single safetensors file, or shards with an index)."""

    def __init__(self, folder: str | os.PathLike, name: str):
        self.folder = Path(folder)
        self.name = name
        if not self.folder.is_dir():
            raise MergeError(f"model '{name}': folder {self.folder} does not exist")
        index = self.folder / INDEX_FILE
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
            except (KeyError, json.JSONDecodeError) as e:
                raise MergeError(f"{index}: not a safetensors index ({e})") from e
            files = sorted(set(weight_map.values()))
        elif (self.folder / SINGLE_FILE).is_file():
            files = [SINGLE_FILE]
        else:
            found = sorted(p.name for p in self.folder.glob("*.safetensors"))
            if not found:
                raise MergeError(
                    f"model '{name}': no safetensors weights in {self.folder} "
                    f"(expected {SINGLE_FILE} or {INDEX_FILE}; .bin checkpoints are not supported)"
                )
            files = found
        self.tensors: dict[str, TensorInfo] = {}
        for file in files:
            path = self.folder / file
            header, data_start = _read_header(path)
            size = path.stat().st_size
            for tname, meta in header.items():
                if tname == "__metadata__":
                    continue
                begin, end = meta["data_offsets"]
                if data_start + end > size:
                    raise MergeError(f"{path}: truncated (tensor {tname} ends past the file end)")
                self.tensors[tname] = TensorInfo(
                    tname, meta["dtype"], tuple(meta["shape"]), path, data_start + begin, end - begin
                )
        if index.is_file():
            missing = sorted(set(weight_map) - set(self.tensors))
            if missing:
                raise MergeError(f"{index}: lists {missing[0]} but no shard holds it")
        self._fds: dict[Path, int] = {}

    def config(self) -> dict:
        path = self.folder / "config.json"
        if not path.is_file():
            return {}
        try:
            return json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise MergeError(f"{path}: invalid JSON ({e})") from e

    def read_into(self, name: str, out: np.ndarray) -> None:
        """Read a tensor's raw bytes into a contiguous array of the same byte size."""
        info = self.tensors[name]
        view = memoryview(out.reshape(-1).view(np.uint8))
        if len(view) != info.nbytes:
            raise MergeError(f"model '{self.name}': tensor {name} has {info.nbytes} bytes, "
                             f"expected {len(view)}")
        fd = self._fds.get(info.file)
        if fd is None:
            fd = self._fds[info.file] = os.open(info.file, os.O_RDONLY)
        done = 0
        while done < info.nbytes:
            got = os.preadv(fd, [view[done:]], info.offset + done)
            if got == 0:
                raise MergeError(f"{info.file}: unexpected end of file reading tensor {name}")
            done += got

    def read_range(self, info: TensorInfo, start: int, out: np.ndarray) -> None:
        """Read out's byte size of a tensor's bytes from byte `start` of it (a vocabulary-extended
        model's new rows; `info` is the tensor's uncut record)."""
        view = memoryview(out.reshape(-1).view(np.uint8))
        if start + len(view) > info.nbytes:
            raise MergeError(f"model '{self.name}': tensor {info.name} has {info.nbytes} bytes, "
                             f"cannot read {len(view)} from byte {start}")
        fd = self._fds.get(info.file)
        if fd is None:
            fd = self._fds[info.file] = os.open(info.file, os.O_RDONLY)
        done = 0
        while done < len(view):
            got = os.preadv(fd, [view[done:]], info.offset + start + done)
            if got == 0:
                raise MergeError(f"{info.file}: unexpected end of file reading tensor {info.name}")
            done += got

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()


@dataclass
class OutputTensor:
    name: str
    dtype: str
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * ITEMSIZE[self.dtype]


def _start_writeback():
    """Linux's sync_file_range(SYNC_FILE_RANGE_WRITE): start writing a byte range to disk without
    waiting, so the fsync at the end finds little left to do. None elsewhere."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        fn = libc.sync_file_range
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    fn.restype = ctypes.c_int

    def start(fd: int, offset: int, nbytes: int) -> None:
        fn(fd, offset, nbytes, 2)  # SYNC_FILE_RANGE_WRITE; a failure only means a longer fsync

    return start


START_WRITEBACK = _start_writeback()


class ShardedWriter:
    """Writes tensors into pre-planned safetensors shards at their final offsets."""

    def __init__(self, folder: Path, tensors: list[OutputTensor], shard_size: int,
                 metadata: dict[str, str] | None = None):
        self.folder = folder
        shards: list[list[OutputTensor]] = [[]]
        filled = 0
        for t in tensors:
            if shards[-1] and filled + t.nbytes > shard_size:
                shards.append([])
                filled = 0
            shards[-1].append(t)
            filled += t.nbytes
        count = len(shards)
        self.location: dict[str, tuple[int, int]] = {}  # name -> (fd, absolute offset)
        self.weight_map: dict[str, str] = {}
        self._fds = []
        self.total_size = 0
        for number, shard in enumerate(shards, start=1):
            fname = SINGLE_FILE if count == 1 else f"model-{number:05d}-of-{count:05d}.safetensors"
            header: dict = {"__metadata__": {"format": "pt", **(metadata or {})}}
            offset = 0
            for t in shard:
                header[t.name] = {"dtype": t.dtype, "shape": list(t.shape),
                                  "data_offsets": [offset, offset + t.nbytes]}
                offset += t.nbytes
            raw = json.dumps(header, separators=(",", ":")).encode()
            raw += b" " * (-len(raw) % 8)  # data starts 8-byte aligned
            fd = os.open(folder / fname, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
            self._fds.append(fd)
            os.pwrite(fd, struct.pack("<Q", len(raw)) + raw, 0)
            os.ftruncate(fd, 8 + len(raw) + offset)
            for t in shard:
                self.location[t.name] = (fd, 8 + len(raw) + header[t.name]["data_offsets"][0])
                self.weight_map[t.name] = fname
            self.total_size += offset
        self.shard_count = count

    def write(self, name: str, data: np.ndarray) -> None:
        fd, offset = self.location[name]
        view = memoryview(np.ascontiguousarray(data).reshape(-1).view(np.uint8))
        done = 0
        while done < len(view):
            done += os.pwrite(fd, view[done:], offset + done)
        if START_WRITEBACK is not None:
            START_WRITEBACK(fd, offset, len(view))

    def close(self) -> None:
        for fd in self._fds:
            os.fsync(fd)
            os.close(fd)
        self._fds.clear()
        if self.shard_count > 1:
            index = {"metadata": {"total_size": self.total_size}, "weight_map": self.weight_map}
            (self.folder / INDEX_FILE).write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
