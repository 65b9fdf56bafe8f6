"""The version of training and evaluation that their tasks' cache keys hold.

    from alexnet_pipeline.versions import TRAIN_VERSION, EVALUATE_VERSION

Kept apart from train.py and evaluate.py, which import torch (seconds): a
re-run whose stages are all cached computes their keys without importing it.
"""

# Part of the fine-tune task's cache key: bump when a change to training
# (train.py, transforms.py, device_data.py, model.py) changes its results.
TRAIN_VERSION = 3

# Part of the evaluation task's cache key: bump when a change to evaluate.py
# (or to how checkpoints are loaded) changes what evaluate_checkpoint returns.
EVALUATE_VERSION = 2
