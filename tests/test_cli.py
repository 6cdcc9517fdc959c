"""The `quality-lora` dispatcher: every subcommand answers --help."""
from __future__ import annotations

import pytest

from quality_lora import cli


@pytest.mark.parametrize("name", sorted(cli.SUBCOMMANDS))
def test_every_subcommand_has_help(name: str, capsys) -> None:
    try:
        code = cli.main([name, "--help"])
    except SystemExit as exit_:  # argparse exits 0 after printing help
        code = exit_.code
    assert code == 0
    assert "usage" in capsys.readouterr().out.lower()


def test_top_level_help_and_unknown_command(capsys) -> None:
    assert cli.main([]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in cli.SUBCOMMANDS)
    assert cli.main(["frobnicate"]) == 2
    assert "unknown command" in capsys.readouterr().err


def test_bench_layer_prints_ratios(capsys) -> None:
    assert cli.main(["bench", "layer", "--rounds", "1", "--shape", "vit-qkv", "--r", "4", "--rows-divisor", "16"]) == 0
    out = capsys.readouterr().out
    assert "gated / literal" in out and "x)" in out
