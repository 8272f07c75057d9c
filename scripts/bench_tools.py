#!/usr/bin/env python3
"""Helpers for scripts/bench.sh and scripts/bench-cache.sh (one process per call, never one per file).

    bench_tools.py freeport
        prints a free TCP port on 127.0.0.1
    bench_tools.py wait-http URL [--timeout S]
        waits until URL answers (any HTTP status), for a server starting up
    bench_tools.py smallfiles DIR N [--size BYTES]
        creates N files of BYTES bytes in DIR (os.open/write/close), stats each, unlinks each;
        prints "CREATE_OPS STAT_OPS UNLINK_OPS" (operations per second of each phase)
    bench_tools.py s3-count [--files-only | --bytes] ENDPOINT BUCKET PREFIX
        prints how many keys under PREFIX the S3 server lists (ListObjectsV2, all pages);
        --files-only leaves out directory marker keys (ending in /); --bytes prints the sum of
        their sizes instead
    bench_tools.py s3-keys ENDPOINT BUCKET PREFIX
        prints the keys under PREFIX, one a line (for s3-wait --exclude)
    bench_tools.py s3-wait ENDPOINT BUCKET PREFIX --since EPOCH (--count N | --empty |
                   --key KEY --size BYTES | --new-bytes N --exclude FILE) [--timeout S] [--interval S]
        polls the listing until at least N keys are under PREFIX (or none, or KEY has BYTES
        bytes, or the keys not listed in FILE hold at least N bytes), then prints the seconds
        elapsed since EPOCH; exit 1 on timeout
    bench_tools.py put-section NAME FILE SECTION
        puts the text of SECTION, which starts and ends with NAME's markers, in place of the
        block between NAME's markers in FILE (appended when FILE has none)
    bench_tools.py report --results TSV --meta FILE --out FILE
        writes docs/benchmarks.md (scripts/bench.sh) and prints its tables; the block of
        scripts/bench-cache.sh between its markers, if FILE has one, is kept at the end
    bench_tools.py cache-report --results TSV --meta FILE --out FILE
        writes the block of scripts/bench-cache.sh between its markers in FILE (appended when
        FILE has none; the rest of FILE is left alone) and prints its tables

The S3 helpers send unsigned requests: they are meant for moto on 127.0.0.1 only, which
accepts them. Proxies from the environment are ignored.
"""
import argparse
import os
import platform
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import xml.etree.ElementTree as ET

NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def freeport(_args):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    print(s.getsockname()[1])
    s.close()


def wait_http(args):
    deadline = time.monotonic() + args.timeout
    while True:
        try:
            NO_PROXY.open(args.url, timeout=2).read()
            return
        except urllib.error.HTTPError:
            return  # it answered
        except Exception as e:  # noqa: BLE001  (connection refused while starting)
            if time.monotonic() > deadline:
                sys.exit(f"bench_tools: {args.url} did not answer within {args.timeout}s: {e}")
            time.sleep(0.1)


def smallfiles(args):
    d, n = args.dir, args.n
    os.makedirs(d, exist_ok=True)
    data = b"x" * args.size
    names = [os.path.join(d, f"f{i:06d}") for i in range(n)]
    flags = os.O_CREAT | os.O_EXCL | os.O_WRONLY
    t0 = time.perf_counter()
    for p in names:
        fd = os.open(p, flags, 0o644)
        if data:
            os.write(fd, data)
        os.close(fd)
    t1 = time.perf_counter()
    for p in names:
        st = os.stat(p)
        if st.st_size != args.size:
            sys.exit(f"bench_tools: {p} has size {st.st_size}, expected {args.size}")
    t2 = time.perf_counter()
    for p in names:
        os.unlink(p)
    t3 = time.perf_counter()
    left = os.listdir(d)
    if left:
        sys.exit(f"bench_tools: {len(left)} entries left in {d} after unlinking all")
    os.rmdir(d)
    print(f"{n / (t1 - t0):.1f} {n / (t2 - t1):.1f} {n / (t3 - t2):.1f}")


def s3_list(endpoint, bucket, prefix):
    """Yields (key, size) of every object under prefix."""
    token = None
    ns = "{http://s3.amazonaws.com/doc/2006-03-01/}"
    while True:
        q = {"list-type": "2", "prefix": prefix, "max-keys": "1000"}
        if token:
            q["continuation-token"] = token
        url = f"{endpoint.rstrip('/')}/{bucket}?{urllib.parse.urlencode(q)}"
        body = NO_PROXY.open(url, timeout=60).read()
        root = ET.fromstring(body)
        for c in root.iter(ns + "Contents"):
            yield c.findtext(ns + "Key"), int(c.findtext(ns + "Size") or 0)
        if root.findtext(ns + "IsTruncated") != "true":
            return
        token = root.findtext(ns + "NextContinuationToken")
        if not token:
            return


def s3_count(args):
    objs = list(s3_list(args.endpoint, args.bucket, args.prefix))
    if args.bytes:
        print(sum(size for _, size in objs))
    else:
        print(sum(1 for k, _ in objs if not (args.files_only and k.endswith("/"))))


def s3_keys(args):
    for k, _ in s3_list(args.endpoint, args.bucket, args.prefix):
        print(k)


def s3_wait(args):
    deadline = time.monotonic() + args.timeout
    last = None
    old = set()
    if args.exclude:
        with open(args.exclude) as f:
            old = {line.rstrip("\n") for line in f}
    while True:
        try:
            objs = dict(s3_list(args.endpoint, args.bucket, args.prefix))
            if args.key is not None:
                last = f"{args.key}: {objs.get(args.key, 'absent')} bytes"
                done = objs.get(args.key) == args.size
            elif args.new_bytes is not None:
                new = sum(size for k, size in objs.items() if k not in old)
                last = f"{new} new bytes of {args.new_bytes}"
                done = new >= args.new_bytes
            elif args.empty:
                last = f"{len(objs)} keys"
                done = not objs
            else:
                last = f"{len(objs)} keys of {args.count}"
                done = len(objs) >= args.count
        except Exception as e:  # noqa: BLE001  (moto busy: keep polling)
            last, done = f"listing failed: {e}", False
        if done:
            print(f"{time.time() - args.since:.3f}")
            return
        if time.monotonic() > deadline:
            sys.exit(f"bench_tools: s3-wait timed out after {args.timeout}s ({last})")
        time.sleep(args.interval)


# ---------------------------------------------------------------------------------------------
# report

TARGETS = [
    ("local", "local disk"),
    ("bindfs", "bindfs"),
    ("stratus-local", "stratus (local folder)"),
    ("stratus-s3", "stratus (moto S3)"),
    ("rclone", "rclone (moto S3)"),
    ("juicefs", "JuiceFS (moto S3)"),
]
STRATUS = ["stratus-local", "stratus-s3"]
BASELINES = ["local", "bindfs", "rclone", "juicefs"]
ORDER = ["extract", "drain", "extract+drain", "ls-lR", "du", "git-init", "git-add", "git-commit", "git",
         "git-status", "create", "stat", "unlink", "settle",
         "seqwrite", "drain-big", "put-big", "copyto-big", "seqread", "randread"]
METADATA = ["extract", "ls-lR", "du", "create", "stat", "unlink"]


def run(cmd):
    try:
        return subprocess.run(cmd, shell=True, capture_output=True, text=True, timeout=30).stdout.strip()
    except Exception:  # noqa: BLE001
        return ""


def machine_info(workdir):
    mem = run("awk '/MemTotal/ {printf \"%.1f GiB\", $2/1048576}' /proc/meminfo")
    cpu = run("lscpu | sed -n 's/^Model name: *//p' | head -1")
    df = run(f"df -PT {workdir} | tail -1").split()
    dev, fstype = (df[0], df[1]) if len(df) > 1 else ("?", "?")
    disk = ""
    base = os.path.basename(dev)
    lsblk = run(f"lsblk -dno SIZE,ROTA,MODEL {dev} 2>/dev/null")
    if lsblk:
        parts = lsblk.split(None, 2)
        kind = "rotational per the kernel" if len(parts) > 1 and parts[1] == "1" else "non-rotational"
        disk = f"{parts[0]} {kind}{' ' + parts[2] if len(parts) > 2 else ''}"
    sched = run(f"cat /sys/block/{base}/queue/scheduler 2>/dev/null")
    virt = run("systemd-detect-virt 2>/dev/null")
    return {
        "nproc": run("nproc"),
        "cpu": cpu or platform.processor(),
        "ram": mem,
        "kernel": f"{platform.system()} {platform.release()}",
        "os": run(". /etc/os-release && echo \"$PRETTY_NAME\""),
        "disk": f"{dev} ({fstype}{', ' + disk if disk else ''}{', scheduler ' + sched if sched else ''})",
        "virt": virt,
    }


def fmt_value(v, unit):
    if v is None:
        return "–"
    if isinstance(v, str):
        return v
    if unit == "s":
        return f"{v:.2f} s" if v < 100 else f"{v:.0f} s"
    if v >= 1000:
        return f"{v:,.0f} {unit}"
    if v >= 100:
        return f"{v:.0f} {unit}"
    return f"{v:.1f} {unit}"


def ratio(results, w, s, b, better):
    vs, vb = results.get((s, w)), results.get((b, w))
    if not isinstance(vs, float) or not isinstance(vb, float) or vs <= 0 or vb <= 0:
        return None
    return vs / vb if better == "higher" else vb / vs


def fmt_ratio(r):
    if r is None:
        return "–"
    return f"{r:.2f}x" if r < 10 else f"{r:.1f}x" if r < 100 else f"{r:.0f}x"


def md_table(header, rows, align):
    out = ["| " + " | ".join(header) + " |", "|" + "|".join(align) + "|"]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(out)


def judge(goals, results, labels, better, ran, short):
    """A markdown table of goals (text, workload, baseline, ratio needed), each checked for both
    stratus mounts, and how many were met and missed: a goal is met only when both meet it."""
    rows = []
    met = missed = 0
    for text, w, b, need in goals:
        if w not in labels:
            continue
        cells, verdicts = [], []
        for s in STRATUS:
            if s not in ran:
                continue
            r = ratio(results, w, s, b, better[w])
            if r is None:
                cells.append("–")
                verdicts.append(None)
            else:
                ok = r >= need
                cells.append(f"{fmt_ratio(r)} {'✓' if ok else '✗'}")
                verdicts.append(ok)
        if not verdicts or any(v is None for v in verdicts):
            verdict = "not measured"
        elif all(verdicts):
            verdict, met = "**met**", met + 1
        else:
            verdict, missed = "**missed**", missed + 1
        rows.append([text, labels[w], f"≥ {need:g}x"] + cells + [verdict])
    table = md_table(["target", "workload", "needed"] + [f"{short[s]}" for s in STRATUS if s in ran]
                     + ["result"], rows, ["---", "---", "---:"] + ["---:"] * sum(s in ran for s in STRATUS) + ["---"])
    return table, met, missed


def report(args):
    meta = {"workloads": [], "notes": [], "versions": {}}
    with open(args.meta) as f:  # KEY<TAB>VALUE lines; workload and note repeat
        for line in f:
            key, _, value = line.rstrip("\n").partition("\t")
            if key in ("workload", "note"):
                meta[key + "s"].append(value)
            elif key.startswith("v_"):
                meta["versions"][key[2:]] = value
            else:
                meta[key] = value
    meta["quick"] = meta.get("quick") == "1"
    meta["targets"] = meta.get("targets", "").split()
    results, labels, units, better = {}, {}, {}, {}
    order = []
    with open(args.results) as f:
        for line in f:
            line = line.rstrip("\n")
            if not line:
                continue
            target, w, label, value, unit, b = line.split("\t")
            try:
                results[(target, w)] = float(value)
            except ValueError:  # "failed"
                results[(target, w)] = value
                if w in labels:
                    continue
            if w not in labels:
                order.append(w)
            labels[w], units[w], better[w] = label, unit, b
    order.sort(key=lambda w: ORDER.index(w) if w in ORDER else len(ORDER))
    ran = [t for t, _ in TARGETS if t in meta["targets"]]
    names = dict(TARGETS)
    m = meta.get("machine") or machine_info(meta["workdir"])

    # figures
    rows = []
    for w in order:
        rows.append([labels[w]] + [fmt_value(results.get((t, w)), units[w]) for t in ran])
    figures = md_table(["workload"] + [names[t] for t in ran], rows, ["---"] + ["---:"] * len(ran))

    # ratios
    pairs = [(s, b) for s in STRATUS if s in ran for b in BASELINES if b in ran]
    rows = []
    for w in order:
        if not any(isinstance(results.get((s, w)), float) for s in STRATUS):
            continue
        rows.append([labels[w]] + [fmt_ratio(ratio(results, w, s, b, better[w])) for s, b in pairs])
    short = {"stratus-local": "stratus-local", "stratus-s3": "stratus-S3", "local": "local disk",
             "bindfs": "bindfs", "rclone": "rclone", "juicefs": "JuiceFS"}
    ratios = md_table(["workload (ratio > 1: stratus better)"] + [f"{short[s]} vs {short[b]}" for s, b in pairs], rows,
                      ["---"] + ["---:"] * len(pairs))

    # targets of issue 5
    goals = []
    for w in METADATA:
        goals.append(("metadata-heavy: at least as fast as bindfs", w, "bindfs", 1.0))
    for w in METADATA:
        goals.append(("metadata-heavy: at least 3x faster than rclone", w, "rclone", 3.0))
    goals.append(("sequential read of a cached file (page cache dropped) ≥ 0.5x local disk", "seqread", "local", 0.5))
    goals.append(("sequential write with a final fsync ≥ 0.7x local disk", "seqwrite", "local", 0.7))
    goals.append(("queue drain after the extract at least as fast as rclone", "drain", "rclone", 1.0))
    targets, met, missed = judge(goals, results, labels, better, ran, short)
    # targets of issue 13
    goals = [("cached read, page cache dropped ≥ 0.9x local disk", "seqread", "local", 0.9),
             ("write + fsync ≥ 0.9x local disk", "seqwrite", "local", 0.9)]
    for base, need in (("bindfs", 1.5), ("rclone", 5.0), ("juicefs", 5.0)):
        for w in ("create", "unlink", "extract", "git"):
            goals.append((f"small files and git: ≥ {need:g}x {short[base]}", w, base, need))
    goals.append(("upload drain of the big file ahead of rclone", "drain-big", "rclone", 1.0))
    targets13, met13, missed13 = judge(goals, results, labels, better, ran, short)
    # "upload drain ≥ 0.8x a plain PUT of the same bytes": both measured on the stratus-S3 target
    drain, put = results.get(("stratus-s3", "drain-big")), results.get(("stratus-s3", "put-big"))
    if isinstance(drain, float) and isinstance(put, float) and drain > 0:
        r = put / drain
        ok = r >= 0.8
        met13, missed13 = met13 + ok, missed13 + (not ok)
        cells = ["–"] * ("stratus-local" in ran) + [f"{fmt_ratio(r)} {'✓' if ok else '✗'}"]
        targets13 += "\n" + md_table(["x"] * (4 + len(cells)),
                                      [["upload drain ≥ 0.8x a plain multipart PUT of the same bytes, same server",
                                        labels["drain-big"], "≥ 0.8x"] + cells
                                       + ["**met**" if ok else "**missed**"]], ["---"] * (4 + len(cells))
                                      ).split("\n", 2)[2]

    v = meta["versions"]
    lines = [
        f"# Benchmarks{' (quick run)' if meta['quick'] else ''}",
        "",
        f"Produced by `{meta['command']}` on {meta['date']}, in one invocation: the same workloads, "
        "one target after the other, each target mounted fresh and unmounted after its run.",
        "",
        "## Machine and versions",
        "",
        f"- machine: {m['nproc']} cores ({m['cpu']}), {m['ram']} RAM, {m['os']}, kernel {m['kernel']}"
        f"{', virtualization ' + m['virt'] if m.get('virt') and m['virt'] != 'none' else ''}",
        f"- disk holding every target's data, caches and remotes: {m['disk']}",
        f"- {v['stratus']}",
        f"- {', '.join(x for x in (v.get('rclone'), v.get('juicefs')) if x) or 'no rclone or JuiceFS target'}, "
        f"bindfs {v['bindfs']}, {v['fio']}, moto {v['moto']} (through `scripts/moto_server.py`), "
        f"Python {v['python']}, {v['tar']}, {v.get('git', 'git')}",
        "",
        "## Workloads",
        "",
    ]
    lines += [f"- {x}" for x in meta["workloads"]]
    lines += [
        "",
        "## Results",
        "",
        "Figures (s = seconds, lower is better; MiB/s, ops/s and IOPS, higher is better):",
        "",
        figures,
        "",
        "Ratios of each stratus figure against each baseline. **A ratio above 1 means stratus is "
        "better** (faster): for times it is the baseline's time divided by stratus's, for rates "
        "stratus's rate divided by the baseline's.",
        "",
        ratios,
        "",
        "## Targets (issue 5)",
        "",
        "Each target is checked for both stratus mounts; it is met only when both meet it "
        f"(✓ met, ✗ missed). {met} met, {missed} missed.",
        "",
        targets,
        "",
        "## Targets (issue 13)",
        "",
        f"The same way, against issue 13's targets. {met13} met, {missed13} missed.",
        "",
        targets13,
        "",
        "## Notes",
        "",
    ]
    lines += [f"- {x}" for x in meta["notes"]]
    if meta.get("notes_file"):
        lines += ["", open(meta["notes_file"]).read().rstrip()]
    text = "\n".join(lines) + "\n"
    kept = cache_block(args.out)
    if kept:
        text += "\n" + kept + "\n"
    for name in ("bench-bwlimit", "bench-diff", "bench-upload", "bench-upload-notes", "bench-scale"):
        kept = marked_block(args.out, name)
        if kept:
            text += "\n" + kept + "\n"
    with open(args.out, "w") as f:
        f.write(text)
    print()
    print(figures)
    print()
    print(ratios)
    print()
    print(targets)
    print()
    print(targets13)


# ---------------------------------------------------------------------------------------------
# the block-cache report (scripts/bench-cache.sh), a section of docs/benchmarks.md of its own

CACHE_BEGIN = "<!-- bench-cache:begin (written by scripts/bench-cache.sh; scripts/bench.sh keeps it) -->"
CACHE_END = "<!-- bench-cache:end -->"
CACHE_BEGIN_RE = re.compile(r"^<!-- bench-cache:begin\b.*-->$", re.M)
CACHE_END_RE = re.compile(r"^<!-- bench-cache:end -->$", re.M)


def cache_span(text):
    """(start, end) of the marked block in text, markers included, or None."""
    b = CACHE_BEGIN_RE.search(text)
    if not b:
        return None
    e = CACHE_END_RE.search(text, b.end())
    if not e:
        sys.exit("bench_tools: the file has a bench-cache:begin marker without a bench-cache:end after it")
    return b.start(), e.end()


def cache_block(path):
    """The marked block of the file at path, markers included, or ""."""
    try:
        text = open(path).read()
    except FileNotFoundError:
        return ""
    span = cache_span(text)
    return text[span[0]:span[1]] if span else ""


def marked_span(text, name):
    """(start, end) of the block between `<!-- NAME:begin ... -->` and `<!-- NAME:end -->`, markers
    included, or None: the sections scripts/bench-bwlimit.sh, scripts/bench-diff.sh and
    scripts/bench-upload.sh write."""
    b = re.search(rf"^<!-- {re.escape(name)}:begin\b.*-->$", text, re.M)
    e = re.search(rf"^<!-- {re.escape(name)}:end -->$", text[b.end():], re.M) if b else None
    return (b.start(), b.end() + e.end()) if e else None


def marked_block(path, name):
    """The section NAME in the file at path, markers included, or ""."""
    try:
        text = open(path).read()
    except FileNotFoundError:
        return ""
    span = marked_span(text, name)
    return text[span[0]:span[1]] if span else ""


def put_section(args):
    section = open(args.section).read().rstrip("\n")
    if marked_span(section, args.name) != (0, len(section)):
        sys.exit(f"bench_tools: {args.section} does not start and end with the {args.name} markers")
    try:
        text = open(args.file).read()
    except FileNotFoundError:
        text = "# Benchmarks\n"
    span = marked_span(text, args.name)
    if span:
        text = text[:span[0]] + section + text[span[1]:]
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    with open(args.file, "w") as f:
        f.write(text)


CACHE_COLUMNS = [("get", "plain GET"), ("local", "local disk"), ("stratus", "stratus"), ("rclone", "rclone")]
CACHE_ORDER = ["seq-cold", "ranged-1m", "ranged-16m", "seq-warm-dropped", "seq-warm-kept", "rand-few", "dl-few",
               "rand-cold", "dl-rand-cold", "rand-warm"]
CACHE_VS_RCLONE = ["seq-cold", "seq-warm-dropped", "seq-warm-kept", "rand-few", "rand-cold", "rand-warm"]


def cache_report(args):
    meta = {"workloads": [], "notes": [], "versions": {}}
    with open(args.meta) as f:
        for line in f:
            key, _, value = line.rstrip("\n").partition("\t")
            if key in ("workload", "note"):
                meta[key + "s"].append(value)
            elif key.startswith("v_"):
                meta["versions"][key[2:]] = value
            else:
                meta[key] = value
    results, labels, units = {}, {}, {}
    with open(args.results) as f:
        for line in f:
            line = line.rstrip("\n")
            if not line:
                continue
            target, w, label, value, unit = line.split("\t")[:5]
            try:
                results[(target, w)] = float(value)
            except ValueError:  # "failed"
                results[(target, w)] = value
            if unit or w not in labels:
                labels[w], units[w] = label, unit
    order = [w for w in CACHE_ORDER if w in labels]
    m = machine_info(meta["workdir"])

    def fmt(target, w):
        v = results.get((target, w))
        if units.get(w) == "B" and isinstance(v, float):
            return f"{v / 1048576:,.1f} MiB"
        return fmt_value(v, units.get(w))

    rows = [[labels[w]] + [fmt(t, w) for t, _ in CACHE_COLUMNS] for w in order]
    figures = md_table(["workload"] + [n for _, n in CACHE_COLUMNS], rows, ["---"] + ["---:"] * len(CACHE_COLUMNS))

    def r(w, b):
        vs, vb = results.get(("stratus", w)), results.get((b, w))
        if not isinstance(vs, float) or not isinstance(vb, float) or vs <= 0 or vb <= 0:
            return None
        return vs / vb

    baseline = {"seq-cold": "get", "seq-warm-dropped": "local", "seq-warm-kept": "local", "rand-warm": "local"}
    rows = []
    for w in order:
        if units.get(w) == "B" or not isinstance(results.get(("stratus", w)), float):
            continue
        b = baseline.get(w)
        rows.append([labels[w], f"{fmt_ratio(r(w, b))} of {dict(CACHE_COLUMNS)[b]}" if b else "–",
                     fmt_ratio(r(w, "rclone"))])
    ratios = md_table(["workload", "stratus vs its baseline", "stratus vs rclone"], rows, ["---", "---:", "---:"])

    goals = [
        ("cold sequential read ≥ 0.8x the plain GET", "seq-cold", "get", 0.8, False),
        ("warm re-read ≥ 0.8x the local disk, page cache dropped", "seq-warm-dropped", "local", 0.8, False),
        ("warm re-read ≥ 0.8x the local disk, page cache kept", "seq-warm-kept", "local", 0.8, False),
    ]
    for w in CACHE_VS_RCLONE:
        if w in labels:
            goals.append((f"ahead of rclone: {labels[w]}", w, "rclone", 1.0, True))
    rows, met, missed = [], 0, 0
    for text, w, b, need, strict in goals:
        ratio_ = r(w, b)
        if ratio_ is None:
            verdict = "not measured"
        elif ratio_ > need if strict else ratio_ >= need:
            verdict, met = "**met**", met + 1
        else:
            verdict, missed = "**missed**", missed + 1
        rows.append([text, f"{'> ' if strict else '≥ '}{need:g}x", fmt_ratio(ratio_), verdict])
    targets = md_table(["target", "needed", "stratus", "result"], rows, ["---", "---:", "---:", "---"])

    v = meta["versions"]
    lines = [
        CACHE_BEGIN,
        "",
        f"## Block cache (issue 3){' (quick run)' if meta.get('quick') == '1' else ''}",
        "",
        f"Produced by `{meta['command']}` on {meta['date']}, in one invocation against one moto S3 "
        "server on 127.0.0.1: a plain GET, the local disk, stratus and rclone read the same "
        f"{meta['size']} object of random data, one after the other.",
        "",
        f"- machine: {m['nproc']} cores ({m['cpu']}), {m['ram']} RAM, {m['os']}, kernel {m['kernel']}"
        f"{', virtualization ' + m['virt'] if m.get('virt') and m['virt'] != 'none' else ''}; "
        f"local copy, stratus state dirs and rclone cache dirs on {m['disk']}",
        f"- {v['stratus']}",
        f"- {v['rclone']}, {v['curl']}, {v['fio']}, moto {v['moto']} (through `scripts/moto_server.py`), "
        f"Python {v['python']}",
        "",
        "### Workloads",
        "",
    ]
    lines += [f"- {x}" for x in meta["workloads"]]
    lines += [
        "",
        "### Results",
        "",
        "MiB/s and IOPS, higher is better; MiB fetched, lower is better:",
        "",
        figures,
        "",
        "Ratios (above 1: stratus faster):",
        "",
        ratios,
        "",
        f"### Targets (issue 3): {met} met, {missed} missed",
        "",
        targets,
        "",
        "### Notes",
        "",
    ]
    lines += [f"- {x}" for x in meta["notes"]]
    if meta.get("notes_file"):
        lines += ["", open(meta["notes_file"]).read().rstrip()]
    lines += ["", CACHE_END]
    block = "\n".join(lines)

    try:
        text = open(args.out).read()
    except FileNotFoundError:
        text = "# Benchmarks\n"
    span = cache_span(text)
    if span:
        text = text[:span[0]] + block + text[span[1]:]
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    with open(args.out, "w") as f:
        f.write(text)
    print()
    print(figures)
    print()
    print(ratios)
    print()
    print(targets)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("freeport").set_defaults(fn=freeport)
    q = sub.add_parser("wait-http")
    q.add_argument("url")
    q.add_argument("--timeout", type=float, default=30)
    q.set_defaults(fn=wait_http)
    q = sub.add_parser("smallfiles")
    q.add_argument("dir")
    q.add_argument("n", type=int)
    q.add_argument("--size", type=int, default=100)
    q.set_defaults(fn=smallfiles)
    q = sub.add_parser("s3-count")
    q.add_argument("endpoint")
    q.add_argument("bucket")
    q.add_argument("prefix")
    g = q.add_mutually_exclusive_group()
    g.add_argument("--files-only", action="store_true", help="leave out dir/ marker keys")
    g.add_argument("--bytes", action="store_true", help="the sum of the sizes, not the count")
    q.set_defaults(fn=s3_count)
    q = sub.add_parser("s3-keys")
    q.add_argument("endpoint")
    q.add_argument("bucket")
    q.add_argument("prefix")
    q.set_defaults(fn=s3_keys)
    q = sub.add_parser("put-section")
    q.add_argument("name")
    q.add_argument("file")
    q.add_argument("section")
    q.set_defaults(fn=put_section)
    q = sub.add_parser("s3-wait")
    q.add_argument("endpoint")
    q.add_argument("bucket")
    q.add_argument("prefix")
    q.add_argument("--since", type=float, required=True)
    q.add_argument("--count", type=int)
    q.add_argument("--empty", action="store_true")
    q.add_argument("--key")
    q.add_argument("--size", type=int)
    q.add_argument("--new-bytes", type=int)
    q.add_argument("--exclude", help="a file of keys (s3-keys) that --new-bytes leaves out")
    q.add_argument("--timeout", type=float, default=600)
    q.add_argument("--interval", type=float, default=0.5)
    q.set_defaults(fn=s3_wait)
    q = sub.add_parser("report")
    q.add_argument("--results", required=True)
    q.add_argument("--meta", required=True)
    q.add_argument("--out", required=True)
    q.set_defaults(fn=report)
    q = sub.add_parser("cache-report")
    q.add_argument("--results", required=True)
    q.add_argument("--meta", required=True)
    q.add_argument("--out", required=True)
    q.set_defaults(fn=cache_report)
    args = p.parse_args()
    if args.cmd == "s3-wait" and sum([args.count is not None, args.empty, args.key is not None,
                                      args.new_bytes is not None]) != 1:
        p.error("s3-wait needs exactly one of --count, --empty, --key, --new-bytes")
    args.fn(args)


if __name__ == "__main__":
    main()
