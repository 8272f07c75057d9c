#!/usr/bin/env python3
"""Per-syscall-group tallies of pjdfstest output, as in docs/conformance.md.

    pjdfstest_groups.py LOG [LOG...]

LOG is what `pjdfstest -c CFG -p DIR -s SECOND` printed (one `group::case[::variant]  STATUS`
line per case, STATUS ok, FAILED or skipped). Prints one markdown row per group with
"passed / run" for each LOG (run = passed + failed; skipped cases are not run), then the total.
"""
import collections
import re
import sys

CASE = re.compile(r"^([a-z_]+)::\S+\s+(ok|FAILED|skipped)$")


def tally(path):
    groups = collections.defaultdict(collections.Counter)
    with open(path, errors="replace") as f:
        for line in f:
            m = CASE.match(line.rstrip())
            if m:
                groups[m.group(1)][m.group(2)] += 1
    return groups


def cell(c):
    return f"{c['ok']} / {c['ok'] + c['FAILED']}"


def main():
    if len(sys.argv) < 2 or sys.argv[1] in ("-h", "--help"):
        sys.exit(__doc__)
    logs = [tally(p) for p in sys.argv[1:]]
    names = sorted(set().union(*logs))
    print("| syscall group | " + " | ".join(sys.argv[1:]) + " |")
    print("|---|" + "---:|" * len(logs))
    for g in names:
        print(f"| {g} | " + " | ".join(cell(t[g]) for t in logs) + " |")
    totals = []
    for t in logs:
        all_ = sum(t.values(), collections.Counter())
        totals.append(f"**{cell(all_)}** ({all_['skipped']} skipped)")
    print("| **all** | " + " | ".join(totals) + " |")


if __name__ == "__main__":
    main()
