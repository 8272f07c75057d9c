#!/usr/bin/env python3
"""Write-heavy workload for scripts/crash.sh, and the checks that follow a crash.

    crash_workload.py run MOUNT LOGDIR --round R [--procs N] [--seed S]
        creates, appends to, rewrites, replaces (temp file + rename) and deletes files under
        MOUNT/rR/pK/, each change fsync'd, until killed or until the mount goes away. Before a
        change it logs its intent (and keeps the intended content in LOGDIR); once the change
        is acknowledged (fsync and close returned), it logs path, size and SHA-256.
    crash_workload.py check DIR LOGDIR [--settle]
        checks DIR (a mount, or a local remote folder) against every round's log: the last
        acknowledged version of each path must be there, byte for byte, and a deleted path
        must be gone. A change that was in flight when the daemon died may be there whole,
        partly (only where POSIX allows: a prefix of what was being written) or not at all.
        --settle records what the in-flight paths hold now, so that later checks (the remote,
        later rounds) demand exactly that. Prints "acks N losses L" and one line per loss.

The logs live outside the mount, so they survive the crash they describe.
"""
import argparse
import glob
import hashlib
import os
import random
import sys

SIZES = [0, 1, 100, 4096, 65536, 300_000, 1_048_576]
APPENDS = [1, 100, 4096, 65536]
OPS = ["new", "append", "rewrite", "replace", "delete"]
WEIGHTS = [35, 25, 15, 15, 10]


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class Log:
    def __init__(self, logdir: str, name: str):
        self.pending = os.path.join(logdir, f"{name}.pending")
        self.f = open(os.path.join(logdir, f"{name}.log"), "a", buffering=1)

    def intend(self, op: str, path: str, content: bytes) -> None:
        # The intended content first, then the line that points at it.
        with open(self.pending, "wb") as p:
            p.write(content)
        self.f.write(f"B {op} {path} {len(content)} {sha(content)}\n")
        self.f.flush()

    def ack(self, path: str, content) -> None:
        if content is None:
            self.f.write(f"A {path} - -\n")
        else:
            self.f.write(f"A {path} {len(content)} {sha(content)}\n")
        self.f.flush()


def write_file(path: str, flags: int, data: bytes) -> None:
    fd = os.open(path, flags, 0o644)
    try:
        view = memoryview(data)
        while view:
            n = os.write(fd, view)
            view = view[n:]
        os.fsync(fd)
    finally:
        os.close(fd)


def worker(mount: str, logdir: str, rnd_no: int, proc: int, seed: int) -> None:
    rnd = random.Random(f"{seed}-{rnd_no}-{proc}")
    rel_dir = f"r{rnd_no}/p{proc}"
    os.makedirs(os.path.join(mount, rel_dir), exist_ok=True)
    log = Log(logdir, f"r{rnd_no:03d}-p{proc}")
    files = {}  # rel path -> acknowledged content
    i = 0
    while True:
        i += 1
        op = rnd.choices(OPS, WEIGHTS)[0] if files else "new"
        if op == "new":
            rel = f"{rel_dir}/f{i}"
            data = rnd.randbytes(rnd.choice(SIZES))
            log.intend(op, rel, data)
            write_file(os.path.join(mount, rel), os.O_WRONLY | os.O_CREAT | os.O_EXCL, data)
        else:
            rel = rnd.choice(sorted(files))
            path = os.path.join(mount, rel)
            if op == "append":
                data = files[rel] + rnd.randbytes(rnd.choice(APPENDS))
                log.intend(op, rel, data)
                write_file(path, os.O_WRONLY | os.O_APPEND, data[len(files[rel]):])
            elif op == "rewrite":
                data = rnd.randbytes(rnd.choice(SIZES))
                log.intend(op, rel, data)
                write_file(path, os.O_WRONLY | os.O_TRUNC, data)
            elif op == "replace":
                data = rnd.randbytes(rnd.choice(SIZES))
                log.intend(op, rel, data)
                tmp = os.path.join(mount, rel_dir, f".tmp{i}")
                write_file(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, data)
                os.rename(tmp, path)
            else:
                data = None
                log.intend(op, rel, b"")
                os.unlink(path)
        log.ack(rel, data)
        if data is None:
            del files[rel]
        else:
            files[rel] = data


def run(args) -> None:
    os.makedirs(args.logdir, exist_ok=True)
    # A process group of our own, so the caller can stop every writer at once (kill -- -PID).
    os.setpgid(0, 0)
    pids = []
    for k in range(args.procs):
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                worker(args.mount, args.logdir, args.round, k, args.seed)
            except OSError:
                # The mount went away under us: that is the crash this workload waits for.
                code = 0
            except BaseException:
                code = 1
            os._exit(code)
        pids.append(pid)
    status = 0
    for pid in pids:
        _, st = os.waitpid(pid, 0)
        status |= os.waitstatus_to_exitcode(st) if os.WIFEXITED(st) else 0
    sys.exit(1 if status else 0)


class Unreadable:
    """A path that exists but cannot be read (the error is the finding)."""

    def __init__(self, err: OSError):
        self.err = err


def read_state(path: str):
    """The file's bytes, None if there is no file, or Unreadable."""
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        return None
    except OSError as e:
        return Unreadable(e)


class Expect:
    """What one path must hold: its acknowledged state, plus the change in flight if any."""

    def __init__(self):
        self.acked = None  # (size, sha) or "deleted" or None (never acknowledged)
        self.inflight = None  # (op, intended content)


def model(logdir: str):
    paths = {}
    acks = 0
    for logfile in sorted(glob.glob(os.path.join(logdir, "r*.log"))):
        pending_file = logfile[: -len(".log")] + ".pending"
        last_intent = None
        with open(logfile) as f:
            # A line cut short (no newline yet) is no acknowledgment.
            lines = f.read().split("\n")[:-1]
        for line in lines:
            parts = line.split(" ")
            if parts[0] == "B" and len(parts) == 5:
                last_intent = (parts[1], parts[2], int(parts[3]), parts[4])
            elif parts[0] == "A" and len(parts) == 4:
                e = paths.setdefault(parts[1], Expect())
                e.acked = "deleted" if parts[2] == "-" else (int(parts[2]), parts[3])
                acks += 1
                last_intent = None
        if last_intent is not None:
            op, path, size, digest = last_intent
            with open(pending_file, "rb") as p:
                content = p.read()
            if len(content) != size or sha(content) != digest:
                # The crash came before the intent line was complete: nothing started.
                continue
            paths.setdefault(path, Expect()).inflight = (op, content)
    settled = os.path.join(logdir, "settled")
    if os.path.exists(settled):
        with open(settled) as f:
            for line in f:
                parts = line.split()
                if len(parts) == 3:
                    e = paths.setdefault(parts[0], Expect())
                    e.acked = "deleted" if parts[1] == "-" else (int(parts[1]), parts[2])
                    e.inflight = None
    return paths, acks


def matches(acked, got) -> bool:
    if acked is None:
        return False
    if acked == "deleted":
        return got is None
    return got is not None and (len(got), sha(got)) == acked


def acceptable(e: Expect, got) -> bool:
    if e.inflight is None:
        return matches(e.acked, got)
    op, want = e.inflight
    if matches(e.acked, got):
        return True
    is_prefix = got is not None and want[: len(got)] == got
    if op == "new":
        return got is None or is_prefix
    if op == "append":
        base = e.acked[0] if isinstance(e.acked, tuple) else 0
        return is_prefix and len(got) >= base
    if op == "rewrite":
        return is_prefix
    if op == "replace":
        return got == want
    if op == "delete":
        return got is None
    return False


def check(args) -> None:
    paths, acks = model(args.logdir)
    losses = []
    settle = []
    for rel in sorted(paths):
        e = paths[rel]
        got = read_state(os.path.join(args.dir, rel))
        if isinstance(got, Unreadable):
            losses.append(f"  lost: {rel}: cannot read it: {got.err.strerror}")
            continue
        if not acceptable(e, got):
            have = "missing" if got is None else f"{len(got)} bytes {sha(got)[:12]}"
            if e.acked == "deleted":
                want = "deleted"
            elif e.acked is None:
                want = "nothing acknowledged"
            else:
                want = f"{e.acked[0]} bytes {e.acked[1][:12]}"
            extra = f", {e.inflight[0]} in flight" if e.inflight else ""
            losses.append(f"  lost: {rel}: want {want}{extra}, have {have}")
        elif e.inflight is not None:
            settle.append(f"{rel} - -" if got is None else f"{rel} {len(got)} {sha(got)}")
    if args.settle and settle:
        with open(os.path.join(args.logdir, "settled"), "a") as f:
            f.write("".join(line + "\n" for line in settle))
    print(f"acks {acks} losses {len(losses)} inflight {len(settle)}")
    for line in losses[:20]:
        print(line)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("mount")
    r.add_argument("logdir")
    r.add_argument("--round", type=int, required=True)
    r.add_argument("--procs", type=int, default=2)
    r.add_argument("--seed", type=int, default=1)
    c = sub.add_parser("check")
    c.add_argument("dir")
    c.add_argument("logdir")
    c.add_argument("--settle", action="store_true")
    args = p.parse_args()
    run(args) if args.cmd == "run" else check(args)


if __name__ == "__main__":
    main()
