"""The runbook's operations as workflows of named steps.

Each module registers its workflows with :func:`jerp_jobs.workflow.register`; step functions
are plain Python that take a :class:`~jerp_jobs.workflow.StepContext` and never import Celery.
"""

from jerp_jobs.operations import (  # noqa: F401
    apps,
    backup,
    drill,
    fanout,
    maintenance,
    migrate,
    offboard,
    offsite,
    provision,
    release,
    restore,
)
