"""distaff.to_dot / distaff.to_mermaid over engine.graph() (docs/observability.md, "Graph pictures").

DOT is checked by Graphviz itself (`dot`, installed by `make deps`: the Makefile's
SYSTEM_PACKAGES): it must accept the text without a warning, and the SVG it draws must show
every name exactly. Mermaid has no offline parser here, so its text is checked against the
grammar subset to_mermaid emits, statement by statement, and every label is decoded back.
"""

import html
import os
import re
import shutil
import subprocess
import xml.etree.ElementTree as ET

import pytest

import distaff
from conftest import ROOT

ODD_NAMES = [
    'say "hi"',
    "two\nlines",
    "back\\slash\\n",
    "crlf\r\nend",
    "ünïcödé ✓ 名前 🚀",
    "[brackets] (parens) {braces} <angle>",
    "amp & semi; #hash #35; %% not a comment",
    "end",
    "subgraph",
    "tab\there bell\x07",
    "->edge-like --> -.->",
    "`backtick` |pipe|",
    "x" * 300,
    "trailing backslash\\",
]
ODD_WORKFLOW = 'wf "odd"\n{x} <y>'


def _odd_graph(engine):
    """A finished workflow whose tasks carry ODD_NAMES, one failing with an odd message, with
    parent and dependency edges."""

    def leaf(i):
        if i == 1:
            raise ValueError('bad "value"\nsecond line <b>&amp;')
        return i

    leaves = [engine.task(name=n)(leaf) for n in ODD_NAMES]

    @engine.task(wait=True, name='combine "all"')
    def combine(*xs):
        return len(xs)

    @engine.workflow()
    def main():
        return combine.submit(*[t.submit(i) for i, t in enumerate(leaves)])

    with engine.workflow_scope(ODD_WORKFLOW):
        m = main.submit()
    with pytest.raises(distaff.DependencyError):
        m.result()
    assert engine.wait_idle(timeout=30)
    return engine.graph()


def _clean(text):
    """What a label line shows for a name line (the printable form to_dot/to_mermaid promise)."""
    text = text.replace("\udc80", "\ufffd")
    return re.sub("[\x00-\x1f\x7f-\x9f]", lambda m: m.group().encode("unicode_escape").decode(), text)


def _expected_lines(node):
    lines = str(node["name"]).replace("\r\n", "\n").split("\n")
    lines = [_clean(x) for x in lines]
    lines = [x if len(x) <= 200 else x[:199] + "\u2026" for x in lines]
    lines[-1] += f"  #{node['id']}"
    out = lines + [node["state"]]
    if node.get("error"):
        first = _clean(node["error"].split("\n")[0])
        out.append(first if len(first) <= 80 else first[:79] + "\u2026")
    return out


def _require_dot():
    dot = shutil.which("dot")
    assert dot, "Graphviz's `dot` is missing: `make deps` installs it (SYSTEM_PACKAGES in the Makefile)"
    return dot


def _render(text, fmt):
    res = subprocess.run([_require_dot(), f"-T{fmt}"], input=text.encode("utf-8"), capture_output=True, timeout=60)
    assert res.returncode == 0, res.stderr.decode(errors="replace")
    assert res.stderr == b"", res.stderr.decode(errors="replace")  # no warning either
    return res.stdout


SVG = "{http://www.w3.org/2000/svg}"


def _svg_groups(svg_bytes, cls):
    root = ET.fromstring(svg_bytes)
    out = {}
    for g in root.iter(f"{SVG}g"):
        if g.get("class") == cls:
            title = g.find(f"{SVG}title").text
            out[title] = g
    return out


def test_graphviz_is_installed_by_the_project():
    with open(os.path.join(ROOT, "Makefile")) as f:
        packages = re.search(r"^SYSTEM_PACKAGES\s*=(.*)$", f.read(), re.M).group(1).split()
    assert "graphviz" in packages
    _require_dot()


def test_to_dot_odd_names_are_accepted_by_graphviz_and_shown_exactly(engine):
    graph = _odd_graph(engine)
    text = distaff.to_dot(graph)
    text.encode("utf-8")  # writable as a file (no lone surrogate left)
    svg = _render(text, "svg")
    nodes = _svg_groups(svg, "node")
    assert set(nodes) == {f"n{n['id']}" for n in graph["nodes"]}
    for n in graph["nodes"]:
        shown = [t.text or "" for t in nodes[f"n{n['id']}"].iter(f"{SVG}text")]
        # Graphviz draws a run of spaces as space + no-break spaces, and trims line ends
        assert [s.replace("\xa0", " ").strip() for s in shown] == [e.strip() for e in _expected_lines(n)], n["name"]
    clusters = _svg_groups(svg, "cluster")
    assert len(clusters) == 1
    cluster_text = [t.text for t in next(iter(clusters.values())).iter(f"{SVG}text")]
    assert cluster_text == ['workflow wf "odd"', "{x} <y>"]
    assert _render(text, "png").startswith(b"\x89PNG")


def test_to_dot_parent_and_dependency_edges_are_styled_apart(engine):
    graph = _odd_graph(engine)
    svg = _render(distaff.to_dot(graph), "svg")
    edges = _svg_groups(svg, "edge")
    assert len(edges) == len(graph["edges"])
    kinds = {(e["source"], e["target"]): e["kind"] for e in graph["edges"]}
    assert set(kinds.values()) == {"parent", "dependency"}
    for title, g in edges.items():
        s, t = (int(x[1:]) for x in html.unescape(title).split("->"))
        path = next(g.iter(f"{SVG}path"))  # inside the <a> of the tooltip
        dashed = path.get("stroke-dasharray") is not None
        assert dashed == (kinds[(s, t)] == "parent"), (title, kinds[(s, t)])
        assert path.get("stroke") == ("#8a8a8a" if kinds[(s, t)] == "parent" else "#1f3b73")


def test_to_dot_fills_nodes_by_state_and_keeps_the_error_as_tooltip(engine):
    graph = _odd_graph(engine)
    text = distaff.to_dot(graph)
    by_state = {}
    for n in graph["nodes"]:
        by_state.setdefault(n["state"], n)
    assert {"succeeded", "failed"} <= set(by_state)
    line = {m.group(1): m.group(0) for m in re.finditer(r"^\s*n(\d+) \[.*$", text, re.M)}
    assert 'fillcolor="#d4edda"' in line[str(by_state["succeeded"]["id"])]
    failed = next(n for n in graph["nodes"] if n.get("error", "").startswith("ValueError"))
    assert 'fillcolor="#f8d7da"' in line[str(failed["id"])]
    assert 'tooltip="ValueError: bad \\"value\\" second line <b>&amp;"' in line[str(failed["id"])]


def test_edges_to_nodes_not_in_the_graph_get_placeholders():
    graph = {
        "nodes": [{"id": 7, "name": "child", "state": "cancelled", "workflow_id": None}],
        "edges": [{"source": 3, "target": 7, "kind": "parent"}, {"source": 5, "target": 7, "kind": "dependency"}],
    }
    svg = _render(distaff.to_dot(graph), "svg")
    assert set(_svg_groups(svg, "node")) == {"n3", "n5", "n7"}
    assert len(_svg_groups(svg, "edge")) == 2
    decls = _check_mermaid(distaff.to_mermaid(graph))
    assert decls["nodes"]["n3"] == (["#3", "(not in graph)"], "missing")
    assert decls["nodes"]["n7"] == (["child  #7", "cancelled"], "cancelled")


def test_text_the_engine_refuses_is_still_drawn():
    """A graph dict made by hand may hold what names cannot (NUL, a lone surrogate)."""
    graph = {"nodes": [{"id": 1, "name": "nul\x00 lone \udc80", "state": "running", "error": "E\x00"}], "edges": []}
    for text in (distaff.to_dot(graph), distaff.to_mermaid(graph)):
        text.encode("utf-8")
        assert "\x00" not in text and "\ufffd" in text and "\\x00" in text
    svg = _render(distaff.to_dot(graph), "svg")
    shown = [t.text.replace("\xa0", " ") for t in _svg_groups(svg, "node")["n1"].iter(f"{SVG}text")]
    assert shown == ["nul\\x00 lone \ufffd  #1", "running", "E\\x00"]
    assert _check_mermaid(distaff.to_mermaid(graph))["nodes"]["n1"] == (["nul\\x00 lone \ufffd  #1", "running", "E\\x00"], "other")


def test_empty_graph_and_a_real_engine_graph(engine):
    empty = {"nodes": [], "edges": []}
    _render(distaff.to_dot(empty), "svg")
    assert _check_mermaid(distaff.to_mermaid(empty))["nodes"] == {}

    @engine.task()
    def double(x):
        return 2 * x

    @engine.task(wait=True)
    def total(a, b):
        return a.result() + b.result()

    assert total.submit(double.submit(1), double.submit(2)).result() == 6
    assert engine.wait_idle(timeout=30)
    g = engine.graph()
    _render(distaff.to_dot(g, rankdir="LR", title="a run"), "svg")
    d = _check_mermaid(distaff.to_mermaid(g, direction="LR"))
    assert len(d["edges"]) == 2 and {k for _, _, k in d["edges"]} == {"dependency"}


def test_bad_input_is_refused_early():
    for bad in (None, [], {"nodes": []}, {"nodes": [], "edges": None}):
        with pytest.raises(TypeError, match=r"engine\.graph\(\)"):
            distaff.to_dot(bad)
        with pytest.raises(TypeError, match=r"engine\.graph\(\)"):
            distaff.to_mermaid(bad)
    with pytest.raises(ValueError, match="'id', 'name' and 'state'"):
        distaff.to_dot({"nodes": [{"id": 1}], "edges": []})
    with pytest.raises(ValueError, match="must be an int"):
        distaff.to_mermaid({"nodes": [{"id": "1", "name": "a", "state": "succeeded"}], "edges": []})
    with pytest.raises(ValueError, match="kind 'parent' or 'dependency'"):
        distaff.to_dot({"nodes": [], "edges": [{"source": 1, "target": 2, "kind": "other"}]})
    with pytest.raises(ValueError, match="execution id"):
        distaff.to_mermaid({"nodes": [], "edges": [{"source": "a", "target": 2, "kind": "parent"}]})
    with pytest.raises(ValueError, match="rankdir"):
        distaff.to_dot({"nodes": [], "edges": []}, rankdir="sideways")
    with pytest.raises(ValueError, match="direction"):
        distaff.to_mermaid({"nodes": [], "edges": []}, direction="up")
    # Wrong types are TypeErrors (docs/concepts.md), wrong values ValueErrors.
    with pytest.raises(TypeError, match="rankdir must be a str"):
        distaff.to_dot({"nodes": [], "edges": []}, rankdir=None)
    with pytest.raises(TypeError, match="title must be a str"):
        distaff.to_dot({"nodes": [], "edges": []}, title=5)
    with pytest.raises(TypeError, match="direction must be a str"):
        distaff.to_mermaid({"nodes": [], "edges": []}, direction=1)


# ---------------------------------------------------------------------------------------------
# Mermaid: the flowchart grammar subset to_mermaid writes, checked line by line

_ID = r"[A-Za-z][A-Za-z0-9_]*"
_LABEL = r'"([^"\n]*)"'  # a quoted label: no raw quote, no raw newline inside
_RESERVED_IDS = {"end", "subgraph", "graph", "flowchart", "style", "classDef", "class", "click", "linkStyle"}
_ENTITY = re.compile(r"#(quot|lt|gt|amp|\d+);")


def _decode(label):
    """A Mermaid label back to its lines: entity codes decoded, <br/> splitting lines. A '#' not
    part of an entity, or a raw '<', '>', '&', '`', is an escaping error."""
    stripped = _ENTITY.sub("", label.replace("<br/>", ""))
    assert not re.search("[#<>&`]", stripped), f"unescaped special character in {label!r}"
    named = {"quot": '"', "lt": "<", "gt": ">", "amp": "&"}

    def sub(m):
        k = m.group(1)
        return named[k] if k in named else chr(int(k))

    return [_ENTITY.sub(sub, part) for part in label.split("<br/>")]


def _check_mermaid(text):
    lines = text.split("\n")
    assert lines[-1] == "" and lines[0] in ("flowchart TD", "flowchart LR", "flowchart TB", "flowchart BT", "flowchart RL")
    classes, nodes, edges, link_styles, stack = set(), {}, [], [], []
    for line in lines[1:-1]:
        s = line.strip()
        if m := re.fullmatch(rf"classDef ({_ID}) ((?:[a-z-]+:[^,\s]+(?: [^,\s]+)*,?)+)", s):
            classes.add(m.group(1))
        elif m := re.fullmatch(rf"subgraph ({_ID})\[{_LABEL}\]", s):
            assert m.group(1) not in _RESERVED_IDS
            stack.append((m.group(1), _decode(m.group(2))))
        elif s == "end":
            assert stack, "end without subgraph"
            stack.pop()
        elif m := re.fullmatch(rf"({_ID})\[{_LABEL}\]:::({_ID})", s):
            assert m.group(1) not in _RESERVED_IDS and m.group(1) not in nodes
            nodes[m.group(1)] = (_decode(m.group(2)), m.group(3))
        elif m := re.fullmatch(rf"({_ID}) (-->|-\.->) ({_ID})", s):
            edges.append((m.group(1), m.group(3), "dependency" if m.group(2) == "-->" else "parent"))
        elif m := re.fullmatch(r"linkStyle (\d+(?:,\d+)*) stroke:(#[0-9a-f]{6})", s):
            link_styles.append(([int(x) for x in m.group(1).split(",")], m.group(2)))
        else:
            raise AssertionError(f"not a statement to_mermaid may write: {line!r}")
    assert not stack, "unclosed subgraph"
    for _, cls in nodes.values():
        assert cls in classes
    for s, t, _ in edges:
        assert s in nodes and t in nodes, (s, t)
    styled = sorted(i for idx, _ in link_styles for i in idx)
    assert styled == list(range(len(edges))), "every link styled exactly once"
    for idx, color in link_styles:
        kinds = {edges[i][2] for i in idx}
        assert kinds == {"parent"} if color == "#8a8a8a" else kinds == {"dependency"}
    return {"nodes": nodes, "edges": edges, "classes": classes}


def test_to_mermaid_odd_names_are_escaped_and_decode_back(engine):
    graph = _odd_graph(engine)
    text = distaff.to_mermaid(graph)
    text.encode("utf-8")
    d = _check_mermaid(text)
    assert set(d["nodes"]) == {f"n{n['id']}" for n in graph["nodes"]}
    for n in graph["nodes"]:
        label, cls = d["nodes"][f"n{n['id']}"]
        assert label == _expected_lines(n), n["name"]
        assert cls == n["state"]
    assert re.search(r'subgraph wf0\["workflow wf #quot;odd#quot;<br/>\{x\} #lt;y#gt;"\]', text)
    got = sorted((int(s[1:]), int(t[1:]), k) for s, t, k in d["edges"])
    assert got == sorted((e["source"], e["target"], e["kind"]) for e in graph["edges"])


def test_to_mermaid_follows_prefects_shape():
    graph = {
        "nodes": [
            {"id": 1, "name": "Print Hello", "state": "succeeded"},
            {"id": 2, "name": "Print Hello Again", "state": "succeeded"},
        ],
        "edges": [{"source": 1, "target": 2, "kind": "dependency"}],
    }
    text = distaff.to_mermaid(graph)
    assert text.startswith("flowchart TD\n")
    assert '    n1["Print Hello  #35;1<br/>succeeded"]:::succeeded\n' in text
    assert "    n1 --> n2\n" in text
