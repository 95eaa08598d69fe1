#!/usr/bin/env python3
"""Atomic read-modify-write instructions per proxied request, from two callgrind
profiles taken with --dump-instr=yes (scripts/callgrind-diff.sh writes them with
ATOMICS=1).

    scripts/atomics-per-request.py SHORT.out LONG.out REQUESTS

Counts, in each profile, how often every instruction with a `lock` prefix (and every
`xchg` with memory, which locks implicitly) was executed, by disassembling each object
the profile names with objdump; prints the difference divided by REQUESTS, the total
first, then the functions that execute the most. Each such instruction costs about as
much as twenty ordinary ones on a modern x86 core, which instruction counts do not show.
"""
import collections
import re
import subprocess
import sys

ATOMIC = re.compile(r"^\s*([0-9a-f]+):\s+(lock\b|xchg\s.*\()")


def atomic_addresses(obj, cache={}):
    if obj not in cache:
        out = subprocess.run(
            ["objdump", "-d", "--no-show-raw-insn", obj],
            capture_output=True, text=True,
        ).stdout
        cache[obj] = {int(m.group(1), 16) for m in map(ATOMIC.match, out.splitlines()) if m}
    return cache[obj]


def counts(path):
    """function -> executions of atomic instructions."""
    per_fn = collections.Counter()
    fn = None
    atomics = set()
    after_call = False
    with open(path) as f:
        for line in f:
            if line.startswith("ob="):
                atomics = atomic_addresses(line[3:].strip())
            elif line.startswith("fn="):
                fn = line[3:].strip()
            elif line.startswith("calls="):
                after_call = True
            elif line.startswith("0x"):
                if after_call:
                    after_call = False
                    continue
                addr, *cost = line.split()
                if cost and int(addr, 16) in atomics:
                    per_fn[fn] += int(cost[0])
            elif line.startswith(("cfn=", "cob=", "cfi=", "cfl=")):
                continue
            else:
                after_call = False
    return per_fn


def main():
    short, long, requests = sys.argv[1], sys.argv[2], int(sys.argv[3])
    a, b = counts(short), counts(long)
    diff = {k: (b.get(k, 0) - a.get(k, 0)) / requests for k in set(a) | set(b)}
    print(f"{sum(diff.values()):.2f} atomic read-modify-writes per request")
    for fn, n in sorted(diff.items(), key=lambda kv: -kv[1])[:int(sys.argv[4]) if len(sys.argv) > 4 else 15]:
        if n >= 0.05:
            print(f"  {n:6.2f}  {fn[:120]}")


if __name__ == "__main__":
    main()
