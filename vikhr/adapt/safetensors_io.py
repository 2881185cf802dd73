"""Minimal streaming safetensors reader/writer.

The `safetensors` library writes a whole file from a dict of in-memory tensors. To stay within a few
GB on a 7B checkpoint, tensors are instead copied as raw byte ranges from the input file to the output
file (bit-identical by construction), and only the tensors being replaced are materialised.
Format: 8-byte little-endian header length, a JSON header {name: {dtype, shape, data_offsets}} padded
with spaces to a multiple of 8, then the data buffer.
"""

from __future__ import annotations

import json
import math
import shlex
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from vikhr.errors import MISTRAL_NATIVE_FORMAT, MISTRAL_NATIVE_WEIGHTS, VikhrError

COPY_CHUNK_BYTES = 64 << 20
MAX_HEADER_BYTES = 100 << 20

# Bytes per element of the safetensors dtypes (a header's offsets must match its shapes).
DTYPE_BYTES = {
    "F64": 8,
    "F32": 4,
    "F16": 2,
    "BF16": 2,
    "F8_E4M3": 1,
    "F8_E5M2": 1,
    "I64": 8,
    "I32": 4,
    "I16": 2,
    "I8": 1,
    "U64": 8,
    "U32": 4,
    "U16": 2,
    "U8": 1,
    "BOOL": 1,
}


@dataclass(frozen=True)
class TensorEntry:
    name: str
    dtype: str
    shape: tuple[int, ...]
    start: int  # absolute file offsets
    end: int


@dataclass
class SafetensorsHeader:
    path: Path
    metadata: dict[str, str] | None
    tensors: dict[str, TensorEntry]  # in file (offset) order


def read_header(path: str | Path) -> SafetensorsHeader:
    """The header of a safetensors file; VikhrError if it is malformed or the file is shorter than it says."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            raw_len = f.read(8)
            if len(raw_len) != 8:
                raise ValueError("file shorter than 8 bytes")
            (n,) = struct.unpack("<Q", raw_len)
            if n > MAX_HEADER_BYTES:
                raise ValueError(f"header length {n} is implausible")
            header = json.loads(f.read(n))
        if not isinstance(header, dict):
            raise ValueError("the header is not a JSON object")
        base = 8 + n
        metadata = header.pop("__metadata__", None)
        entries = []
        for name, info in header.items():
            begin, end = (int(offset) for offset in info["data_offsets"])
            shape = tuple(int(d) for d in info["shape"])
            dtype = str(info["dtype"])
            if min(shape, default=0) < 0 or not 0 <= begin <= end:
                raise ValueError(f"tensor {name}: shape {list(shape)}, offsets [{begin}, {end}]")
            # A damaged header would otherwise end in a reshape error, or in bytes copied on as a
            # tensor they cannot hold (sub-byte dtypes, which vikhr only copies, are not checked).
            size = math.prod(shape) * DTYPE_BYTES.get(dtype, 0)
            if dtype in DTYPE_BYTES and end - begin != size:
                raise ValueError(
                    f"tensor {name}: {dtype} {list(shape)} is {size} bytes but its offsets [{begin}, {end}] "
                    f"hold {end - begin}"
                )
            entries.append(TensorEntry(name, dtype, shape, base + begin, base + end))
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise VikhrError(f"{path} is not a readable safetensors file ({e})") from e
    entries.sort(key=lambda e: e.start)
    size = path.stat().st_size
    data_end = max((e.end for e in entries), default=base)
    if data_end > size:
        raise VikhrError(
            f"{path} is truncated: its header describes {data_end} bytes but the file has {size} "
            "(copy or download it again)"
        )
    return SafetensorsHeader(path, metadata, {e.name: e for e in entries})


def torch_dtype(name: str) -> Any:
    import torch

    table = {
        "F64": torch.float64,
        "F32": torch.float32,
        "F16": torch.float16,
        "BF16": torch.bfloat16,
        "I64": torch.int64,
        "I32": torch.int32,
        "I16": torch.int16,
        "I8": torch.int8,
        "U8": torch.uint8,
        "BOOL": torch.bool,
    }
    if name not in table:
        raise VikhrError(f"unsupported safetensors dtype {name}")
    return table[name]


def safetensors_dtype(dtype: Any) -> str:
    import torch

    table = {
        torch.float64: "F64",
        torch.float32: "F32",
        torch.float16: "F16",
        torch.bfloat16: "BF16",
        torch.int64: "I64",
        torch.int32: "I32",
        torch.int16: "I16",
        torch.int8: "I8",
        torch.uint8: "U8",
        torch.bool: "BOOL",
    }
    return table[dtype]


def load_tensor(entry: TensorEntry, path: Path) -> Any:
    """One tensor of the file as a torch tensor (it owns its memory)."""
    import torch

    with open(path, "rb") as f:
        f.seek(entry.start)
        data = bytearray(entry.end - entry.start)
        if f.readinto(data) != len(data):
            raise VikhrError(f"{path}: tensor {entry.name} is truncated (file shorter than its header says)")
    try:
        dtype = torch_dtype(entry.dtype)
    except VikhrError as e:
        raise VikhrError(f"{path}: tensor {entry.name}: {e}") from None
    flat = torch.frombuffer(data, dtype=dtype) if data else torch.empty(0)
    return flat.reshape(entry.shape)


def _write_header(fout: IO[bytes], header: dict[str, Any]) -> None:
    blob = json.dumps(header, separators=(",", ":")).encode("utf-8")
    blob += b" " * (-len(blob) % 8)  # keep the data buffer 8-byte aligned, as safetensors does
    fout.write(struct.pack("<Q", len(blob)))
    fout.write(blob)


def _write_tensor_data(fout: IO[bytes], tensor: Any) -> None:
    import torch

    t = tensor.contiguous()
    if t.numel():
        fout.write(memoryview(t.view(-1).view(torch.uint8).numpy()))


# Tensor name -> (safetensors dtype, shape) of a tensor `add` is given, or the entry of a source file's
# tensor that `copy` copies as it is; in file order.
Layout = dict[str, tuple[str, tuple[int, ...]] | TensorEntry]


class SafetensorsWriter:
    """Writes a safetensors file whose tensors' names, dtypes and shapes (`layout`, in file order)
    are known before their data: the header (which comes first) is written at once, then each
    tensor's data in layout order, as `add` is given it or as `copy` copies it from a source file.
    Each byte is written once and no tensor is held, so a conversion needs one tensor's memory, not
    the model's.

    A tensor out of order or of another dtype or shape is a RuntimeError (a bug of the caller);
    the file is then incomplete, so it must be written where a failure discards it (vikhr.atomic).
    """

    def __init__(self, path: Path, layout: Layout, metadata: dict[str, str] | None = None) -> None:
        header: dict[str, Any] = {} if metadata is None else {"__metadata__": metadata}
        self.path, self.size = path, 0
        pending: list[tuple[str, tuple[str, tuple[int, ...]] | TensorEntry]] = []
        for name, spec in layout.items():
            if isinstance(spec, TensorEntry):  # bytes copied as they are: any dtype, sub-byte ones too
                dtype, shape, n = spec.dtype, spec.shape, spec.end - spec.start
            else:
                dtype, shape = spec
                try:
                    torch_dtype(dtype)  # what `add` can be given (callers check their inputs' dtypes)
                except VikhrError:
                    raise RuntimeError(
                        f"{path}: tensor {name} has dtype {dtype}, which vikhr cannot write"
                    ) from None
                n = math.prod(shape) * DTYPE_BYTES[dtype]
                spec = (dtype, tuple(shape))
            header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [self.size, self.size + n]}
            self.size += n
            pending.append((name, spec))
        self._pending = iter(pending)
        self._file = open(path, "wb")  # noqa: SIM115 (closed by finish or on error by __exit__)
        try:
            _write_header(self._file, header)
        except BaseException:  # __exit__ is not reached when __init__ fails (a full disk)
            self._file.close()
            raise

    def add(self, name: str, tensor: Any) -> int:
        """Write the data of the next tensor of the layout, `name`; returns its size in bytes."""
        expected = next(self._pending, None)
        got = (name, (safetensors_dtype(tensor.dtype), tuple(tensor.shape)))
        if got != expected:
            want = "no more tensors" if expected is None else _described(*expected)
            raise RuntimeError(f"{self.path}: computed {_described(*got)}, but the header says {want}")
        _write_tensor_data(self._file, tensor)
        return tensor.numel() * tensor.element_size()

    def copy(
        self, entry: TensorEntry, src: IO[bytes], progress: Callable[[int], Any] = lambda n: None
    ) -> None:
        """Copy the next tensor of the layout, `entry`, from the open source file `src` it describes,
        one chunk at a time (`progress` is given each chunk's size)."""
        expected = next(self._pending, None)
        if expected != (entry.name, entry):
            want = "no more tensors" if expected is None else _described(*expected)
            raise RuntimeError(f"{self.path}: copying {entry.name}, but the header says {want}")
        src.seek(entry.start)
        left = entry.end - entry.start
        while left:
            block = src.read(min(COPY_CHUNK_BYTES, left))
            if not block:
                raise VikhrError(f"{src.name}: file ends early while copying tensor data")
            self._file.write(block)
            left -= len(block)
            progress(len(block))

    def finish(self) -> None:
        """Close the file, every tensor of the layout having been written."""
        left = next(self._pending, None)
        self._file.close()
        if left is not None:
            raise RuntimeError(f"{self.path}: tensor {left[0]} of the header was never computed")

    def __enter__(self) -> SafetensorsWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self._file.close()


def _described(name: str, spec: tuple[str, tuple[int, ...]] | TensorEntry) -> str:
    dtype, shape = (spec.dtype, spec.shape) if isinstance(spec, TensorEntry) else spec
    return f"{name} {dtype} {list(shape)}"


def write_computed(
    src: SafetensorsHeader,
    dst_path: Path,
    compute: Callable[[TensorEntry], Any],
    progress: Callable[[int], Any] = lambda n: None,
) -> int:
    """Write a file with the names, dtypes, shapes and metadata of `src`, each tensor's data being
    `compute(entry)`, called one tensor at a time in file order (so one result is in memory at once).

    Returns the data size in bytes (that of `src`).
    """
    for e in src.tensors.values():  # refused before the header is written, naming the input
        try:
            torch_dtype(e.dtype)
        except VikhrError as err:
            raise VikhrError(f"{src.path}: tensor {e.name}: {err}") from None
    layout = {e.name: (e.dtype, e.shape) for e in src.tensors.values()}
    with SafetensorsWriter(dst_path, layout, src.metadata) as out:
        for e in src.tensors.values():
            progress(out.add(e.name, compute(e)))
        out.finish()
    return out.size


INDEX = "model.safetensors.index.json"
# transformers' pickled weights: one file, or shards listed by pytorch_model.bin.index.json.
PICKLED_WEIGHTS = ("pytorch_model*.bin", "pytorch_model.bin.index.json")


def no_safetensors_weights(model_dir: Path) -> VikhrError:
    """The error for an HF model directory without safetensors weights. Pickled weights are never
    loaded (unpickling a file can run code in it): the line gives the transformers command that
    writes safetensors beside them, for the user to run on weights they trust."""
    pickled = sorted({p.name for pattern in PICKLED_WEIGHTS for p in model_dir.glob(pattern)})
    shards = sorted(p.name for p in model_dir.glob("model-*-of-*.safetensors"))
    if shards:  # a download that left the index out (`--include "*.safetensors"`)
        shown = shards[0] + (f" and {len(shards) - 1} more" if len(shards) > 1 else "")
        return VikhrError(
            f"{model_dir} holds the shards {shown} but not {INDEX}, which says which tensor each holds: "
            "download it from the model's repository too"
        )
    if not pickled and (model_dir / MISTRAL_NATIVE_WEIGHTS).is_file():
        return VikhrError(f"{model_dir} has no model.safetensors or {INDEX}: {MISTRAL_NATIVE_FORMAT}")
    if not pickled:
        return VikhrError(
            f"{model_dir} has no model.safetensors or {INDEX} (give an HF model directory with "
            "safetensors weights)"
        )
    shown = pickled[0] + (f" and {len(pickled) - 1} more" if len(pickled) > 1 else "")
    where = json.dumps(str(model_dir.absolute()), ensure_ascii=False)  # a Python string literal
    load_and_save = f"M.from_pretrained({where}).save_pretrained({where})"
    code = f"from transformers import {_model_class(model_dir)} as M; {load_and_save}"
    return VikhrError(
        f"{model_dir} holds its weights pickled ({shown}), and vikhr reads safetensors only: write "
        f"safetensors beside them with python -c {shlex.quote(code)} (it unpickles them: run it only "
        "on weights you trust)"
    )


def _model_class(model_dir: Path) -> str:
    """The transformers class config.json names (a reward model's head is not a causal LM's), else
    AutoModelForCausalLM."""
    try:
        name = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))["architectures"][0]
    except (OSError, ValueError, LookupError, TypeError):
        return "AutoModelForCausalLM"
    return name if isinstance(name, str) and name.isidentifier() else "AutoModelForCausalLM"


def checkpoint_headers(model_dir: Path) -> list[SafetensorsHeader]:
    """The headers of an HF checkpoint's safetensors files (the shards of its index, or model.safetensors).

    Every shard must exist and be complete, and each tensor must be in the shard the index names.
    """
    index = model_dir / INDEX
    if not index.is_file():
        if not (model_dir / "model.safetensors").is_file():
            raise no_safetensors_weights(model_dir)
        return [read_header(model_dir / "model.safetensors")]
    if (model_dir / "model.safetensors").is_file():
        # transformers loads model.safetensors and ignores the index: which weights are meant?
        raise VikhrError(
            f"{model_dir} holds both model.safetensors and {INDEX} (transformers would load the former, "
            "vikhr the shards): remove the one that is left over"
        )
    try:
        weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
            raise ValueError("weight_map is not a mapping of tensor names to file names")
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise VikhrError(f"{index} is not a valid safetensors index ({e}); fix or re-export it") from e
    headers = {}
    for shard in sorted(set(weight_map.values())):
        if not (model_dir / shard).is_file():
            raise VikhrError(f"shard {shard} listed in the index of {model_dir} is missing")
        headers[shard] = read_header(model_dir / shard)
    for name, shard in weight_map.items():
        if name not in headers[shard].tensors:
            raise VikhrError(
                f"{model_dir / shard}: tensor {name}, listed there by {INDEX}, is not in the file"
            )
    return list(headers.values())
