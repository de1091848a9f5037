"""The runbook's operations as workflows of named steps.

Each module defines its workflows as plain :class:`~jerp_jobs.workflow.Workflow` values;
:mod:`jerp_jobs.catalog` lists them. Step functions are plain Python that take a
:class:`~jerp_jobs.workflow.StepContext` and never import Celery.
"""
