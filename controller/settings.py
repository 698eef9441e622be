"""Every search setting, declared once: name, type, default, accepted values, help, where the
YAML spec, the ``nas search`` flags and the gRPC ``SearchSpec`` carry it.

The flags (``nas.search_command``), the YAML keys (``controller.config.build_config``), the
SearchSpec mapping (``controller.service.spec``) and the single-field validation of
``SearchConfig`` are all built from ``SETTINGS``; rules that tie several settings together stay
in ``controller.config``. To add a setting: a field of ``SearchConfig`` and a row here
(``tests/test_settings.py`` checks that they agree and that every SearchSpec field has a row).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, fields
from typing import Any

from controller.early_stopping import EARLY_STOPPING
from controller.objectives import METRICS, SYNTAX
from controller.policy.ppo import PPOConfig
from controller.policy.reinforce import TRANSFORM_NAMES
from controller.presets import CONTROLLER_PRESETS
from controller.spaces import SPACE_NAMES
from controller.strategies.surrogate import SURROGATES

STRATEGIES = ("reinforce", "random", "evolution", "pnas", "enas", "tpe", "gp")
EVALUATORS = ("nb201", "train", "synthetic")
NB201_DATASETS = ("cifar10", "cifar100", "imagenet16")
TRAIN_DATASETS = ("fashion-mnist", "cifar10", "text")
SYNTHETIC_DATASETS = ("synthetic",)  # a seeded landscape: no data at all
DATASETS = {"nb201": NB201_DATASETS, "train": TRAIN_DATASETS, "synthetic": SYNTHETIC_DATASETS}
DEFAULT_DATASET = {"nb201": "cifar10", "train": "fashion-mnist", "synthetic": "synthetic"}
# Children packed per GPU by default: 8. The one measurement so far (issue 5, an H200, a
# NASNet-search child): 8 packed processes 6,819 images/s > 4 packed 6,126 > 1 child 2,429.
# bench/gpu_children.py re-measures it on the GPU at hand.
DEFAULT_GPU_SHARE = 0.125
_PPO = {f.name: f.default for f in fields(PPOConfig)}


class ConfigError(ValueError):
    """A bad setting; the message names the field and what would be accepted."""


@dataclass(frozen=True)
class Setting:
    """One setting of a search. ``default`` None: unset, resolved later (``default_text`` says
    how, for --help). ``wire``: the path inside a SearchSpec (None: this process only); a zero
    there means unset unless the field has presence (``optional``), ``wire_zero`` says zero is a
    value, or it sits in a ``WIRE_GROUPS`` message that is set."""

    name: str
    type: type  # bool, int, float, str; tuple for a list of entries (objectives)
    default: Any
    group: str  # the --help section
    help: str
    choices: tuple[str, ...] | None = None
    min: float | None = None
    max: float | None = None
    min_open: bool = False  # > min, not >= min
    max_open: bool = False
    pattern: str | None = None  # a str setting must match it whole; pattern_text names it
    pattern_text: str = ""
    wire: str | None = None
    wire_max: int | None = None  # a bound of the service: the job turns it into threads
    wire_zero: bool = False
    flag: str = ""  # "": --name-with-dashes
    yaml: str = ""  # "": the name
    default_text: str | None = None
    metavar: str | None = None

    @property
    def cli_flag(self) -> str:
        return self.flag or "--" + self.name.replace("_", "-")

    @property
    def yaml_key(self) -> str:
        return self.yaml or self.name

    @property
    def nullable(self) -> bool:
        return self.default is None

    @property
    def shown_default(self) -> str | None:
        """The default as --help states it (None: nothing to state)."""
        if self.default_text is not None:
            return self.default_text
        if self.default is None or self.type in (bool, tuple):
            return None
        return f"{self.default:g}" if self.type is float else str(self.default)

    @property
    def range_text(self) -> str:
        low = f"{'>' if self.min_open else '>='} {self.min}"
        if self.max is None:
            return low
        if self.min is None:
            return f"{'<' if self.max_open else '<='} {self.max}"
        return (f"in {'(' if self.min_open else '['}{self.min}, "
                f"{self.max}{')' if self.max_open else ']'}")

    def within(self, value: float) -> bool:
        above = self.min is None or (value > self.min if self.min_open else value >= self.min)
        below = self.max is None or (value < self.max if self.max_open else value <= self.max)
        return above and below


def _check_choice(setting: Setting, value: Any) -> None:
    if setting.choices is not None and value is not None and value not in setting.choices:
        raise ConfigError(f"{setting.name}: {value!r} is not one of "
                          f"{', '.join(setting.choices)}")


def _check_number(setting: Setting, value: Any) -> None:
    if value is None or setting.type not in (int, float):
        return
    if setting.type is float and not math.isfinite(value):
        raise ConfigError(f"{setting.name}: must be a finite number, got {value}")
    if not setting.within(value):
        raise ConfigError(f"{setting.name}: must be {setting.range_text}, got {value}")


def _check_pattern(setting: Setting, value: Any) -> None:
    if setting.pattern is not None and value is not None \
            and not re.fullmatch(setting.pattern, value):
        raise ConfigError(f"{setting.name}: {value!r} is not {setting.pattern_text}")


def check_settings(config: object) -> None:
    """ConfigError naming the first setting of ``config`` outside its choices or range: every
    setting's choices first, then numbers, then patterns."""
    for rule in (_check_choice, _check_number, _check_pattern):
        for setting in SETTINGS:
            rule(setting, getattr(config, setting.name))


SPACE = "search space"
STRATEGY = "strategy"
EVALUATION = "evaluation"
TRAINING = "child training (--evaluator train)"
RNN = "recurrent cells (--space rnn-cell/enas-rnn --dataset text)"
LAYOUT = "distributed layout (Zoph & Le: S shards, K replicas, m children)"
RUN = "run"
PRESETS = "the preset's"
# messages whose settings travel together: unset, none of them is sent; set, all of them are
WIRE_GROUPS = ("evaluation.model", "evaluation.recipe")

SETTINGS: tuple[Setting, ...] = (
    Setting("space", str, "nb201", SPACE, "search space", choices=SPACE_NAMES, wire="space.name"),
    Setting("num_blocks", int, None, SPACE, "nasnet/enas-micro: blocks per cell (5); enas-rnn: "
            "nodes (8)", min=1, wire="space.num_blocks"),
    Setting("num_layers", int, None, SPACE, "macro: layers (6)", min=1, wire="space.num_layers"),
    Setting("predict_strides", bool, False, SPACE, "macro: also choose strides",
            wire="space.predict_strides"),
    Setting("strategy", str, "reinforce", STRATEGY, "search strategy", choices=STRATEGIES,
            wire="strategy"),
    Setting("controller", str, "sample-efficient", STRATEGY, "reinforce: controller preset "
            "(ppo: NASNet's PPO learner; --strategy enas: enas)",
            choices=tuple(CONTROLLER_PRESETS), wire="controller.preset"),
    Setting("children", int, None, STRATEGY, "reinforce: children per policy update (m)", min=1,
            wire="controller.children", wire_max=1024, default_text=PRESETS),
    Setting("controller_lr", float, None, STRATEGY, "reinforce: the policy's Adam learning rate",
            min=0, min_open=True, wire="controller.learning_rate", default_text=PRESETS),
    Setting("entropy_weight", float, None, STRATEGY, "reinforce: entropy bonus weight", min=0,
            wire="controller.entropy_weight", default_text=PRESETS),
    Setting("baseline_decay", float, None, STRATEGY, "reinforce: EMA baseline decay", min=0,
            max=1, max_open=True, wire="controller.baseline_decay", default_text=PRESETS),
    Setting("reward_transform", str, None, STRATEGY, "reinforce: reward shaping: cubed (Zoph & "
            "Le), rank (quantile among the rewards seen so far)", choices=TRANSFORM_NAMES,
            wire="controller.reward_transform", default_text=PRESETS),
    Setting("ppo_clip", float, None, STRATEGY, "--controller ppo: clip range epsilon of the "
            "probability ratio", min=0, max=1, min_open=True, max_open=True,
            wire="controller.ppo_clip", default_text=f"{_PPO['clip']:g}"),
    Setting("candidates", int, None, STRATEGY, "reinforce: draws of the policy a surrogate (a "
            "Gaussian process on the architectures trained so far) ranks per proposal; the one "
            "with the highest expected improvement trains (0: train each draw)", min=0,
            wire="controller.candidates", wire_max=1024, default_text=PRESETS),
    Setting("ppo_epochs", int, None, STRATEGY, "--controller ppo: gradient steps over each batch "
            "of children", min=1, wire="controller.ppo_epochs", default_text=str(_PPO["epochs"])),
    Setting("population", int, 10, STRATEGY, "evolution: population size", min=1,
            wire="strategy_options.population"),
    Setting("tournament", int, 3, STRATEGY, "evolution: tournament sample size", min=1,
            wire="strategy_options.tournament"),
    Setting("beam", int, 16, STRATEGY, "pnas: cells trained per progressive step, the top-K of "
            "the surrogate's ranking", min=1, wire="strategy_options.beam"),
    Setting("surrogate", str, "lstm", STRATEGY, "pnas: accuracy predictor, an ensemble of 5 "
            "LSTMs or MLPs", choices=SURROGATES, wire="strategy_options.surrogate"),
    Setting("enas_epochs", int, 10, STRATEGY, "enas: passes of shared-weight training, each "
            "followed by the controller's steps", min=1, wire="strategy_options.enas_epochs"),
    Setting("controller_steps", int, 20, STRATEGY, "enas: controller updates after each pass, "
            "each rewarded by a sampled child's accuracy on a validation minibatch under the "
            "shared weights", min=1, wire="strategy_options.controller_steps"),
    Setting("derive_samples", int, 16, STRATEGY, "enas: children sampled from the final policy "
            "and scored on the validation split; the best-scored trains from scratch first, the "
            "budget's next trainings take the next ones", min=1,
            wire="strategy_options.derive_samples"),
    Setting("evaluator", str, "nb201", EVALUATION, "nb201: NAS-Bench-201 table lookups; train: "
            "build and train each child for real; synthetic (any space): a benchmark "
            "instrument: a seeded reward landscape with a known optimum, no training",
            choices=EVALUATORS, wire="evaluation.evaluator"),
    Setting("dataset", str, None, EVALUATION, "; ".join(
        f"{evaluator}: {', '.join(names)}" for evaluator, names in DATASETS.items()),
            wire="evaluation.dataset", default_text="the evaluator's: " + ", ".join(
                f"{evaluator}: {name}" for evaluator, name in DEFAULT_DATASET.items())),
    Setting("nb201_csv", str, None, EVALUATION, "nb201 table",
            default_text="$NAS_NB201_CSV or ../shared/data"),
    Setting("failure_reward", float, 0.0, EVALUATION, "reward of a failed child",
            wire="evaluation.failure_reward", wire_zero=True),
    Setting("objectives", tuple, (), EVALUATION, "trade accuracy for cost, MnasNet-style "
            "(repeat for several): reward = accuracy * (value/target)^w, w=-0.07 unless given; "
            "':hard' uses w=0 under the target and -1 (or w) over it. METRIC: "
            f"{', '.join(METRICS)} (nb201: params/FLOPs of the benchmark's network, latency on "
            "this CPU). e.g. --objective params:target=8e5:hard. result.json then keeps the raw "
            "accuracy and the Pareto front", wire="objectives", flag="--objective",
            metavar=SYNTAX),
    Setting("simulate_seconds", float, 0.0, EVALUATION, "nb201, synthetic: make each evaluation "
            "take this long, like a child's training", min=0, wire="evaluation.simulate_seconds"),
    Setting("landscape_seed", int, 0, EVALUATION, "synthetic: the reward landscape's seed, its "
            "optimum printed in result.json's evaluator section; --seed seeds the search", min=0,
            wire="evaluation.landscape_seed"),
    Setting("parallel", int, 1, EVALUATION, "children of one batch evaluated at once", min=1,
            wire="execution.parallel", wire_max=256),
    Setting("data_dir", str, None, TRAINING, "dataset directory",
            default_text="fashion-mnist: /usr/share/datasets/fashion-mnist"),
    Setting("train_subset", int, None, TRAINING, "train on this many images", min=1,
            wire="evaluation.train_subset", default_text="all"),
    Setting("val_subset", int, None, TRAINING, "validate on this many held-out images", min=1,
            wire="evaluation.val_subset", default_text="all"),
    Setting("cells", int, 1, TRAINING, "cells per stage, N", min=1, wire="evaluation.model.cells"),
    Setting("filters", int, 8, TRAINING, "initial filters, F", min=1,
            wire="evaluation.model.filters"),
    Setting("drop_path", float, 0.0, TRAINING, "max ScheduledDropPath probability", min=0, max=1,
            max_open=True, wire="evaluation.model.drop_path"),
    Setting("aux_head", bool, False, TRAINING, "auxiliary head (cell spaces)",
            wire="evaluation.model.aux_head"),
    Setting("epochs", int, 1, TRAINING, "epochs per child", min=1,
            wire="evaluation.recipe.epochs"),
    Setting("batch_size", int, 64, TRAINING, "batch size", min=1,
            wire="evaluation.recipe.batch_size"),
    Setting("lr", float, 0.1, TRAINING, "SGD learning rate, cosine-annealed", min=0,
            min_open=True, wire="evaluation.recipe.learning_rate"),
    Setting("weight_decay", float, 3e-4, TRAINING, "weight decay", min=0,
            wire="evaluation.recipe.weight_decay"),
    Setting("label_smoothing", float, 0.0, TRAINING, "label smoothing", min=0, max=1,
            max_open=True, wire="evaluation.recipe.label_smoothing"),
    Setting("reward", str, "last", TRAINING, "last epoch's val accuracy, or max of the last 5 "
            "(Zoph & Le)", choices=("last", "max5"), wire="evaluation.recipe.reward"),
    Setting("cube_reward", bool, False, TRAINING, "cube the reward (Zoph & Le)",
            wire="evaluation.recipe.cube_reward"),
    Setting("device", str, "auto", TRAINING, "auto (cuda if present), cpu, cuda, cuda:N",
            pattern=r"auto|cpu|cuda(:\d+)?", pattern_text="auto, cpu, cuda or cuda:N",
            wire="execution.device"),
    Setting("corpus", str, None, RNN, "text file for the char-level LM children; "
            "--train-subset/--val-subset count characters (validation: the corpus's tail, 10% "
            "by default)", wire="evaluation.corpus",
            default_text="$NAS_DATA_DIR/text/tinyshakespeare.txt"),
    Setting("lm_steps", int, 200, RNN, "Adam steps per child LM; reward = min(1, c / "
            "val_perplexity^2), c = --reward-c (Zoph & Le)", min=1, wire="evaluation.lm_steps"),
    Setting("lm_hidden", int, 64, RNN, "hidden size of the child LM", min=1,
            wire="evaluation.lm_hidden"),
    Setting("bptt", int, 32, RNN, "truncated-BPTT window in characters", min=1,
            wire="evaluation.bptt"),
    Setting("reward_c", float, 80.0, RNN, "c of the reward min(1, c / perplexity^2) (the "
            "default is Zoph & Le's); lower it when good children reach perplexity < sqrt(c)",
            min=0, min_open=True, wire="evaluation.reward_c"),
    Setting("shards", int, 1, LAYOUT, "parameter-server shards, S", min=1),
    Setting("replicas", int, 1, LAYOUT, "controller replicas, K; > 1 or --shards > 1 starts "
            "shard processes on loopback, the replicas share the policy there", min=1,
            wire="execution.replicas", wire_max=256),
    Setting("replica_hosts", int, 1, LAYOUT, "processes the K replicas run in, P: 1 runs them "
            "as threads of the search process; P > 1 starts P `nas serve replica` processes "
            "(replica i on host i mod P), each restarted if it dies, its replicas taken up "
            "again with nothing lost", min=1),
    Setting("redis", str, None, LAYOUT, "Redis URL",
            default_text="with S or K > 1: a private redis-server"),
    Setting("update_policy", str, "async", LAYOUT, "async: apply each push as it comes, by "
            "--staleness-rule; sync: average --sync-pushes pushes per update",
            choices=("async", "sync")),
    Setting("staleness", int, 4, LAYOUT, "async, --staleness-rule reject: the staleness bound "
            "tau in versions", min=0, wire="execution.staleness"),
    Setting("staleness_rule", str, "scale", LAYOUT, "async: a push s versions stale is applied "
            "with the learning rate times min(1, K / s) (scale: with K replicas the mean "
            "staleness is about K, Zhang et al. 2016, so only staler pushes are damped and none "
            "is thrown away) or rejected when s > --staleness (reject: the replica re-pulls)",
            choices=("scale", "reject"), wire="execution.staleness_rule"),
    Setting("sync_pushes", int, None, LAYOUT, "sync: pushes per update", min=1, default_text="K"),
    Setting("checkpoint_every", int, 10, LAYOUT, "shards checkpoint to Redis every N updates",
            min=0),
    Setting("workers", int, 0, LAYOUT, "children trained at once by Ray tasks (0: one at a time "
            "in this process); at least this many are sampled per round", min=0),
    Setting("ray_address", str, None, LAYOUT, "a running Ray cluster, e.g. 10.0.0.5:6380",
            default_text="a private local Ray on loopback"),
    Setting("cpus_per_child", float, 1.0, LAYOUT, "CPUs (and torch threads) per child", min=0),
    Setting("gpus_per_child", float, None, LAYOUT, "GPUs per child; 0.25 packs four on one GPU",
            min=0, default_text=f"{DEFAULT_GPU_SHARE:g} when the cluster has GPUs, else 0"),
    Setting("max_attempts", int, 3, LAYOUT, "attempts per child when its worker process dies or "
            "stops heartbeating; a child that fails by itself is not retried", min=1),
    Setting("heartbeat_seconds", float, 5.0, LAYOUT, "workers report this often"),
    Setting("heartbeat_timeout", float, 60.0, LAYOUT, "a child silent this long is presumed "
            "lost and retried"),
    Setting("early_stopping", str, "none", LAYOUT, "stop children that learn badly: median "
            "(Vizier's median stopping rule) or asha (successive halving); the budget is charged "
            "only the epochs trained", choices=EARLY_STOPPING),
    Setting("grace_epochs", int, 1, LAYOUT, "early stopping: epochs every child trains first",
            min=1),
    Setting("asha_eta", int, 3, LAYOUT, "asha: keep the top 1/eta at each rung", min=2),
    Setting("median_min_trials", int, 3, LAYOUT, "median: finished children needed before "
            "stopping any", min=1),
    Setting("metrics_port", int, None, LAYOUT, "serve Prometheus metrics (nas_trials_* with "
            "--workers, nas_replica_* with --shards/--replicas) at "
            "http://127.0.0.1:PORT/metrics while the search runs (0: a free port)", min=0,
            max=65535),
    Setting("budget", int, 100, RUN, "child trainings to spend", min=1, wire="budget",
            wire_max=100_000, wire_zero=True),
    Setting("seed", int, 0, RUN, "random seed; same seed, same result", min=0, wire="seed",
            wire_zero=True),
    Setting("max_idle_proposals", int, 2000, RUN, "end the search as exhausted after this many "
            "proposals in a row that were all cache hits; the REINFORCE controller samples "
            "without replacement, so it ends early only when it has drawn every architecture",
            min=1),
    Setting("out", str, None, RUN, "directory for result.json",
            default_text="runs/<space>-<strategy>"),
)
BY_NAME = {s.name: s for s in SETTINGS}
BY_YAML_KEY = {s.yaml_key: s for s in SETTINGS}
WIRE_SETTINGS = tuple(s for s in SETTINGS if s.wire is not None)
