"""Training: conversation trees -> SFT/DPO rows -> LoRA adapters (trl + peft)."""

from aloekit.training.data import (
    FlattenReport,
    conversation_rows,
    data_hash,
    dpo_rows,
    sft_rows,
    split_by_conversation,
    tree_rows,
    trees_from_rows,
)
from aloekit.training.train import (
    LoraSettings,
    TrainConfig,
    TrainingDataError,
    build_train_config,
    check_train_inputs,
    load_rows,
    train,
)

__all__ = [
    "FlattenReport",
    "LoraSettings",
    "TrainConfig",
    "TrainingDataError",
    "build_train_config",
    "check_train_inputs",
    "conversation_rows",
    "data_hash",
    "dpo_rows",
    "load_rows",
    "sft_rows",
    "split_by_conversation",
    "train",
    "tree_rows",
    "trees_from_rows",
]
