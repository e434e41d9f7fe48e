"""Graph pictures: ``to_dot(graph)`` (Graphviz) and ``to_mermaid(graph)`` (Mermaid flowchart) over
what ``engine.graph()`` returns. Pure text generation: no Graphviz or Mermaid needed to call them.

Both draw one box per node labelled with its name, ``#id`` and state (and the first line of the
error of a failed one), filled by state; executions of one workflow sit in a box of their own
(a DOT cluster, a Mermaid subgraph); parent edges (the source's body submitted the target) are
dashed/dotted and grey, dependency edges (the target got the source as an argument) solid and
dark. An edge whose end is not in the graph (a parent still running, or forgotten from the
history) gets a dashed placeholder box, so every edge of the graph is drawn.
"""

from __future__ import annotations

import re
from typing import Any

__all__ = ["to_dot", "to_mermaid"]

# fill, outline per state; anything else (a live state, a placeholder) is "other"
_STATE_COLORS = {
    "succeeded": ("#d4edda", "#2e7d32"),
    "failed": ("#f8d7da", "#c62828"),
    "cancelled": ("#e2e3e5", "#616161"),
    "other": ("#fff3cd", "#b58900"),
    "missing": ("#ffffff", "#9e9e9e"),
}
_PARENT_COLOR = "#8a8a8a"
_DEPENDENCY_COLOR = "#1f3b73"
_ERROR_CHARS = 80  # of a failed node's error in its label (the whole text is the DOT tooltip)
_NAME_CHARS = 200

# C0/C1 control characters (newlines are handled before), lone surrogates (not encodable as
# UTF-8: the text could not be written to a file) and the Unicode line/paragraph separators.
_UNPRINTABLE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")


def _printable(text: str) -> str:
    """Control characters as visible escapes (``\\x07``), lone surrogates as U+FFFD."""

    def sub(m: re.Match) -> str:
        c = m.group()
        if "\ud800" <= c <= "\udfff":
            return "\ufffd"
        return c.encode("unicode_escape").decode("ascii")

    return _UNPRINTABLE.sub(sub, text)


def _lines(text: str) -> list:
    return [_printable(line) for line in str(text).replace("\r\n", "\n").replace("\r", "\n").split("\n")]


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"


def _check_graph(graph: Any, what: str) -> tuple:
    if not isinstance(graph, dict) or not isinstance(graph.get("nodes"), list) or not isinstance(graph.get("edges"), list):
        raise TypeError(
            f"{what}() takes the dict engine.graph() returns ({{'nodes': [...], 'edges': [...]}}), "
            f"not {type(graph).__name__}"
        )
    nodes = {}
    for n in graph["nodes"]:
        if not isinstance(n, dict) or "id" not in n or "name" not in n or "state" not in n:
            raise ValueError(f"{what}(): a node must be a dict with 'id', 'name' and 'state', got {n!r}")
        if isinstance(n["id"], bool) or not isinstance(n["id"], int):
            raise ValueError(f"{what}(): a node's 'id' must be an int, got {n['id']!r}")
        nodes[n["id"]] = n
    edges = []
    for e in graph["edges"]:
        if not isinstance(e, dict) or e.get("kind") not in ("parent", "dependency"):
            raise ValueError(
                f"{what}(): an edge must be a dict with 'source', 'target' and kind 'parent' or 'dependency', got {e!r}"
            )
        for end in ("source", "target"):
            if isinstance(e.get(end), bool) or not isinstance(e.get(end), int):
                raise ValueError(f"{what}(): an edge's {end!r} must be an execution id (int), got {e.get(end)!r}")
        edges.append((e["source"], e["target"], e["kind"]))
    return [nodes[k] for k in sorted(nodes)], edges


def _label_lines(node: dict) -> list:
    """The label of a node as lines of text: name and #id, state, first line of the error."""
    name_lines = _lines(node["name"])
    name_lines[0] = _clip(name_lines[0], _NAME_CHARS)
    name_lines = [_clip(x, _NAME_CHARS) for x in name_lines[:4]]
    name_lines[-1] += f"  #{node['id']}"
    out = name_lines + [_printable(str(node["state"]))]
    error = node.get("error")
    if error:
        out.append(_clip(_lines(error)[0], _ERROR_CHARS))
    return out


def _workflow_lines(wid: Any) -> list:
    lines = [_clip(x, _NAME_CHARS) for x in _lines(wid)[:4]]
    lines[0] = "workflow " + lines[0]
    return lines


def _state_class(state: Any) -> str:
    return state if state in ("succeeded", "failed", "cancelled") else "other"


def _groups(nodes: list) -> list:
    """[(workflow_id or None, [nodes])], workflows in order of their first node."""
    groups: dict = {}
    for n in nodes:
        groups.setdefault(n.get("workflow_id"), []).append(n)
    return list(groups.items())


def _missing_ids(nodes: list, edges: list) -> list:
    known = {n["id"] for n in nodes}
    return sorted({i for s, t, _ in edges for i in (s, t) if i not in known})


# ---------------------------------------------------------------------------------------------
# Graphviz DOT


def _dot_string(text: str) -> str:
    """A DOT double-quoted string: backslashes doubled (DOT labels read \\n, \\l, \\N... as
    escapes), quotes escaped; text is already one line."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _dot_label(lines: list) -> str:
    # each line escaped on its own, joined with DOT's centred line break \n
    return "\\n".join(_dot_string(x)[1:-1] for x in lines).join('""')


def to_dot(graph: dict, *, rankdir: str = "TB", title: str | None = None) -> str:
    """Graphviz DOT text for ``engine.graph()``: ``dot -Tpng graph.dot -o graph.png``.

    One box per execution, labelled with its name, ``#id`` and state (a failed one also with
    its error, whose whole text is the node's tooltip) and filled by state; each workflow's
    executions in a cluster of their own; parent edges (body submitted) grey and dashed,
    dependency edges (argument) dark and solid. ``rankdir``: ``"TB"`` (top to bottom, default),
    ``"LR"``, ``"BT"`` or ``"RL"``. ``title``: a label for the whole graph.
    """
    nodes, edges = _check_graph(graph, "to_dot")
    if not isinstance(rankdir, str):
        raise TypeError(f"rankdir must be a str ('TB', 'LR', 'BT' or 'RL'), not {type(rankdir).__name__}")
    if rankdir not in ("TB", "LR", "BT", "RL"):
        raise ValueError(f"rankdir must be 'TB', 'LR', 'BT' or 'RL', not {rankdir!r}")
    if title is not None and not isinstance(title, str):
        raise TypeError(f"title must be a str or None, not {type(title).__name__}")
    out = [
        "digraph distaff {",
        f'  graph [rankdir={rankdir}, fontname="Helvetica", fontsize=11, nodesep=0.3, ranksep=0.45'
        + (f", label={_dot_label(_lines(title))}, labelloc=t" if title is not None else "")
        + "];",
        '  node [shape=box, style="rounded,filled", fontname="Helvetica", fontsize=10, penwidth=1.2];',
        '  edge [fontname="Helvetica", fontsize=9];',
    ]

    def node_line(n: dict, indent: str) -> str:
        fill, line = _STATE_COLORS[_state_class(n["state"])]
        attrs = [f"label={_dot_label(_label_lines(n))}", f'fillcolor="{fill}"', f'color="{line}"']
        if n.get("error"):
            attrs.append(f"tooltip={_dot_string(' '.join(_lines(n['error'])))}")
        return f"{indent}n{n['id']} [{', '.join(attrs)}];"

    for i, (wid, members) in enumerate(_groups(nodes)):
        if wid is None:
            out.extend(node_line(n, "  ") for n in members)
            continue
        out.append(f"  subgraph cluster_{i} {{")
        out.append(f"    label={_dot_label(_workflow_lines(wid))};")
        out.append('    style="rounded,dashed"; color="#7a7a7a"; fontcolor="#4a4a4a";')
        out.extend(node_line(n, "    ") for n in members)
        out.append("  }")
    fill, line = _STATE_COLORS["missing"]
    for i in _missing_ids(nodes, edges):
        out.append(f'  n{i} [label="#{i}\\n(not in graph)", style="rounded,dashed", fillcolor="{fill}", color="{line}", fontcolor="{line}"];')
    for s, t, kind in edges:
        if kind == "parent":
            out.append(f'  n{s} -> n{t} [style=dashed, color="{_PARENT_COLOR}", arrowhead=empty, tooltip="parent"];')
        else:
            out.append(f'  n{s} -> n{t} [style=solid, color="{_DEPENDENCY_COLOR}", penwidth=1.4, tooltip="dependency"];')
    out.append("}")
    return "\n".join(out) + "\n"


# ---------------------------------------------------------------------------------------------
# Mermaid


# In a quoted Mermaid label, "#name;" and "#123;" are entity codes: '"' must be one, and a
# literal '#' too (or "#35;" text would turn into '#'). '<', '>' and '&' would be read as HTML
# with htmlLabels, '`' opens a markdown string.
_MERMAID_ENTITIES = {'"': "#quot;", "#": "#35;", "<": "#lt;", ">": "#gt;", "&": "#amp;", "`": "#96;"}
_MERMAID_SPECIAL = re.compile('["#<>&`]')


def _mermaid_text(text: str) -> str:
    return _MERMAID_SPECIAL.sub(lambda m: _MERMAID_ENTITIES[m.group()], text)


def _mermaid_label(lines: list) -> str:
    return '"' + "<br/>".join(_mermaid_text(x) for x in lines) + '"'


def to_mermaid(graph: dict, *, direction: str = "TD") -> str:
    """Mermaid flowchart text for ``engine.graph()`` (Prefect's ``generate_mermaid_graph``
    shape): paste it in a ```` ```mermaid ```` block on GitHub, GitLab or in Notion.

    Nodes ``n<id>["name  #id<br/>state"]`` classed by state (``succeeded``, ``failed``,
    ``cancelled``), each workflow in a ``subgraph``; parent edges dotted (``-.->``), dependency
    edges solid (``-->``). ``direction``: ``"TD"`` (default), ``"LR"``, ``"BT"`` or ``"RL"``.
    Mermaid renderers refuse large diagrams (by default 500 edges, 50,000 characters): draw one
    workflow (``engine.graph(workflow_id=...)``) or use :func:`to_dot` for big runs.
    """
    nodes, edges = _check_graph(graph, "to_mermaid")
    if not isinstance(direction, str):
        raise TypeError(f"direction must be a str ('TD', 'LR', 'BT' or 'RL'), not {type(direction).__name__}")
    if direction not in ("TD", "TB", "LR", "BT", "RL"):
        raise ValueError(f"direction must be 'TD', 'LR', 'BT' or 'RL', not {direction!r}")
    out = [f"flowchart {direction}"]
    for cls in ("succeeded", "failed", "cancelled", "other", "missing"):
        fill, line = _STATE_COLORS[cls]
        dash = ",stroke-dasharray:4 3" if cls in ("cancelled", "missing") else ""
        out.append(f"    classDef {cls} fill:{fill},stroke:{line},color:#1b1b1b{dash}")

    def node_line(n: dict, indent: str) -> str:
        return f"{indent}n{n['id']}[{_mermaid_label(_label_lines(n))}]:::{_state_class(n['state'])}"

    for i, (wid, members) in enumerate(_groups(nodes)):
        if wid is None:
            out.extend(node_line(n, "    ") for n in members)
            continue
        out.append(f"    subgraph wf{i}[{_mermaid_label(_workflow_lines(wid))}]")
        out.extend(node_line(n, "        ") for n in members)
        out.append("    end")
    for i in _missing_ids(nodes, edges):
        out.append(f'    n{i}["#35;{i}<br/>(not in graph)"]:::missing')
    parents = []
    for k, (s, t, kind) in enumerate(edges):
        if kind == "parent":
            out.append(f"    n{s} -.-> n{t}")
            parents.append(k)
        else:
            out.append(f"    n{s} --> n{t}")
    # linkStyle counts links in the order they were written: colour the parent ones grey and
    # the dependency ones dark, as in to_dot.
    parent_set = set(parents)
    deps = [k for k in range(len(edges)) if k not in parent_set]
    for ks, color in ((parents, _PARENT_COLOR), (deps, _DEPENDENCY_COLOR)):
        for start in range(0, len(ks), 200):  # long lines are hard to read, not invalid
            out.append(f"    linkStyle {','.join(map(str, ks[start:start + 200]))} stroke:{color}")
    return "\n".join(out) + "\n"
