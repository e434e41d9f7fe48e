"""Regenerates the screenshots in docs/observability.md from a real run.

    .venv/bin/python docs/screenshots/make.py

Runs docs/examples/observability.py (which records run.html, run.json and run.jsonl), loads the
HTML report from disk in Debian's headless chromium through Selenium and chromium-driver (apt:
chromium chromium-driver; `make deps` installs them), and writes docs/img/observability_*.png —
observability_elsewhere.png from the example's run with bodies on a process pool and an event loop.
"""

import base64
import os
import shutil
import subprocess
import sys
import tempfile

from selenium import webdriver
from selenium.webdriver.chrome.service import Service

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
IMG = os.path.join(ROOT, "docs", "img")


def browser(width: int, height: int) -> webdriver.Chrome:
    opts = webdriver.ChromeOptions()
    opts.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
              f"--window-size={width},{height}", "--force-device-scale-factor=1"):
        opts.add_argument(a)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(shutil.which("chromedriver") or "/usr/bin/chromedriver"), options=opts)


def shot(d: webdriver.Chrome, element_id: str, path: str, below: int = 0) -> None:
    """A PNG of one element, whole even where it is taller than the window (DevTools' clip)."""
    r = d.execute_script(
        "const r = document.getElementById(arguments[0]).getBoundingClientRect();"
        "return [r.left + window.scrollX, r.top + window.scrollY, r.width, r.height];", element_id)
    png = d.execute_cdp_cmd("Page.captureScreenshot", {
        "format": "png", "captureBeyondViewport": True,
        "clip": {"x": r[0], "y": r[1], "width": r[2], "height": r[3] + below, "scale": 1}})
    with open(path, "wb") as f:
        f.write(base64.b64decode(png["data"]))


def main() -> int:
    out = tempfile.mkdtemp(prefix="distaff-screens-")
    subprocess.run([sys.executable, os.path.join(ROOT, "docs", "examples", "observability.py"), out], check=True)
    report = os.path.join(out, "run.html")
    os.makedirs(IMG, exist_ok=True)
    d = browser(1280, 1500)
    try:
        d.get("file://" + report)
        errors = [e for e in d.get_log("browser") if e["level"] == "SEVERE"]
        if errors:
            print("console errors:", errors, file=sys.stderr)
            return 1
        # The whole report (the page's height, so nothing is cut).
        height = d.execute_script("return document.documentElement.scrollHeight")
        d.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                          {"width": 1280, "height": height + 20, "deviceScaleFactor": 1, "mobile": False})
        d.save_screenshot(os.path.join(IMG, "observability_report.png"))
        d.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                          {"width": 1280, "height": 800, "deviceScaleFactor": 1, "mobile": False})
        # The timeline zoomed in on the first workflow (its submit to its finish), with a slice's
        # details; the failure's traceback unfolded.
        d.execute_script("""
            const x = document.querySelector('#failures details'); if (x) x.open = true;
            const data = JSON.parse(document.getElementById('distaff-data').textContent).executions;
            const first = data[0];
            window.distaffReport.setView(first.sub, first.fin + (first.fin - first.sub) * 0.05);
            document.getElementById('timeline-section').scrollIntoView();""")
        # Hover the first slice drawn on worker 0, so the tooltip shows.
        d.execute_script("""
            const c = document.getElementById('timeline'), r = c.getBoundingClientRect();
            const ctx = c.getContext('2d'), dpr = window.devicePixelRatio || 1;
            const y = 22 + 14, row = ctx.getImageData(0, y * dpr, c.width, 1).data;
            let x = -1;
            for (let i = 90 * dpr; i < c.width; i++) { if (row[4*i+1] === 157 && row[4*i] === 46) { x = i / dpr + 3; break; } }
            if (x > 0) c.dispatchEvent(new MouseEvent('mousemove', {clientX: r.left + x, clientY: r.top + y, bubbles: true}));""")
        shot(d, "timeline-section", os.path.join(IMG, "observability_timeline.png"), below=40)  # with the tooltip
        d.execute_script("document.getElementById('tooltip').style.display = 'none'")
        shot(d, "failures-section", os.path.join(IMG, "observability_failures.png"))
        shot(d, "dag-section", os.path.join(IMG, "observability_graph.png"))
        # The run whose bodies went elsewhere: rows per executor and event loop, below the workers;
        # the tooltip of the process pool's first slice.
        d.get("file://" + os.path.join(out, "elsewhere.html"))
        errors = [e for e in d.get_log("browser") if e["level"] == "SEVERE"]
        if errors:
            print("console errors:", errors, file=sys.stderr)
            return 1
        d.execute_script("""
            document.getElementById('timeline-section').scrollIntoView();
            const c = document.getElementById('timeline'), r = c.getBoundingClientRect();
            const ctx = c.getContext('2d'), dpr = window.devicePixelRatio || 1;
            const y = 22 + window.distaffReport.rows.indexOf('executor processes') * 28 + 14;
            const row = ctx.getImageData(0, y * dpr, c.width, 1).data;
            let x = -1;
            for (let i = 90 * dpr; i < c.width; i++) { if (row[4*i+1] === 157 && row[4*i] === 46) { x = i / dpr + 3; break; } }
            if (x > 0) c.dispatchEvent(new MouseEvent('mousemove', {clientX: r.left + x, clientY: r.top + y, bubbles: true}));""")
        shot(d, "timeline-section", os.path.join(IMG, "observability_elsewhere.png"), below=60)
        print("wrote", ", ".join(sorted(f for f in os.listdir(IMG) if f.startswith("observability_"))))
    finally:
        d.quit()
    return 0


if __name__ == "__main__":
    sys.exit(main())
