"""Every setting is documented: a line of .env.example and a row of the README's configuration
table name its variable."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from jerp_jobs.settings import SECRET_VARIABLES, Settings

ROOT = Path(__file__).resolve().parent.parent


def _variable(name: str) -> str:
    if name in SECRET_VARIABLES:
        return SECRET_VARIABLES[name]
    alias = Settings.model_fields[name].validation_alias
    choices = getattr(alias, "choices", None)
    return str(choices[0]) if choices else f"JERP_{name.upper()}"


@pytest.mark.parametrize("variable", sorted(_variable(name) for name in Settings.model_fields))
def test_the_variable_is_in_env_example_and_the_readme_table(variable: str) -> None:
    example = (ROOT / ".env.example").read_text()
    readme = (ROOT / "README.md").read_text()
    assert re.search(rf"^#? ?{variable}=", example, re.MULTILINE), f"{variable} missing from .env.example"
    assert re.search(rf"^\|[^\n]*`{variable}`", readme, re.MULTILINE), f"{variable} missing from the README table"
