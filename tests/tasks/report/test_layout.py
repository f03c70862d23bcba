"""The PDF's layout at 30, 64 and 200 features: no chart crosses the page's content box, no word runs past its right
edge (a fixed-layout table whose columns are too narrow), and no page holds only a heading. Read from WeasyPrint's own layout boxes of the rendered report."""

from datetime import datetime, timezone

import numpy as np
import pytest

from tasks.core.result import ImportanceResult
from tasks.registry.versions import resolve_version
from tasks.report.render import RunInfo, build_context, render_html
from tasks.report.verdict import compare


def _report(linear_registry, n: int):
    """A report of weights, permutation and a bootstrap method on ``n`` features, its drivers the last ten."""
    version = resolve_version(linear_registry, "linear")
    names = tuple(f"feature_{j}_of_{n}" for j in range(n))
    object.__setattr__(version, "features", names)
    rng = np.random.default_rng(n)
    drivers = np.zeros(n)
    drivers[-10:] = np.arange(10, 0, -1)
    weights = ImportanceResult.from_samples("weights", "weight-based", names, rng.random(n))
    perm = ImportanceResult.from_samples("permutation", "behavioural", names,
                                         drivers[:, None] + 0.01 * rng.standard_normal((n, 5)))
    draws = drivers[:, None] + 0.01 * rng.standard_normal((n, 200))
    shap = ImportanceResult.from_samples("shap", "behavioural", names, draws, sampling="bootstrap",
                                         interval=(np.percentile(draws, 2.5, axis=1), np.percentile(draws, 97.5, axis=1)))
    results = [weights, perm, shap]
    run = RunInfo(run_id="20260101T000000Z-abc123", started=datetime(2026, 1, 1, tzinfo=timezone.utc), seed=0)
    return render_html(build_context(version, results, compare(results), run))


def layout(html: str):
    """Per page: the images that cross its content box's bottom (their heights, in CSS px), the words that run past
    its right edge, and whether it holds nothing but a heading: every line of its body text belongs to a heading, and
    it has no image."""
    from weasyprint import HTML
    from weasyprint.formatting_structure import boxes
    from weasyprint.urls import URLFetcher

    document = HTML(string=html, url_fetcher=URLFetcher(allowed_protocols=("data",))).render()
    pages = []
    for page in document.pages:
        root = page._page_box
        bottom = root.content_box_y() + root.height
        right = root.content_box_x() + root.width
        body = [b for child in root.children if not isinstance(child, boxes.MarginBox) for b in child.descendants()]
        crossing = [b.margin_height() for b in body
                    if isinstance(b, boxes.ReplacedBox) and b.position_y + b.margin_height() > bottom + 0.5]
        text = [b for b in body if isinstance(b, boxes.TextBox) and b.text.strip()]
        images = [b for b in body if isinstance(b, boxes.ReplacedBox)]
        heading_only = bool(text) and all(_in_heading(b) for b in text) and not images
        past_right = [b.text for b in text if b.position_x + b.width > right + 0.5]
        pages.append({"crossing": crossing, "past_right": past_right, "heading_only": heading_only})
    return pages


def _in_heading(box) -> bool:
    return (box.element_tag or "") in ("h1", "h2", "h3", "h4")


@pytest.mark.parametrize("n", [30, 64, 200])
def test_no_chart_crosses_the_page_and_no_page_holds_only_a_heading(linear_registry, n):
    pages = layout(_report(linear_registry, n))
    print(f"{n} features: {len(pages)} pages")
    assert not [p["crossing"] for p in pages if p["crossing"]]
    assert not [p["past_right"] for p in pages if p["past_right"]]
    assert not [i + 1 for i, p in enumerate(pages) if p["heading_only"]]


def test_the_layout_check_sees_a_chart_past_the_page_a_word_past_its_edge_and_a_heading_left_alone():
    import base64
    import io

    from PIL import Image

    png = io.BytesIO()
    Image.new("RGB", (300, 1400), "white").save(png, format="PNG")
    tall = "data:image/png;base64," + base64.b64encode(png.getvalue()).decode("ascii")
    narrow = ("<table style='table-layout: fixed; width: 100%'><tr><th style='width: 95%'>a</th>"
              "<th>Interactions</th></tr></table>")
    pages = layout(f"<h2>Alone</h2><p style='break-before: page'>text</p>{narrow}<p><img src='{tall}'></p>")
    assert pages[0]["heading_only"] and not pages[1]["heading_only"]
    assert any(p["crossing"] for p in pages)
    assert pages[1]["past_right"] == ["Interactions"]
