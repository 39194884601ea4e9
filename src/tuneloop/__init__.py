"""tuneloop: fine-tune a pretrained model on labelled data, with every decision recorded."""

from tuneloop.api import (
    EvaluationReport,
    Predictions,
    Run,
    TuneResult,
    evaluate,
    fit,
    generate,
    load_run,
    predict,
    runs,
    tune,
)
from tuneloop.api import export as export
from tuneloop.config import Recipe
from tuneloop.continual.drift import DriftReport, drift
from tuneloop.continual.update import AdaptResult, adapt
from tuneloop.continual.versions import GateRefused, archive, promote, register, registered_models, rollback, show
from tuneloop.errors import ConfigError, DataError, ModelError, RunNotFoundError, TuneloopError

__all__ = [
    "AdaptResult", "ConfigError", "DataError", "DriftReport", "EvaluationReport", "GateRefused", "ModelError",
    "Predictions", "Recipe", "Run", "RunNotFoundError", "TuneResult", "TuneloopError", "adapt", "archive", "drift",
    "evaluate", "export", "fit", "generate", "load_run", "predict", "promote", "register", "registered_models",
    "rollback", "runs", "show", "tune",
]
__version__ = "0.1.0"
