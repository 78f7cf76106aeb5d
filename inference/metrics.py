"""Prometheus metrics of the serving path, exported at /metrics with the rest (multiprocess
files under gunicorn, so every worker counts)."""

from prometheus_client import Counter, Histogram

PREDICTIONS = Counter(
    "hokusai_predictions_total",
    "Prediction requests answered, by model, version and HTTP status",
    ["model_id", "version", "status"],
)
PREDICTION_SECONDS = Histogram(
    "hokusai_prediction_seconds",
    "Time to answer a prediction request, loading included",
    ["model_id"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
CACHE_HITS = Counter("hokusai_model_cache_hits_total", "Predictions served by a loaded model")
CACHE_MISSES = Counter("hokusai_model_cache_misses_total", "Predictions that had to load a model")
EVICTIONS = Counter("hokusai_model_cache_evictions_total", "Models unloaded to stay in bounds")
LOADS = Counter("hokusai_model_loads_total", "Models loaded")
LOAD_FAILURES = Counter("hokusai_model_load_failures_total", "Model loads that failed")
LOAD_SECONDS = Histogram(
    "hokusai_model_load_seconds",
    "Time to fetch and load a model",
    buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
)
