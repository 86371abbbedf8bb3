"""Files written whole or not at all, and the one safetensors reader and writer.

Every result topoland stores goes through :func:`atomic_write_bytes` (a temporary name in the
same folder, fsync, then ``os.replace``), so a crash leaves the old file or the new one, never a
half-written one. Tensors are stored as safetensors (no pickle) with a header in one fixed order,
so equal tensors and metadata always give equal bytes.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import struct
from collections.abc import Iterator
from pathlib import Path

import torch

from topoland.errors import StoreError


def _tmp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_path(path) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` (``.<name>.tmp-<pid>``) for a writer that needs a
    file name (a PDF, Parquet, HDF5 or SQLite writer) or a folder it fills; when the block ends
    without error it is renamed into place (replacing what was there), otherwise removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_name(path)
    _remove(tmp)
    try:
        yield tmp
        if path.is_dir() and tmp.is_dir():
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            _remove(tmp)


def atomic_write_bytes(path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary name and an atomic rename."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())


def atomic_write_text(path, text: str) -> None:
    """:func:`atomic_write_bytes` of ``text`` in UTF-8."""
    atomic_write_bytes(path, text.encode())


def atomic_copy(src, dst) -> None:
    """Copy the file ``src`` to ``dst`` through a temporary name and an atomic rename."""
    with atomic_path(dst) as tmp:
        shutil.copyfile(src, tmp)


def safetensors_bytes(tensors: dict, metadata: dict[str, str] | None = None) -> bytes:
    """A safetensors file's bytes with its JSON header in one fixed order (keys sorted, the
    metadata's included), so that equal tensors and metadata always give equal bytes.

    The safetensors writer orders the metadata keys by a per-process hash; the header is
    re-serialized sorted (tensor offsets are explicit, so the data part is unchanged) and padded
    with spaces to a multiple of 8 bytes, as the writer does.
    """
    from safetensors.torch import save as st_save
    blob = st_save({k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}, metadata=metadata)
    n = int.from_bytes(blob[:8], "little")
    header = json.dumps(json.loads(blob[8:8 + n]), sort_keys=True, separators=(",", ":"),
                        ensure_ascii=False).encode()
    header += b" " * (-len(header) % 8)
    return len(header).to_bytes(8, "little") + header + blob[8 + n:]


def save_tensors(path, tensors: dict, metadata: dict | None = None, *, sorted_header: bool = True) -> None:
    """Save ``tensors`` (name -> tensor, any device) as safetensors, atomically, in a fixed byte
    order (:func:`safetensors_bytes`).

    ``metadata``: name -> a string (stored as it is) or any JSON value (stored JSON-encoded, keys
    sorted); read it back with :func:`load_tensors` (strings) and ``json.loads`` where encoded.
    ``sorted_header=False`` keeps the safetensors writer's own header (the sample stage's
    ``arrays.safetensors`` has always been written so; without metadata it is deterministic too)."""
    meta = {k: v if isinstance(v, str) else json.dumps(v, sort_keys=True) for k, v in (metadata or {}).items()}
    # cloned: tensors sharing storage (tied weights) are refused by the writer
    flat = {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}
    if sorted_header:
        blob = safetensors_bytes(flat, meta)
    else:
        from safetensors.torch import save as st_save
        blob = st_save(flat, metadata=meta or None)
    atomic_write_bytes(path, blob)


def sniff_format(blob: bytes) -> str:
    """Classify a file by its first bytes: safetensors, torch-zip, pickle or other."""
    if blob[:4] == b"PK\x03\x04":
        return "torch-zip"
    if len(blob) >= 9 and blob[8:9] == b"{":
        return "safetensors"  # 8-byte header length, then the JSON header
    if blob[:1] == b"\x80" and len(blob) > 1 and blob[1] in range(2, 6):
        return "pickle"  # pickle protocol 2-5 (also legacy torch.save files)
    if blob[:1] in (b"(", b"]", b"}", b"c"):
        return "pickle"  # protocol 0/1 opcodes
    return "other"


def load_tensors(path, *, what: str = "tensor file", error: type[Exception] = StoreError
                 ) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Read a safetensors file: ``(tensors on the CPU, metadata strings)``.

    A missing, truncated, corrupted or non-safetensors file raises ``error`` with a message
    naming ``what`` and the path; a pickle is refused without being opened by an unpickler."""
    from safetensors import SafetensorError
    from safetensors.torch import load as st_load_bytes
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise error(f"{what} {path} does not exist")
    with open(path, "rb") as f:
        blob = f.read()
    kind = sniff_format(blob)
    if kind == "pickle":
        raise error(f"{path} is a pickle file; topoland never unpickles (it can run arbitrary code): "
                    "convert it to safetensors")
    if kind == "torch-zip":
        raise error(f"{path} is a PyTorch zip file, not safetensors")
    if len(blob) < 8:
        raise error(f"{what} {path} is truncated ({len(blob)} bytes)")
    (n_header,) = struct.unpack("<Q", blob[:8])
    if 8 + n_header > len(blob):
        raise error(f"{what} {path} is truncated or not a safetensors file "
                    f"(header of {n_header} bytes, file of {len(blob)})")
    try:
        header = json.loads(blob[8:8 + n_header])
        tensors = st_load_bytes(blob)
    except (SafetensorError, ValueError, UnicodeDecodeError, RuntimeError) as exc:
        raise error(f"{what} {path} is truncated or corrupted: {exc}") from exc
    return tensors, dict(header.get("__metadata__") or {})
