"""Diagrams of architectures as PNG: each space turns its nodes into a small labelled DAG."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from protos.types import Architecture


@dataclass(frozen=True)
class Graph:
    """Named vertices (in drawing order) and labelled edges (src, dst, label)."""

    title: str
    vertices: tuple[str, ...]
    edges: tuple[tuple[str, str, str], ...]


def _nb201(arch: Architecture) -> list[Graph]:
    edges = tuple((f"node {n.inputs[0]}", f"node {n.attrs['to']}", n.op) for n in arch.nodes
                  if n.op != "none")
    return [Graph("NB201 cell", tuple(f"node {i}" for i in range(4)), edges)]


def _cells(arch: Architecture) -> list[Graph]:
    graphs = []
    for cell in ("normal", "reduction"):
        nodes = [n for n in arch.nodes if n.cell == cell]
        blocks = [(nodes[i], nodes[i + 1], nodes[i + 2]) for i in range(0, len(nodes), 3)]
        states = ["h[i-1]", "h[i]"] + [f"block {b} ({c.op})" for b, (_, _, c) in
                                       enumerate(blocks)]
        edges = []
        used: set[int] = set()
        for b, (x, y, _) in enumerate(blocks):
            for branch in (x, y):
                used.add(branch.inputs[0])
                edges.append((states[branch.inputs[0]], states[2 + b], branch.op))
        loose = [s for s in range(2, len(states)) if s not in used]
        edges += [(states[s], "output (concat)", "") for s in loose]
        graphs.append(Graph(f"{cell} cell", (*states, "output (concat)"), tuple(edges)))
    return graphs


def _macro(arch: Architecture) -> list[Graph]:
    names = ["image"]
    edges = []
    read: set[int] = set()
    for i, n in enumerate(arch.nodes):
        a = n.attrs
        names.append(f"L{i} {a['filter_height']}x{a['filter_width']}x{a['filters']}"
                     + (f"/{a['stride']}" if a.get("stride", 1) != 1 else ""))
        read.update(n.inputs)
        sources = [names[j + 1] for j in n.inputs] or ["image"]
        edges += [(s, names[i + 1], "") for s in sources]
    edges += [(names[i + 1], "classifier", "") for i in range(len(arch.nodes)) if i not in read]
    return [Graph("macro network", (*names, "classifier"), tuple(edges))]


def _rnn_tree(arch: Architecture) -> list[Graph]:
    tree = [n for n in arch.nodes if n.type == "tree"]
    inject = next(n for n in arch.nodes if n.type == "inject")
    cell = next(n for n in arch.nodes if n.type == "cell")
    names = [f"{i} {n.op}" for i, n in enumerate(tree)]
    edges = [(src, names[i], "") for i, n in enumerate(tree) if not n.inputs
             for src in ("x[t]", "h[t-1]")]
    edges += [(names[j], names[i], "") for i, n in enumerate(tree) for j in n.inputs]
    edges += [("c[t-1]", names[inject.inputs[0]], f"inject {inject.op}"),
              (names[cell.inputs[0]], "c[t]", ""), (names[-1], "h[t]", "")]
    return [Graph("recurrent tree cell", ("x[t]", "h[t-1]", "c[t-1]", *names, "c[t]", "h[t]"),
                  tuple(edges))]


def _enas_rnn(arch: Architecture) -> list[Graph]:
    names = [f"{i} {n.op}" for i, n in enumerate(arch.nodes)]
    read = {j for n in arch.nodes for j in n.inputs}
    edges = [("x[t]", names[0], ""), ("h[t-1]", names[0], "")]
    edges += [(names[n.inputs[0]], names[i], "") for i, n in enumerate(arch.nodes) if n.inputs]
    edges += [(names[i], "h[t] (mean)", "") for i in range(len(names)) if i not in read]
    return [Graph("ENAS recurrent cell", ("x[t]", "h[t-1]", *names, "h[t] (mean)"),
                  tuple(edges))]


GRAPHS: dict[str, Callable[[Architecture], list[Graph]]] = {
    "nb201": _nb201, "nasnet": _cells, "enas-micro": _cells, "macro": _macro,
    "rnn-cell": _rnn_tree, "enas-rnn": _enas_rnn}


def draw(arch: Architecture, path: Path) -> Path:
    """Draw every graph of ``arch`` as an arc diagram (vertices left to right in topological
    order, each edge an arc labelled with its op) into ``path`` (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Arc

    graphs = GRAPHS[arch.space](arch)
    width = max(len(g.vertices) for g in graphs)
    fig, axes = plt.subplots(len(graphs), 1, figsize=(max(6.0, 1.5 * width), 3.6 * len(graphs)),
                             dpi=100, squeeze=False)
    for ax, graph in zip(axes[:, 0], graphs, strict=True):
        x = {v: float(i) for i, v in enumerate(graph.vertices)}
        seen: dict[tuple[str, str], int] = {}
        top = 0.5
        for k, (src, dst, label) in enumerate(graph.edges):
            repeat = seen.get((src, dst), 0)
            seen[(src, dst)] = repeat + 1
            span = abs(x[dst] - x[src])
            sign = 1 if (k + repeat) % 2 == 0 else -1
            height = (0.35 + 0.3 * span) * (1 + 0.45 * repeat)
            top = max(top, height)
            mid = (x[src] + x[dst]) / 2
            ax.add_patch(Arc((mid, 0), span, 2 * height, theta1=0 if sign > 0 else 180,
                             theta2=180 if sign > 0 else 360, color="0.4", lw=1.1))
            if label:
                ax.text(mid, sign * height, label, fontsize=8, ha="center", va="center",
                        color="tab:blue", bbox={"fc": "white", "ec": "none", "pad": 0.6})
        for v, xv in x.items():
            ax.text(xv, 0, v.replace(" (", "\n("), ha="center", va="center", fontsize=8,
                    bbox={"boxstyle": "round", "fc": "#f2e6c9", "ec": "0.3"})
        ax.set_xlim(-0.8, len(graph.vertices) - 0.2)
        ax.set_ylim(-top - 0.4, top + 0.4)
        ax.set_title(f"{graph.title} (data flows left to right)")
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
