"""Two ways to run the scorer behind one interface: in this process, or on Ray actors.

The search only ever calls :meth:`EvaluationPool.evaluate`; it never imports Ray.
Guarantees of every pool: ``evaluate`` returns exactly one :class:`Evaluation` per request,
in the order given; a request whose scoring raises (out of memory, say) or gives a
non-finite fitness comes back as a failed evaluation (``error`` set), once, without retries
and without replacing the worker, which is healthy and scores the next request; each
worker loads the model once, on the settings' device, and keeps it for the pool's
lifetime; :meth:`EvaluationPool.train` trains a router on a worker (its model, device and
data), never in the calling process, and returns it as plain data.
Every pool takes the calibration and held-out sequences already tokenized (``sequences``,
as a run's checks made them) or tokenizes the text once itself; the Ray pool does that in
this process (tokenizer only, no model) and puts the sequences into Ray's object store
once; every actor, a replacement included, reads that one object. It survives workers
that die or hang: their tasks are retried on a fresh actor (scoring and seeded training
are idempotent), and a result is never delivered twice. Its actors run with the tuned heap
of :mod:`workers.heap`, like the CLI process.
"""

from __future__ import annotations

import abc
import logging
import math
import os
import secrets
import time
from dataclasses import dataclass, replace
from typing import Any, Callable, Protocol, Sequence

import torch

from router.loading import load_tokenizer
from router.registry import router_kind
from workers.data import SPLITS, Split
from workers.heap import heap_mode, tune_heap
from workers.scoring import Evaluation, Scorer, ScorerSettings, SplitSequences, build_splits
from workers.training import TrainedRouterState, TrainRequest, train_request

log = logging.getLogger(__name__)
OnResult = Callable[[Evaluation], None]


class ScorerLike(Protocol):
    """What a pool needs of the object it builds in each worker (a :class:`Scorer`, or a
    stand-in such as the coordinator benchmark's zero-cost scorer)."""

    num_blocks: int

    def num_sequences(self, split: Split) -> int: ...

    def model_device(self) -> str: ...

    def score(
        self,
        schedule: Sequence[float],
        split: Split = "calibration",
        router: str = "static",
        sequences: Sequence[int] | None = None,
    ) -> Evaluation: ...

    def block_influence(self) -> list[float]: ...


# builds the worker's scorer from the settings and, where the pool shares them, the sequences
ScorerFactory = Callable[[ScorerSettings, SplitSequences | None], ScorerLike]


@dataclass(frozen=True)
class ScoreRequest:
    """Score ``schedule`` with ``router`` on sequences ``sequences`` of ``split`` (None: all)."""

    schedule: list[float]
    split: Split = "calibration"
    router: str = "static"
    sequences: tuple[int, ...] | None = None


class WorkerFailure(RuntimeError):
    """A request failed on every retry (its worker died or hung each time)."""


class EvaluationPool(abc.ABC):
    """Scores batches of requests; see the module docstring for the guarantees."""

    num_blocks: int
    num_sequences: dict[str, int]

    @abc.abstractmethod
    def evaluate(
        self, requests: Sequence[ScoreRequest], on_result: OnResult | None = None
    ) -> list[Evaluation]:
        """Score every request; ``on_result`` is called as each result arrives."""

    @abc.abstractmethod
    def block_influence(self) -> list[float]:
        """ShortGPT Block Influence of every block on the calibration split."""

    @abc.abstractmethod
    def train(self, request: TrainRequest) -> TrainedRouterState:
        """Train a router on a worker's calibration sequences, measured on its held-out
        ones; the same seed gives the same router whichever pool runs it (up to float
        rounding of the worker's device and threads)."""

    @abc.abstractmethod
    def worker_devices(self) -> list[str]:
        """Where each worker's model lives (``cpu``, ``cuda:0``, ...)."""

    def close(self) -> None:  # noqa: B027 (a pool with nothing to release keeps it)
        """Release the workers. Idempotent."""

    def __enter__(self) -> "EvaluationPool":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def score_request(scorer: ScorerLike, request: ScoreRequest) -> Evaluation:
    """Score one request; an exception of the scorer (not an interrupt) or a non-finite
    window sum becomes a failed :class:`Evaluation` whose ``error`` names it."""
    started = time.perf_counter()
    try:
        result = scorer.score(request.schedule, request.split, request.router, request.sequences)
    except Exception as exc:  # an application error: this candidate fails, the worker lives
        if isinstance(exc, torch.OutOfMemoryError) and torch.cuda.is_available():
            torch.cuda.empty_cache()
        lines = str(exc).strip().splitlines()
        reason = f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__
        return _failure(request, reason, time.perf_counter() - started)
    for index, stats in sorted(result.per_sequence.items()):
        if not (math.isfinite(stats.kl_sum) and math.isfinite(stats.nll_sum)):
            reason = f"non-finite fitness on sequence {index} (KL sum {stats.kl_sum})"
            return replace(result, per_sequence={}, error=reason)
    return result


def _failure(request: ScoreRequest, reason: str, duration_s: float) -> Evaluation:
    log.warning("scoring failed: %s", reason)
    return Evaluation(
        schedule=[float(s) for s in request.schedule],
        split=request.split,
        router=router_kind(request.router),
        per_sequence={},
        duration_s=duration_s,
        error=reason,
    )


def _describe(scorer: ScorerLike) -> tuple[int, dict[str, int]]:
    return scorer.num_blocks, {split: scorer.num_sequences(split) for split in SPLITS}


def _train(
    scorer: ScorerLike, request: TrainRequest, on_step: Callable[[int], None] | None = None
) -> TrainedRouterState:
    if not isinstance(scorer, Scorer):
        raise TypeError(f"{type(scorer).__name__} has no model to train a router on")
    return train_request(scorer, request, on_step)


class LocalPool(EvaluationPool):
    """One scorer in this process; requests are scored one after another, and routers
    train on that scorer (this process is the worker)."""

    def __init__(
        self,
        settings: ScorerSettings,
        scorer_factory: ScorerFactory = Scorer,
        sequences: SplitSequences | None = None,
    ) -> None:
        self.scorer = scorer_factory(settings, sequences)
        self.num_blocks, self.num_sequences = _describe(self.scorer)

    def evaluate(
        self, requests: Sequence[ScoreRequest], on_result: OnResult | None = None
    ) -> list[Evaluation]:
        results = []
        for request in requests:
            results.append(score_request(self.scorer, request))
            if on_result:
                on_result(results[-1])
        return results

    def block_influence(self) -> list[float]:
        return self.scorer.block_influence()

    def train(self, request: TrainRequest) -> TrainedRouterState:
        return _train(self.scorer, request)

    def worker_devices(self) -> list[str]:
        return [self.scorer.model_device()]


class RayPool(EvaluationPool):
    """``workers`` Ray actors, each holding its own scorer (model loaded once per actor).

    Connects to ``address`` (e.g. ``"auto"`` on a cluster) or starts a local Ray instance.
    Each actor reserves ``cpus_per_worker`` CPUs and ``gpus_per_worker`` GPUs (fractions
    allowed) and keeps at most one task in flight, so work flows to whichever actor is free.
    An actor that dies, or runs one task longer than ``task_timeout_s``, is killed and
    replaced, and its task goes back in the queue, at most ``max_retries`` times per request.
    A replacement gets work only once it has loaded its model, so ``task_timeout_s`` bounds
    scoring alone, never a worker's start; replacements that die before they are ready, more
    than ``max_retries`` times in a row, are a :class:`WorkerFailure`.
    A training request runs on one actor without a time limit; if that actor dies it is
    replaced and the request runs again, at most ``max_retries`` times. The other actors
    wait meanwhile, so on a local instance (no ``address``) training takes their CPU
    threads too; its steps show as a progress bar here, polled from the actor (each actor
    serves one more call beside its work: that poll).
    """

    def __init__(
        self,
        settings: ScorerSettings,
        workers: int,
        address: str | None = None,
        cpus_per_worker: float = 1.0,
        gpus_per_worker: float = 0.0,
        task_timeout_s: float | None = None,
        max_retries: int = 3,
        scorer_factory: ScorerFactory = Scorer,
        sequences: SplitSequences | None = None,
    ) -> None:
        import ray

        self._owns_ray = not ray.is_initialized()
        self._local_env: list[str] = []  # variables _start_ray set, unset again by close()
        if self._owns_ray:
            self._local_env = _start_ray(address)
        self._local = address is None
        threads = settings.threads or max(1, int(cpus_per_worker))
        self._actor_class = ray.remote(_ScorerActor).options(
            num_cpus=cpus_per_worker,
            num_gpus=gpus_per_worker,
            max_restarts=0,
            max_concurrency=2,  # its work, and the progress poll beside it
        )
        self._settings = replace(settings, threads=threads)
        self._scorer_factory = scorer_factory
        if sequences is None:
            sequences = build_splits(settings, load_tokenizer(settings.model))
        self.sequences_ref = ray.put(dict(sequences))
        self.task_timeout_s = task_timeout_s
        self.max_retries = max_retries
        self.replaced = 0
        self._starting: dict[Any, Any] = {}  # replacement actor -> its readiness call
        self._start_failures = 0  # replacements in a row that died before they were ready
        self._actors = [self._new_actor() for _ in range(workers)]
        described = ray.get([a.describe.remote() for a in self._actors])
        self.num_blocks, self.num_sequences = described[0]

    def evaluate(
        self, requests: Sequence[ScoreRequest], on_result: OnResult | None = None
    ) -> list[Evaluation]:
        import ray
        from ray.exceptions import GetTimeoutError, RayActorError, WorkerCrashedError

        results: list[Evaluation | None] = [None] * len(requests)
        attempts = [0] * len(requests)
        queue = list(range(len(requests)))
        idle = [actor for actor in self._actors if actor not in self._starting]
        pending: dict[Any, tuple[int, Any, float]] = {}
        while queue or pending:
            while queue and idle:
                index, actor = queue.pop(0), idle.pop()
                ref = actor.score.remote(requests[index])
                pending[ref] = (index, actor, time.monotonic())
            starting = {ref: actor for actor, ref in self._starting.items()}
            done, _ = ray.wait([*pending, *starting], num_returns=1, timeout=1.0)
            for ref in done:
                if ref in starting:
                    if self._ready(starting[ref], ref):
                        idle.append(starting[ref])
                    continue
                index, actor, _ = pending.pop(ref)
                try:
                    result = results[index] = ray.get(ref)
                except (RayActorError, WorkerCrashedError, GetTimeoutError) as exc:
                    self._retry(index, actor, attempts, queue, exc)
                    continue
                idle.append(actor)
                if on_result:
                    on_result(result)
            if self.task_timeout_s is not None:
                now = time.monotonic()
                for ref, (index, actor, started) in list(pending.items()):
                    if now - started > self.task_timeout_s:
                        del pending[ref]
                        ray.kill(actor)
                        self._retry(
                            index,
                            actor,
                            attempts,
                            queue,
                            TimeoutError(f"no result in {self.task_timeout_s} s"),
                        )
        return results  # type: ignore[return-value]

    def _new_actor(self) -> Any:
        return self._actor_class.remote(self._settings, self._scorer_factory, self.sequences_ref)

    def _replace(self, dead: Any) -> Any:
        """A fresh actor in ``dead``'s place, starting (see :meth:`_ready`)."""
        fresh = self._new_actor()
        self._actors[self._actors.index(dead)] = fresh
        self._starting.pop(dead, None)
        self._starting[fresh] = fresh.describe.remote()
        self.replaced += 1
        return fresh

    def _ready(self, actor: Any, ref: Any) -> bool:
        """Whether a starting actor whose readiness call ``ref`` returned came up; one that
        died is replaced again (see the class docstring for the bound)."""
        import ray
        from ray.exceptions import RayActorError, WorkerCrashedError

        del self._starting[actor]
        try:
            ray.get(ref)
        except (RayActorError, WorkerCrashedError) as exc:
            self._start_failures += 1
            if self._start_failures > self.max_retries:
                raise WorkerFailure(
                    f"{self._start_failures} replacement workers in a row died while "
                    f"starting: {exc}"
                ) from None
            log.warning("a replacement worker died while starting (%s); replacing it", exc)
            self._replace(actor)
            return False
        self._start_failures = 0
        return True

    def _retry(
        self,
        index: int,
        dead: Any,
        attempts: list[int],
        queue: list[int],
        cause: Exception,
    ) -> None:
        attempts[index] += 1
        if attempts[index] > self.max_retries:
            raise WorkerFailure(f"request {index} failed {attempts[index]} times: {cause}")
        log.warning("worker lost (%s); replacing it and retrying request %d", cause, index)
        self._replace(dead)
        queue.insert(0, index)

    def block_influence(self) -> list[float]:
        import ray

        return ray.get(self._actors[0].block_influence.remote())

    def train(self, request: TrainRequest) -> TrainedRouterState:
        from ray.exceptions import RayActorError, WorkerCrashedError

        if request.threads is None and self._local:
            assert self._settings.threads is not None  # set in __init__
            request = replace(request, threads=self._settings.threads * len(self._actors))
        actor, failures = self._actors[0], 0
        while True:
            try:
                return self._train_on(actor, request)
            except (RayActorError, WorkerCrashedError) as exc:
                failures += 1
                if failures > self.max_retries:
                    raise WorkerFailure(f"router training failed {failures} times: {exc}") from None
                log.warning("worker lost (%s); replacing it and training again", exc)
                actor = self._replace(actor)

    @staticmethod
    def _train_on(actor: Any, request: TrainRequest) -> TrainedRouterState:
        """Train on ``actor``, showing the steps it has done (polled every second)."""
        import ray
        from ray.exceptions import GetTimeoutError
        from tqdm.auto import tqdm

        ref = actor.train.remote(request)
        with tqdm(
            total=request.config.steps,
            desc="router training",
            unit="step",
            disable=not request.config.progress,
            leave=False,
        ) as bar:
            while not ray.wait([ref], timeout=1.0)[0]:
                try:
                    bar.update(ray.get(actor.progress.remote(), timeout=10.0) - bar.n)
                except GetTimeoutError:
                    continue
        return ray.get(ref)

    def worker_devices(self) -> list[str]:
        import ray

        return ray.get([a.model_device.remote() for a in self._actors])

    def worker_pids(self) -> list[int]:
        import ray

        return ray.get([a.pid.remote() for a in self._actors])

    def worker_heaps(self) -> list[str]:
        """Each worker's :func:`workers.heap.heap_mode`."""
        import ray

        return ray.get([a.heap_mode.remote() for a in self._actors])

    def close(self) -> None:
        import ray

        for actor in self._actors:
            ray.kill(actor)
        self._actors = []
        self._starting.clear()
        if self._owns_ray and ray.is_initialized():
            ray.shutdown()
            self._owns_ray = False
        _unset(self._local_env)
        self._local_env = []


# The token of ftprune's own local Ray instances, one per process.
_LOCAL_TOKEN = secrets.token_hex(32)
_AUTH_VARIABLES = ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")
_NICENESS = "RAY_worker_niceness"


def _local_instance_env() -> dict[str, str]:
    """The environment a local instance starts with, beyond the user's (see _start_ray)."""
    chosen: dict[str, str] = {}
    if not any(name in os.environ for name in _AUTH_VARIABLES):
        chosen.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=_LOCAL_TOKEN)
    if _NICENESS not in os.environ:
        chosen[_NICENESS] = "0"
    return chosen


def _unset(names: Sequence[str]) -> None:
    for name in names:
        os.environ.pop(name, None)
    if any(name in _AUTH_VARIABLES for name in names):
        _reread_ray_auth()


def _reread_ray_auth() -> None:
    """Make Ray in this process read its authentication mode and token from the
    environment again (it reads them once and keeps them)."""
    from ray._raylet import AuthenticationTokenLoader, Config  # type: ignore[attr-defined]

    Config.initialize("")
    AuthenticationTokenLoader.instance().reset_cache()


def _start_ray(address: str | None) -> list[str]:
    """Join the Ray cluster at ``address`` or, without one, start a new local instance (never
    a running one found on this machine); returns the environment variables it set (for
    the pool to unset when it closes).

    A local instance uses Ray's token authentication with a random token that lives only in
    the environment of this process and of the Ray processes it starts (``RAY_AUTH_MODE``,
    ``RAY_AUTH_TOKEN``): nothing is written to ``~/.ray`` and Ray prints no warning about
    it. Its workers run at this process's priority (``RAY_worker_niceness=0``): Ray's
    default lowers them by 15 nice levels, which on a shared machine starves the processes
    that do all of ftprune's work. What the user set (``RAY_AUTH_MODE``,
    ``RAY_AUTH_TOKEN``, ``RAY_AUTH_TOKEN_PATH``, ``RAY_worker_niceness``) is used instead;
    a cluster's settings are the cluster's (README: on a cluster).

    A local instance, and a cluster at a loopback address (``127.0.0.1:PORT``, or ``auto``
    with ``RAY_ADDRESS`` naming one, as under ``ray job submit`` on such a cluster), is
    joined as a node on 127.0.0.1, so every server Ray starts for it (GCS, raylet, object
    manager, workers, agents) listens on 127.0.0.1 only. Ray replaces a loopback node
    address with the machine's reachable one (``services.resolve_ip_for_localhost``) unless
    it runs as a single-machine cluster (``ray_constants.ENABLE_RAY_CLUSTER`` off, as the
    environment variable ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` sets it when Ray is
    imported); that mode is on for the duration of the call only.
    """
    import ray
    from ray._common.network_utils import is_localhost, parse_address
    from ray._private import ray_constants

    named = os.environ.get("RAY_ADDRESS", "") if address == "auto" else address
    parsed = parse_address(named) if named else None
    loopback = address is None or (parsed is not None and is_localhost(parsed[0]))
    cluster_mode = ray_constants.ENABLE_RAY_CLUSTER
    ray_constants.ENABLE_RAY_CLUSTER = cluster_mode and not loopback
    chosen = _local_instance_env() if address is None else {}
    os.environ.update(chosen)
    if any(name in _AUTH_VARIABLES for name in chosen):
        _reread_ray_auth()
    try:
        if address:
            ray.init(address=address, log_to_driver=False)
        else:
            ray.init(
                address="local",
                include_dashboard=False,
                log_to_driver=False,
                logging_level=logging.WARNING,  # ftprune says what it starts
            )
    except BaseException:
        _unset(list(chosen))
        raise
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = cluster_mode
    return list(chosen)


class _ScorerActor:
    """The Ray actor body: a scorer built once in the actor process, on the sequences the
    pool put into the object store."""

    def __init__(
        self, settings: ScorerSettings, scorer_factory: ScorerFactory, sequences: SplitSequences
    ) -> None:
        tune_heap()
        self.scorer = scorer_factory(settings, sequences)
        self._steps_done = 0  # of the router training in progress

    def describe(self) -> tuple[int, dict[str, int]]:
        return _describe(self.scorer)

    def pid(self) -> int:
        import os

        return os.getpid()

    def heap_mode(self) -> str:
        return heap_mode()

    def score(self, request: ScoreRequest) -> Evaluation:
        return score_request(self.scorer, request)

    def block_influence(self) -> list[float]:
        return self.scorer.block_influence()

    def train(self, request: TrainRequest) -> TrainedRouterState:
        self._steps_done = 0
        return _train(self.scorer, request, self._step_done)

    def _step_done(self, step: int) -> None:
        self._steps_done = step

    def progress(self) -> int:
        """Steps done by the router training in progress (or the last one)."""
        return self._steps_done

    def model_device(self) -> str:
        return self.scorer.model_device()


def make_pool(
    settings: ScorerSettings,
    kind: str,
    workers: int = 1,
    address: str | None = None,
    cpus_per_worker: float = 1.0,
    gpus_per_worker: float = 0.0,
    task_timeout_s: float | None = None,
    max_retries: int = 3,
    scorer_factory: ScorerFactory = Scorer,
    sequences: SplitSequences | None = None,
) -> EvaluationPool:
    """The pool a run config asks for: ``local`` or ``ray``, on ``sequences`` if given
    (both splits, as :func:`workers.scoring.build_splits` makes them)."""
    if kind == "local":
        return LocalPool(settings, scorer_factory, sequences)
    if kind == "ray":
        return RayPool(
            settings,
            workers,
            address,
            cpus_per_worker,
            gpus_per_worker,
            task_timeout_s,
            max_retries,
            scorer_factory,
            sequences,
        )
    raise ValueError(f"unknown pool {kind!r}; choose 'local' or 'ray'")
