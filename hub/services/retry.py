"""Retry timing and the per-department circuit breaker: pure functions over stored state."""

from __future__ import annotations

import random
from datetime import datetime, timedelta

from hub.config import DeliveryPolicy
from hub.store.repository import DepartmentHealth

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"


def backoff_delay(
    attempt: int,
    policy: DeliveryPolicy,
    *,
    retry_after: float | None = None,
    rng: random.Random | None = None,
) -> float:
    """Seconds until the next attempt: capped exponential with full jitter in its upper
    half, never sooner than the department's Retry-After."""
    rng = rng or random
    ceiling = min(policy.backoff_cap_seconds, policy.backoff_base_seconds * 2 ** (attempt - 1))
    delay = ceiling * (0.5 + rng.random() / 2)
    if retry_after is not None:
        # The department said when; a little jitter keeps many workers from stampeding.
        delay = max(retry_after, 0.0) + rng.random() * min(1.0, policy.backoff_base_seconds)
    return delay


def circuit_allows(health: DepartmentHealth, now: datetime) -> str:
    """'all', 'canary' (one probe delivery) or 'none' for this department right now."""
    if health.paused:
        return "none"
    if health.circuit == CLOSED:
        return "all"
    if health.retry_at is not None and now >= health.retry_at:
        return "canary"
    return "none"


def record_success(health: DepartmentHealth) -> bool:
    """Returns True when this success closed an open circuit."""
    reopened = health.circuit != CLOSED
    health.circuit = CLOSED
    health.consecutive_failures = 0
    health.opened_at = None
    health.retry_at = None
    return reopened


def record_failure(health: DepartmentHealth, policy: DeliveryPolicy, now: datetime) -> bool:
    """Count a failure; returns True when the circuit opens (or re-opens after a canary)."""
    health.consecutive_failures += 1
    failed_canary = health.circuit in (OPEN, HALF_OPEN)
    if failed_canary or health.consecutive_failures >= policy.breaker_failures:
        health.circuit = OPEN
        health.opened_at = now
        health.retry_at = now + timedelta(seconds=policy.breaker_cooldown_seconds)
        return True
    return False
