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

A third fix is always on: conditional multipart completions are decided atomically, as S3
does (see `atomic_multipart_completion`)."""
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


def atomic_multipart_completion():
    """moto checks `If-None-Match: *` on CompleteMultipartUpload before it assembles the
    object, and nothing holds other completions of the key back meanwhile: two completions
    sent at the same moment both pass (10 of 10 tries with 24 MiB uploads). S3 decides a
    conditional completion atomically (the loser gets 412, or 409 ConditionalRequestConflict).
    One lock around POSTs on keys (create and complete multipart uploads) restores that; it
    adds no check moto does not make itself."""
    import threading

    from moto.s3.responses import S3Response

    lock = threading.Lock()
    orig_post = S3Response._key_response_post

    def post(self, *args, **kwargs):
        with lock:
            return orig_post(self, *args, **kwargs)

    S3Response._key_response_post = post


atomic_multipart_completion()

if os.environ.get("MOTO_RANGED_GETS_IN_PLACE") == "1":
    ranged_gets_in_place()

from moto.server import main  # noqa: E402  (after the patch, so run_simple uses it)

if __name__ == "__main__":
    main()
