"""The shared temp-file-then-rename writer behind every file the library writes."""
from __future__ import annotations

import stat
from pathlib import Path

import pytest

from quality_lora._atomic import atomic_write, atomic_write_text


def test_writes_readable_file_and_replaces(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "out.json"
    atomic_write_text(target, "one")
    atomic_write(target, lambda tmp: Path(tmp).write_text("two"), fsync=True)
    assert target.read_text() == "two"
    assert stat.S_IMODE(target.stat().st_mode) == 0o644
    assert [p.name for p in target.parent.iterdir()] == ["out.json"]


def test_failure_keeps_previous_and_leaves_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "out.bin"
    target.write_bytes(b"good")

    def half_then_crash(tmp: str) -> None:
        Path(tmp).write_bytes(b"ha")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(target, half_then_crash)
    assert target.read_bytes() == b"good"
    assert [p.name for p in tmp_path.iterdir()] == ["out.bin"]
