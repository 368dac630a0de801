"""report.html stands alone, and tools/check_report_html.py's framing, parsing and verdicts (no Chromium needed)."""

from __future__ import annotations

import base64
import copy
import html
import importlib.util
import json
from html.parser import HTMLParser
from pathlib import Path

import pytest

from distill.report.render import write_report

REPO = Path(__file__).resolve().parent.parent
spec = importlib.util.spec_from_file_location("check_report_html", REPO / "tools" / "check_report_html.py")
tool = importlib.util.module_from_spec(spec)
spec.loader.exec_module(tool)


class _References(HTMLParser):
    """Every src/href/srcset/data/poster value in the page, the viewport meta content, the style text."""

    def __init__(self) -> None:
        super().__init__()
        self.references: list[tuple[str, str, str]] = []
        self.viewport: str | None = None
        self.tags: list[str] = []
        self.style = ""
        self._in_style = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        values = dict(attrs)
        self.references += [(tag, name, value or "") for name, value in attrs if name in tool.REFERENCE_ATTRIBUTES]
        if tag == "meta" and values.get("name") == "viewport":
            self.viewport = values.get("content")
        self._in_style = tag == "style"

    def handle_endtag(self, tag: str) -> None:
        self._in_style = False

    def handle_data(self, data: str) -> None:
        if self._in_style:
            self.style += data


def test_a_real_report_renders_to_one_self_contained_page_that_fits_a_phone(tmp_path):
    report = json.loads((REPO / "results" / "report-tweets.json").read_text(encoding="utf-8"))
    report["dataset"] = "/data/customer_support/tickets_2024_q3_cleaned_deduplicated_with_labels.csv"  # no break
    paths = write_report(report, tmp_path)
    parser = _References()
    parser.feed(paths["html"].read_text(encoding="utf-8"))
    assert [(tag, name) for tag, name, _ in parser.references] == [("img", "src")]  # the chart and nothing else
    chart = parser.references[0][2]
    assert base64.b64decode(chart.removeprefix("data:image/png;base64,")) == paths["png"].read_bytes()
    assert not {"script", "link", "iframe", "object", "embed"} & set(parser.tags)
    assert "url(" not in parser.style and "@import" not in parser.style and "@font-face" not in parser.style
    assert tool.failures(390, {**_passing(), "viewport_meta": parser.viewport}) == []  # device width, zoom allowed
    # what keeps it inside a phone's width: the table scrolls in its own box, long words wrap, the chart shrinks
    assert ".scroll{overflow-x:auto}" in parser.style and "overflow-wrap:break-word" in parser.style
    assert "img{max-width:100%;height:auto}" in parser.style


def test_the_frame_shows_the_page_at_exactly_the_width_with_the_probe_only_when_measuring():
    page = tool.frame_page("file:///runs/a&b/report.html", 390, 844, probe=True)
    assert '<iframe id="page" src="file:///runs/a&amp;b/report.html" style="width:390px;height:844px">' in page
    assert page.count("<script>") == 1 and f'out.id = "{tool.PROBE_ID}"' in page and "PROBE_ID" not in page
    assert "<script" not in tool.frame_page("file:///r.html", 1280, 3000, probe=False)


def _passing() -> dict:
    """A probe result for a page that passes every check."""
    return {
        "inner_width": 390, "scroll_width": 390, "page_height": 1400, "overflowing": [], "scroll_boxes": [],
        "images": [{"src": "data:image/png;base64,iVBO", "alt": "chart", "data_uri": True, "loaded": True,
                    "natural_width": 1430, "shown_width": 375}],
        "external": [], "requests": [], "min_font_px": 15.0, "min_font_text": "Most accurate",
        "viewport_meta": "width=device-width, initial-scale=1",
    }  # fmt: skip


def test_the_result_is_read_back_from_the_dumped_dom_html_escaped():
    result = {**_passing(), "min_font_text": 'a <b> & "c"'}
    dom = (
        "<html><body><iframe></iframe><script>ignored</script>"
        f'<pre id="{tool.PROBE_ID}" hidden="">{html.escape(json.dumps(result), quote=False)}</pre></body></html>'
    )
    assert tool.parse_result(dom) == result
    with pytest.raises(tool.ChromiumError, match="no check result"):
        tool.parse_result("<html><body></body></html>")
    with pytest.raises(tool.ChromiumError, match="check script failed in the page: TypeError: x"):
        tool.parse_result(f'<pre id="{tool.PROBE_ID}" hidden="">{{"error": "TypeError: x"}}</pre>')


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"scroll_width": 1215, "overflowing": ["h1", "p.note"]},
         "390 px: horizontal overflow, the page is 1215 px wide in a 390 px window (too wide: h1, p.note)"),
        ({"images": [{"src": "chart.png", "alt": "chart", "data_uri": False, "loaded": True,
                      "natural_width": 10, "shown_width": 10}]},
         "390 px: <img> 1 (chart) is not embedded as a data: URI (src=chart.png)"),
        ({"images": [{"src": "data:,", "alt": "", "data_uri": True, "loaded": False,
                      "natural_width": 0, "shown_width": 0}]},
         "390 px: <img> 1 (data:,) did not load"),
        ({"external": ["link href=https://cdn.example.com/a.css"]},
         "390 px: refers outside the file: link href=https://cdn.example.com/a.css"),
        ({"requests": ["https://fonts.example.com/a.woff2"]},
         "390 px: the page requested https://fonts.example.com/a.woff2"),
        ({"min_font_px": 9.0, "min_font_text": "fine print"}, '390 px: text at 9 px, under 12 px ("fine print")'),
        ({"viewport_meta": None}, "390 px: no <meta name=\"viewport\""),
        ({"viewport_meta": "width=device-width, user-scalable=no"}, "stops phones from zooming in"),
        ({"viewport_meta": "width=device-width,maximum-scale=1.0"}, "stops phones from zooming in"),
    ],
)  # fmt: skip
def test_each_failed_check_is_one_line_naming_the_width(change, message):
    assert tool.failures(390, _passing()) == []
    lines = tool.failures(390, {**copy.deepcopy(_passing()), **change})
    assert len(lines) == 1 and message in lines[0]


def test_a_scrolling_table_and_a_shrunk_chart_are_notes_not_failures():
    result = {**_passing(), "scroll_boxes": [{"box": "div.scroll", "content_width": 1087, "shown_width": 375}]}
    assert tool.failures(390, result) == []
    assert tool.notes(390, result) == [
        "390 px: div.scroll scrolls sideways (1087 px of content in 375 px)",
        "390 px: <img> 1 is shown at 26% of its size (pinch to zoom)",
    ]


def test_without_chromium_the_tool_says_so_and_exits_2(tmp_path, monkeypatch, capsys):
    page = tmp_path / "report.html"
    page.write_text("<!doctype html><title>t</title>", encoding="utf-8")
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv("CHROMIUM", raising=False)
    assert tool.main([str(page)]) == 2
    assert "error: Chromium is not installed" in capsys.readouterr().err
    assert not (tmp_path / "html-check").exists()
