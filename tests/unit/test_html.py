"""The public helpers of every report page (eval, demo, study)."""

from searchr1.eval.html import REPORT_CSS, html_table


def test_html_table_escapes_cells_and_right_aligns_numbers():
    assert html_table(["arm", "EM"], [["<b>rag</b>", "0.250"]]) == (
        "<table><thead><tr><th>arm</th><th>EM</th></tr></thead><tbody>"
        '<tr><td>&lt;b&gt;rag&lt;/b&gt;</td><td class="num">0.250</td></tr></tbody></table>')
    assert "td.num" in REPORT_CSS
