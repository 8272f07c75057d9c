#!/usr/bin/env python3
"""A random-operation exerciser in the style of fsx: random writes, truncates, reads, renames,
fsyncs and reopens on a file in the mount, mirrored on a file on the local disk, compared after
every step. Reproducible from --seed; the first divergence is reported with the operation log.

    scripts/fsx.py DIR [--ops N] [--seed S] [--max-len BYTES]
"""
import argparse
import os
import random
import sys
import tempfile


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("dir", help="directory inside the mount under test")
    ap.add_argument("--ops", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--max-len", type=int, default=256 * 1024)
    a = ap.parse_args()

    rnd = random.Random(a.seed)
    test_path = os.path.join(a.dir, f"fsx-{a.seed}")
    alt_path = test_path + ".renamed"
    mirror_dir = tempfile.mkdtemp(prefix="fsx-mirror-")
    mirror_path = os.path.join(mirror_dir, "mirror")
    log = []

    def open_both():
        t = os.open(test_path, os.O_RDWR | os.O_CREAT, 0o644)
        m = os.open(mirror_path, os.O_RDWR | os.O_CREAT, 0o644)
        return t, m

    for p in (test_path, alt_path):
        if os.path.exists(p):
            os.unlink(p)
    t, m = open_both()

    def fail(msg: str) -> int:
        print(f"fsx: seed {a.seed}: divergence after {len(log)} ops: {msg}", file=sys.stderr)
        for line in log[-30:]:
            print(f"  {line}", file=sys.stderr)
        return 1

    for i in range(a.ops):
        size = os.fstat(m).st_size
        op = rnd.choices(
            ["write", "truncate", "read", "fsync", "rename", "reopen", "append"],
            weights=[40, 10, 25, 5, 5, 10, 5],
        )[0]
        if op == "write":
            off = rnd.randrange(0, a.max_len)
            n = rnd.randrange(1, min(65536, a.max_len - off) + 1)
            data = rnd.randbytes(n)
            log.append(f"{i} write off={off} len={n}")
            os.pwrite(t, data, off)
            os.pwrite(m, data, off)
        elif op == "append":
            n = rnd.randrange(1, 8192)
            data = rnd.randbytes(n)
            log.append(f"{i} append len={n} at={size}")
            os.pwrite(t, data, size)
            os.pwrite(m, data, size)
        elif op == "truncate":
            n = rnd.randrange(0, a.max_len)
            log.append(f"{i} truncate {n}")
            os.ftruncate(t, n)
            os.ftruncate(m, n)
        elif op == "read":
            off = rnd.randrange(0, max(size, 1))
            n = rnd.randrange(1, 65536)
            log.append(f"{i} read off={off} len={n}")
            got = os.pread(t, n, off)
            want = os.pread(m, n, off)
            if got != want:
                return fail(f"read at {off}+{n}: got {len(got)} bytes, want {len(want)}")
        elif op == "fsync":
            log.append(f"{i} fsync")
            os.fsync(t)
        elif op == "rename":
            log.append(f"{i} rename there and back")
            os.close(t)
            os.rename(test_path, alt_path)
            os.rename(alt_path, test_path)
            t = os.open(test_path, os.O_RDWR)
        elif op == "reopen":
            log.append(f"{i} close and reopen")
            os.close(t)
            t = os.open(test_path, os.O_RDWR)
        st_t, st_m = os.fstat(t).st_size, os.fstat(m).st_size
        if st_t != st_m:
            return fail(f"size {st_t}, want {st_m}")
        if i % 10 == 0 or i == a.ops - 1:
            if os.pread(t, st_m + 1, 0) != os.pread(m, st_m + 1, 0):
                return fail("contents differ")
    os.close(t)
    os.close(m)
    with open(test_path, "rb") as f1, open(mirror_path, "rb") as f2:
        if f1.read() != f2.read():
            return fail("contents differ after close")
    os.unlink(test_path)
    os.unlink(mirror_path)
    os.rmdir(mirror_dir)
    print(f"fsx: {a.ops} ops, seed {a.seed}, no divergence")
    return 0


if __name__ == "__main__":
    sys.exit(main())
