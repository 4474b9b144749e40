"""Running the task graph: the task lifecycle and the local thread executor."""
