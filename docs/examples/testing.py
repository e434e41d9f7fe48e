"""docs/testing.md: testing code that uses distaff with the `distaff_engine` pytest fixture.

The tests below are ordinary pytest tests; run them with `pytest docs/examples/testing.py`, or run
this file (`python docs/examples/testing.py`), which calls pytest on itself and prints the outcome.
"""

import pytest

import distaff

# -- the code under test: module-level tasks, as an application writes them ------------------------


@distaff.task(retries=2, fallback=lambda url, *, exc: f"<offline: {type(exc).__name__}>")
def fetch(url):
    if url.startswith("bad:"):
        raise ConnectionError(url)
    return f"<page {url}>"


@distaff.workflow
def crawl(urls):
    return distaff.gather(*fetch.map(urls)).result()


# -- the tests -------------------------------------------------------------------------------------


def test_crawl_runs_on_the_test_engine(distaff_engine):
    # crawl() and the fetch() calls nested in its body all run on this test's fresh engine.
    assert crawl(["a", "bad:b"]) == ["<page a>", "<offline: ConnectionError>"]
    names = sorted(n["name"] for n in distaff_engine.graph()["nodes"])
    assert names == ["crawl", "fetch", "fetch"]


@distaff.task
def parse(text):
    return int(text)


def test_a_failure_the_test_looks_at(distaff_engine):
    # A failure is fine as long as something retrieves it; one nobody retrieves fails the test
    # at teardown (so does an execution still running then).
    ex = parse.submit("twelve")
    assert isinstance(ex.exception(), ValueError)
    with pytest.raises(TypeError):
        parse.submit()  # missing argument: refused in the caller, nothing runs


@pytest.mark.distaff_engine(workers=2)
def test_engine_options_come_from_a_marker(distaff_engine):
    assert distaff_engine.workers == 2
    assert fetch("x") == "<page x>"


if __name__ == "__main__":
    import subprocess
    import sys

    # In a fresh interpreter: pytest must import this file itself (assertion rewriting).
    proc = subprocess.run([sys.executable, "-m", "pytest", __file__, "-q", "-p", "no:cacheprovider"], timeout=120)
    print("distaff_engine example tests:", "passed" if proc.returncode == 0 else f"failed (exit {proc.returncode})")
    raise SystemExit(proc.returncode)
