"""Operator observability: Prometheus metrics, structured JSON logs with redaction, `hub top`."""
