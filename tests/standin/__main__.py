"""Command line of the stand-in bench's helpers, for people and scripts (no Python needed).

    python -m tests.standin create-bench DIR --db-port PORT [--db-host HOST] [--app APP]...
                                             [--redis-cache URL]
    python -m tests.standin faults DIR '{"fail": {"migrate": ["a.example.com"]}}'   ('{}' clears)
    python -m tests.standin calls DIR          one JSON line per bench run (passwords as ***)
    python -m tests.standin bench-path         where the stand-in ``bench`` script is

Then run the stand-in as bench: ``cd DIR && $(python -m tests.standin bench-path) new-site ...``,
or point jerp-jobs at it: ``JERP_EXECUTOR=local JERP_BENCH_DIR=DIR JERP_BENCH_BIN=<bench-path>``.
``make demo`` (tests/demo.py) does all of this for eight sites.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from tests.standin.layout import BENCH_SCRIPT, create_bench, read_calls, write_faults


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.standin", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    create = commands.add_parser("create-bench", help="lay out a bench folder (or complete one)")
    create.add_argument("dir", type=Path)
    create.add_argument("--db-host", default="127.0.0.1")
    create.add_argument("--db-port", type=int, required=True)
    create.add_argument("--app", action="append", dest="apps", help="an app in the bench (repeat; default frappe, erpnext)")
    create.add_argument("--redis-cache", default=None, help="redis URL of the cache (bench migrate needs it)")
    faults = commands.add_parser("faults", help="write the failure-injection file ('{}' removes it)")
    faults.add_argument("dir", type=Path)
    faults.add_argument("faults", help="a JSON object (tests/standin/README.md: Fault file)")
    calls = commands.add_parser("calls", help="print the recorded runs, one JSON object a line")
    calls.add_argument("dir", type=Path)
    commands.add_parser("bench-path", help="print the path of the stand-in bench script")
    args = parser.parse_args(argv)

    if args.command == "create-bench":
        root = create_bench(args.dir, db_host=args.db_host, db_port=args.db_port,
                            apps=tuple(args.apps or ("frappe", "erpnext")), redis_cache=args.redis_cache)
        print(root.resolve())
    elif args.command == "faults":
        try:
            value = json.loads(args.faults)
            if not isinstance(value, dict):
                raise ValueError("the faults must be a JSON object")
            write_faults(args.dir, value)
        except ValueError as exc:
            parser.error(f"faults: {exc}")
    elif args.command == "calls":
        for call in read_calls(args.dir):
            print(json.dumps(call, sort_keys=True))
    else:
        print(BENCH_SCRIPT)
    return 0


if __name__ == "__main__":
    sys.exit(main())
