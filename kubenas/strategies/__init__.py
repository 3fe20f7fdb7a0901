"""Search strategies behind one ask/tell interface."""

from kubenas.strategies.base import Result, Strategy, Trial
from kubenas.strategies.random_search import RandomSearch

__all__ = ["Result", "Strategy", "Trial", "RandomSearch"]
