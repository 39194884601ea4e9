"""Reading a trial's curves (diagnose) and choosing the next recipe from them (policy)."""
