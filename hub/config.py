"""Hub configuration: which departments exist, which adapter serves each, how to deliver.

The file is YAML, found at ``HUB_CONFIG`` (default ``./hub.yaml``). Adapter settings are
validated by the adapter's own config model; secret fields must be ``{env: NAME}`` or
``{file: PATH}``. With no file the hub runs with no departments.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from hub.adapters import Adapter, AdapterConfig, SecretSourceError, resolve_secret_reference

CONFIG_ENV = "HUB_CONFIG"
DEFAULT_CONFIG_PATH = Path("hub.yaml")
CRM_CALLBACK = "crm_callback"  # the outbox pseudo-department of the CRM callback plugin


class DeliveryPolicy(BaseModel):
    """How the outbox treats one department."""

    model_config = ConfigDict(extra="forbid")

    max_attempts: int = Field(default=8, ge=1)
    backoff_base_seconds: float = Field(default=2.0, gt=0)
    backoff_cap_seconds: float = Field(default=900.0, gt=0)
    unknown_outcome_delay_seconds: float = Field(default=1.0, ge=0)
    breaker_failures: int = Field(default=10, ge=1, description="failures in a row that pause")
    breaker_cooldown_seconds: float = Field(default=30.0, gt=0)
    max_concurrency: int | None = Field(
        default=None, ge=1, description="in-flight calls per worker (default: the worker's)"
    )
    # Cluster-wide limits, coordinated through the database (all workers together).
    rate_limit_per_second: float | None = Field(
        default=None, gt=0, description="calls per second across all workers (token bucket)"
    )
    max_in_flight: int | None = Field(
        default=None, ge=1, description="leased deliveries at once across all workers"
    )


class DepartmentConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True)

    adapter: str
    enabled: bool = True
    mapping: str | None = Field(
        default=None, description="mapping file's department (default: this department's name)"
    )
    settings: dict[str, Any] = Field(default_factory=dict)
    delivery: DeliveryPolicy = Field(default_factory=DeliveryPolicy)
    # Status sync (docs/status-sync.md). The secret is a reference, resolved when used.
    webhook_secret: dict[str, str] | None = Field(
        default=None, description="HMAC key of POST /webhooks/{department}: {env:} or {file:}"
    )
    poll_interval_seconds: float = Field(default=60.0, gt=0, description="status poll period")
    poll_overlap_seconds: float = Field(
        default=120.0, ge=0, description="re-read this much before the watermark (clock skew)"
    )

    @field_validator("webhook_secret", mode="before")
    @classmethod
    def _secret_reference(cls, value: Any) -> Any:
        return _secret_reference(value)

    def webhook_secret_value(self) -> str | None:
        return _resolve(self.webhook_secret, "webhook_secret")


class CrmCallbackConfig(BaseModel):
    """Where the built-in CRM callback plugin posts status changes (signed like webhooks)."""

    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True)

    url: str
    secret: dict[str, str] = Field(description="HMAC key: {env: NAME} or {file: PATH}")
    timeout_seconds: float = Field(default=10.0, gt=0)
    enabled: bool = True
    delivery: DeliveryPolicy = Field(default_factory=DeliveryPolicy)

    @field_validator("secret", mode="before")
    @classmethod
    def _secret_reference(cls, value: Any) -> Any:
        return _secret_reference(value)

    def secret_value(self) -> str:
        return _resolve(self.secret, "crm_callback.secret") or ""


def _secret_reference(value: Any) -> Any:
    """Secrets are `{env: NAME}` or `{file: PATH}`; a literal in the file is refused."""
    if value is None or (isinstance(value, dict) and {"env", "file"} & set(value)):
        return value
    raise SecretSourceError(
        "secrets must come from the environment or a file (write {env: VAR} or {file: /path})"
    )


def _resolve(reference: dict[str, str] | None, field: str) -> str | None:
    return None if reference is None else str(resolve_secret_reference(reference, field=field))


class WorkerConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    batch_size: int = Field(
        default=64,
        ge=1,
        le=1000,
        description="rows claimed per query; also how many a worker may hold claimed ahead "
        "of its calls, while they get through them within a second",
    )
    concurrency: int = Field(default=128, ge=1, description="calls in flight per worker")
    lease_seconds: float = Field(default=120.0, gt=0)
    idle_poll_seconds: float = Field(default=0.5, gt=0)


class HubConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    mappings: Path = Path("mappings")
    departments: dict[str, DepartmentConfig] = Field(default_factory=dict)
    worker: WorkerConfig = Field(default_factory=WorkerConfig)
    crm_callback: CrmCallbackConfig | None = None
    reconcile_at: str = Field(
        default="02:30", pattern=r"^\d{2}:\d{2}$", description="nightly reconcile, HH:MM UTC"
    )
    source: Path | None = Field(default=None, exclude=True)

    def enabled_departments(self) -> dict[str, DepartmentConfig]:
        return {name: dept for name, dept in self.departments.items() if dept.enabled}

    def policy(self, department: str) -> DeliveryPolicy:
        dept = self.departments.get(department)
        if dept is None and department == CRM_CALLBACK and self.crm_callback:
            return self.crm_callback.delivery
        return dept.delivery if dept else DeliveryPolicy()


class ConfigError(ValueError):
    """A config problem list; each line says file and field."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


def config_path(explicit: Path | str | None = None) -> Path:
    return Path(explicit or os.environ.get(CONFIG_ENV) or DEFAULT_CONFIG_PATH)


def load_config(path: Path | str | None = None) -> HubConfig:
    """Read and validate the hub config (not the adapter settings: see build_adapter)."""
    path = config_path(path)
    if not path.exists():
        if path == DEFAULT_CONFIG_PATH and not os.environ.get(CONFIG_ENV):
            return HubConfig()
        raise ConfigError([f"{path}: config file not found"])
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise ConfigError([f"{where}: yaml: {getattr(exc, 'problem', exc)}"]) from exc
    try:
        config = HubConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_pydantic_problems(path, exc)) from exc
    if not config.mappings.is_absolute():
        config.mappings = (path.parent / config.mappings).resolve()
    config.source = path
    return config


def build_adapter(
    name: str, department: DepartmentConfig, adapter_cls: type[Adapter], *, source: Path | None
) -> Adapter:
    """Instantiate a department's adapter, turning setting errors into ConfigErrors."""
    settings = check_settings(name, department, adapter_cls, source=source)
    return adapter_cls(settings, department=name)


def check_settings(
    name: str, department: DepartmentConfig, adapter_cls: type[Adapter], *, source: Path | None
) -> AdapterConfig:
    """A department's adapter settings, validated (secrets resolved); ConfigError if not."""
    where = str(source or "config")
    try:
        return adapter_cls.config_model.model_validate(department.settings)
    except ValidationError as exc:
        prefix = f"departments.{name}.settings"
        raise ConfigError(_pydantic_problems(Path(where), exc, prefix=prefix)) from exc
    except SecretSourceError as exc:
        raise ConfigError([f"{where}: departments.{name}.settings.{exc}"]) from exc


def _pydantic_problems(path: Path, exc: ValidationError, prefix: str = "") -> list[str]:
    problems = []
    for error in exc.errors():
        loc = ".".join(str(part) for part in error["loc"])
        field = ".".join(part for part in (prefix, loc) if part) or "(top)"
        message = error["msg"]
        if isinstance(error.get("ctx", {}).get("error"), SecretSourceError):
            message = str(error["ctx"]["error"])
        problems.append(f"{path}: {field}: {message}")
    return problems
