"""Observability: Prometheus metrics, OpenTelemetry traces and the run report."""
