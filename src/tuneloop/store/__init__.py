"""The workspace: a SQLite database of runs and an artifact folder per finished run."""
