"""Names from the user's files (class folders, file names, paths) made safe
for where they are written: one function per target, used by every writer.

    markdown_text("a|b")            # 'a\\|b'  a class name in report.md's tables (and the artifact's)
    markdown_code("/runs/x_1")      # '`/runs/x_1`'  a path in text or an artifact's description: exact, copyable
    markdown_code_block(text, "json")  # a fence no line of `text` can close
    plot_text("$x$")                # '\\$x\\$'  matplotlib labels: shown as typed, never as maths

CSV needs no function here: pandas' to_csv quotes a field holding a comma,
quote or line break (the csv module's standard quoting), and readers split
it back to the same value.
"""

from __future__ import annotations

import re

from alexnet_pipeline.files import shown_path

# Control characters (a line break in a folder name, a tab, an escape
# sequence) would end a table row, a list item or a label line; they are
# shown as Python writes them in a string: \n, \t, \x1b.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
# CommonMark lets ASCII punctuation be backslash-escaped, and then it is
# only text: no HTML tag or entity (<img ...>, &lt;), no link or image
# ([x](javascript:...)), no emphasis, code span, maths or table cell boundary
# (|). "@" and ":" too, and the "." of "www.": GFM turns bare e-mail
# addresses, https://... and www.x.org into links. Path punctuation that
# does none of this ("/", "-", ".") is left as it is, so report.md stays
# readable as plain text.
_MARKDOWN_SPECIAL = re.compile(r"([\\`*_{}\[\]<>()#+!|~&$:@]|(?<=www)\.)", re.IGNORECASE)


def visible_text(name: object) -> str:
    """`name` on one line: non-UTF-8 bytes of a file name as \\xNN, control
    characters as their escapes."""
    text = shown_path(name) if isinstance(name, (str, bytes)) or hasattr(name, "__fspath__") else str(name)
    return _CONTROL.sub(lambda m: repr(m.group())[1:-1], text)


def markdown_text(name: object) -> str:
    """`name` as plain text inside markdown: text, a table cell, a list item."""
    return _MARKDOWN_SPECIAL.sub(r"\\\1", visible_text(name))


def markdown_code(name: object) -> str:
    """`name` as an inline code span: shown exactly as it is (a path stays
    copyable), since nothing inside a code span is markup. The fence is
    longer than any run of backticks in it. Not for table cells: there a
    | would still end the cell (use markdown_text)."""
    text = visible_text(name)
    fence = "`" * (max((len(run) for run in re.findall(r"`+", text)), default=0) + 1)
    # A space each side, which CommonMark strips again, keeps a backtick at
    # either end from joining the fence.
    pad = " " if text[:1] in ("`", " ") or text[-1:] in ("`", " ") else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def markdown_code_block(text: str, language: str = "") -> str:
    """`text` in a fenced code block whose fence is longer than any run of
    backticks in it: a path holding ``` cannot end the block early."""
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * max(3, longest + 1)
    return f"{fence}{language}\n{text}\n{fence}"


def plot_text(name: object) -> str:
    """`name` for a matplotlib label: every $ escaped, so that $...$ is shown
    as typed (matplotlib reads text between two unescaped $ as maths markup,
    and a name that is not valid markup fails the whole figure)."""
    return visible_text(name).replace("$", r"\$")
