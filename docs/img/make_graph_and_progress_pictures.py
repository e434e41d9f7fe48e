"""Makes the pictures of docs/observability.md's "Graph pictures" and "Progress" sections from
real runs:

- docs/img/graph_dot.png: a workflow's engine.graph() through distaff.to_dot, drawn by Graphviz;
- docs/img/progress_rich.png and docs/img/progress_plain.png: a program waiting with
  progress=True inside distaff.progress(), run in a real terminal (tmux), its screen captured
  (tmux capture-pane, with colours) half-way and drawn to PNG.

    .venv/bin/python docs/img/make_graph_and_progress_pictures.py

Needs what `make install` brings (distaff, rich in the test extra), Graphviz's `dot` (`make deps`),
tmux (apt) and Pillow (pip) to draw the captured screen, with the DejaVu Sans Mono font.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))

import distaff  # noqa: E402


def graph_picture(out: str) -> None:
    engine = distaff.Engine()

    @engine.task(name="extract")
    def extract(source):
        if source == "billing":
            raise ConnectionError(f"{source}: connection refused")
        return source

    @engine.task(name="transform")
    def transform(raw):
        return raw.result().upper()

    @engine.task(name="load")
    def load(*parts):
        return [p.result() for p in parts if p.exception() is None]

    @engine.workflow(name="nightly")
    def nightly():
        raws = [extract.submit(s) for s in ("users", "orders", "billing")]
        clean = [transform.submit(r) for r in raws]
        return load.submit(*clean)

    with engine.workflow_scope("nightly-2024-05-01"):
        run = nightly.submit()
        run.result()
    engine.wait_idle(timeout=30)
    dot = distaff.to_dot(engine.graph(workflow_id="nightly-2024-05-01"), rankdir="LR")
    engine.shutdown()
    subprocess.run(["dot", "-Tpng", "-Gdpi=110", "-o", out], input=dot, text=True, check=True)
    print("wrote", os.path.relpath(out, ROOT))


PROGRAM = """
import os, sys, threading, time
import distaff

marker, go = sys.argv[1:3]
gates = [distaff.Event() for _ in range(120)]

@distaff.task
def load_partition(i, gate):
    gate.wait()
    if i in (17, 64):
        raise ValueError(f"partition {i}: bad row")
    return i

def driver(xs):
    for g in gates[:75]:
        g.set()
    while not all(x.done() for x in xs[:75]):
        time.sleep(0.01)
    time.sleep(0.6)  # a few redraws of the bars
    open(marker, "w").close()
    while not os.path.exists(go):
        time.sleep(0.01)
    for g in gates[75:]:
        g.set()

print("$ python nightly.py")
with distaff.workflow_scope("nightly-2024-05-01"):
    with distaff.progress():
        xs = [load_partition.submit(i, g) for i, g in enumerate(gates)]
        threading.Thread(target=driver, args=(xs,), daemon=True).start()
        done, _ = distaff.wait(xs, progress=True)
for x in xs:
    x.exception()
"""


def capture_terminal(backend: str, workdir: str, width: int = 100, height: int = 8) -> str:
    prog = os.path.join(workdir, "nightly.py")
    with open(prog, "w") as f:
        f.write(textwrap.dedent(PROGRAM))
    marker, go = os.path.join(workdir, f"drawn-{backend}"), os.path.join(workdir, f"go-{backend}")
    session = f"distaff-pictures-{os.getpid()}-{backend}"
    cmd = f"env DISTAFF_PROGRESS={backend} TERM=xterm-256color {sys.executable} {prog} {marker} {go}; sleep 30"
    subprocess.run(["tmux", "new-session", "-d", "-s", session, "-x", str(width), "-y", str(height), cmd], check=True)
    try:
        deadline = time.monotonic() + 60
        while not os.path.exists(marker):
            if time.monotonic() > deadline:
                raise RuntimeError("the program never reached the half-way point")
            time.sleep(0.05)
        screen = subprocess.run(["tmux", "capture-pane", "-e", "-p", "-t", session], check=True,
                                capture_output=True, text=True).stdout
        open(go, "w").close()
        return screen
    finally:
        subprocess.run(["tmux", "kill-session", "-t", session], capture_output=True)


def ansi_to_png(screen: str, out: str, width: int = 100) -> None:
    """Draws captured terminal text (ANSI SGR colours) as a terminal window would."""
    from PIL import Image, ImageDraw, ImageFont
    from rich.terminal_theme import MONOKAI
    from rich.text import Text

    def font_file(spec: str) -> str:
        return subprocess.run(["fc-match", "-f", "%{file}", spec], capture_output=True, text=True, check=True).stdout

    size = 16
    regular = ImageFont.truetype(font_file("DejaVu Sans Mono"), size)
    bold = ImageFont.truetype(font_file("DejaVu Sans Mono:bold"), size)
    cell_w = round(regular.getlength("M"))
    cell_h = round(size * 1.35)
    lines = screen.rstrip("\n").split("\n")
    while lines and not lines[-1].strip():
        lines.pop()
    pad = 14
    bg = tuple(MONOKAI.background_color)
    fg = tuple(MONOKAI.foreground_color)
    img = Image.new("RGB", (width * cell_w + 2 * pad, len(lines) * cell_h + 2 * pad + 22), bg)
    draw = ImageDraw.Draw(img)
    draw.rectangle([0, 0, img.width, 22], fill=(60, 60, 60))  # a title bar
    for i, c in enumerate(((255, 95, 86), (255, 189, 46), (39, 201, 63))):
        draw.ellipse([10 + i * 20, 6, 22 + i * 20, 18], fill=c)
    for row, line in enumerate(lines):
        text = Text.from_ansi(line)
        styles = [None] * len(text.plain)
        for span in text.spans:
            for k in range(span.start, min(span.end, len(styles))):
                styles[k] = span.style if styles[k] is None else styles[k] + span.style
        y = pad + 22 + row * cell_h
        for col, ch in enumerate(text.plain):
            style = styles[col]
            color, f = fg, regular
            if style is not None and not isinstance(style, str):
                if style.color is not None:
                    color = tuple(style.color.get_truecolor(MONOKAI))
                if style.bgcolor is not None:
                    x = pad + col * cell_w
                    draw.rectangle([x, y, x + cell_w, y + cell_h], fill=tuple(style.bgcolor.get_truecolor(MONOKAI, foreground=False)))
                if style.bold:
                    f = bold
                if style.dim:
                    color = tuple((a + b) // 2 for a, b in zip(color, bg))
            if ch != " ":
                draw.text((pad + col * cell_w, y), ch, font=f, fill=color)
    img.save(out)
    print("wrote", os.path.relpath(out, ROOT))


def main() -> int:
    for tool in ("dot", "tmux", "fc-match"):
        if not shutil.which(tool):
            print(f"{tool} is missing (apt-get install graphviz tmux fontconfig)", file=sys.stderr)
            return 1
    graph_picture(os.path.join(HERE, "graph_dot.png"))
    with tempfile.TemporaryDirectory(prefix="distaff-pictures-") as workdir:
        for backend in ("rich", "plain"):
            screen = capture_terminal(backend, workdir)
            ansi_to_png(screen, os.path.join(HERE, f"progress_{backend}.png"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
