"""RNN cell search: the rnn-cell and enas-rnn spaces, their char-LM children on tinyshakespeare,
the Zoph & Le perplexity reward, and a search through the CLI."""

from __future__ import annotations

import json
import math
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from controller.service.client import SearchClient
from controller.spaces import InvalidArchitecture, create_space
from controller.spaces.rnn import RNNTreeSpace
from protos.errors import InvalidArgumentError
from protos.types import SearchSpaceSpec
from protos.v1 import common_pb2 as pb
from protos.v1 import search_pb2 as sp
from worker.builders.rnn import build_char_lm
from worker.text_lm import LMRecipe, default_corpus, load_corpus, perplexity_reward, train_char_lm

ROOT = Path(__file__).resolve().parents[1]
RNN_SPACES = ("rnn-cell", "enas-rnn")


@pytest.fixture(scope="module")
def corpus_path() -> Path:
    path = default_corpus()
    assert path.is_file(), f"tinyshakespeare missing at {path} (set NAS_DATA_DIR)"
    return path


@pytest.mark.parametrize("name", RNN_SPACES)
def test_sampled_cells_are_valid_and_round_trip(name: str) -> None:
    space = create_space(name)
    rng = random.Random(3)
    for _ in range(50):
        arch = space.sample_random(rng)
        space.validate(arch)
        assert space.from_string(space.to_string(arch)) == arch
        assert space.decode(space.encode(arch)) == arch


def test_tree_space_follows_zoph_le_base_8() -> None:
    # Arrange
    space = RNNTreeSpace()
    kinds = [d.kind for d in space.decisions]
    # Assert: 15 nodes x (combine, activation), the inject's pair, then the two cell indices
    assert kinds == ["combine", "activation"] * 16 + ["index", "index"]
    assert space.decisions[-1].num_choices == 14
    arch = space.decode([0] * len(space.decisions))
    assert arch.nodes[14].inputs == (12, 13) and arch.nodes[8].inputs == (0, 1)
    assert space.to_string(arch).endswith(";inject=0:add.tanh;cell=0")


def test_bad_cell_strings_name_what_is_wrong() -> None:
    with pytest.raises(InvalidArchitecture, match=r"nodes\[0\].op"):
        create_space("rnn-cell").from_string(",".join(["add.swish"] * 15)
                                              + ";inject=0:add.tanh;cell=1")
    with pytest.raises(InvalidArchitecture, match=r"nodes\[2\].inputs"):
        create_space("enas-rnn").from_string("tanh;0:relu;5:tanh;0:relu;0:relu;0:relu;0:relu;"
                                             "0:relu")


CELLS = {"rnn-cell": ",".join(["add.tanh", "mult.sigmoid"] * 7 + ["add.tanh"])
           + ";inject=4:add.relu;cell=10",
           "enas-rnn": "tanh;0:relu;1:tanh;1:identity;0:sigmoid;2:tanh;3:relu;4:tanh"}


@pytest.mark.parametrize("name", RNN_SPACES)
def test_built_language_model_runs_forward_and_backward(name: str) -> None:
    # Arrange
    arch = create_space(name).from_string(CELLS[name])
    model = build_char_lm(arch, vocab=30, hidden=16)
    tokens = torch.randint(0, 30, (4, 7))
    # Act
    logits, (h, c) = model(tokens, model.init_state(4, torch.device("cpu")))
    logits.sum().backward()
    # Assert
    assert logits.shape == (4, 7, 30) and torch.isfinite(logits).all()
    assert h.shape == c.shape == (4, 16)
    assert model.embed.weight.grad is not None and model.embed.weight.grad.abs().sum() > 0


def test_cell_index_picks_c_t_and_inject_reads_c_prev() -> None:
    # Arrange: leaf 0 = W0 x + U0 h (identity) is c_t; c_{t-1} is multiplied into leaf 1
    space = RNNTreeSpace()
    text = ",".join(["add.identity"] * 15) + ";inject=1:mult.identity;cell=0"
    model = build_char_lm(space.from_string(text), vocab=10, hidden=8)
    x, h = torch.randn(2, 8), torch.randn(2, 8)
    cell = model.cell
    # Act
    h1, c1 = cell(x, (h, torch.zeros(2, 8)))
    h2, c2 = cell(x, (h, torch.ones(2, 8)))
    # Assert
    leaf0 = cell.w_x(x)[:, :8] + cell.w_h(h)[:, :8]
    assert torch.allclose(c1, leaf0) and torch.allclose(c2, leaf0)
    assert not torch.allclose(h1, h2)  # the injected c_{t-1} reaches the root


def test_training_lowers_validation_perplexity(corpus_path: Path) -> None:
    # Arrange
    torch.set_num_threads(1)
    corpus = load_corpus(corpus_path, train_subset=20_000, val_subset=3_000)
    arch = create_space("enas-rnn").from_string(CELLS["enas-rnn"])
    untrained = train_char_lm(arch, corpus, LMRecipe(steps=1, learning_rate=1e-6))
    # Act
    trained = train_char_lm(arch, corpus, LMRecipe(steps=60))
    # Assert
    assert len(corpus.vocab) == 65  # tinyshakespeare's characters
    assert untrained.val_perplexity > 50
    assert trained.val_perplexity < 0.5 * untrained.val_perplexity
    assert trained.reward == pytest.approx(min(1.0, 80 / trained.val_perplexity ** 2))


def test_reward_is_c_over_perplexity_squared_clipped() -> None:
    assert perplexity_reward(10.0) == pytest.approx(0.8)
    assert perplexity_reward(40.0) == pytest.approx(0.05)
    assert perplexity_reward(4.0) == 1.0  # 80/16 = 5, clipped to [0, 1]
    assert perplexity_reward(math.inf) == 0.0 and perplexity_reward(math.nan) == 0.0
    assert perplexity_reward(10.0, c=40.0) == pytest.approx(0.4)


def test_corpus_errors_name_the_setting(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"^corpus: cannot read"):
        load_corpus(tmp_path / "none.txt")
    (tmp_path / "short.txt").write_text("abc")
    with pytest.raises(ValueError, match=r"^val_subset:"):
        load_corpus(tmp_path / "short.txt", val_subset=5)


def _nas(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "nas", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=120, env=dict(os.environ))


def test_search_through_the_cli(tmp_path: Path, corpus_path: Path) -> None:
    # Act
    proc = _nas("search", "--space", "rnn-cell", "--evaluator", "train", "--dataset", "text",
                "--corpus", str(corpus_path), "--budget", "3", "--train-subset", "20000",
                "--val-subset", "3000", "--lm-steps", "40", "--reward-c", "60",
                "--out", str(tmp_path), "--quiet")
    # Assert
    assert proc.returncode == 0, proc.stderr
    doc = json.loads((tmp_path / "result.json").read_text())
    assert doc["trainings"] == 3 and doc["evaluator"]["train_chars"] == 20000
    assert doc["evaluator"]["reward"] == "min(1, 60 / val_perplexity^2)"
    done = [h for h in doc["history"] if h.get("status") != "failed"]
    assert done, doc["history"]
    for entry in done:
        ppl = entry["metrics"]["val_perplexity"]
        assert 1 < ppl < 65 and entry["reward"] == pytest.approx(perplexity_reward(ppl, 60))
    assert doc["best"]["reward"] == max(h["reward"] for h in doc["history"])
    create_space("rnn-cell").from_string(doc["best"]["arch"])
    exported = _nas("export", str(tmp_path), "--top", "1", "--to", str(tmp_path / "bundle"))
    assert exported.returncode == 0, exported.stderr
    bundle = next((tmp_path / "bundle").iterdir())
    assert (bundle / "genotype.txt").read_text().strip() == doc["best"]["arch"]
    assert (bundle / "cell.png").stat().st_size > 1000


@pytest.mark.parametrize(("flags", "message"), [
    (["--space", "nb201", "--dataset", "text"], "dataset: recurrent cells"),
    (["--space", "enas-rnn"], "dataset: recurrent cells"),
    (["--space", "rnn-cell", "--dataset", "text", "--corpus", "/nonexistent.txt"],
     "corpus: cannot read"),
    (["--space", "rnn-cell", "--dataset", "text", "--lm-steps", "0"], "lm_steps: must be >= 1"),
    (["--space", "rnn-cell", "--dataset", "text", "--reward-c", "0"], "reward_c: must be > 0"),
])
def test_bad_settings_exit_2_naming_the_setting(flags: list[str], message: str) -> None:
    proc = _nas("search", "--evaluator", "train", *flags, "--budget", "1", "--quiet")
    assert proc.returncode == 2
    assert message in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def _text_spec(corpus: Path, lm_steps: int = 30) -> sp.SearchSpec:
    return sp.SearchSpec(space=pb.SearchSpaceSpec(name="enas-rnn", num_blocks=4),
                         strategy="random", budget=2, evaluation=sp.EvaluationSpec(
                             evaluator="train", dataset="text", corpus=str(corpus),
                             train_subset=10_000, val_subset=2_000, lm_steps=lm_steps,
                             lm_hidden=32, bptt=16))


def test_the_service_runs_an_rnn_search(client: SearchClient, corpus_path: Path) -> None:
    # Act
    job_id = client.submit(_text_spec(corpus_path))
    job = client.wait(job_id, 120)
    # Assert
    assert job.state == sp.JOB_STATE_SUCCEEDED, job.reason
    assert job.trainings == 2 and 0 < job.best_reward <= 1
    assert job.spec.evaluation.corpus == str(corpus_path) and job.spec.evaluation.lm_steps == 30
    create_space(SearchSpaceSpec("enas-rnn", num_blocks=4)).from_string(job.best_arch)
    with pytest.raises(InvalidArgumentError, match=r"spec\.evaluation\.lm_steps: must be >= 1"):
        client.submit(_text_spec(corpus_path, lm_steps=-1))
