"""JSON logs with correlation ids, Prometheus metrics, health and readiness router."""
