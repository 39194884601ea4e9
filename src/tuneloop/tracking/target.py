"""Where runs are tracked: ``mlflow`` (MLflow's own default store) or ``mlflow:URI`` (that tracking URI)."""

from __future__ import annotations

from dataclasses import dataclass

from tuneloop.errors import ConfigError

TRACKERS = ("mlflow",)


@dataclass(frozen=True)
class TrackTarget:
    """A tracker and its URI; a None URI leaves the choice to the tracker ($MLFLOW_TRACKING_URI, else MLflow's
    default: ``sqlite:///mlflow.db`` in the working folder, or ``./mlruns`` where that already holds runs)."""

    tracker: str
    uri: str | None = None

    def __str__(self) -> str:
        return self.tracker if self.uri is None else f"{self.tracker}:{self.uri}"


def track_problems(value: object, name: str = "track") -> list[str]:
    """What is wrong with a ``track`` value (None: no tracking), as messages for a ConfigError."""
    if value is None:
        return []
    if isinstance(value, str):
        tracker, colon, uri = value.partition(":")
        # The URI keeps its own colons (sqlite:///x.db, http://host:5000); only an empty one is refused.
        if tracker in TRACKERS and (not colon or uri.strip()):
            return []
    return [f"The '{name}' parameter must be 'mlflow' or 'mlflow:URI'. Got {value!r} instead."]


def parse_track(value: str | None, name: str = "track") -> TrackTarget | None:
    """The target a ``track`` value names, or None for none; a ConfigError names a bad value."""
    problems = track_problems(value, name)
    if problems:
        raise ConfigError(problems)
    if value is None:
        return None
    tracker, _, uri = value.partition(":")
    return TrackTarget(tracker, uri.strip() or None)


# The command line's help for --track, shared by fit, tune and adapt.
TRACK_HELP = ("also record the runs in MLflow: mlflow (at $MLFLOW_TRACKING_URI, else MLflow's default, "
              "sqlite:///mlflow.db in the working folder) or mlflow:URI; pip install 'tuneloop[mlflow]'")
