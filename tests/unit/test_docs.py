"""The reference in docs/ keeps up with the code: every setting is documented, and every
relative link between the documents leads to a file that exists."""

from __future__ import annotations

import re
from dataclasses import fields
from pathlib import Path

import pytest

from cofounder_server.config import ENV_PREFIX, Settings

ROOT = Path(__file__).resolve().parents[2]
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


@pytest.mark.parametrize("setting", [f.name for f in fields(Settings)])
def test_every_setting_has_its_row_in_the_configuration_reference(setting: str) -> None:
    reference = (ROOT / "docs" / "configuration.md").read_text(encoding="utf-8")
    flag = "--" + setting.replace("_", "-")
    rows = [line for line in reference.splitlines() if line.startswith(f"| `{flag}` |")]
    assert rows, f"{flag} is missing from docs/configuration.md"
    assert f"`{ENV_PREFIX}{setting.upper()}`" in rows[0]


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda path: path.name)
def test_relative_links_lead_to_files_that_exist(document: Path) -> None:
    text = document.read_text(encoding="utf-8")
    for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text):
        if "://" in target:
            continue
        assert (document.parent / target).exists(), f"{document.name} links to a missing {target}"
