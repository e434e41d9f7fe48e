"""docs/observability.md, "Graph pictures", as a runnable file: to_dot and to_mermaid.

    python docs/examples/graph_pictures.py            # prints both; renders a PNG with Graphviz's dot
"""

import os
import shutil
import subprocess
import tempfile

import distaff

engine = distaff.Engine()


@engine.task()
def fetch(source):
    if source == "b":
        raise ConnectionError(f"source {source!r} is down")
    return f"rows from {source}"


@engine.task()
def merge(*parts):  # gets the Executions (dependencies: edges in the graph), waits on each
    return [p.result() for p in parts if p.exception() is None]


@engine.workflow()
def nightly():
    parts = [fetch.submit(s) for s in ("a", "b", "c")]
    return merge.submit(*parts)


with engine.workflow_scope("nightly-2024-05-01"):
    run = nightly.submit()
print("merged:", run.result())

graph = engine.graph(workflow_id="nightly-2024-05-01")
dot = distaff.to_dot(graph)
mermaid = distaff.to_mermaid(graph)
print(dot)
print(mermaid)

# Render the DOT text with Graphviz (`make deps` installs it: apt's graphviz package).
if shutil.which("dot"):
    with tempfile.TemporaryDirectory() as d:
        png = os.path.join(d, "nightly.png")
        subprocess.run(["dot", "-Tpng", "-o", png], input=dot, text=True, check=True)
        with open(png, "rb") as f:
            print("dot drew a PNG:", f.read(4) == b"\x89PNG")
engine.shutdown()
