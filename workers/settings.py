"""What a worker's scorer is built from, as plain data (no torch): checks before any model
loads read it too."""

from __future__ import annotations

from dataclasses import dataclass

from workers.data import DataSpec, Split, recall_copy_len


@dataclass(frozen=True)
class ScorerSettings:
    """Everything a worker needs to build its scorer; plain data, cheap to ship to workers.

    ``device``: ``auto`` (CUDA if the worker sees it, else the CPU) or a torch device.
    """

    model: str
    dtype: str = "float32"
    device: str = "auto"
    source: str = "builtin:pydoc"
    calibration_lens: tuple[int, ...] = (256, 512)
    calibration_per_length: int = 4
    calibration_recall: float = 0.0  # share of span-recall prompts (workers.data)
    heldout_lens: tuple[int, ...] = (512,)
    heldout_per_length: int = 4
    window: int = 32
    batch_size: int = 4
    teacher_top_k: int | None = None
    threads: int | None = None

    def data_spec(self, split: Split) -> DataSpec:
        """Which sequences make up ``split``."""
        if split == "calibration":
            return DataSpec(
                self.source,
                split,
                self.calibration_lens,
                self.calibration_per_length,
                recall_share=self.calibration_recall,
                recall_len=recall_copy_len(self.window) if self.calibration_recall else 0,
            )
        return DataSpec(self.source, split, self.heldout_lens, self.heldout_per_length)
