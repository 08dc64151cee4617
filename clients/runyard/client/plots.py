"""Metric curves drawn in the terminal (`runyard metrics RUN --plot`), with plotext.

One panel per metric, stacked, each on its own y scale (a loss near 2 and an
accuracy near 1 would flatten each other on one axis), steps on the x axis.
Rendering is a pure function from curves to a string, so it is testable and
usable from a notebook; printing only decides colour and width.

Long histories are thinned before drawing: a panel is at most a few hundred
character cells wide, and plotting 200,000 points into it would take seconds to
show what every tenth of them shows. The last point is always kept, so the line
ends where the run is.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from rich.console import Console
from rich.text import Text

from runyard import extras
from runyard.client.errors import ClientError
from runyard.v1 import common_pb2

#: One metric's points of one series: (step, value), in step order.
Curve = list[tuple[int, float]]
#: metric name -> series label -> curve; a run's own plot has one series per metric.
Curves = dict[str, dict[str, Curve]]

PANEL_HEIGHT = 14
MAX_WIDTH = 140
MIN_WIDTH = 40


def curves_of_run(points: Sequence[common_pb2.MetricPoint]) -> Curves:
    """Each metric's curve; a step reported twice (a retried attempt) keeps its latest value."""
    latest: dict[str, dict[int, tuple[int, float]]] = {}
    for p in points:
        by_step = latest.setdefault(p.name, {})
        seen = by_step.get(p.step)
        if seen is None or p.time_us >= seen[0]:
            by_step[p.step] = (p.time_us, p.value)
    return {
        name: {name: [(step, v) for step, (_, v) in sorted(by_step.items())]}
        for name, by_step in sorted(latest.items())
    }


def thin(curve: Curve, limit: int) -> Curve:
    """At most about `limit` points, evenly strided, the last one always kept."""
    if len(curve) <= limit or limit < 2:
        return curve
    stride = -(-len(curve) // (limit - 1))
    kept = curve[::stride]
    if kept[-1] != curve[-1]:
        kept.append(curve[-1])
    return kept


def render(curves: Mapping[str, Mapping[str, Curve]], width: int = 100, colorless: bool = True, title: str = "") -> str:
    """The panels as text, ANSI colours unless `colorless`; raises ClientError without plotext."""
    try:
        import plotext
    except ImportError:  # an extra: `runyard[plot]`
        raise ClientError(
            f"drawing plots needs `{extras.install_line('plot')}`; without it: `runyard metrics RUN --all`"
        ) from None
    panels = [(name, series) for name, series in curves.items() if any(series.values())]
    if not panels:
        return ""
    width = max(MIN_WIDTH, min(width, MAX_WIDTH))
    fig = plotext.figure
    # plotext keeps one global figure: start from a blank one every time.
    fig.clear()
    fig.plot_size(width, PANEL_HEIGHT * len(panels))
    fig.subplots(len(panels), 1)
    for row, (name, series) in enumerate(panels, start=1):
        panel = fig.subplot(row, 1)
        panel.title(f"{title}  {name}" if title and row == 1 else name)
        for label, curve in series.items():
            if not curve:
                continue
            drawn = thin(curve, width * 2)
            signal = panel.signal([s for s, _ in drawn], [v for _, v in drawn], marker="braille")
            if len(drawn) > 1:
                signal.lines()
            if len(series) > 1:
                signal.label(label)
            panel.draw(signal)
    text: str = fig.build().string(colorless=colorless)
    fig.clear()
    return text


def print_plot(console: Console, curves: Curves, title: str = "") -> None:
    """Draw to `console`: coloured on a terminal, plain text into a pipe or file."""
    text = render(curves, width=console.width, colorless=not console.is_terminal, title=title)
    if not text:
        return
    if console.is_terminal:
        console.print(Text.from_ansi(text), soft_wrap=True, crop=False)
    else:
        console.file.write(text.rstrip("\n") + "\n")
        console.file.flush()
