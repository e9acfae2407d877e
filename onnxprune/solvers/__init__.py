"""Solvers: streaming statistics, entropic sparse regression, exact re-fit and ranking baselines."""
from .entropic import ConsumerProblem, EntropicFit, EntropicRegression, fit_entropic
from .ranking import rank_channels
from .refit import Refit, columns_of, error_curve, refit
from .statistics import CentredStatistics, LinearStatistics

__all__ = [
    "CentredStatistics",
    "ConsumerProblem",
    "EntropicFit",
    "EntropicRegression",
    "LinearStatistics",
    "Refit",
    "columns_of",
    "error_curve",
    "fit_entropic",
    "rank_channels",
    "refit",
]
