"""Secret files in the data dir's ``keys/``: the dev signing key, the share secret. Made once
by whichever process comes first, whole or not at all, readable by the owner only."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def keys_dir(data_dir: Path) -> Path:
    """``data_dir/keys``, made with mode 0700 if absent."""
    path = data_dir / "keys"
    if not path.is_dir():
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(path, 0o700)  # mkdir's mode went through the umask
    return path


def create_once(path: Path, value: bytes) -> bytes:
    """Write ``value`` to ``path`` (mode 0600) unless another process did first; returns
    what the file holds."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")  # mode 0600
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(value)
            f.flush()
            os.fsync(f.fileno())
        # link() fails if the name exists: the first writer wins, whole, never half-written.
        os.link(tmp, path)
    except FileExistsError:
        return path.read_bytes()
    finally:
        os.unlink(tmp)
    return value
