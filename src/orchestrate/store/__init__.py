"""The run store: one folder per run with its state, events, task outputs and files."""
