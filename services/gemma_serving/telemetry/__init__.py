"""OpenTelemetry tracing, span attribute names and Prometheus metric definitions."""
