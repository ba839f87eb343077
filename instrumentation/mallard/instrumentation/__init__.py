"""mallard.instrumentation: one-call OpenTelemetry set-up for services and training jobs (to come)."""
