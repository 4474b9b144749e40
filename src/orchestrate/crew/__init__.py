"""The crew: spec loading, the crew file, and the task graph."""
