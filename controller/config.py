"""Search configuration: parsed once at the edge (flags or a YAML spec) into a frozen dataclass."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from controller.objectives import normalize_objectives
from controller.settings import (
    BY_NAME,
    BY_YAML_KEY,
    DEFAULT_DATASET,
    EVALUATORS,
    NB201_DATASETS,
    STRATEGIES,
    SYNTHETIC_DATASETS,
    TRAIN_DATASETS,
    ConfigError,
    Setting,
    check_settings,
)
from controller.strategies.pnas import PNAS_SPACES

__all__ = ["DEFAULT_DATASET", "ENAS_SPACES", "EVALUATORS", "NB201_DATASETS", "RNN_SPACES",
           "STRATEGIES", "SYNTHETIC_DATASETS", "TRAIN_DATASETS", "ConfigError", "SearchConfig",
           "build_config", "load_spec"]

ENAS_SPACES = ("enas-micro", "macro", "nasnet", "nb201")  # spaces with a supernet
RNN_SPACES = ("rnn-cell", "enas-rnn")  # trained as char LMs on --dataset text
SIMULATING_EVALUATORS = ("nb201", "synthetic")  # may sleep --simulate-seconds per child


@dataclass(frozen=True)
class SearchConfig:
    """Everything ``nas search`` needs, typed. Each field is a row of ``controller.settings``
    (its flag, YAML key, SearchSpec field, help and accepted values); the defaults here and
    there agree (``tests/test_settings.py``)."""

    space: str = "nb201"
    num_blocks: int | None = None
    num_layers: int | None = None
    predict_strides: bool = False
    strategy: str = "reinforce"
    controller: str = "sample-efficient"
    children: int | None = None  # m: children per policy update (None: the preset's)
    controller_lr: float | None = None
    entropy_weight: float | None = None
    baseline_decay: float | None = None
    reward_transform: str | None = None
    ppo_clip: float | None = None  # controller ppo: clip epsilon (None: the preset's 0.2)
    ppo_epochs: int | None = None  # controller ppo: gradient steps per batch (None: 4)
    candidates: int | None = None  # draws a surrogate ranks per proposal (None: the preset's)
    population: int = 10
    tournament: int = 3
    beam: int = 16  # pnas: cells trained per step (K)
    surrogate: str = "lstm"  # pnas: the accuracy predictor, lstm or mlp
    enas_epochs: int = 10  # enas: passes of shared-weight training (each then controller steps)
    controller_steps: int = 20  # enas: controller updates after each shared-weight pass
    derive_samples: int = 16  # enas: children sampled from the final policy and scored
    evaluator: str = "nb201"
    dataset: str | None = None  # None: the evaluator's default (cifar10 / fashion-mnist / ...)
    nb201_csv: str | None = None
    simulate_seconds: float = 0.0  # nb201/synthetic: each lookup takes this long, like a training
    landscape_seed: int = 0  # synthetic: the reward landscape's seed (the search's is ``seed``)
    parallel: int = 1  # children of one batch evaluated at once (threads)
    # evaluator "train": data, child size and the training recipe
    data_dir: str | None = None
    train_subset: int | None = None
    val_subset: int | None = None
    cells: int = 1
    filters: int = 8
    drop_path: float = 0.0
    aux_head: bool = False
    epochs: int = 1
    batch_size: int = 64
    lr: float = 0.1
    weight_decay: float = 3e-4
    label_smoothing: float = 0.0
    reward: str = "last"
    cube_reward: bool = False
    device: str = "auto"
    # --dataset text (recurrent cells): corpus, char-LM steps, hidden size, BPTT window
    corpus: str | None = None  # None: $NAS_DATA_DIR/text/tinyshakespeare.txt
    lm_steps: int = 200
    lm_hidden: int = 64
    bptt: int = 32
    reward_c: float = 80.0  # reward = min(1, reward_c / val_perplexity^2) (Zoph & Le: 80)
    budget: int = 100
    seed: int = 0
    failure_reward: float = 0.0
    # multi-objective reward (controller.objectives): canonical "METRIC:target=T:w=W[:hard]"
    objectives: tuple[str, ...] = ()
    max_idle_proposals: int = 2000
    out: str | None = None
    # distributed layout (Zoph & Le): S parameter-server shards, K controller replicas
    shards: int = 1
    replicas: int = 1
    replica_hosts: int = 1  # processes the replicas run in (1: this one)
    redis: str | None = None  # None: a private redis-server when the layout is distributed
    update_policy: str = "async"
    staleness: int = 4
    staleness_rule: str = "scale"  # async: scale a stale push's learning rate, or reject it
    sync_pushes: int | None = None  # None: one push per replica (K)
    checkpoint_every: int = 10
    # Ray workers (evaluator "train"): children trained by Ray tasks, results over gRPC
    workers: int = 0  # children trained at once on Ray (0: in this process, one at a time)
    ray_address: str | None = None  # a running Ray cluster (None: a private local Ray)
    cpus_per_child: float = 1.0
    gpus_per_child: float | None = None  # None: DEFAULT_GPU_SHARE if Ray has GPUs, else 0
    max_attempts: int = 3  # attempts per trial when worker processes die or go silent
    heartbeat_seconds: float = 5.0
    heartbeat_timeout: float = 60.0
    early_stopping: str = "none"  # none | median | asha
    grace_epochs: int = 1  # early stopping: epochs every child trains before it may be stopped
    asha_eta: int = 3
    median_min_trials: int = 3
    metrics_port: int | None = None  # serve /metrics while the search runs (0: a free port)

    def __post_init__(self) -> None:
        if self.dataset is None and self.evaluator in DEFAULT_DATASET:
            object.__setattr__(self, "dataset", DEFAULT_DATASET[self.evaluator])
        if self.out is None:
            object.__setattr__(self, "out", f"runs/{self.space}-{self.strategy}")
        check_settings(self)  # each setting's choices and range, from its row
        if self.tournament > self.population:
            raise ConfigError(f"tournament: must be <= population ({self.population}), "
                              f"got {self.tournament}")
        if self.strategy == "pnas" and self.space not in PNAS_SPACES:
            raise ConfigError(f"space: --strategy pnas runs on {', '.join(PNAS_SPACES)}, "
                              f"got {self.space!r}")
        if self.strategy == "enas":
            self._check_enas()
        self._check_workers()
        self._check_ppo()
        if self.distributed and self.strategy != "reinforce":
            raise ConfigError(f"strategy: --shards/--replicas/--redis distribute the REINFORCE "
                              f"controller; {self.strategy!r} has no parameters to shard")
        if self.replica_hosts > 1 and not self.distributed:
            raise ConfigError(f"replica_hosts: {self.replica_hosts} replica-host processes run "
                              f"replicas that share their policy on parameter servers; add "
                              f"--replicas K (K > 1) or --shards S")
        self._check_evaluation()

    def _check_evaluation(self) -> None:
        if self.simulate_seconds and self.evaluator not in SIMULATING_EVALUATORS:
            raise ConfigError(f"simulate_seconds: only the {' and '.join(SIMULATING_EVALUATORS)}"
                              f" evaluators simulate a training time; --evaluator "
                              f"{self.evaluator} trains for real")
        if self.evaluator == "synthetic":  # a seeded landscape: every space, no data
            _one_of("dataset", self.dataset, SYNTHETIC_DATASETS)
        elif self.evaluator == "nb201":
            if self.space != "nb201":
                raise ConfigError(f"space: the nb201 evaluator only scores --space nb201, "
                                  f"got {self.space!r}")
            _one_of("dataset", self.dataset, NB201_DATASETS)
        else:
            _one_of("dataset", self.dataset, TRAIN_DATASETS)
            if (self.dataset == "text") != (self.space in RNN_SPACES):
                raise ConfigError(f"dataset: recurrent cells ({', '.join(RNN_SPACES)}) train "
                                  f"on --dataset text and only they do; got space "
                                  f"{self.space!r} with dataset {self.dataset!r}")
            if self.dataset == "text" and self.workers:
                raise ConfigError("workers: --dataset text children train in this process "
                                  "only (no Ray workers yet); drop --workers")

    def _check_enas(self) -> None:
        if self.space not in ENAS_SPACES:
            raise ConfigError(f"space: --strategy enas shares weights on "
                              f"{', '.join(ENAS_SPACES)}, got {self.space!r}")
        if self.evaluator != "train":
            raise ConfigError("evaluator: --strategy enas trains a supernet on the job's "
                              "images and its derived child from scratch; add --evaluator train")

    def _check_ppo(self) -> None:
        for name in ("ppo_clip", "ppo_epochs"):
            if getattr(self, name) is not None and self.controller != "ppo":
                raise ConfigError(f"{name}: only the ppo controller clips and repeats epochs; "
                                  f"add --controller ppo (got {self.controller!r})")

    def _check_workers(self) -> None:
        if self.cpus_per_child == 0 and not self.gpus_per_child:
            raise ConfigError("cpus_per_child: a child needs some CPU (or set gpus_per_child)")
        if not 0 < self.heartbeat_seconds < self.heartbeat_timeout:
            raise ConfigError(f"heartbeat_timeout: must exceed heartbeat_seconds "
                              f"({self.heartbeat_seconds}), got {self.heartbeat_timeout}")
        if self.ray_address is not None and self.workers == 0:
            raise ConfigError("workers: with --ray-address, say how many children to train at "
                              "once (--workers N)")
        if self.workers and self.evaluator != "train":
            raise ConfigError(f"workers: Ray workers train children (--evaluator train); the "
                              f"{self.evaluator} evaluator trains nothing (use --parallel)")
        if self.early_stopping != "none":
            if not self.workers:
                raise ConfigError("early_stopping: children report their epochs to the "
                                  "controller through Ray workers: add --workers N")
            if self.epochs <= self.grace_epochs:
                raise ConfigError(f"early_stopping: children train {self.epochs} epochs, no "
                                  f"more than grace_epochs ({self.grace_epochs}): nothing to "
                                  f"stop; raise --epochs")

    @property
    def distributed(self) -> bool:
        """Run as shard and replica processes (else everything stays in this process)."""
        return self.shards > 1 or self.replicas > 1 or self.redis is not None


def _one_of(field: str, value: object, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(f"{field}: {value!r} is not one of {', '.join(allowed)}")


# settings that are not scalars -> their parser (ValueError names the entry)
STRUCTURED = {"objectives": normalize_objectives}


def _coerce(setting: Setting, value: Any) -> Any:
    name, kind = setting.name, setting.type
    if name in STRUCTURED and value is not None:
        try:
            return STRUCTURED[name](value)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
    if value is None:
        if not setting.nullable:
            raise ConfigError(f"{name}: must be set (no null)")
        return None
    if kind is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{name}: expected true or false, got {value!r}")
        return value
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{name}: expected an integer, got {value!r}")
        return value
    if kind is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{name}: expected a number, got {value!r}")
        return float(value)
    if not isinstance(value, str | Path):
        raise ConfigError(f"{name}: expected a string, got {value!r}")
    return str(value)


def build_config(*layers: Mapping[str, Any]) -> SearchConfig:
    """A config from layers of settings (YAML keys, or the flags' names; ``-`` and ``_`` both
    accepted), later layers overriding earlier ones; defaults that depend on others (dataset,
    out) are resolved once, after merging."""
    merged: dict[str, Any] = {}
    for values in layers:
        for raw_key, value in values.items():
            key = str(raw_key).replace("-", "_")
            setting = BY_YAML_KEY.get(key) or BY_NAME.get(key)
            if setting is None:
                raise ConfigError(f"{raw_key}: unknown setting; known: "
                                  f"{', '.join(sorted(BY_YAML_KEY))}")
            merged[setting.name] = _coerce(setting, value)
    if merged.get("strategy") == "enas":  # ENAS's own controller unless another is named
        merged.setdefault("controller", "enas")
    return SearchConfig(**merged)


def load_spec(path: Path) -> dict[str, Any]:
    """Read a YAML spec file into a mapping; ConfigError says what is wrong with the file."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"spec: cannot read {path}: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"spec: {path} is not valid YAML: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"spec: {path} must hold a mapping of settings, got "
                          f"{type(data).__name__}")
    return data
