"""The README's quickstart snippet and the main-job script run as printed."""
from __future__ import annotations

import re
import subprocess
import sys

from conftest import REPO


def test_readme_quickstart_snippet_runs(tmp_path, monkeypatch) -> None:
    text = (REPO / "README.md").read_text()
    block = re.search(r"## Quickstart\n```python\n(.*?)```", text, re.S)
    assert block, "README has no Quickstart python block"
    code = block.group(1)
    assert len(code.strip().splitlines()) <= 20
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
    assert (tmp_path / "my_adapters" / "adapter_model.safetensors").is_file()
    assert namespace["logits"].shape == (8, 10)


def test_readme_names_main_job_and_test_command() -> None:
    text = (REPO / "README.md").read_text()
    assert "python -m pytest -q tests" in text
    assert "quality-lora demo --out" in text and "examples/quickstart.py" in text
    assert "PETALface" in text and "WACV" in text and (REPO / "LICENSE").is_file()


def test_quickstart_example_runs() -> None:
    result = subprocess.run([sys.executable, str(REPO / "examples" / "quickstart.py")], capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "outputs match exactly" in result.stdout and "trainable" in result.stdout


def test_core_imports_without_optional_extras() -> None:
    code = (
        "import sys\n"
        "for name in ('peft', 'pyiqa', 'transformers', 'sklearn', 'matplotlib'): sys.modules[name] = None\n"
        "import quality_lora as ql, quality_lora.quality, quality_lora.models, quality_lora.data\n"
        "import torch\n"
        "m = ql.inject_adapters(torch.nn.Sequential(torch.nn.Linear(4, 4)), ['0'])\n"
        "print(m(torch.randn(2, 4), alpha=torch.ones(2)).shape)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
