#!/usr/bin/env python3
"""Random tree workload and manifests, for the remount-consistency check.

    tree_workload.py run DIR [--procs N] [--ops N] [--seed S] [--churn]   creates, writes,
        renames and deletes files and directories, hard links, fifos, sockets and device nodes
        across a tree, from several processes at once; --churn (fsstress-like) also renames and removes whole directories mid-run,
        unlinks files below just-renamed directories and keeps files open across renames
    tree_workload.py manifest DIR                                prints one line per entry:
        type, size, mode, path, SHA-256 of the content (or the symlink target), sorted;
        a special file as its type (and a device's MAJOR:MINOR), and every name of a hard-linked
        file with the first name of its inode. A local-folder remote keeps special files as
        empty files and links as separate files, each marked by stratus's `user.stratus_*`
        xattrs, which the manifest reads the same way, so a mount and its remote folder compare.
"""
import argparse
import hashlib
import multiprocessing
import os
import random
import socket
import stat
import sys


def worker(root: str, ops: int, seed: int) -> None:
    rnd = random.Random(seed)
    base = os.path.join(root, f"p{seed}")
    os.makedirs(base, exist_ok=True)
    files, dirs, specials = [], [base], []
    for i in range(ops):
        op = rnd.choices(
            ["mkdir", "create", "write", "rename", "delete", "rmdir", "symlink", "chmod", "truncate",
             "link", "special", "special_op"],
            weights=[8, 30, 20, 12, 10, 4, 3, 5, 8, 5, 3, 3],
        )[0]
        try:
            if op == "mkdir":
                d = os.path.join(rnd.choice(dirs), f"d{i}")
                os.mkdir(d)
                dirs.append(d)
            elif op == "create":
                f = os.path.join(rnd.choice(dirs), f"f{i}.bin")
                with open(f, "wb") as h:
                    h.write(rnd.randbytes(rnd.choice([0, 1, 100, 4096, 70000, 1_000_000])))
                files.append(f)
            elif op == "write" and files:
                f = rnd.choice(files)
                with open(f, "r+b") as h:
                    h.seek(rnd.randrange(0, 200_000))
                    h.write(rnd.randbytes(rnd.randrange(1, 50_000)))
            elif op == "rename" and files:
                f = rnd.choice(files)
                to = os.path.join(rnd.choice(dirs), f"r{i}.bin")
                os.rename(f, to)
                files[files.index(f)] = to
            elif op == "delete" and files:
                f = files.pop(rnd.randrange(len(files)))
                os.unlink(f)
            elif op == "rmdir" and len(dirs) > 1:
                d = dirs[-1]
                if not os.listdir(d):
                    os.rmdir(d)
                    dirs.pop()
            elif op == "symlink" and files:
                link = os.path.join(rnd.choice(dirs), f"l{i}")
                os.symlink(os.path.relpath(rnd.choice(files), os.path.dirname(link)), link)
            elif op == "chmod" and files:
                os.chmod(rnd.choice(files), rnd.choice([0o600, 0o640, 0o644, 0o755]))
            elif op == "truncate" and files:
                os.truncate(rnd.choice(files), rnd.randrange(0, 300_000))
            elif op == "link" and files:
                # A further name of a file: writes through either show through both.
                to = os.path.join(rnd.choice(dirs), f"h{i}.bin")
                os.link(rnd.choice(files), to)
                files.append(to)
            elif op == "special":
                p = os.path.join(rnd.choice(dirs), f"s{i}")
                kind = rnd.choice(["fifo", "socket", "chr", "blk"])
                if kind == "fifo":
                    os.mkfifo(p, 0o640)
                elif kind == "socket":
                    s = socket.socket(socket.AF_UNIX)
                    s.bind(p)
                    s.close()
                elif kind == "chr":
                    os.mknod(p, stat.S_IFCHR | 0o600, os.makedev(1, 3))
                else:
                    os.mknod(p, stat.S_IFBLK | 0o600, os.makedev(7, i % 256))
                specials.append(p)
            elif op == "special_op" and specials:
                p = rnd.choice(specials)
                what = rnd.choice(["chmod", "rename", "delete"])
                if what == "chmod":
                    os.chmod(p, rnd.choice([0o600, 0o644]))
                elif what == "rename":
                    to = os.path.join(rnd.choice(dirs), f"t{i}")
                    os.rename(p, to)
                    specials[specials.index(p)] = to
                else:
                    specials.remove(p)
                    os.unlink(p)
        except FileNotFoundError:
            # A file this process renamed away from under a symlink, and similar: fine.
            pass
    # Rename a whole subtree at the end, to exercise directory renames.
    if len(dirs) > 2:
        d = dirs[1]
        os.rename(d, d + "-moved")


def churn_worker(root: str, ops: int, seed: int) -> None:
    """Directory churn in this process's own subtree: what left emptied directories behind
    in a local-folder remote when a directory's delete ran before the jobs below it."""
    rnd = random.Random(seed)
    base = os.path.join(root, f"p{seed}")
    os.makedirs(base, exist_ok=True)
    held = []
    for i in range(ops):
        dirs, files = [], []
        for dirpath, _, filenames in os.walk(base):
            dirs.append(dirpath)
            files += [os.path.join(dirpath, f) for f in filenames]
        op = rnd.choices(
            ["mkdir", "create", "write", "rename", "delete", "rmtree", "dirmove", "hold", "close"],
            weights=[12, 25, 10, 10, 12, 2, 10, 4, 4],
        )[0]
        try:
            if op == "mkdir":
                os.mkdir(os.path.join(rnd.choice(dirs), f"d{i}"))
            elif op == "create":
                with open(os.path.join(rnd.choice(dirs), f"f{i}.bin"), "wb") as h:
                    h.write(rnd.randbytes(rnd.choice([0, 10, 5000, 70000])))
            elif op == "write" and files:
                with open(rnd.choice(files), "r+b") as h:
                    h.seek(rnd.randrange(0, 10000))
                    h.write(rnd.randbytes(rnd.randrange(1, 3000)))
            elif op == "rename" and files:
                os.rename(rnd.choice(files), os.path.join(rnd.choice(dirs), f"r{i}.bin"))
            elif op == "delete" and files:
                os.unlink(rnd.choice(files))
            elif op == "rmtree" and len(dirs) > 1:
                for dirpath, _, filenames in os.walk(rnd.choice(dirs[1:]), topdown=False):
                    for f in filenames:
                        os.unlink(os.path.join(dirpath, f))
                    os.rmdir(dirpath)
            elif op == "dirmove" and len(dirs) > 1:
                d, to = rnd.choice(dirs[1:]), rnd.choice(dirs)
                if not (to + "/").startswith(d + "/"):
                    os.rename(d, os.path.join(to, f"m{i}"))
            elif op == "hold" and files:
                h = open(rnd.choice(files), "ab")
                h.write(b"held open")
                held.append(h)
            elif op == "close" and held:
                h = held.pop(0)
                h.write(b" and closed")
                h.close()
        except OSError:
            # Raced with this process's own earlier moves (a held file's directory moved or
            # removed, and similar): fine.
            pass
    for h in held:
        h.close()


def xattr(p: str, name: str):
    try:
        return os.getxattr(p, name, follow_symlinks=False).decode()
    except OSError:
        return None


SPECIAL = {stat.S_IFIFO: "fifo", stat.S_IFSOCK: "socket", stat.S_IFCHR: "chr", stat.S_IFBLK: "blk"}


def manifest(root: str) -> None:
    rows = []
    # Hard links: the names of one inode (a mount) or of one stratus link group (a remote
    # folder), each row then marked with the group's first name.
    groups: dict = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            if dirpath == root and name == ".stratus-lock":
                # stratus's write lock in a local-folder remote, not user data
                continue
            p = os.path.join(dirpath, name)
            rel = os.path.relpath(p, root)
            st = os.lstat(p)
            mode = stat.S_IMODE(st.st_mode)
            if stat.S_ISLNK(st.st_mode):
                h = hashlib.sha256(os.readlink(p).encode()).hexdigest()
                rows.append(f"l - - {rel} {h}")
            elif stat.S_ISDIR(st.st_mode):
                rows.append(f"d - {mode:o} {rel} -")
            elif stat.S_IFMT(st.st_mode) in SPECIAL:
                kind = SPECIAL[stat.S_IFMT(st.st_mode)]
                dev = f"{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}" if kind in ("chr", "blk") else "-"
                rows.append(f"{kind} {dev} {mode:o} {rel} -")
            elif st.st_size == 0 and xattr(p, "user.stratus_type"):
                kind = xattr(p, "user.stratus_type")
                dev = xattr(p, "user.stratus_rdev") if kind in ("chr", "blk") else "-"
                rows.append(f"{kind} {dev} {mode:o} {rel} -")
            else:
                with open(p, "rb") as f:
                    h = hashlib.sha256(f.read()).hexdigest()
                row = f"f {st.st_size} {mode:o} {rel} {h}"
                key = ("ino", st.st_ino) if st.st_nlink > 1 else None
                if key is None and xattr(p, "user.stratus_link"):
                    key = ("group", xattr(p, "user.stratus_link"), h)
                if key is None:
                    rows.append(row)
                else:
                    groups.setdefault(key, []).append((rel, row))
    for names in groups.values():
        first = min(rel for rel, _ in names)
        for rel, row in names:
            rows.append(row + (f" ={first}" if len(names) > 1 else ""))
    for r in sorted(rows):
        print(r)


def main() -> int:
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("dir")
    r.add_argument("--procs", type=int, default=4)
    r.add_argument("--ops", type=int, default=300)
    r.add_argument("--seed", type=int, default=1)
    r.add_argument("--churn", action="store_true")
    m = sub.add_parser("manifest")
    m.add_argument("dir")
    a = ap.parse_args()
    if a.cmd == "manifest":
        manifest(a.dir)
        return 0
    procs = [
        multiprocessing.Process(
            target=churn_worker if a.churn else worker, args=(a.dir, a.ops, a.seed * 100 + i)
        )
        for i in range(a.procs)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    return 0 if all(p.exitcode == 0 for p in procs) else 1


if __name__ == "__main__":
    sys.exit(main())
