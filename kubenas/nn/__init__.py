"""PyTorch networks from genotypes. Imports torch: the shared core never imports this."""

from kubenas.nn.cost import count_parameters, multiply_adds
from kubenas.nn.networks import ModelConfig, build_model

__all__ = ["ModelConfig", "build_model", "count_parameters", "multiply_adds"]
