"""The ``train`` evaluator for recurrent cells (``--dataset text``): each child is a
character-level language model trained for real in this process; reward = 80 / perplexity^2
clipped to [0, 1] (Zoph & Le). Part of the composition root, like ``local_training``."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict

import torch

from controller.evaluators.base import Evaluation, EvaluationFailed, Evaluator, EvaluatorError
from protos.types import Architecture
from worker.text_lm import Corpus, LMRecipe, load_corpus, train_char_lm


class TextLMEvaluator(Evaluator):
    """Trains the char LM of each architecture on ``corpus`` with ``recipe``; metrics carry
    ``val_perplexity``, ``params`` and ``train_seconds``. There is no test split."""

    name = "train"

    def __init__(self, corpus: Corpus, recipe: LMRecipe, threads: int = 1) -> None:
        self.corpus = corpus
        self.recipe = recipe
        self.threads = threads

    @classmethod
    def from_corpus(cls, path: str | None, train_subset: int | None, val_subset: int | None,
                    recipe: LMRecipe) -> TextLMEvaluator:
        """Load the corpus; a missing or too short one raises EvaluatorError naming the flag."""
        try:
            return cls(load_corpus(path, train_subset, val_subset), recipe)
        except ValueError as exc:
            raise EvaluatorError(str(exc)) from None

    @property
    def cache_key(self) -> str:
        c = self.corpus
        ident = json.dumps([c.name, c.vocab, len(c.train), len(c.val), int(c.train.sum()),
                            asdict(self.recipe)], sort_keys=True)
        return f"train:text:{hashlib.sha256(ident.encode()).hexdigest()[:12]}"

    def evaluate(self, arch: Architecture) -> Evaluation:
        torch.set_num_threads(self.threads)
        try:
            result = train_char_lm(arch, self.corpus, self.recipe)
        except (FloatingPointError, ValueError, KeyError) as exc:
            raise EvaluationFailed(f"child failed: {exc}") from None
        params = sum(p.numel() for p in result.model.parameters())
        return Evaluation(reward=result.reward, metrics={
            "val_perplexity": result.val_perplexity, "params": float(params),
            "train_seconds": result.train_seconds})

    def describe(self) -> dict[str, object]:
        """The corpus sizes, the recipe and the reward formula."""
        c = self.corpus
        return {"name": self.name, "cache_key": self.cache_key, "dataset": "text",
                "corpus": c.name, "vocab": len(c.vocab), "train_chars": len(c.train),
                "val_chars": len(c.val), "recipe": asdict(self.recipe),
                "reward": f"min(1, {self.recipe.reward_c:g} / val_perplexity^2)"}
