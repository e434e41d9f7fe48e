"""docs/observability.md, "Progress", as a runnable file: progress=True on wait, as_completed,
gather and join, and distaff.progress().

    python docs/examples/progress.py              # a live bar on a terminal
    python docs/examples/progress.py 2>&1 | cat   # plain lines when stderr is not a terminal
"""

import distaff


@distaff.task()
def crunch(i):
    distaff.sleep(0.02 * (i % 7))  # some take longer than others
    if i == 13:
        raise ValueError("unlucky")
    return i * i


xs = [crunch.submit(i) for i in range(40)]
done, not_done = distaff.wait(xs, progress=True)
print(f"wait: {len(done)} done, {len(not_done)} not done")

finished = [x for x in distaff.as_completed(xs, progress=True)]
print("as_completed:", len(finished), "in completion order")

total = distaff.gather(*xs, return_exceptions=True, progress=True).result()
print("gather:", sum(v for v in total if not isinstance(v, Exception)))

print("join:", distaff.join(first=xs[0], last=xs[-1], progress=True).result())

# A workflow's counts, live, for as long as the block runs:
with distaff.workflow_scope("batch-7"):
    with distaff.progress() as shown:
        ys = [crunch.submit(i) for i in range(20, 30)]
        distaff.wait(ys)
        print("progress():", shown.snapshot())
