"""Stand-ins for outside services, for integration tests and benchmarks."""
