"""Proxy training: the short training run whose validation accuracy is a trial's reward."""

from kubenas.training.datasets import (DATASETS, Splits, load_dataset, load_dataset_spec, load_test_split,
                                       normalization, preflight_dataset)
from kubenas.training.proxy import EpochReport, TrainConfig, TrainOutcome, TrialInterrupted, train_proxy

__all__ = ["DATASETS", "Splits", "load_dataset", "load_dataset_spec", "load_test_split", "normalization",
           "preflight_dataset", "EpochReport", "TrainConfig", "TrainOutcome",
           "TrialInterrupted", "train_proxy"]
