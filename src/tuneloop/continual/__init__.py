"""Continual adaptation: the registry's samples, drift checks, updates that do not forget, and the promotion gate."""
