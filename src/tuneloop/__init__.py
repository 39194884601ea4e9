"""tuneloop: fine-tune a pretrained model on labelled data, with every decision recorded."""

from tuneloop.api import EvaluationReport, Predictions, Run, TuneResult, evaluate, fit, load_run, predict, runs, tune
from tuneloop.config import Recipe
from tuneloop.errors import ConfigError, DataError, ModelError, RunNotFoundError, TuneloopError

__all__ = [
    "ConfigError", "DataError", "EvaluationReport", "ModelError", "Predictions", "Recipe", "Run",
    "RunNotFoundError", "TuneResult", "TuneloopError", "evaluate", "fit", "load_run", "predict", "runs", "tune",
]
__version__ = "0.1.0"
