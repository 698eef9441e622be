"""The LSTM controller trained with REINFORCE (Zoph & Le 2017) or PPO (NASNet), as a strategy.

The gradient of an update is computed on exactly the recorded actions of its trials and
applied once ``batch_size`` (m) of them have their rewards (trained, or a hit of the shared
cache: a second job that proposes what the first trained updates when the first did). Every
proposal is an architecture the search has not proposed before:

- sampling is without replacement over the search (``controller.policy.novelty``): a sequence
  drawn once is never drawn again;
- a draw whose architecture computes the same function as one already proposed (an isomorphic
  twin: a different sequence, the same canonical hash) is not proposed; when that
  architecture's reward is known, the draw still teaches the policy, for free, in the next
  update (no trial, no cache lookup, no journal entry); draws go on, a bounded number of times,
  until one is new. A search ends early only when nothing new can be found (exhausted);
- with ``candidates`` > 0, each proposal is the most promising of that many new draws by a
  surrogate's expected improvement (``controller.policy.ranking``);
- a policy that has collapsed onto a region whose architectures were all proposed draws
  nothing new: after its draws for a proposal come back empty, the proposal is drawn uniformly
  among the choices left (exploration; the policy learns from it as from any trial), and the
  policy's draws per proposal halve each time that happens and double each time they find
  something (between 1 and ``DRAWS``), so a collapsed controller costs little per proposal. A
  search ends early only when the space itself is exhausted.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch

from controller.policy.lstm import LSTMPolicy, Masks, PolicyConfig
from controller.policy.novelty import NoveltyIndex
from controller.policy.ppo import make_learner
from controller.policy.ranking import OverlapGP
from controller.policy.reinforce import ReinforceConfig, ScoredTrial, UpdateStats
from controller.policy.updaters import ParameterUpdater
from controller.spaces.base import SearchSpace
from controller.strategies.base import Strategy
from protos.types import Architecture, Trial, TrialResult, TrialStatus

DRAWS = 64  # draws of the policy one proposal may take to find a new architecture
EXPLORE = 100_000  # uniform draws one proposal may take after the policy's came back empty
ROWS = 8  # sequences drawn at once while looking for new ones
MAX_BATCH = 256  # scored trials (free twins included) an update takes at most
Draw = tuple[tuple[int, ...], float, Masks]  # actions, their log-prob, the masks applied
Sample = tuple[tuple[int, ...], float, Masks, bool]  # a Draw, and whether it hit a dead end


class ReinforceStrategy(Strategy):
    """Samples from an LSTMPolicy and updates it every ``batch_size`` scored proposals."""

    name = "reinforce"

    def __init__(self, space: SearchSpace, seed: int = 0, batch_size: int = 1,
                 policy: PolicyConfig | None = None, learner: ReinforceConfig | None = None,
                 job_id: str = "",
                 updater: Callable[[LSTMPolicy], ParameterUpdater] | None = None,
                 novelty: NoveltyIndex | None = None, with_replacement: bool = False,
                 candidates: int = 0, ranker: OverlapGP | None = None,
                 warmup: int = 10) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        if candidates < 0 or warmup < 2:
            raise ValueError("candidates must be >= 0 and warmup >= 2")
        super().__init__(space, job_id)
        self.batch_size = batch_size
        self.policy = LSTMPolicy(space.decisions, policy, seed=seed)
        self.learner = make_learner(self.policy, learner,
                                    updater(self.policy) if updater is not None else None)
        # the sequences and architectures drawn (shared by a job's replicas); None: sampling
        # with replacement (ENAS's controller steps)
        if novelty is None and not with_replacement:
            novelty = NoveltyIndex([d.num_choices for d in space.decisions])
        self.novelty = None if with_replacement else novelty
        # ranking: each proposal is the most promising of ``candidates`` new draws by the
        # surrogate's expected improvement, once it has ``warmup`` results
        self.candidates = candidates if self.novelty is not None else 0
        if ranker is None and self.candidates:
            ranker = OverlapGP(len(space.decisions))
        self.ranker = ranker if self.candidates else None
        self.warmup = warmup
        self._drawn: dict[str, Draw] = {}  # trial id -> how it was drawn
        self.generator = torch.Generator().manual_seed(seed + 1)
        self.rng = random.Random(seed + 2)  # the uniform draws of exploration
        self.draws = DRAWS  # the policy's draws per proposal now (adapts: see the module)
        self.explored = 0  # proposals drawn uniformly
        self._scored: list[ScoredTrial] = []
        self._proposals = 0  # of ``_scored``: proposals (the rest are free twins)
        self.free = 0  # twins the policy learned from without proposing them
        self.last_update: UpdateStats | None = None

    def suggest(self, n: int = 1) -> list[Trial]:
        """Up to ``n`` trials of architectures not proposed before (fewer, or none, when
        ``DRAWS`` draws found nothing new: the search is exhausted)."""
        trials: list[Trial] = []
        for _ in range(self.draws):
            if len(trials) == n or (self.novelty is not None and self.novelty.exhausted()):
                break
            if self.ranker is not None and len(self.ranker) >= self.warmup:
                trial = self._ranked()
                trials += [trial] if trial is not None else []
                continue
            for draw in self._draw(max(n - len(trials), ROWS if self.novelty else 1)):
                if len(trials) == n:
                    break  # unused rows are not recorded: as if never drawn
                trial = self._claim(draw)
                trials += [trial] if trial is not None else []
        if self.novelty is not None:
            found = len(trials)
            trials += self._explore(n - len(trials))
            self.draws = min(2 * self.draws, DRAWS) if found == n else max(self.draws // 2, 1)
        self._maybe_update()  # free twins may have filled a batch
        return trials

    def _explore(self, n: int) -> list[Trial]:
        """Up to ``n`` trials drawn uniformly among the choices left (the policy found
        nothing new); fewer only when the space is exhausted."""
        assert self.novelty is not None
        trials: list[Trial] = []
        for _ in range(EXPLORE):
            if len(trials) == n or self.novelty.exhausted():
                break
            row = self.novelty.uniform(self.rng)
            if row is None:
                continue
            with torch.no_grad():
                log_prob = float(self.policy.log_prob(torch.tensor([row])).log_probs.sum())
            trial = self._claim((row, log_prob, {}, False))
            if trial is not None:
                self.explored += 1
                trials.append(trial)
        return trials

    def _draw(self, rows: int) -> list[Sample]:
        out = self.policy.sample(rows, generator=self.generator, novelty=self.novelty)
        return list(zip(map(tuple, out.actions.tolist()), out.log_probs.sum(dim=1).tolist(),
                        out.masks or [{}] * rows, out.dead, strict=True))

    def _claim(self, draw: Sample) -> Trial | None:
        """A draw as a trial when its architecture is new; a twin of one whose reward is
        known becomes a free lesson for the policy; anything else is dropped."""
        row, log_prob, masks, dead = draw
        if self.novelty is not None and (dead or not self.novelty.add(row)):
            return None
        arch = self.space.decode(row)
        if self.novelty is None:
            return self._issue((row, log_prob, masks), arch)
        new, reward = self.novelty.claim(self.space.canonical_hash(arch))
        if new:
            return self._issue((row, log_prob, masks), arch)
        if reward is not None:
            self.free += 1
            twin = Trial(f"{self.job_id}-free{self.free}", arch, row, "",
                         self.learner.version, self.job_id)
            self._scored.append(ScoredTrial(
                twin, TrialResult(twin.trial_id, TrialStatus.SUCCEEDED, reward, cached=True),
                log_prob, masks))
        return None

    def _issue(self, draw: Draw, arch: Architecture) -> Trial:
        trial = self._new_trial(arch, draw[0], policy_version=self.learner.version)
        self._drawn[trial.trial_id] = draw
        return trial

    def _ranked(self) -> Trial | None:
        """The new draw with the highest expected improvement among ``candidates`` draws."""
        assert self.novelty is not None and self.ranker is not None
        found: dict[tuple[int, ...], Draw] = {}
        for row, log_prob, masks, dead in self._draw(self.candidates):
            if not dead and row not in found and not self.novelty.seen(row):
                found[row] = (row, log_prob, masks)
        rows = list(found)
        for i in (self.ranker.expected_improvement(rows).argsort()[::-1] if rows else []):
            trial = self._claim((*found[rows[int(i)]], False))
            if trial is not None:
                return trial
        return None

    def issued(self, trial_id: str) -> bool:
        """Whether ``trial_id`` is a proposal of this strategy waiting for its result."""
        return trial_id in self._pending

    def adopt(self, trial_id: str, actions: Sequence[int]) -> None:
        """Take a trial another strategy of the job proposed (a replica lost with its host)
        as if it were this one's: its result, reported next, teaches this policy (the
        gradient is computed on the actions, so a policy that never drew them learns the
        same from them)."""
        arch = self.space.decode(list(actions))
        trial = Trial(trial_id, arch, tuple(actions), self.space.canonical_hash(arch),
                      self.learner.version, self.job_id)
        self._pending[trial_id] = trial
        if self.novelty is not None:  # never proposed again
            self.novelty.add(trial.actions)
            self.novelty.claim(trial.arch_hash)

    def withdraw(self, trial_id: str, reward: float | None) -> None:
        """Take back a proposal that will not be evaluated (another replica of the job, on
        another host, proposed its architecture): with its ``reward`` known it teaches the
        policy for free, as an isomorphic twin does; unknown, it is dropped."""
        trial = self._pending.pop(trial_id, None)
        draw = self._drawn.pop(trial_id, None)
        if trial is None:
            return
        if reward is not None:
            self.free += 1
            _, log_prob, masks = draw if draw is not None else (trial.actions, None, {})
            self._scored.append(ScoredTrial(
                trial, TrialResult(trial_id, TrialStatus.SUCCEEDED, reward, cached=True),
                log_prob, masks))
        self._maybe_update()

    def report(self, trial_id: str, result: TrialResult) -> None:
        trial = self._take(trial_id, result)
        _, log_prob, masks = self._drawn.pop(trial_id, (trial.actions, None, {}))
        if self.novelty is not None:
            self.novelty.settle(trial.arch_hash, result.reward)
        if self.ranker is not None:
            self.ranker.observe(trial.actions, result.reward)
        self._scored.append(ScoredTrial(trial, result, log_prob, masks))
        self._proposals += 1
        self._maybe_update()

    def _maybe_update(self) -> None:
        """An update once ``batch_size`` proposals were scored (free twins ride along; at
        most ``MAX_BATCH`` wait)."""
        if self._scored and (self._proposals >= self.batch_size
                             or len(self._scored) >= MAX_BATCH):
            batch, self._scored, self._proposals = self._scored, [], 0
            self.last_update = self.learner.update(batch)

    def resume(self, history: Iterable[tuple[Sequence[int], float]]) -> None:
        """Never propose again what an earlier run of the job proposed, and rank draws knowing
        its results (its policy comes back from the parameter servers, or starts afresh
        without them)."""
        for actions, reward in history:
            if self.novelty is not None:
                self.novelty.add(actions)
                key = self.space.canonical_hash(self.space.decode(actions))
                self.novelty.claim(key)
                self.novelty.settle(key, reward)
            if self.ranker is not None:
                self.ranker.observe(actions, reward)

    def stats(self) -> dict[str, float]:
        if self.last_update is None:
            return {}
        return {"baseline": self.last_update.baseline, "entropy": self.last_update.entropy,
                "mean_reward": self.last_update.reward, "free_twins": float(self.free),
                "explored": float(self.explored),
                "rewards_seen": float(self.learner.stats.count),
                "policy_version": float(self.learner.version)}

    def checkpoint(self) -> dict[str, Any]:
        """What a resumed run of the job needs to learn on where this one is (a JSON document,
        bounded whatever the job's length): the learner's statistics (``RewardStats``) and,
        when the policy's parameters live in this process (local Adam), those and Adam's
        state; with parameter servers the shards checkpoint the parameters themselves."""
        doc: dict[str, Any] = {"version": self.learner.version,
                               "learner": self.learner.stats.state(),
                               "free_twins": self.free, "explored": self.explored}
        policy = self.learner.updater.snapshot()
        if policy is not None:
            doc["policy"] = policy
        return doc

    def restore(self, doc: Mapping[str, Any]) -> None:
        """Take up a ``checkpoint`` (the parameters only when this strategy keeps them)."""
        if "learner" in doc:
            self.learner.stats.restore(doc["learner"])
        self.free = int(doc.get("free_twins", self.free))
        self.explored = int(doc.get("explored", self.explored))
        if "policy" in doc:
            self.learner.updater.load(doc["policy"])
