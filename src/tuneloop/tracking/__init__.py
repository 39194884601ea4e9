"""Recording the workspace's runs and studies in an experiment tracker (MLflow), live or afterwards.

``target.py`` reads where to (``--track mlflow[:URI]``), ``records.py`` says what a run, a trial and a study
become there (pure: plain values read off the workspace's records), and ``mlflow_export.py`` writes that with
MLflow's client. Live tracking and ``tuneloop export`` share one path: a finished trial is exported from the
workspace's records, whether it ended a moment ago or last week.
"""
