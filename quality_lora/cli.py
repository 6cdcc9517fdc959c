"""The ``quality-lora`` command: a thin dispatcher to one module per subcommand."""
from __future__ import annotations

import importlib
import sys

# Each module exposes ``main(argv) -> int``; imported lazily so ``--help`` stays fast and an
# optional extra missing for one subcommand does not break the others.
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("quality_lora.demo", "offline SynthFaces demo: pretrain, adapt (full/LoRA/PETALface), evaluate"),
    "train": ("quality_lora.training", "train adapters (or full / LoRA baselines) from a YAML config"),
    "eval": ("quality_lora.evaluation.cli", "evaluate a model on verification / TinyFace / IJB protocols"),
    "score": ("quality_lora.quality.cli", "score images with a quality scorer and show the alpha they map to"),
    "convert": ("quality_lora.models.convert", "convert an original PETALface model.pt to adapter files"),
    "data": ("quality_lora.data.cli", "dataset tools (pack an image folder into RecordIO)"),
    "bench": ("quality_lora._bench", "speed benchmarks (layer, model, data, identification)"),
}


def _usage() -> str:
    width = max(map(len, SUBCOMMANDS))
    lines = ["usage: quality-lora <command> [options]", "", "commands:"]
    lines += [f"  {name.ljust(width)}  {text}" for name, (_, text) in SUBCOMMANDS.items()]
    lines += ["", "Run 'quality-lora <command> --help' for a command's options."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0
    if argv[0] in ("-V", "--version"):
        from quality_lora import __version__

        print(__version__)
        return 0
    name, rest = argv[0], argv[1:]
    if name not in SUBCOMMANDS:
        print(f"quality-lora: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(SUBCOMMANDS[name][0])
    return int(module.main(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
