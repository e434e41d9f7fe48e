"""The HTML report in a real browser: Debian's chromium, driven by Selenium through chromium-driver
(both from apt: `make deps` installs them; Selenium downloads nothing). The report is loaded from
disk (file://), with no network; any console error fails the test; the timeline and the failures
table must show what the run did.

Where chromium or Selenium is missing the test skips, except under CI (CI=true), where it fails:
the project's own install path must provide them."""

import os
import shutil

import pytest

import distaff

CHROMIUM = shutil.which("chromium")
DRIVER = shutil.which("chromedriver")


def _webdriver():
    missing = [n for n, p in (("chromium", CHROMIUM), ("chromedriver", DRIVER)) if not p]
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        missing.append("selenium")
    if missing:
        msg = f"the browser test needs {', '.join(missing)} (apt: chromium chromium-driver; pip: selenium)"
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
              "--window-size=1280,1400", "--allow-file-access-from-files"):
        opts.add_argument(a)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(executable_path=DRIVER), options=opts)


@pytest.fixture
def browser():
    d = _webdriver()
    try:
        yield d
    finally:
        d.quit()


def _run(tmp_path):
    """A real run: a workflow fanning out over a worker, with a dependency, a retried failure and
    a step that suspends; recorded as the HTML report and as the JSONL log."""
    eng = distaff.Engine(workers=2)

    @eng.task()
    def fetch(i):
        distaff.sleep(0.002)  # suspends: several slices
        return i

    @eng.task(retries=1)
    def parse(i):
        raise ValueError(f"bad record {i}")

    @eng.task(wait=True)
    def merge(*parts):
        return sum(p.result() for p in parts)

    @eng.workflow()
    def pipeline():
        parts = [fetch.submit(i) for i in range(4)]
        bad = parse.submit(7)
        total = merge.submit(*parts).result()
        return total, bad

    html, log = tmp_path / "run.html", tmp_path / "run.jsonl"
    try:
        with eng.trace(html) as t, eng.trace(log):
            with eng.workflow_scope("orders-42"):
                total, bad = pipeline.submit().result()
            assert total == 6
            with pytest.raises(ValueError):
                bad.result()
    finally:
        eng.shutdown()
    return html, t.events


def test_the_report_renders_the_run_without_console_errors(browser, tmp_path):
    html, events = _run(tmp_path)
    browser.get(html.as_uri())
    report = browser.execute_script("return window.distaffReport")
    logs = browser.get_log("browser")
    errors = [e for e in logs if e["level"] in ("SEVERE", "ERROR")]
    assert not errors, errors
    assert report and report["ready"], report
    executions = {e["id"] for e in events}
    slices = sum(1 for e in events if e["event"] in ("TaskSuspended", "TaskBodyEnded"))
    assert report["executions"] == len(executions) == 7  # pipeline, 4 fetch, parse, merge
    assert report["slices"] == slices and report["drawn"] >= slices
    assert report["rows"] and all(r.startswith("worker ") for r in report["rows"])
    assert report["dagNodes"] == 7
    # The timeline was drawn: zoomed on the failed execution's run, the canvas has the failure's
    # colour and the success colour on it (at full width, a 1-pixel slice may hide under another).
    colours = browser.execute_script("""
        const data = JSON.parse(document.getElementById('distaff-data').textContent).executions;
        const bad = data.find(x => x.state === 'failed' && x.sl.length);
        const [, a, b] = bad.sl[0];
        window.distaffReport.setView(a - (b - a), b + (b - a));
        const c = document.getElementById('timeline');
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        const seen = {};
        for (let i = 0; i < d.length; i += 4) seen[d[i] + ',' + d[i + 1] + ',' + d[i + 2]] = 1;
        return seen;""")
    assert "214,69,65" in colours, "no failed slice drawn"  # --failed
    full = browser.execute_script("""
        document.getElementById('zoom-reset').click();
        const c = document.getElementById('timeline');
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        for (let i = 0; i < d.length; i += 4) if (d[i] === 46 && d[i + 1] === 157 && d[i + 2] === 87) return true;
        return false;""")
    assert full, "no succeeded slice drawn"  # --ok
    report = browser.execute_script("return window.distaffReport")
    # Zooming in keeps drawing (a narrower view).
    browser.find_element("id", "zoom-in").click()
    zoomed = browser.execute_script("return window.distaffReport")
    assert zoomed["view"][1] - zoomed["view"][0] < report["view"][1] - report["view"][0]
    # The failures table: the parse failure, its workflow, its two attempts, its traceback.
    rows = browser.find_elements("css selector", "#failures tbody tr")
    texts = [r.text for r in rows]
    parse_rows = [t for t in texts if "parse" in t]
    assert len(parse_rows) == 1 and "ValueError: bad record 7" in parse_rows[0] and "orders-42" in parse_rows[0]
    assert parse_rows[0].split()[-2] == "2" or " 2 " in parse_rows[0]
    tb = browser.execute_script(
        "return [...document.querySelectorAll('#failures tbody tr')].map(r => r.querySelector('pre')?.textContent || '')")
    assert any('raise ValueError(f"bad record {i}")' in t for t in tb)
    # The workflow summary: one workflow, 7 executions, one failed.
    wf = browser.find_element("css selector", '#workflows tbody tr[data-workflow="orders-42"]').text.split()
    assert wf[:5] == ["orders-42", "7", "6", "1", "0"]
    # The graph: parent edges from the workflow, dependency edges into merge.
    assert len(browser.find_elements("css selector", "#dag-svg path.edge-parent")) == 6
    assert len(browser.find_elements("css selector", "#dag-svg path.edge-dependency")) == 4
    # Styled as to_dot()/to_mermaid() draw them: parent edges dashed, dependency edges solid.
    assert all(e.get_attribute("stroke-dasharray") for e in browser.find_elements("css selector", "#dag-svg path.edge-parent"))
    assert not any(e.get_attribute("stroke-dasharray")
                   for e in browser.find_elements("css selector", "#dag-svg path.edge-dependency"))
    errors = [e for e in browser.get_log("browser") if e["level"] in ("SEVERE", "ERROR")]
    assert not errors, errors


def test_a_console_error_would_fail_the_test(browser, tmp_path):
    """The check above can fail: a page that throws shows up in the browser log."""
    page = tmp_path / "broken.html"
    page.write_text("<!DOCTYPE html><html><body><script>null.boom();</script></body></html>")
    browser.get(page.as_uri())
    errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert errors and "boom" in errors[0]["message"]


def test_the_report_has_a_row_per_executor_and_event_loop(browser, tmp_path):
    """Bodies that ran elsewhere — an executor="processes" body, an async def body on the engine's
    loop — get timeline rows of their own below the workers, with their slices drawn there."""
    pytest.importorskip("cloudpickle")
    import asyncio
    import time

    eng = distaff.Engine(workers=2, processes=1)

    @eng.task(executor="processes")
    def crunch(n):
        time.sleep(0.03)
        return n * n

    @eng.task()
    async def poll(n):
        await asyncio.sleep(0.02)
        return n

    @eng.workflow()
    def job():
        return crunch.submit(3).result() + poll.submit(1).result()

    html = tmp_path / "run.html"
    try:
        crunch.submit(0).result(timeout=120)  # the pool's process is up
        with eng.trace(html) as t:
            assert job.submit().result(timeout=120) == 10
    finally:
        eng.shutdown()
    browser.get(html.as_uri())
    report = browser.execute_script("return window.distaffReport")
    errors = [e for e in browser.get_log("browser") if e["level"] in ("SEVERE", "ERROR")]
    assert not errors, errors
    assert report and report["ready"], report
    rows = report["rows"]
    assert "executor processes" in rows and "asyncio loop (distaff-event-loop)" in rows, rows
    assert rows.index("executor processes") > max(i for i, r in enumerate(rows) if r.startswith("worker "))
    returned = [e for e in t.events if e["event"] == "TaskReturned"]
    assert report["remoteSlices"] == len(returned) == 2
    assert report["rowSlices"][rows.index("executor processes")] == 1
    # Zoomed on the executor's slice, its row has the success colour on it.
    found = browser.execute_script("""
        const data = JSON.parse(document.getElementById('distaff-data').textContent);
        const x = data.executions.find(x => x.rm && data.tracks[x.rm[0][0]] === 'executor processes');
        const [, a, b] = x.rm[0];
        window.distaffReport.setView(a - (b - a), b + (b - a));
        const r = window.distaffReport.rows.indexOf('executor processes');
        const c = document.getElementById('timeline'), dpr = window.devicePixelRatio || 1;
        const y = Math.round((22 + r * 28 + 14) * dpr);
        const d = c.getContext('2d').getImageData(0, y, c.width, 1).data;
        for (let i = 0; i < d.length; i += 4) if (d[i] === 46 && d[i + 1] === 157 && d[i + 2] === 87) return true;
        return false;""")
    assert found, "no slice drawn on the executor's row"
    errors = [e for e in browser.get_log("browser") if e["level"] in ("SEVERE", "ERROR")]
    assert not errors, errors


def test_an_empty_report_says_nothing_was_recorded(browser, tmp_path):
    # An outsider's find: a trace of the wrong engine drew an axis of "0 ns 0 ns 1 ns ...".
    eng = distaff.Engine()
    try:
        with eng.trace(tmp_path / "empty.html"):
            pass
    finally:
        eng.shutdown()
    browser.get((tmp_path / "empty.html").as_uri())
    assert "0 executions" in browser.find_element("id", "summary").text
    assert browser.execute_script("return window.distaffReport.note").startswith("nothing recorded")
    errors = [e for e in browser.get_log("browser") if e["level"] in ("SEVERE", "ERROR")]
    assert errors == [], errors
