"""Names from the user's files reach report.md, the Prefect artifacts, the
figures and the CSV files as text: class folders and run folders named with
markdown, HTML, maths markup, line breaks and backticks (issue 24).

The markdown is checked by rendering it with markdown-it (CommonMark with
GFM tables and raw HTML allowed: the most permissive reading a viewer may
make), not by looking for characters in the source."""

from __future__ import annotations

import html
import re
from pathlib import Path

import matplotlib
import pandas as pd
import pytest
from markdown_it import MarkdownIt

from alexnet_pipeline.escape import markdown_code, markdown_code_block, markdown_text, plot_text, visible_text
from alexnet_pipeline.report import confusion_figure, environment, epoch_table, report_markdown
from tests.test_report import CONFIG, EVALUATIONS, HISTORY, MEASUREMENTS, eval_result, rows

matplotlib.use("Agg")

HOSTILE = ["a|b", "<img src=x onerror=alert(1)>", "[x](javascript:alert(1))", r"$\frac{a}{b}$", "two\nlines",
           "``code``", "$a^$", "www.example.com", "x@example.com", "<script>alert(1)</script>", "*a*_b_", "back\\slash"]
CONFUSION = [[1 if i == j else 0 for j in range(len(HOSTILE))] for i in range(len(HOSTILE))]


def _render(text: str) -> tuple[str, list]:
    md = MarkdownIt("commonmark", {"html": True}).enable("table")
    return md.render(text), md.parse(text)


def _all_tokens(tokens):
    for token in tokens:
        yield token
        yield from _all_tokens(token.children or [])


def _assert_only_text_from_data(text: str, images: int) -> str:
    """No raw HTML, no link, only the report's own images; returns the HTML."""
    rendered, tokens = _render(text)
    kinds = [t.type for t in _all_tokens(tokens)]
    assert "html_inline" not in kinds and "html_block" not in kinds
    assert "link_open" not in kinds
    assert kinds.count("image") == images
    assert "<script" not in rendered and "<a " not in rendered and "<em>" not in rendered
    return rendered


def _per_class_rows(rendered: str) -> list[list[str]]:
    table = rendered.split("Per-class test accuracy", 1)[1].split("</table>", 1)[0]
    body = table.split("<tbody>", 1)[1]
    return [[html.unescape(re.sub(r"<[^>]+>", "", cell)) for cell in re.findall(r"<td[^>]*>(.*?)</td>", row, re.S)]
            for row in re.findall(r"<tr>(.*?)</tr>", body, re.S)]


def hostile_results():
    per_class = [eval_result(0.5, 1.0, CONFUSION)] * len(EVALUATIONS)
    per_class = [{**e, "per_class_accuracy": [1.0] * len(HOSTILE)} for e in per_class]
    return [{**e, "accuracy": original["accuracy"]} for e, original in zip(per_class, EVALUATIONS)]


def test_report_shows_hostile_class_names_as_text_in_their_own_cells():
    evaluations = hostile_results()
    df = epoch_table(rows(HISTORY, evaluations))
    skipped = ["/data/train/`x`/<b>.png (cannot identify image file)"]
    config = {**CONFIG, "data": {"dataset": "imagefolder", "data_dir": "/data/```\n# not a heading"}}
    text = report_markdown(df, evaluations[1], HOSTILE, config, environment("cpu"), MEASUREMENTS, skipped)
    rendered = _assert_only_text_from_data(text, images=2)
    class_rows = _per_class_rows(rendered)
    # One row per class, each of three cells, the first the name as typed
    # (its line break shown as \n, on one line).
    assert [row[0] for row in class_rows] == [visible_text(name) for name in HOSTILE]
    assert all(len(row) == 3 for row in class_rows)
    assert "/data/train/`x`/<b>.png (cannot identify image file)" in html.unescape(rendered)
    # The configuration stays one code block: a path holding ``` does not close it.
    assert rendered.count("<pre>") == 1 and "<h1>not a heading" not in rendered


def test_markdown_escaping_leaves_no_markup_for_any_name():
    for name in HOSTILE:
        rendered, tokens = _render(f"| c |\n|---|\n| {markdown_text(name)} |\n\ntext {markdown_text(name)} text\n")
        inline = [t.type for t in _all_tokens(tokens) if t.type not in ("text", "softbreak")]
        assert "html_inline" not in inline and "link_open" not in inline and "code_inline" not in inline, name
        assert "em_open" not in inline and "strong_open" not in inline, name
        cells = re.findall(r"<td>(.*?)</td>", rendered, re.S)
        assert [html.unescape(c) for c in cells] == [visible_text(name)], name
        rendered, tokens = _render(f"- {markdown_code(name)} (why)\n")
        codes = [t for t in _all_tokens(tokens) if t.type == "code_inline"]
        assert [t.content for t in codes] == [visible_text(name)], name
        assert "<a " not in rendered and "<img" not in rendered and "<script" not in rendered, name
    for odd in ("`", " `x` ", "``", "a` b"):
        assert [t.content for t in _all_tokens(_render(markdown_code(odd))[1]) if t.type == "code_inline"] == [odd]
    block = markdown_code_block('{"path": "````"}', "json")
    assert _render(block)[0].count("<pre>") == 1 and "````" in _render(block)[0]


def test_confusion_figure_labels_hostile_names_as_typed():
    """$...$ is maths markup to matplotlib: a name such as $a^$ used to end
    the run with tracebacks; now every label is drawn as typed."""
    fig = confusion_figure(CONFUSION, HOSTILE, "Confusion matrix, epoch 2")
    fig.canvas.draw()  # raised ValueError (mathtext) before names were escaped
    ax = fig.axes[0]
    for labels in (ax.get_xticklabels(), ax.get_yticklabels()):
        shown = [label._preprocess_math(label.get_text()) for label in labels]
        assert shown == [(visible_text(name), False) for name in HOSTILE]


def test_sweep_figures_label_hostile_parameters_as_typed():
    from alexnet_pipeline.sweep import seed_band_figure, sweep_figure

    curve = pd.DataFrame({"epoch": [1, 2], "test_acc": [0.3, 0.4]})
    label = "1: out=/runs/$a^$"
    for fig in (sweep_figure({label: curve}), seed_band_figure({label: [curve, curve.copy()]})):
        fig.canvas.draw()
        texts = [t for t in fig.axes[0].get_legend().get_texts() if "/runs/" in t.get_text()]
        assert texts and all(t._preprocess_math(t.get_text())[1] is False for t in texts)
        assert any(t._preprocess_math(t.get_text())[0].startswith(label) for t in texts)


def test_report_task_escapes_names_in_files_artifacts_and_descriptions(prefect_storage, tmp_path):
    """The report task end to end in a flow run, in a run folder whose own
    name is hostile: report.md, the markdown artifact and both artifacts'
    descriptions are text only; the figures are drawn; accuracy.csv reads
    back the checkpoint paths (comma, quote, line break) exactly."""
    from prefect import flow
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    from tasks.report import write_report

    run_dir = tmp_path / 'run,"x"\n<img src=x onerror=alert(1)>|[l](javascript:1)'
    evaluations = hostile_results()

    @flow
    def report_only():
        return write_report.fn(run_dir=str(run_dir), rows=rows(HISTORY, evaluations), best_result=evaluations[1],
                               class_names=HOSTILE,
                               config=CONFIG, env=environment("cpu"), measurements=MEASUREMENTS, skipped_files=[])

    state = report_only(return_state=True)
    assert state.is_completed(), state.message
    for png in ("accuracy.png", "confusion.png"):
        assert (run_dir / png).read_bytes().startswith(b"\x89PNG")
    report = (run_dir / "report.md").read_text()
    assert [row[0] for row in _per_class_rows(_assert_only_text_from_data(report, images=2))] == \
        [visible_text(name) for name in HOSTILE]
    csv = pd.read_csv(run_dir / "accuracy.csv")
    assert csv["checkpoint"].tolist() == [f"checkpoints/alexnet-{row['epoch']:02d}.pt" for row in HISTORY]

    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(
            flow_run_id=ArtifactFilterFlowRunId(any_=[state.state_details.flow_run_id])))
    by_key = {a.key: a for a in artifacts}
    _assert_only_text_from_data(by_key["accuracy-report"].data, images=2)
    for artifact in by_key.values():
        rendered = _assert_only_text_from_data(artifact.description, images=0)
        assert visible_text(run_dir) in html.unescape(rendered)


@pytest.mark.parametrize("name", HOSTILE)
def test_plot_text_is_never_maths(name):
    from matplotlib.text import Text

    assert Text(text=plot_text(name))._preprocess_math(plot_text(name)) == (visible_text(name), False)
