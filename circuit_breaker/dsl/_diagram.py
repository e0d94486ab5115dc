"""Mermaid and Graphviz DOT renderings of a workflow, optionally with token counts per place."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._workflow import Workflow

Counts = Mapping[str, int] | Any  # a place -> count mapping, or an Instance (its ``counts``)


def token_counts(source: Counts | None) -> dict[str, int] | None:
    if source is None:
        return None
    if isinstance(source, Mapping):
        return dict(source)
    counts = getattr(source, "counts", None)
    if isinstance(counts, Mapping):
        return dict(counts)
    raise TypeError(f"expected token counts per place or an Instance, got {type(source).__name__}")


def _label(name: str, counts: dict[str, int] | None) -> str:
    n = (counts or {}).get(name, 0)
    return f"{name} ({n})" if counts is not None and n else name


def to_mermaid(wf: Workflow, source: Counts | None = None) -> str:
    """A Mermaid flowchart: places are rounded boxes, transitions small squares, so joins and forks show."""
    counts = token_counts(source)
    lines = ["flowchart LR"]
    initial = wf.initial_place
    for p in wf.places:
        shape = f'(["{_label(p.name, counts)}"])' if p is initial else f'("{_label(p.name, counts)}")'
        if p.review:
            shape = f'[/"{_label(p.name, counts)}"/]'
        lines.append(f"    p_{p.name}{shape}")
    for t in wf.transitions:
        marker = " ✋" if t.is_manual else ""
        lines.append(f'    t_{t.name}["{t.name}{marker}"]')
        for p, w in t.inputs:
            lines.append(f"    p_{p.name} -->{'|' + str(w) + '|' if w > 1 else ''} t_{t.name}")
        for p, w in t.outputs:
            lines.append(f"    t_{t.name} -->{'|' + str(w) + '|' if w > 1 else ''} p_{p.name}")
    return "\n".join(lines) + "\n"


def to_dot(wf: Workflow, source: Counts | None = None) -> str:
    """Graphviz DOT: places are circles (double for final), transitions are boxes."""
    counts = token_counts(source)
    finals = {p.name for p in wf.places} - {p.name for t in wf.transitions for p, _ in t.inputs}
    lines = [f'digraph "{wf.name}" {{', "    rankdir=LR;"]
    for p in wf.places:
        shape = "doublecircle" if p.name in finals else "circle"
        extra = ', style="bold"' if p is wf.initial_place else ""
        lines.append(f'    "p_{p.name}" [label="{_label(p.name, counts)}", shape={shape}{extra}];')
    for t in wf.transitions:
        style = ', style="dashed"' if t.is_manual else ""
        lines.append(f'    "t_{t.name}" [label="{t.name}", shape=box{style}];')
        for p, w in t.inputs:
            lines.append(f'    "p_{p.name}" -> "t_{t.name}"' + (f' [label="{w}"]' if w > 1 else "") + ";")
        for p, w in t.outputs:
            lines.append(f'    "t_{t.name}" -> "p_{p.name}"' + (f' [label="{w}"]' if w > 1 else "") + ";")
    lines.append("}")
    return "\n".join(lines) + "\n"
