"""A guard for megatron-core's dataset index cache (`<checkpoint.dir>/data-cache` or `data.cache_dir`).

megatron-core stores its document/sample/shuffle indices as `.npy` files and loads them back with
`numpy.load(..., allow_pickle=True)`. A pickled `.npy` placed there (a checkpoint directory someone
sent, a shared cache) would run code when a run resumes. Before megatron sees the cache, every
`.npy` in it must be a plain numeric array whose size matches its header; anything else stops the
run with one line naming the file.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from vikhr.errors import VikhrError

_READERS = {
    (1, 0): np.lib.format.read_array_header_1_0,
    (2, 0): np.lib.format.read_array_header_2_0,
}


def check_npy_file(path: Path) -> None:
    """Raise VikhrError unless `path` is a complete `.npy` of a numeric dtype (no pickled objects)."""
    fix = f"delete {path} (megatron-core rebuilds its index cache) or point data.cache_dir elsewhere"
    try:
        with path.open("rb") as f:
            version = np.lib.format.read_magic(f)
            reader = _READERS.get(version)
            if reader is None:
                raise ValueError(f"unsupported .npy version {version}")
            # The header is a Python literal parsed with ast.literal_eval: no code runs here.
            shape, _fortran, dtype = reader(f, max_header_size=10_000)
            data_offset = f.tell()
    except (OSError, ValueError, SyntaxError) as e:
        raise VikhrError(f"data cache file {path} is not a readable .npy ({e}); {fix}") from e
    if dtype.hasobject or dtype.kind not in "biuf":
        raise VikhrError(
            f"data cache file {path} holds {dtype} data, not plain numbers (loading it could run code); {fix}"
        )
    expected = data_offset + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    actual = path.stat().st_size
    if actual != expected:
        raise VikhrError(f"data cache file {path} is {actual} bytes, its header says {expected}: {fix}")


def check_index_cache(cache_dir: str | Path) -> int:
    """Check every `.npy` under `cache_dir` (absent: nothing to check); returns how many were checked."""
    root = Path(cache_dir)
    if not root.is_dir():
        return 0
    files = sorted(root.rglob("*.npy"))
    for path in files:
        check_npy_file(path)
    return len(files)
