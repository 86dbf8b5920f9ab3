"""Run configuration: a YAML file validated by pydantic, with command-line overrides.

The defaults are the embedded demo (``configs/demo.yaml`` states them explicitly, and a test
keeps the two equal).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator


class ConfigError(ValueError):
    """An invalid config file or override; the message is one line for the user."""


class RunConfig(BaseModel):
    """Everything that defines a search run. Unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    run_name: str | None = Field(None, description="unique name; defaults to run-<id>")
    model: str = Field("smollm2-135m", description="alias, .gguf file, directory, hub id or random:<preset>")
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    calibration: str = Field("builtin:pydoc", description="builtin:pydoc, a .txt or a .jsonl file")
    seq_lens: list[int] = Field([256, 512], min_length=1, description="calibration sequence lengths")
    sequences_per_length: int = Field(2, ge=1)
    heldout_seq_lens: list[int] = Field([512], min_length=1)
    heldout_sequences_per_length: int = Field(4, ge=1)
    window: int = Field(32, ge=1, description="scored positions at the end of each sequence")
    batch_size: int = Field(4, ge=1)
    target_sparsity: float = Field(0.3, ge=0.0, lt=1.0)
    max_block_sparsity: float = Field(0.8, gt=0.0, lt=1.0)
    population: int = Field(16, ge=2)
    generations: int = Field(10, ge=1)
    crossover_prob: float = Field(0.7, ge=0.0, le=1.0)
    mutation_prob: float = Field(0.4, ge=0.0, le=1.0)
    mutation_sigma: float = Field(0.06, gt=0.0)
    elite: int = Field(2, ge=0)
    tournament: int = Field(3, ge=2)
    seed: int = 0
    pool: Literal["local", "ray"] = "ray"
    workers: int = Field(2, ge=1)
    cpus_per_worker: float = Field(1.0, gt=0.0)
    gpus_per_worker: float = Field(0.0, ge=0.0)
    ray_address: str | None = None

    @model_validator(mode="after")
    def _consistent(self) -> "RunConfig":
        if self.target_sparsity > self.max_block_sparsity:
            raise ValueError("target_sparsity cannot exceed max_block_sparsity")
        if min(self.seq_lens + self.heldout_seq_lens) < 2:
            raise ValueError("sequence lengths must be at least 2")
        if self.window > min(self.seq_lens + self.heldout_seq_lens):
            raise ValueError("window must not exceed the shortest sequence length")
        if self.elite >= self.population:
            raise ValueError("elite must be smaller than population")
        return self


def _one_line(error: ValidationError) -> str:
    first = error.errors()[0]
    where = ".".join(str(part) for part in first["loc"])
    return f"{where}: {first['msg']}" if where else first["msg"]


def build_config(path: str | Path | None = None, **overrides: Any) -> RunConfig:
    """Load ``path`` (if given), apply the non-None ``overrides``, validate.

    Raises :class:`ConfigError` with a one-line message on any problem.
    """
    data: dict[str, Any] = {}
    if path is not None:
        try:
            loaded = yaml.safe_load(Path(path).read_text())
        except FileNotFoundError:
            raise ConfigError(f"config file not found: {path}") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"{path}: expected a mapping of config fields")
        data.update(loaded or {})
    data.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return RunConfig(**data)
    except ValidationError as exc:
        raise ConfigError(f"{path or 'config'}: {_one_line(exc)}") from None
