#!/usr/bin/env python3
"""moto's S3 server, with one dev-server quirk removed: werkzeug drops every request header
whose name holds '_' (x-amz-meta-stratus_mtime), which real S3, Azure and GCS keep. Without
this, no test against moto could see our object metadata. Same arguments as moto_server.

With MOTO_RANGED_GETS_IN_PLACE=1 in the environment, a second quirk goes too (for
scripts/bench-cache.sh): moto answers a ranged GET by reading the whole object into memory
and slicing it, under a per-object lock, so on a 1 GiB object a 1 MiB ranged GET takes
~0.5 s and ranged GETs of one object run one at a time. Real S3 serves a range at the cost of
the range. With the switch, a single-range GET reads only its bytes. Off by default: the
tests keep stock moto, whose ranged GETs stay correct while the object is overwritten.

With MOTO_SEED=BUCKET[/PREFIX]:OBJECTS:DIRS (for tests/scale.rs and scripts/bench-scale.sh)
the server starts with BUCKET holding OBJECTS small objects spread over DIRS directories
(`PREFIX/dNNNNN/fNNNNNNN`, each holding its own number as text), put straight into moto's
backend:
20,000 take a second that way, where PUTs over HTTP take minutes. Served, listed and read
like any other object.

With MOTO_FAST_LISTING=1 a fourth quirk goes (also for the scale test and benchmark): moto
answers every ListObjectsV2 page by sorting the whole bucket through Python calls per key
(about 1 s a page at 100,000 keys, so a listing of that bucket took 116 s, and the figure
measured moto). Real S3 serves a page at the cost of the page. With the switch, a listing
without a delimiter walks a sorted list of the bucket's names, kept until a key is added or
removed; listings with a delimiter stay moto's own.

A third fix is always on: conditional writes are decided atomically and with every
precondition S3 documents for them, also those moto skips (see `s3_preconditions`).

With MOTO_IGNORE_PRECONDITIONS=1 it plays a server that ignores If-Match and If-None-Match on
every write (PUT, CompleteMultipartUpload, CopyObject, DELETE), as Garage and s3s-fs do; only
for testing how stratus notices and copes (tests/capability.rs)."""
import os

import werkzeug.serving as serving

_make_environ = serving.WSGIRequestHandler.make_environ


def make_environ(self):
    environ = _make_environ(self)
    for key, value in self.headers.items():
        if "_" in key:
            environ.setdefault("HTTP_" + key.upper().replace("-", "_"), value.replace("\r\n", ""))
    return environ


serving.WSGIRequestHandler.make_environ = make_environ


def ranged_gets_in_place():
    import threading

    from moto.s3.models import FakeKey
    from moto.s3.responses import S3Response

    local = threading.local()
    whole_value = FakeKey.value.fget

    class Body:
        """Stands in for the object's bytes between get_object and the range handling:
        len() is the object's size, a slice reads only those bytes."""

        def __init__(self, key):
            self.key = key

        def __len__(self):
            return self.key.size

        def __getitem__(self, s):
            if not isinstance(s, slice) or s.step not in (None, 1):
                return bytes(self)[s]
            start, stop, _ = s.indices(self.key.size)
            with self.key.lock:
                self.key._value_buffer.seek(start)
                return self.key._value_buffer.read(max(0, stop - start))

        def __bytes__(self):
            return whole_value(self.key)

    def value(self):
        return Body(self) if getattr(local, "lazy", False) else whole_value(self)

    FakeKey.value = property(value, FakeKey.value.fset)

    orig_get_object = S3Response.get_object
    orig_key_response = S3Response.key_response

    def get_object(self):
        local.lazy = "," not in self.headers.get("range", ",")
        try:
            return orig_get_object(self)
        finally:
            local.lazy = False

    def key_response(self, *args, **kwargs):
        status, headers, body = orig_key_response(self, *args, **kwargs)
        if isinstance(body, Body):  # no range applied after all: the whole object
            body = bytes(body)
        return status, headers, body

    S3Response.get_object = get_object
    S3Response.key_response = key_response


def s3_preconditions():
    """Two gaps between moto 5.2.1 and S3's documented conditional writes, closed here:

    - moto checks `If-None-Match: *` on CompleteMultipartUpload before it assembles the
      object, and nothing holds other writes of the key back meanwhile: two completions sent
      at the same moment both passed (10 of 10 tries with 24 MiB uploads). S3 decides a
      conditional write atomically (the loser gets 412, or 409 ConditionalRequestConflict).
    - moto ignores `If-Match` on CompleteMultipartUpload, and on CopyObject both the target's
      `If-None-Match: *` / `If-Match` and the source's `x-amz-copy-source-if-match`, which
      it ignores on UploadPartCopy too. S3 answers each failed one with 412
      PreconditionFailed (a target `If-Match` on a missing key: 404 NoSuchKey, as on
      PutObject); see the CopyObject, UploadPartCopy and CompleteMultipartUpload API
      references.

    One lock around every write of a key (PUT, POST, DELETE) makes each check and its write
    one step, and the checks S3 makes and moto skips are made here, under that lock. Nothing
    else of moto changes."""
    import threading
    from urllib.parse import unquote, urlparse

    from moto.s3.exceptions import MissingKey, PreconditionFailed
    from moto.s3.responses import S3Response

    lock = threading.RLock()

    def bare(etag):
        return (etag or "").strip().strip('"')

    def check_target(self, key_name, existing):
        if_match = self.headers.get("If-Match")
        if self.headers.get("If-None-Match") == "*" and existing is not None:
            raise PreconditionFailed("If-None-Match")
        if if_match:
            if existing is None:
                raise MissingKey(key=key_name)
            if bare(if_match) != bare(existing.etag):
                raise PreconditionFailed("If-Match")

    orig_post = S3Response._key_response_post
    orig_put = S3Response._key_response_put
    orig_delete = S3Response._key_response_delete
    orig_copy = S3Response.copy_object
    orig_part_copy = S3Response.upload_part_copy

    def post(self, request, body, bucket_name, query, key_name, *args, **kwargs):
        with lock:
            if query.get("uploadId") and self.headers.get("If-Match"):
                existing = self.backend.get_object(bucket_name, key_name)
                done = (
                    existing is not None
                    and existing.multipart
                    and existing.multipart.id == query["uploadId"][0]
                )
                if not done:  # a repeated completion is answered as moto does
                    check_target(self, key_name, existing)
            return orig_post(self, request, body, bucket_name, query, key_name, *args, **kwargs)

    def put(self, *args, **kwargs):
        with lock:
            return orig_put(self, *args, **kwargs)

    def delete(self, *args, **kwargs):
        with lock:
            return orig_delete(self, *args, **kwargs)

    def copy_object(self):
        source = urlparse(self.headers.get("x-amz-copy-source"))
        src_bucket, src_key = unquote(source.path).lstrip("/").split("/", 1)
        src = self.backend.get_object(src_bucket, src_key)
        want = self.headers.get("x-amz-copy-source-if-match")
        if src is not None and want and bare(want) != bare(src.etag):
            raise PreconditionFailed("x-amz-copy-source-If-Match")
        key_name = self.parse_key_name()
        check_target(self, key_name, self.backend.get_object(self.bucket_name, key_name))
        return orig_copy(self)

    def upload_part_copy(self):
        with lock:
            source = urlparse(self.headers.get("x-amz-copy-source"))
            src_bucket, src_key = unquote(source.path).lstrip("/").split("/", 1)
            src = self.backend.get_object(src_bucket, src_key)
            want = self.headers.get("x-amz-copy-source-if-match")
            if src is not None and want and bare(want) != bare(src.etag):
                raise PreconditionFailed("x-amz-copy-source-If-Match")
            return orig_part_copy(self)

    S3Response._key_response_post = post
    S3Response.upload_part_copy = upload_part_copy
    S3Response._key_response_put = put
    S3Response._key_response_delete = delete
    S3Response.copy_object = copy_object


def ignore_preconditions():
    """Drops If-Match and If-None-Match from every write before moto (or `s3_preconditions`)
    reads them: the write simply happens."""
    from moto.s3.responses import S3Response
    from werkzeug.datastructures import Headers

    def without_conditions(orig):
        def write(self, *args, **kwargs):
            headers = Headers(list(self.headers.items()))
            for name in ("If-Match", "If-None-Match"):
                headers.remove(name)
            self.headers = headers
            return orig(self, *args, **kwargs)

        return write

    for name in ("_key_response_put", "_key_response_post", "_key_response_delete"):
        setattr(S3Response, name, without_conditions(getattr(S3Response, name)))


s3_preconditions()

if os.environ.get("MOTO_IGNORE_PRECONDITIONS") == "1":
    ignore_preconditions()

if os.environ.get("MOTO_RANGED_GETS_IN_PLACE") == "1":
    ranged_gets_in_place()



def fast_listing():
    import bisect

    from moto.s3.models import FakeDeleteMarker, S3Backend
    from moto.s3.utils import _VersionedKeyStore
    from moto.utilities.utils import md5_hash

    def forgetting(orig):
        def change(self, *args, **kwargs):
            self.__dict__.pop("_sorted_names", None)
            return orig(self, *args, **kwargs)

        return change

    for name in ("__setitem__", "__delitem__", "pop", "setlist", "clear", "update"):
        setattr(_VersionedKeyStore, name, forgetting(getattr(_VersionedKeyStore, name)))

    def names_of(store):
        names = store.__dict__.get("_sorted_names")
        if names is None:
            names = sorted(dict.keys(store))
            store.__dict__["_sorted_names"] = names
        return names

    orig = S3Backend.list_objects_v2

    def list_objects_v2(self, bucket, prefix, delimiter, continuation_token, start_after, max_keys):
        if delimiter or not hasattr(bucket.keys, "__dict__"):
            return orig(self, bucket, prefix, delimiter, continuation_token, start_after, max_keys)
        prefix = prefix or ""
        names = names_of(bucket.keys)
        after = self._pagination_tokens.get(continuation_token) if continuation_token else start_after
        i = bisect.bisect_right(names, after) if after else bisect.bisect_left(names, prefix)
        out, truncated = [], False
        while i < len(names):
            name = names[i]
            i += 1
            if not name.startswith(prefix):
                if name > prefix:
                    break
                continue
            versions = dict.get(bucket.keys, name)
            if not versions or isinstance(versions[-1], FakeDeleteMarker):
                continue
            if len(out) == max_keys:
                truncated = True
                break
            out.append(versions[-1])
        token = None
        if truncated and out:
            token = md5_hash(out[-1].name.encode("utf-8")).hexdigest()
            self._pagination_tokens[token] = out[-1].name
        return out, truncated, token

    S3Backend.list_objects_v2 = list_objects_v2


def seed(spec):
    """Fills a bucket through moto's backend before the server starts (see MOTO_SEED)."""
    from moto.backends import get_backend
    from moto.core import DEFAULT_ACCOUNT_ID

    where, objects, dirs = spec.split(":")
    bucket, _, prefix = where.partition("/")
    prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
    objects, dirs = int(objects), max(1, int(dirs))
    backend = get_backend("s3")[DEFAULT_ACCOUNT_ID]["global"]
    backend.create_bucket(bucket, "us-east-1")
    for i in range(objects):
        backend.put_object(bucket, f"{prefix}d{i % dirs:05d}/f{i:07d}", str(i).encode())


if os.environ.get("MOTO_FAST_LISTING") == "1":
    fast_listing()

if os.environ.get("MOTO_SEED"):
    seed(os.environ["MOTO_SEED"])

from moto.server import main  # noqa: E402  (after the patch, so run_simple uses it)

if __name__ == "__main__":
    main()
