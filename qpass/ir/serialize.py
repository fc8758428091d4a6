"""Saving a graph as `.qir` text plus an `.npz` of the arrays it references, and loading it back."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Optional

import numpy as np

from qpass.errors import QpassError
from qpass.ir.graph import Graph
from qpass.ir.text import parse_graph, print_with_blobs


def constants_path(path) -> Path:
    return Path(path).with_suffix(".npz")


def atomic_write(path, data: bytes) -> None:
    """Write a file so that readers never see it half-written."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)                  # the mode a plain open() would have given
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save(graph: Graph, path, with_constants: bool = True) -> None:
    """Write `path` (.qir) and, when it references arrays, `path` with suffix .npz."""
    import io
    text, blobs = print_with_blobs(graph)
    path = Path(path)
    if with_constants and blobs:
        buffer = io.BytesIO()
        np.savez(buffer, **blobs)
        atomic_write(constants_path(path), buffer.getvalue())
    atomic_write(path, text.encode())


def load(path, constants: Optional[str] = None) -> Graph:
    """Read a .qir file; its .npz beside it (or `constants`) supplies referenced arrays if present."""
    path = Path(path)
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise QpassError(f"cannot read IR file {path}: {e}. Give the path of a .qir text file.") from None
    npz = Path(constants) if constants else constants_path(path)
    blobs = None
    if npz.exists():
        try:
            with np.load(npz) as archive:
                blobs = {k: archive[k] for k in archive.files}
        except (OSError, ValueError) as e:
            raise QpassError(f"cannot read the constants file {npz}: {e}. Re-save the graph, or delete the "
                             ".npz to load the structure alone.") from None
    return parse_graph(text, blobs, source=str(path))
