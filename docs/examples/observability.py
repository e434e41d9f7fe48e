"""docs/observability.md: one run recorded three ways (event log, Chrome trace, HTML report), the
event log converted afterwards with `python -m distaff`, and a run whose bodies run elsewhere (a
process pool, an event loop) recorded with their executors' tracks.

    python docs/examples/observability.py [OUTPUT_DIR]     # default: a temporary directory
"""

import asyncio
import collections
import json
import os
import subprocess
import sys
import tempfile

import distaff

out = sys.argv[1] if len(sys.argv) > 1 else tempfile.mkdtemp(prefix="distaff-observability-")
os.makedirs(out, exist_ok=True)
engine = distaff.Engine(workers=2)


def work(n=20_000):
    return sum(i * i for i in range(n))  # some CPU: a visible slice on the timeline


@engine.task()
def fetch(order_id, part):
    work()
    distaff.sleep(0.003)  # an API call: the fiber suspends, the worker runs others meanwhile
    work()
    return {"order": order_id, "part": part, "price": 2.5 * (part + 1)}


@engine.task(retries=1, retry_delay=0.001)
def validate(order_id):
    work()
    if order_id % 4 == 3:
        raise ValueError(f"order {order_id}: address missing")
    return True


@engine.task(wait=True)  # starts once every fetch is done
def total(*parts):
    return sum(p.result()["price"] for p in parts)


@engine.workflow()
def process_order(order_id):
    parts = [fetch.submit(order_id, i) for i in range(3)]
    ok = validate.submit(order_id)
    amount = total.submit(*parts).result()  # the workflow suspends here
    ok.result()  # raises for a bad order: the workflow fails with the same error
    return amount


def run_orders():
    results = {}
    for order_id in range(1, 5):
        with engine.workflow_scope(f"order-{order_id}"):
            ex = process_order.submit(order_id)
        try:
            results[order_id] = ex.result()
        except ValueError as e:
            results[order_id] = f"failed: {e}"
    return results


# 1. The event log: one JSON object per line, AsyncFlow's event names.
log = os.path.join(out, "run.jsonl")
with engine.trace(log) as trace:
    results = run_orders()
print("results:", results)
counts = collections.Counter(e["event"] for e in trace.events)
print("events:", ", ".join(f"{k} {counts[k]}" for k in ("TaskCreated", "TaskStarted", "TaskCompleted", "TaskFailed")))
failed = next(e for e in trace.events if e["event"] == "TaskFailed" and e["name"] == "validate")
print(f"first failure: {failed['name']} in {failed['workflow_id']}, {failed['error']}, attempts={failed['attempts']}")

# 2. The Chrome trace: open it at ui.perfetto.dev (or chrome://tracing).
chrome = os.path.join(out, "run.json")
with engine.trace(chrome):
    run_orders()
with open(chrome) as f:
    doc = json.load(f)
tracks = sorted({e["args"]["name"] for e in doc["traceEvents"] if e["ph"] == "M" and e["name"] == "thread_name"})
slices = [e for e in doc["traceEvents"] if e["ph"] == "X"]
flows = collections.Counter(e["cat"] for e in doc["traceEvents"] if e["ph"] == "s")
print(f"chrome trace: tracks {tracks}, {len(slices)} slices")
print(f"flow arrows: parent->child {flows['parent']}, dependency->dependent {flows['dependency']}")

# 3. The HTML report: a file that opens offline, from disk.
report = os.path.join(out, "run.html")
with distaff.trace(report, engine=engine):
    run_orders()
print("report written:", os.path.getsize(report) > 10_000)

# 4. The recorded log converted later, from the command line.
r = subprocess.run([sys.executable, "-m", "distaff", "report", log, "-o", os.path.join(out, "from-log.html")],
                   capture_output=True, text=True, check=True)
print("python -m distaff report:", r.stdout.strip().split(" (")[0].endswith("from-log.html"))
# 5. Bodies that run elsewhere: an executor="processes" body and an async def body show on tracks
#    of their own, from when the body was shipped to when its outcome came back.
@engine.task(executor="processes")
def render(order_id):  # CPU-heavy: in another process
    return work(400_000) % 97


@engine.task()
async def notify(order_id):  # an async def body: runs on the engine's event loop
    await asyncio.sleep(0.01)
    return f"mailed {order_id}"


@engine.workflow()
def ship_order(order_id):
    invoice = render.submit(order_id)
    mail = notify.submit(order_id)
    return invoice.result(), mail.result()


render.submit(0).result()  # the pool's processes start before the recording
elsewhere = os.path.join(out, "elsewhere.json")
with engine.trace(elsewhere), engine.trace(os.path.join(out, "elsewhere.html")):
    shipped = [ship_order.submit(i) for i in range(1, 4)]
    print("shipped:", [ex.result()[1] for ex in shipped])
with open(elsewhere) as f:
    doc = json.load(f)
names = {e["tid"]: e["args"]["name"] for e in doc["traceEvents"] if e["ph"] == "M" and e["name"] == "thread_name"}
away = sorted({names[e["tid"]].split(" \u00b7 ")[0] for e in doc["traceEvents"] if e["ph"] == "X" and e["cat"] == "elsewhere"})
print("elsewhere: tracks", away)
engine.shutdown()
print("output in", out)
