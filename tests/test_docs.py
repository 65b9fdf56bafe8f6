"""The documentation site (mkdocs.yml, docs/) builds under --strict: no link to
a missing page or heading, no page left out of the navigation. Its
configuration reference is generated from the config's pydantic models and
lists every field with its declaration; the README's links land on pages and
headings that exist. The commands on the pages are checked by test_readme.py."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Annotated

import pytest
from pydantic import BaseModel, Field

from alexnet_pipeline.config import RUN_OPTIONS, PipelineConfig

REPO = Path(__file__).resolve().parent.parent
# docs/ is no package: the generator is loaded from its file, as MkDocs loads its hooks.
_spec = importlib.util.spec_from_file_location("gen_config_reference", REPO / "docs" / "gen_config_reference.py")
gen_config_reference = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(gen_config_reference)

HAVE_MKDOCS = all(importlib.util.find_spec(name) for name in ("mkdocs", "material"))
needs_mkdocs = pytest.mark.skipif(not HAVE_MKDOCS and not os.environ.get("CI"),
                                  reason='mkdocs and mkdocs-material missing: pip install -e ".[docs]"')


def config_fields(model: type[BaseModel] = PipelineConfig, prefix: str = "") -> list[tuple[str, object]]:
    """(dotted key, FieldInfo) of every setting, sections walked."""
    out = []
    for name, field in model.model_fields.items():
        if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
            out += config_fields(field.annotation, f"{prefix}{name}.")
        else:
            out.append((f"{prefix}{name}", field))
    return out


@needs_mkdocs
def test_the_site_builds_strictly_with_the_generated_reference(tmp_path):
    # Material's end-of-life notice is a banner on stderr, not a build warning.
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1", "PYTHONPATH": str(REPO)}
    built = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                           cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    output = built.stdout + built.stderr
    assert built.returncode == 0, output
    assert "WARNING" not in output, output
    page = (tmp_path / "site" / "configuration" / "index.html").read_text()
    assert gen_config_reference.MARKER not in page
    for key, _ in config_fields():
        assert f"<code>{key}</code>" in page, f"{key} is missing from the built configuration reference"
    assert (tmp_path / "site" / "img" / "accuracy.png").is_file()
    assert not list((tmp_path / "site").rglob("*.py")), "the generator script was published with the site"


def reference_rows(markdown: str) -> dict[str, list[str]]:
    rows = {}
    for line in markdown.splitlines():
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]]
        if cells and cells[0].startswith("`"):
            rows[cells[0].strip("`")] = cells
    return rows


def test_the_reference_has_every_setting_with_its_flag_default_range_and_description():
    rows = reference_rows(gen_config_reference.reference_markdown())
    assert sorted(rows) == sorted(key for key, _ in config_fields())
    flags = {option.path: option for option in RUN_OPTIONS.values()}
    for key, field in config_fields():
        _, flag, kind, bounds, default, description = rows[key]
        assert (flag != "") == (key in flags), (key, flag)
        assert description, f"{key} has no description in config.py"
        assert description.replace("\\", "").replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&") \
            == field.description
    assert rows["train.epochs"][2:5] == ["integer", "1 to 100,000", "`30`"]
    assert rows["train.lr"][1:5] == ["`--lr`", "number or `null`", "> 0, < 10", "`null`"]
    assert rows["data.verify"][1] == "`--no-verify` (sets `false`)"
    assert rows["train.schedule"][2] == "`constant`, `warmup_cosine`"


def test_the_reference_follows_fields_and_sections_it_has_never_seen():
    """Generic over pydantic models: a field or a section added to the config
    appears without touching the generator."""

    class Extra(BaseModel):
        """A section added later."""

        ratio: float = Field(0.5, gt=0, le=1, description="a new fraction")
        mode: Annotated[str, "metadata pydantic ignores"] = Field("fast", min_length=2, description="a <mode> name")

    class Later(BaseModel):
        extra: Extra = Field(default_factory=Extra)
        count: int | None = Field(None, ge=1, description="a new top-level count")

    markdown = gen_config_reference.reference_markdown(Later)
    rows = reference_rows(markdown)
    assert rows["extra.ratio"][2:6] == ["number", "> 0, <= 1", "`0.5`", "a new fraction"]
    assert rows["extra.mode"][3:6] == ["at least 2 characters", "`fast`", "a &lt;mode&gt; name"]
    assert rows["count"][2:5] == ["integer or `null`", ">= 1", "`null`"]
    assert "A section added later." in markdown


def markdown_links(text: str) -> list[str]:
    return re.findall(r"\]\(([^)\s]+)\)", text)


def heading_slugs(text: str) -> set[str]:
    """Anchors of a page's headings as MkDocs's toc names them (the same as
    GitHub's for headings of words, quotes and commas)."""
    from markdown.extensions.toc import slugify

    text = re.sub(r"```.*?```", "", text, flags=re.S)
    return {slugify(m.group(1).replace("`", ""), "-") for m in re.finditer(r"^#{1,6}\s+(.+?)\s*$", text, re.M)}


@needs_mkdocs
def test_every_readme_link_lands_on_a_file_and_heading_that_exist():
    readme = (REPO / "README.md").read_text()
    links = [link for link in markdown_links(readme) if not re.match(r"[a-z]+:", link)]
    assert any(link.startswith("docs/") for link in links)
    for link in links:
        path, _, anchor = link.partition("#")
        target = REPO / path if path else REPO / "README.md"
        assert target.is_file(), f"README.md links to {link}, which does not exist"
        if anchor:
            assert anchor in heading_slugs(target.read_text()), f"README.md links to {link}: no such heading"


def test_pictures_in_the_docs_stay_small():
    pictures = list((REPO / "docs").rglob("*.png"))
    assert pictures
    for picture in pictures:
        assert picture.stat().st_size < 200_000, f"{picture} is {picture.stat().st_size} bytes"
