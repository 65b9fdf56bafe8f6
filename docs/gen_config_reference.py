"""The configuration reference, generated from the settings' own declarations.

Every setting is a pydantic field in alexnet_pipeline/config.py (type, bounds,
default, description); this module turns the models' JSON schema into one
table per section, so the page cannot drift from the code and a field added
there appears here without an edit. The flag column is read from the parser
`flows/full_run.py` itself builds (add_run_flags), not re-derived.

MkDocs runs it as a hook (mkdocs.yml `hooks:`): on docs/configuration.md it
replaces the MARKER line with the tables. By hand, to see what it writes:

    python docs/gen_config_reference.py
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

# The code documented is the code beside these docs, whatever is installed.
REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

MARKER = "<!-- generated: configuration reference -->"
PAGE = "configuration.md"


def _flags() -> dict[str, str]:
    """Dotted field path -> its `flows/full_run.py` flag, as the command line declares it."""
    from alexnet_pipeline.config import RUN_OPTIONS
    from flows.command_line import add_run_flags

    parser = argparse.ArgumentParser(add_help=False)
    add_run_flags(parser)
    flags = {}
    for action in parser._actions:
        if action.dest in RUN_OPTIONS:
            flag = f"`{action.option_strings[0]}`"
            if action.nargs == 0:  # a switch: the value it stores
                flag += f" (sets `{json.dumps(action.const)}`)"
            flags[RUN_OPTIONS[action.dest].path] = flag
    return flags


def _resolve(schema: dict, root: dict) -> dict:
    while "$ref" in schema:
        schema = root["$defs"][schema["$ref"].rsplit("/", 1)[-1]]
    return schema


def _variants(prop: dict, root: dict) -> tuple[list[dict], bool]:
    """The non-null alternatives of a property, and whether null is allowed."""
    options = [_resolve(p, root) for p in prop.get("anyOf", [prop])]
    variants = [p for p in options if p.get("type") != "null"]
    return variants, len(variants) < len(options)


_TYPES = {"integer": "integer", "number": "number", "string": "text", "boolean": "true/false"}


def _type_text(variants: list[dict], nullable: bool) -> str:
    parts = []
    for v in variants:
        if "enum" in v:
            parts.append(", ".join(f"`{e}`" for e in v["enum"]))
        elif "const" in v:
            parts.append(f"`{v['const']}`")
        else:
            parts.append(_TYPES.get(v.get("type"), v.get("type", "any")))
    return " or ".join(parts) + (" or `null`" if nullable else "")


def _number(value: Any) -> str:
    return f"{value:,}" if isinstance(value, int) and abs(value) >= 10_000 else str(value)


def _bounds_text(variants: list[dict]) -> str:
    """Bounds as the schema states them. pydantic writes exclusive bounds of
    some annotated types as gt/lt instead of exclusiveMinimum/Maximum: both read."""
    out = []
    for v in variants:
        low = [(">=", v[k]) for k in ("minimum", "ge") if k in v] + [(">", v[k]) for k in ("exclusiveMinimum", "gt") if k in v]
        high = [("<=", v[k]) for k in ("maximum", "le") if k in v] + [("<", v[k]) for k in ("exclusiveMaximum", "lt") if k in v]
        if low and high and low[0][0] == ">=" and high[0][0] == "<=":
            out.append(f"{_number(low[0][1])} to {_number(high[0][1])}")
        else:
            out.extend(f"{op} {_number(x)}" for op, x in low + high)
        if "minLength" in v:
            out.append(f"at least {v['minLength']} character{'s' if v['minLength'] != 1 else ''}")
        if "maxLength" in v:
            out.append(f"at most {v['maxLength']} characters")
    return ", ".join(out)


def _default_text(prop: dict) -> str:
    if "default" not in prop:
        return ""
    value = prop["default"]
    # As it is written in a YAML file.
    return f"`{json.dumps(value) if value is None or isinstance(value, bool) else _number(value)}`"


def _prose(text: str) -> str:
    """A description as literal text in Markdown: `<class>` is no HTML tag, `*` no emphasis."""
    return (text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace("*", "\\*")
            .replace("|", "\\|").replace("\n", " "))


def _table(fields: list[tuple[str, dict]], root: dict, flags: dict[str, str]) -> list[str]:
    rows = ["| key | flag | type | range | default | what it sets |", "|---|---|---|---|---|---|"]
    for path, prop in fields:
        variants, nullable = _variants(prop, root)
        flag = flags.get(path, "")
        rows.append("| " + " | ".join((f"`{path}`", flag, _type_text(variants, nullable), _bounds_text(variants),
                                       _default_text(prop), _prose(prop.get("description", "")))) + " |")
    return rows


def reference_markdown(model: Any = None) -> str:
    """One table per section (a field whose type is itself a model), then the
    top-level keys: every field of `model` (default: the pipeline's config)."""
    if model is None:
        from alexnet_pipeline.config import PipelineConfig as model
    root = model.model_json_schema()
    flags = _flags()
    sections, top = [], []
    for name, prop in root["properties"].items():
        target = _resolve(prop, root) if "$ref" in prop else None
        if target is not None and target.get("type") == "object" and "properties" in target:
            sections.append((name, target))
        else:
            top.append((name, prop))
    out = []
    for name, section in sections:
        out += [f"### `{name}`", ""]
        if section.get("description"):
            out += [_prose(section["description"]), ""]
        out += _table([(f"{name}.{key}", p) for key, p in section["properties"].items()], root, flags) + [""]
    if top:
        out += ["### Top level", ""] + _table(top, root, flags) + [""]
    return "\n".join(out)


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    """MkDocs hook: the reference goes where the page says."""
    if page.file.src_uri != PAGE:
        return markdown
    if MARKER not in markdown:
        raise ValueError(f"docs/{PAGE} has lost the line {MARKER!r} that says where the reference goes")
    return markdown.replace(MARKER, reference_markdown())


if __name__ == "__main__":
    print(reference_markdown())
