"""``quality-lora score``: files and folders, alpha maps, fitting, JSON output, errors."""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from quality_lora.quality import AlphaMap
from quality_lora.quality.cli import main


def _write_images(folder: Path, blur_px: int | None, n: int = 3) -> list[Path]:
    """Blocky RGB images with hard edges; downsampled to blur_px and back when given."""
    folder.mkdir(parents=True, exist_ok=True)
    gen = np.random.default_rng(len(folder.name))
    paths = []
    for i in range(n):
        img = Image.fromarray((gen.random((12, 12, 3)) * 255).astype(np.uint8)).resize((120, 120), Image.NEAREST)
        if blur_px:
            img = img.resize((blur_px, blur_px), Image.BICUBIC).resize((120, 120), Image.BICUBIC)
        paths.append(folder / f"img{i}.png")
        img.save(paths[-1])
    return paths


def _rows(out: str) -> list[dict]:
    return [json.loads(line) for line in out.strip().splitlines()]


def test_scores_files_and_folders_with_threshold(tmp_path, capsys) -> None:
    sharp = _write_images(tmp_path / "hq", None)
    _write_images(tmp_path / "lq", 16)
    assert main([str(tmp_path / "lq"), str(sharp[0]), "--threshold", "1.0", "--slope", "0.5", "--json"]) == 0
    rows = _rows(capsys.readouterr().out)
    assert [Path(r["path"]).name for r in rows] == ["img0.png", "img1.png", "img2.png", "img0.png"]
    assert all(r["score"] > 0 for r in rows)
    assert rows[-1]["score"] > max(r["score"] for r in rows[:3])
    expected = AlphaMap(1.0, slope=0.5)([r["score"] for r in rows]).tolist()
    assert [r["alpha"] for r in rows] == pytest.approx(expected)


def test_fit_prints_map_and_separates(tmp_path, capsys) -> None:
    _write_images(tmp_path / "hq", None)
    _write_images(tmp_path / "lq", 16)
    assert main([str(tmp_path), "--fit", str(tmp_path / "hq"), str(tmp_path / "lq"), "--json"]) == 0
    captured = capsys.readouterr()
    fitted = json.loads(captured.err.strip().splitlines()[-1])
    assert fitted["scorer"]["name"] == "sharpness"
    amap = AlphaMap.from_dict(fitted["alpha_map"])
    rows = _rows(captured.out)
    hq = [r["alpha"] for r in rows if "/hq/" in r["path"].replace("\\", "/")]
    lq = [r["alpha"] for r in rows if "/lq/" in r["path"].replace("\\", "/")]
    assert min(hq) > 0.9 and max(lq) < 0.1
    # the printed map, saved to a file, gives the same alphas
    (tmp_path / "map.json").write_text(json.dumps(fitted))
    assert main([str(tmp_path / "hq"), "--alpha-map", str(tmp_path / "map.json"), "--json"]) == 0
    assert [r["alpha"] for r in _rows(capsys.readouterr().out)] == pytest.approx(hq)
    assert amap.higher_is_better


def test_table_output_without_map_and_legacy(tmp_path, capsys) -> None:
    _write_images(tmp_path / "hq", None, n=1)
    assert main([str(tmp_path / "hq"), "--petalface-threshold", "2.0", "--legacy", "--size", "0"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].split() == ["score", "alpha", "path"] and len(lines) == 2
    score, alpha = float(lines[1].split()[0]), float(lines[1].split()[1])
    assert alpha == pytest.approx(0.5 + score - 2.0, abs=1e-3)
    assert main([str(tmp_path / "hq")]) == 0
    assert capsys.readouterr().out.strip().splitlines()[1].split()[1] == "-"


@pytest.mark.parametrize(
    "args, match",
    [
        (["{tmp}/nope.png"], "nope.png does not exist"),
        (["{tmp}/broken.png"], "cannot read image .*broken.png"),
        (["{tmp}/empty"], "no images .* under folder .*empty"),
        (["{tmp}/hq", "--scorer", "magic"], "unknown scorer 'magic'"),
        (["{tmp}/hq", "--weights", "w.pth"], "--weights is only for pyiqa"),
        (["{tmp}/hq", "--size", "8"], "--size must be"),
        (["{tmp}/hq", "--alpha-map", "{tmp}/bad.json"], "bad.json: AlphaMap.from_dict: missing key 'threshold'"),
    ],
)
def test_errors_name_the_culprit(tmp_path, capsys, args, match) -> None:
    _write_images(tmp_path / "hq", None, n=1)
    (tmp_path / "broken.png").write_bytes(b"not an image")
    (tmp_path / "empty").mkdir()
    (tmp_path / "bad.json").write_text(json.dumps({"slope": 1.0}))
    assert main([a.replace("{tmp}", str(tmp_path)) for a in args]) == 2
    assert re.search(match, capsys.readouterr().err)


def test_help(capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0 and "quality-lora score" in capsys.readouterr().out
