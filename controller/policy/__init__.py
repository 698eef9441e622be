"""Controller policies and their learning rules (plain PyTorch; no grpc, no generated code)."""

from controller.policy.lstm import PRESETS, LSTMPolicy, PolicyConfig, PolicyOutput
from controller.policy.reinforce import ReinforceConfig, ReinforceLearner, ScoredTrial

__all__ = ["PRESETS", "LSTMPolicy", "PolicyConfig", "PolicyOutput", "ReinforceConfig",
           "ReinforceLearner", "ScoredTrial"]
