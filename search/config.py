"""Run configuration: a YAML file validated by pydantic, with command-line overrides.

The defaults are the embedded demo (``configs/demo.yaml`` states them explicitly, and a test
keeps the two equal).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal, Mapping

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from search.errors import ConfigError as ConfigError  # re-exported: the config's error
from search.names import check_run_name

DEFAULT_ROUTER_KIND = "dynamic"  # FTP's router; router.registry lists every kind
DEFAULT_LEARNED_FROM = 1  # its first learned block (router.registry's learned_from; tested)

# Upper bounds of what a user can mean: a value past one is a typo, refused in one line.
MAX_COUNT = 100_000  # candidates, parents, sequences, stages' sizes, level moves
MAX_GENERATIONS = 100_000
MAX_STEPS = 10_000_000  # router training steps and their periods
MAX_BATCH = 65_536
MAX_TOKENS = 1 << 20  # a sequence length or window
MAX_LENGTHS = 64  # distinct sequence lengths, stages
MAX_VOCAB = 10_000_000
MAX_SEED = 2**32 - 1
MAX_WORKERS = 4096  # workers, and CPUs or GPUs per worker
MAX_RETRIES = 100
MAX_SECONDS = 30 * 86_400  # timeouts and heartbeats


class StageConfig(BaseModel):
    """One selection stage: score on ``sequences`` calibration sequences, keep the best
    ``keep`` candidates for the next stage (the last stage's best become parents)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    sequences: int = Field(ge=1, le=MAX_COUNT)
    keep: int = Field(ge=1, le=MAX_COUNT)


class RouterTrainingConfig(BaseModel):
    """Step 2 of the pipeline: training the learned router on the calibration sequences
    with the model frozen (see router.training). The weights are FTP's λ_g (decaying to 0
    over ``guide_steps``), λ_s and λ_d. ``kind`` is checked against router.registry by
    :class:`RunConfig`."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    kind: str = Field(
        DEFAULT_ROUTER_KIND, description="FTP's 4-factor router, or the hidden-state baseline"
    )
    factors: list[Literal["position", "attention", "rank", "sparsity"]] = Field(
        ["position", "attention", "rank", "sparsity"],
        min_length=1,
        description="inputs of the dynamic router",
    )
    steps: int = Field(40, ge=1, le=MAX_STEPS)
    lr: float = Field(0.001, gt=0.0)
    batch_size: int = Field(4, ge=1, le=MAX_BATCH)
    lambda_guide: float = Field(1.0, ge=0.0)
    guide_steps: int = Field(20, ge=1, le=MAX_STEPS, description="steps over which λ_g decays to 0")
    lambda_sparse: float = Field(1.0, ge=0.0)
    lambda_distill: float = Field(1.0, ge=0.0)
    distill: Literal["kl", "mse"] = "kl"
    two_sided: bool = Field(False, description="penalize sparsity above the target too")
    eval_every: int = Field(
        20, ge=1, le=MAX_STEPS, description="held-out evaluation period, in steps"
    )
    init: Literal["random", "static"] = Field(
        "random",
        description="start the dynamic router from random weights, or from the static "
        "router's ranking (it keeps the static router's tokens until training moves it)",
    )
    nested: bool = Field(
        False,
        description="nested selection: a token an earlier block skipped stays skipped "
        "(needs non-decreasing schedules)",
    )
    key_gate: bool = Field(
        False,
        description="also gate each learned block's keys with a straight-through decision, "
        "so a skipped token's score gets the gradient of admitting it as a key "
        "(router.gate; off by default: see docs/measurements.md)",
    )

    @model_validator(mode="after")
    def _static_start_fits(self) -> "RouterTrainingConfig":
        if self.init == "static" and (self.kind != "dynamic" or "position" not in self.factors):
            raise ValueError("init: static needs kind dynamic with the position factor")
        return self


class TuningConfig(BaseModel):
    """``ftprune tune``: the ranges Optuna samples router training's settings from (the λs
    and the learning rate on log scales) and how trials are judged and supervised. The first
    trial always uses ``router_training``'s own values (the paper's equal weights)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    lambda_guide: list[float] = Field([0.1, 10.0], min_length=2, max_length=2)
    lambda_sparse: list[float] = Field([0.1, 10.0], min_length=2, max_length=2)
    lambda_distill: list[float] = Field([0.1, 10.0], min_length=2, max_length=2)
    lr: list[float] = Field([0.0001, 0.01], min_length=2, max_length=2)
    guide_steps: list[int] | None = Field(
        None, min_length=2, max_length=2, description="default: 1 to router_training.steps"
    )
    sparsity: list[float] | None = Field(
        None,
        min_length=2,
        max_length=2,
        description="two-objective studies: target sparsity range; default target ± 0.1",
    )
    tolerance: float = Field(
        0.1, gt=0.0, description="largest |achieved - target| sparsity of a feasible trial"
    )
    pruner_startup_trials: int = Field(
        2, ge=0, le=MAX_COUNT, description="trials before pruning starts"
    )
    pruner_warmup_steps: int = Field(
        1, ge=0, le=MAX_STEPS, description="steps before a trial can be pruned"
    )
    heartbeat_interval: int = Field(
        10, ge=1, le=MAX_SECONDS, description="seconds between trial heartbeats"
    )
    grace_period: int = Field(
        30, ge=1, le=MAX_SECONDS, description="seconds without one: the trial failed"
    )
    max_retry: int = Field(
        2, ge=0, le=MAX_RETRIES, description="retries of a trial whose worker died"
    )

    @model_validator(mode="after")
    def _ranges(self) -> "TuningConfig":
        for name in (
            "lambda_guide",
            "lambda_sparse",
            "lambda_distill",
            "lr",
            "guide_steps",
            "sparsity",
        ):
            bounds = getattr(self, name)
            if bounds is not None and not 0 < bounds[0] <= bounds[1]:
                raise ValueError(f"{name} must be [low, high] with 0 < low <= high")
        if self.sparsity is not None and self.sparsity[1] >= 1.0:
            raise ValueError("sparsity must stay below 1")
        if self.grace_period <= self.heartbeat_interval:
            raise ValueError("grace_period must exceed heartbeat_interval")
        return self


class RunConfig(BaseModel):
    """Everything that defines a search run. Unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, protected_namespaces=())

    run_name: str | None = Field(None, description="unique name; defaults to run-<id>")
    model: str = Field(
        "smollm2-135m", description="alias, .gguf file, directory, hub id or random:<preset>"
    )
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    device: str = Field(
        "auto",
        description="where workers put the model: auto (CUDA if the "
        "worker sees it, else CPU), cpu, cuda or cuda:N",
    )
    calibration: str = Field("builtin:pydoc", description="builtin:pydoc, a .txt or a .jsonl file")
    seq_lens: list[Annotated[int, Field(le=MAX_TOKENS)]] = Field(
        [256, 512], min_length=1, max_length=MAX_LENGTHS, description="calibration sequence lengths"
    )
    sequences_per_length: int = Field(4, ge=1, le=MAX_COUNT)
    calibration_recall: float = Field(
        0.0,
        ge=0.0,
        le=1.0,
        description="share of calibration sequences made span-recall prompts (their opening "
        "repeated at the end, so fitness and training see a prompt whose key part comes first)",
    )
    heldout_seq_lens: list[Annotated[int, Field(le=MAX_TOKENS)]] = Field(
        [512], min_length=1, max_length=MAX_LENGTHS
    )
    heldout_sequences_per_length: int = Field(4, ge=1, le=MAX_COUNT)
    window: int = Field(
        32, ge=1, le=MAX_TOKENS, description="scored positions at the end of each sequence"
    )
    batch_size: int = Field(4, ge=1, le=MAX_BATCH)
    target_sparsity: float = Field(0.3, ge=0.0, lt=1.0)
    max_block_sparsity: float = Field(0.8, gt=0.0, lt=1.0)
    level_step: float = Field(0.025, gt=0.0, lt=1.0, description="sparsity grid step")
    offspring: int = Field(16, ge=1, le=MAX_COUNT, description="new candidates per generation")
    parents: int = Field(2, ge=1, le=MAX_COUNT, description="best candidates kept as parents")
    generations: int = Field(5, ge=1, le=MAX_GENERATIONS)
    crossover_prob: float = Field(0.5, ge=0.0, le=1.0)
    max_moves: int = Field(3, ge=1, le=MAX_COUNT, description="most level moves per mutation")
    monotone: bool = Field(
        False,
        description="search only non-decreasing schedules (what a nested router can route)",
    )
    stages: list[StageConfig] | None = Field(
        None,
        max_length=MAX_LENGTHS,
        description="multi-fidelity selection; default: see default_stages()",
    )
    block_influence_profile: bool = Field(
        True, description="seed the population with a Block-Influence-informed profile"
    )
    teacher_top_k: int | None = Field(
        None, ge=1, le=MAX_VOCAB, description="keep only top-K dense logits"
    )
    seed: int = Field(0, ge=0, le=MAX_SEED)
    router: str = Field(
        "static",
        description="router that scores candidates: static, random or dynamic:<checkpoint dir>",
    )
    seed_run: str | None = Field(
        None, description="start from this run's final parents (the pipeline's step 3)"
    )
    router_training: RouterTrainingConfig = Field(default_factory=RouterTrainingConfig)
    tuning: TuningConfig = Field(default_factory=TuningConfig)
    finetune_generations: int = Field(
        2, ge=1, le=MAX_GENERATIONS, description="step 3 generations per round"
    )
    artifacts_dir: str = Field(
        "ftprune-artifacts", description="where router checkpoints are written"
    )
    pool: Literal["local", "ray"] = "ray"
    workers: int = Field(2, ge=1, le=MAX_WORKERS)
    cpus_per_worker: float = Field(1.0, gt=0.0, le=MAX_WORKERS)
    gpus_per_worker: float = Field(0.0, ge=0.0, le=MAX_WORKERS)
    ray_address: str | None = None
    task_timeout_s: float | None = Field(
        None, gt=0.0, le=MAX_SECONDS, description="replace a worker after this"
    )
    max_retries: int = Field(3, ge=0, le=MAX_RETRIES)

    @field_validator("device")
    @classmethod
    def _device_form(cls, device: str) -> str:
        from workers.devices import check_device_spec

        check_device_spec(device)  # whether this machine has it: search.settings.check_device
        return device

    @field_validator("calibration")
    @classmethod
    def _not_reserved(cls, calibration: str) -> str:
        from evaluation.tasks import check_not_reserved

        check_not_reserved(calibration)  # calibration feeds fitness, training and tuning
        return calibration

    @model_validator(mode="after")
    def _consistent(self) -> "RunConfig":
        """Checks across fields. Pydantic runs them only once every field is valid, and the
        router registry (which loads torch) is asked only about a kind other than the
        default, so a bad config is refused, and a good one accepted, without torch."""
        if self.router_training.kind != DEFAULT_ROUTER_KIND:  # a registry kind (tested)
            from router.registry import RouterSpecError, trained_kind

            try:
                trained_kind(self.router_training.kind)  # the checkpoint kinds of the registry
            except RouterSpecError as error:
                raise ValueError(f"router_training.kind: {error}") from None
        if self.router_training.nested and not self.monotone:
            raise ValueError(
                "router_training.nested needs monotone: true (a nested router routes "
                "only non-decreasing schedules)"
            )
        if self.target_sparsity > self.max_block_sparsity:
            raise ValueError("target_sparsity cannot exceed max_block_sparsity")
        if min(self.seq_lens + self.heldout_seq_lens) < 2:
            raise ValueError("sequence lengths must be at least 2")
        if self.window > min(self.seq_lens + self.heldout_seq_lens):
            raise ValueError("window must not exceed the shortest sequence length")
        if self.calibration_recall:
            # torch loads only for a recall config
            from workers.data import DataSpecError, check_recall_layout, recall_copy_len

            try:
                check_recall_layout(self.seq_lens, recall_copy_len(self.window))
            except DataSpecError as error:
                raise ValueError(f"calibration_recall: {error}") from None
        if self.stages:
            pool = self.num_calibration_sequences
            sizes = [stage.sequences for stage in self.stages]
            keeps = [stage.keep for stage in self.stages]
            if any(a >= b for a, b in zip(sizes, sizes[1:], strict=False)) or sizes[-1] > pool:
                raise ValueError(
                    f"stages read {sizes} calibration sequences: they must grow and stay "
                    f"within the {pool} that seq_lens {self.seq_lens} x sequences_per_length "
                    f"{self.sequences_per_length} give"
                )
            if keeps != sorted(keeps, reverse=True) or keeps[-1] < self.parents:
                raise ValueError("stage keep counts must shrink and end at least at parents")
        return self

    @property
    def num_calibration_sequences(self) -> int:
        return len(self.seq_lens) * self.sequences_per_length

    def resolved_stages(self) -> list[StageConfig]:
        """The configured stages, or by default two: every candidate on a quarter of the
        calibration sequences, then the best quarter of the offspring on all of them."""
        if self.stages:
            return list(self.stages)
        pool = self.num_calibration_sequences
        first = StageConfig(
            sequences=max(1, pool // 4), keep=max(self.parents, self.offspring // 4)
        )
        last = StageConfig(sequences=pool, keep=self.parents)
        return [first, last] if first.sequences < pool else [last]


def one_line(error: ValidationError) -> str:
    first = error.errors()[0]
    where = ".".join(str(part) for part in first["loc"])
    message = first["msg"].removeprefix("Value error, ")
    return f"{where}: {message}" if where else message


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a mapping that repeats a key (the plain loader keeps
    the last value silently)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep)


def read_yaml(path: str | Path, what: str) -> Any:
    """A YAML file a user named, parsed (duplicate keys refused); ConfigError, one line,
    for a missing, unreadable, non-UTF-8, invalid or empty file."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{what} not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise ConfigError(f"cannot read {what} {path}: {reason}") from None
    try:
        loaded = yaml.load(text, Loader=_UniqueKeyLoader)
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        line = f" at line {where.line + 1}" if where is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{path}: not valid YAML ({problem}{line})") from None
    if loaded is None:
        raise ConfigError(f"{path}: the {what} is empty (write the fields to change)")
    return loaded


def override(config: RunConfig, **overrides: Any) -> RunConfig:
    """``config`` with the non-None ``overrides``, validated again; ConfigError (one line)
    for a value the config refuses."""
    data = {**config.model_dump(), **{k: v for k, v in overrides.items() if v is not None}}
    try:
        return RunConfig(**data)
    except ValidationError as exc:
        raise ConfigError(f"config: {one_line(exc)}") from None


def build_config(
    path: str | Path | None = None,
    option_names: Mapping[str, str] | None = None,
    **overrides: Any,
) -> RunConfig:
    """Load ``path`` (if given), apply the non-None ``overrides``, validate, and check a
    given run name (:func:`check_run_name`).

    Raises :class:`ConfigError` with a one-line message on any problem: among them an
    empty file and a repeated key. A bad overridden value is blamed on its command-line
    option: ``option_names`` maps a field to it where it is not :func:`option_name`'s.
    """
    data: dict[str, Any] = {}
    if path is not None:
        loaded = read_yaml(path, "config file")
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: expected a mapping of config fields")
        data.update(loaded)
    given = {k: v for k, v in overrides.items() if v is not None}
    data.update(given)
    if data.get("run_name") is not None:
        check_run_name(data["run_name"])
    try:
        return RunConfig(**data)
    except ValidationError as exc:
        names = {field: (option_names or {}).get(field) or option_name(field) for field in given}
        raise ConfigError(_blamed(exc, path, names)) from None


# Override fields whose command-line option is not the field's name with dashes.
OPTION_NAMES = {"seq_lens": "--seq-len"}


def option_name(field: str) -> str:
    """The command-line option that overrides run config field ``field``."""
    return OPTION_NAMES.get(field, "--" + field.replace("_", "-"))


def _blamed(error: ValidationError, path: str | Path | None, overridden: dict[str, str]) -> str:
    """The one line for a config that does not validate, naming where the bad value came
    from: the option when the failing field was overridden (``--target-sparsity: ...``),
    the file (or ``config``, the defaults) otherwise, and for a rule across fields the file
    with the options that changed it (``configs/tiny.yaml with --seq-len: ...``)."""
    first = error.errors()[0]
    field = str(first["loc"][0]) if first["loc"] else None
    source = str(path) if path is not None else "config"
    if field is not None and field in overridden:
        where = ".".join(str(part) for part in first["loc"][1:])
        message = first["msg"].removeprefix("Value error, ")
        return f"{overridden[field]}: {f'{where}: ' if where else ''}{message}"
    if field is None and overridden:
        source += " with " + ", ".join(overridden.values())
    return f"{source}: {one_line(error)}"
