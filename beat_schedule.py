"""The periodic jobs Celery Beat sends (``celery -A jerp_jobs beat``), in UTC.

Built from the settings when the app is configured: an entry's timing is configuration.
"""

from __future__ import annotations

from typing import Any


def beat_schedule(settings: Any) -> dict[str, dict[str, Any]]:
    return {
        "resume-stalled-steps": {
            "task": "jerp.resume",
            "schedule": float(settings.resume_interval),
            "options": {"queue": "jerp.control", "expires": float(settings.resume_interval)},
        },
    }
