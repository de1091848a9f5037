"""``python -m jerp_jobs.dashboard hash``: ask for a password (twice, not echoed) and print its
hash for ``JERP_DASHBOARD_USERS`` (``name:role:HASH``). With ``--stdin`` the password is read
from the first line of standard input instead (for scripts)."""

from __future__ import annotations

import getpass
import sys

from jerp_jobs.dashboard.auth import hash_password


def main(argv: list[str]) -> int:
    if not argv or argv[0] != "hash" or any(a not in ("hash", "--stdin") for a in argv):
        print("usage: python -m jerp_jobs.dashboard hash [--stdin]", file=sys.stderr)
        return 2
    if "--stdin" in argv:
        password = sys.stdin.readline().rstrip("\n")
    else:
        password = getpass.getpass("password: ")
        if getpass.getpass("again: ") != password:
            print("error: the two passwords differ", file=sys.stderr)
            return 1
    if len(password) < 8:
        print("error: a password of at least 8 characters, please", file=sys.stderr)
        return 1
    print(hash_password(password))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
