"""Seeing the service run: Prometheus metrics and alerts (``metrics``), answer traces to LangSmith (``tracing``)
and OpenTelemetry (``otel``). Fed plain values and answers; knows nothing of the wings above it."""
