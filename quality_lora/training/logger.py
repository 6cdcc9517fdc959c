"""Metric logging for the trainer: a CSV file or TensorBoard, plus a tqdm progress bar."""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Any


class MetricLogger:
    """Writes ``{name: value}`` rows per step to ``output/metrics.csv`` or TensorBoard.

    CSV columns grow as new metric names appear (the file is rewritten then, which only happens
    for the first evaluation results). Only rank 0 should create one.
    """

    def __init__(self, output: str | Path | None, kind: str = "csv") -> None:
        self.kind = kind if output is not None else "none"
        self.rows: list[dict[str, Any]] = []
        self._writer = None
        if self.kind == "csv":
            self.path = Path(output) / "metrics.csv"  # type: ignore[arg-type]
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._columns: list[str] = []
            if self.path.exists():  # a resumed run appends to the same file
                with open(self.path, newline="") as f:
                    self._columns = next(csv.reader(f), [])
        elif self.kind == "tensorboard":
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as e:
                raise ImportError("log: tensorboard needs the 'tensorboard' package (pip install tensorboard)") from e
            self._writer = SummaryWriter(log_dir=str(Path(output) / "tensorboard"))  # type: ignore[arg-type]

    def log(self, step: int, metrics: dict[str, float]) -> None:
        row = {"step": step, **metrics}
        self.rows.append(row)
        if self.kind == "csv":
            new = [k for k in row if k not in self._columns]
            if new or not self.path.exists():
                self._columns += new
                self._rewrite()
            else:
                with open(self.path, "a", newline="") as f:
                    csv.DictWriter(f, self._columns).writerow(row)
        elif self._writer is not None:
            for name, value in metrics.items():
                self._writer.add_scalar(name, value, step)

    def _rewrite(self) -> None:
        old: list[dict[str, str]] = []
        if self.path.exists():
            with open(self.path, newline="") as f:
                old = list(csv.DictReader(f))
        with open(self.path, "w", newline="") as f:
            writer = csv.DictWriter(f, self._columns)
            writer.writeheader()
            for row in old:
                writer.writerow({k: row.get(k, "") for k in self._columns})
            writer.writerow(self.rows[-1])

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()


def progress_bar(total: int, initial: int, enabled: bool) -> Any:
    """A tqdm bar over optimizer steps, or None."""
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True, leave=True)
