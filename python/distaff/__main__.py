"""``python -m distaff``: converts a recorded event log (``engine.trace("run.jsonl")``).

    python -m distaff report run.jsonl -o run.html    # the self-contained HTML report
    python -m distaff trace run.jsonl -o run.json     # Chrome Trace Event Format (Perfetto)
"""

from __future__ import annotations

import argparse
import os
import sys


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m distaff",
        description="distaff command line: convert an event log recorded with engine.trace('run.jsonl') "
        "(docs/observability.md).",
    )
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    r = sub.add_parser("report", help="write the self-contained HTML report of a recorded run",
                       description="Write the self-contained HTML report (timeline, graph, workflows, failures) "
                       "of an event log recorded with engine.trace('run.jsonl').")
    r.add_argument("log", help="the .jsonl event log")
    r.add_argument("-o", "--output", help="the .html file to write (default: the log's name with .html)")
    t = sub.add_parser("trace", help="write a Chrome trace (Perfetto, chrome://tracing) of a recorded run",
                       description="Write the Chrome Trace Event Format (.json) of an event log recorded with "
                       "engine.trace('run.jsonl'); open it at ui.perfetto.dev or chrome://tracing.")
    t.add_argument("log", help="the .jsonl event log")
    t.add_argument("-o", "--output", help="the .json file to write (default: the log's name with .json)")
    return p


def main(argv: list | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    from . import _trace

    suffix = ".html" if args.command == "report" else ".json"
    out = args.output or os.path.splitext(args.log)[0] + suffix
    if os.path.splitext(out)[1].lower() != suffix:
        parser.error(f"{args.command} writes a {suffix} file, not {out!r}")
    try:
        events = _trace.read_jsonl(args.log)
    except UnicodeDecodeError as e:
        print(f"python -m distaff {args.command}: {args.log}:{_line_of_bad_bytes(args.log)}: not UTF-8 text "
              f"({e.reason}): is it an event log written by engine.trace('....jsonl')?", file=sys.stderr)
        return 1
    except (OSError, ValueError) as e:
        print(f"python -m distaff {args.command}: {e}", file=sys.stderr)
        return 1
    try:
        _trace.write(events, out)
    except OSError as e:
        print(f"python -m distaff {args.command}: cannot write {out}: {e.strerror or e}", file=sys.stderr)
        return 1
    except Exception as e:  # noqa: BLE001 - lines that pass the field checks but still do not fit together
        print(f"python -m distaff {args.command}: {args.log}: not a consistent distaff event log "
              f"({type(e).__name__}: {e})", file=sys.stderr)
        return 1
    print(f"wrote {out} ({len(events)} events)")
    return 0


def _line_of_bad_bytes(path: str) -> int:
    """The 1-based line of the first bytes that are not UTF-8 (an error message's line number)."""
    with open(path, "rb") as f:
        for n, raw in enumerate(f, 1):
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError:
                return n
    return 1


if __name__ == "__main__":
    sys.exit(main())
