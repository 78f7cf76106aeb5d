"""What a caller may do. Views declare the scopes they need; keys and identities carry scopes."""

MODELS_READ = "models:read"
MODELS_WRITE = "models:write"
PREDICT = "predict"
MLFLOW_READ = "mlflow:read"
MLFLOW_WRITE = "mlflow:write"
CONTRIBUTIONS_WRITE = "contributions:write"
WEBHOOKS_MANAGE = "webhooks:manage"
KEYS_MANAGE = "keys:manage"
AUDIT_READ = "audit:read"
ADMIN = "admin"

ALL_SCOPES = (
    MODELS_READ,
    MODELS_WRITE,
    PREDICT,
    MLFLOW_READ,
    MLFLOW_WRITE,
    CONTRIBUTIONS_WRITE,
    WEBHOOKS_MANAGE,
    KEYS_MANAGE,
    AUDIT_READ,
    ADMIN,
)


def grants(held: frozenset[str], needed: str) -> bool:
    """`admin` holds every scope."""
    return needed in held or ADMIN in held
