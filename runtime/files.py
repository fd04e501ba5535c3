"""Writing files and folders so that a kill at any moment leaves the old version or the new one.

Files get the permissions open() gives a new file under the process umask (0644 under the usual
022): tempfile.mkstemp and safetensors make them 0600, unreadable to a service running as another
user (the container's).
"""
from __future__ import annotations

import hashlib
import os
import secrets
import shutil
from pathlib import Path


def atomic_write(path: Path, write) -> None:
    """write(tmp_path) then rename over `path`: readers see the old file or the new one, never half of one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{secrets.token_hex(4)}.tmp"
    try:
        open(tmp, "xb").close()
        mode = tmp.stat().st_mode & 0o777  # what the umask gives a new file
        write(tmp)
        os.chmod(tmp, mode)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def replace_folder(source: Path, target: Path) -> None:
    """Copy `source` over `target`: the copy is made beside it first, then swapped in by two renames."""
    source, target = Path(source), Path(target)
    staged = target.parent / f".{target.name}.{secrets.token_hex(4)}.new"
    retired = target.parent / f".{target.name}.{secrets.token_hex(4)}.old"
    shutil.copytree(source, staged)
    if target.exists():
        os.replace(target, retired)
    os.replace(staged, target)
    shutil.rmtree(retired, ignore_errors=True)


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
