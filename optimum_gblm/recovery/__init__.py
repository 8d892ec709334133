"""Recovery after pruning (PERP): retrain a small parameter subset with the transformers Trainer, keep the sparsity."""

from .config import LORA_SUBSETS, SUBSETS, RecoveryConfig
from .run import run_recovery

__all__ = ["LORA_SUBSETS", "RecoveryConfig", "SUBSETS", "run_recovery"]
