"""`quality-lora train`, TrainConfig parsing, and every recipe in examples/ for a few steps on a tiny .rec."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import yaml

from quality_lora.data.recordio import RecordIOWriter
from quality_lora.training import TrainConfig, load_checkpoint
from quality_lora.training.cli import main, run

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
RECIPES = sorted(EXAMPLES.glob("*.yaml"))


def make_rec(folder: Path, n: int = 16, classes: int = 4, size: int = 40) -> Path:
    """A tiny insightface-style train.rec: JPEG faces-to-be, labels 0..classes-1."""
    from PIL import Image

    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    with RecordIOWriter(folder / "train.rec", folder / "train.idx") as writer:
        for i in range(n):
            label = i % classes
            base = np.full((size, size, 3), 40 + 50 * label, np.uint8)
            img = np.clip(base + rng.integers(0, 60, (size, size, 3)), 0, 255).astype(np.uint8)
            buf = io.BytesIO()
            Image.fromarray(img).save(buf, format="JPEG", quality=90)
            writer.write_image(i, float(label), buf.getvalue())
    return folder / "train.rec"


@pytest.fixture(scope="module")
def rec(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_rec(tmp_path_factory.mktemp("data"))


def ci_overrides(recipe: Path, rec: Path, out: Path) -> list[str]:
    """Shrink a paper recipe to CI size: tiny Swin, 2 steps, batch 2, the tiny .rec, no download."""
    data = yaml.safe_load(recipe.read_text())
    sets = ["model_size=tiny", "steps=2", "warmup_steps=1", "batch_size=2", f"train_data={rec}",
            "pretrained=null", f"output={out}", "num_workers=0", "progress=false",
            "amp=false"]  # CPU bf16 autocast is slow on most CPUs; tests/test_training.py covers amp
    if data.get("num_classes", 0) > 10_000:  # 200k-600k centres do not belong in a unit test
        sets.append("num_classes=8")
    if data.get("scorer") in ("brisque", "cnniqa"):  # pyiqa would download its weights
        sets.append("scorer=sharpness")
    return sets


def test_recipes_exist() -> None:
    names = {p.stem for p in RECIPES}
    assert {"pretrain_webface4m_arcface", "pretrain_webface12m_arcface", "tinyface_full", "tinyface_lora",
            "tinyface_petalface_brisque", "tinyface_petalface_cnniqa", "briar_petalface_sharpness"} <= names


@pytest.mark.parametrize("recipe", RECIPES, ids=[p.stem for p in RECIPES])
def test_recipe_runs(recipe: Path, rec: Path, tmp_path: Path) -> None:
    config = TrainConfig.from_yaml(recipe)  # the recipe itself is a valid config
    history = run(recipe, ci_overrides(recipe, rec, tmp_path))
    assert len(history) == 2 and all(np.isfinite(history))
    assert load_checkpoint(tmp_path / "checkpoint.pt")["step"] == 2
    if config.method == "full":
        assert (tmp_path / "model.safetensors").is_file()
    else:
        assert (tmp_path / "adapters" / "adapter_config.json").is_file()


def test_cli_resume_and_errors(rec: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    recipe = EXAMPLES / "tinyface_petalface_sharpness.yaml"
    sets = [f"--set={s}" for s in ci_overrides(recipe, rec, tmp_path)]
    sets = [s for s in sets if "steps=2" not in s or "warmup" in s] + ["--set=steps=3"]
    assert main([str(recipe), *sets, "--stop-at", "1"]) == 0
    assert main([str(recipe), *sets, "--resume"]) == 0
    assert load_checkpoint(tmp_path / "checkpoint.pt")["step"] == 3
    capsys.readouterr()
    assert main([str(recipe), *sets, "--set=lr=0.1", "--resume"]) == 2
    assert "another config (lr: 0.0005 -> 0.1)" in capsys.readouterr().err
    assert main([str(recipe), *sets, "--set=learning_rate=0.1"]) == 2
    assert "unknown config key(s) ['learning_rate']" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0


def test_config_errors(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("method: petalface\nlrate: 0.1\nbatch: 3\n")
    with pytest.raises(ValueError, match=r"bad.yaml: unknown config key\(s\) \['batch', 'lrate'\]"):
        TrainConfig.from_yaml(bad)
    bad.write_text("lr: fast\n")
    with pytest.raises(ValueError, match="config key 'lr' expects float"):
        TrainConfig.from_yaml(bad)
    bad.write_text("method: adapters\n")
    with pytest.raises(ValueError, match="'method': 'adapters' is not one of"):
        TrainConfig.from_yaml(bad)
    bad.write_text("- a\n- b\n")
    with pytest.raises(ValueError, match="expected a mapping"):
        TrainConfig.from_yaml(bad)
    with pytest.raises(ValueError, match="expected key=value"):
        TrainConfig.from_yaml(EXAMPLES / "tinyface_lora.yaml", ["steps"])
    with pytest.raises(FileNotFoundError):
        TrainConfig.from_yaml(tmp_path / "missing.yaml")
    config = TrainConfig.from_yaml(EXAMPLES / "tinyface_lora.yaml", ["lr=1", "margins=[1.0, 0.3, 0.2]"])
    assert config.lr == 1.0 and isinstance(config.lr, float) and config.margins == [1.0, 0.3, 0.2]
