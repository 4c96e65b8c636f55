import re

from searchr1.eval.plots import line_plot_svg


def test_line_plot_svg_draws_every_point_with_labelled_axes():
    svg = line_plot_svg({"a": [(1, 0.0), (2, 0.5), (3, None)], "b": [(1, 1.0)]}, title="t", xlabel="step",
                        ylabel="value", y_min=0.0, y_max=1.0)
    assert svg.startswith("<svg") and svg.endswith("</svg>")
    assert svg.count("<circle") == 3 and svg.count("<polyline") == 1  # None skipped; one point: no line
    assert ">step<" in svg and ">value</text>" in svg and ">0.00<" in svg and ">1.00<" in svg


def test_a_band_is_shaded_around_its_series_and_widens_the_axis():
    # y axis 0..1 without the band; the band reaches 2.0, so the axis must too
    svg = line_plot_svg({"a": [(0, 0.0), (1, 1.0)]}, title="t", xlabel="x", ylabel="y",
                        bands={"a": [(0, 0.0, 0.5), (1, 0.5, 2.0)]}, width=200, height=140)
    assert svg.count("<polygon") == 1 and ">2.00<" in svg
    points = re.search(r'<polygon[^>]*points="([^"]+)"', svg).group(1).split()
    # the outline runs along the highs left to right, then the lows right to left: 4 corners
    assert len(points) == 4
    xs = [float(p.split(",")[0]) for p in points]
    assert xs[0] == xs[3] < xs[1] == xs[2]
    # a band of one point draws nothing
    assert "<polygon" not in line_plot_svg({"a": [(0, 0.0)]}, title="t", xlabel="x", ylabel="y",
                                           bands={"a": [(0, 0.0, 1.0)]})
