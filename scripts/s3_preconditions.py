#!/usr/bin/env python3
"""Which write preconditions an S3 server enforces, asked with boto3 (not stratus's code).

    s3_preconditions.py ENDPOINT [ENDPOINT2] --bucket B --prefix P --key K --secret S [--region R]

Prints one line per case, `CASE STATUS` (STATUS is the HTTP status: 200 when the write went
through, 412 when the server refused it). Each condition is tried once met and once failed, on
PutObject, CopyObject (the source's `x-amz-copy-source-if-match` and the target's `If-None-Match`
/ `If-Match`), CompleteMultipartUpload and DeleteObject. With a second endpoint (another gateway
of the same cluster), the failed conditions are also sent there, against versions written through
the first. Last, 16 writers race one conditional PUT (create-only, then against one version),
spread over the endpoints: `...-race-winners N` says how many got through (1 is right).
tests/cluster.rs asserts the answers; docs/semantics.md keeps the table.
"""

import argparse
import threading

import boto3
import botocore.config
import botocore.exceptions

PART = 5 * 1024 * 1024


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("endpoints", nargs="+")
    ap.add_argument("--bucket", required=True)
    ap.add_argument("--prefix", required=True)
    ap.add_argument("--key", required=True)
    ap.add_argument("--secret", required=True)
    ap.add_argument("--region", default="us-east-1")
    args = ap.parse_args()
    config = botocore.config.Config(retries={"max_attempts": 1})
    clients = [
        boto3.client(
            "s3",
            endpoint_url=e,
            aws_access_key_id=args.key,
            aws_secret_access_key=args.secret,
            region_name=args.region,
            config=config,
        )
        for e in args.endpoints
    ]
    a = clients[0]
    bucket, p = args.bucket, args.prefix

    def status(call):
        try:
            call()
            return 200
        except botocore.exceptions.ClientError as e:
            return e.response["ResponseMetadata"]["HTTPStatusCode"]

    def report(case, call):
        print(f"{case} {status(call)}", flush=True)

    def with_header(client, name, value, call):
        """A header boto3 has no parameter for (CopyObject's and DeleteObject's target conditions)."""

        def add(request, **_):
            request.headers[name] = value

        client.meta.events.register_first("before-sign.s3.*", add)
        try:
            return call()
        finally:
            client.meta.events.unregister("before-sign.s3.*", add)

    def etag(key):
        return a.head_object(Bucket=bucket, Key=p + key)["ETag"]

    def put(client, key, body, **cond):
        return lambda: client.put_object(Bucket=bucket, Key=p + key, Body=body, **cond)

    def copy(client, src, dst, **cond):
        return lambda: client.copy_object(
            Bucket=bucket, Key=p + dst, CopySource={"Bucket": bucket, "Key": p + src}, **cond
        )

    def multipart(client, key, **cond):
        def call():
            up = client.create_multipart_upload(Bucket=bucket, Key=p + key)["UploadId"]
            part = client.upload_part(
                Bucket=bucket, Key=p + key, UploadId=up, PartNumber=1, Body=b"m" * PART
            )
            try:
                client.complete_multipart_upload(
                    Bucket=bucket,
                    Key=p + key,
                    UploadId=up,
                    MultipartUpload={"Parts": [{"ETag": part["ETag"], "PartNumber": 1}]},
                    **cond,
                )
            except botocore.exceptions.ClientError:
                client.abort_multipart_upload(Bucket=bucket, Key=p + key, UploadId=up)
                raise

        return call

    others = list(enumerate(clients))
    # PutObject
    report("put-if-none-match-new", put(a, "k", b"1", IfNoneMatch="*"))
    for i, c in others:
        report(f"put-if-none-match-exists@{i}", put(c, "k", b"2", IfNoneMatch="*"))
    old = etag("k")
    report("put-if-match-current", put(a, "k", b"3", IfMatch=old))
    for i, c in others:
        report(f"put-if-match-stale@{i}", put(c, "k", b"4", IfMatch=old))
    report("put-if-match-missing", put(a, "missing", b"4", IfMatch=old))
    cur = etag("k")
    # CopyObject: the source's ETag, then the target's version.
    for i, c in others:
        report(f"copy-source-if-match-stale@{i}", copy(c, "k", "c", CopySourceIfMatch=old))
    report("copy-source-if-match-current", copy(a, "k", "c", CopySourceIfMatch=cur))
    for i, c in others:
        report(
            f"copy-if-none-match-exists@{i}",
            lambda c=c: with_header(c, "If-None-Match", "*", copy(c, "k", "c")),
        )
    report(
        "copy-if-none-match-new",
        lambda: with_header(a, "If-None-Match", "*", copy(a, "k", "c2")),
    )
    for i, c in others:
        report(
            f"copy-if-match-stale@{i}",
            lambda c=c: with_header(c, "If-Match", old, copy(c, "k", "c")),
        )
    target = etag("c")
    report(
        "copy-if-match-current",
        lambda: with_header(a, "If-Match", target, copy(a, "k", "c")),
    )
    # CompleteMultipartUpload
    for i, c in others:
        report(f"complete-if-none-match-exists@{i}", multipart(c, "k", IfNoneMatch="*"))
    report("complete-if-none-match-new", multipart(a, "m", IfNoneMatch="*"))
    cur = etag("k")
    for i, c in others:
        report(f"complete-if-match-stale@{i}", multipart(c, "k", IfMatch=old))
    report("complete-if-match-missing", multipart(a, "missing", IfMatch=old))
    report("complete-if-match-current", multipart(a, "k", IfMatch=cur))
    cur = etag("k")
    # DeleteObject
    for i, c in others:
        report(
            f"delete-if-match-stale@{i}",
            lambda c=c: with_header(
                c, "If-Match", old, lambda: c.delete_object(Bucket=bucket, Key=p + "k")
            ),
        )
    report(
        "delete-if-match-current",
        lambda: with_header(
            a, "If-Match", cur, lambda: a.delete_object(Bucket=bucket, Key=p + "k")
        ),
    )
    # Races: 16 writers at once, spread over every endpoint, each with the same condition;
    # exactly one may win.
    racers = [clients[i % len(clients)] for i in range(16)]

    def race(case, make):
        barrier = threading.Barrier(len(racers))
        results = [None] * len(racers)

        def run(i, c):
            call = make(i, c)
            barrier.wait()
            results[i] = status(call)

        threads = [threading.Thread(target=run, args=(i, c)) for i, c in enumerate(racers)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        print(f"{case} {results.count(200)}", flush=True)

    race("put-if-none-match-race-winners", lambda i, c: put(c, "race", b"%d" % i, IfNoneMatch="*"))
    base = etag("race")
    race("put-if-match-race-winners", lambda i, c: put(c, "race", b"x%d" % i, IfMatch=base))


if __name__ == "__main__":
    main()
