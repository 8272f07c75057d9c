#!/usr/bin/env python3
"""A Google Cloud Storage test server speaking the XML API as object_store's GCS client (and
stratus's own raw GCS requests) use it: no installable emulator does (gcp-storage-emulator
speaks the JSON API; fake-gcs-server refuses plain XML PUTs, XML multipart uploads and
`x-goog-copy-source`). Python standard library only; everything lives in memory.

    python3 scripts/gcs_server.py -H 127.0.0.1 -p PORT [--versioning] [--ignore-preconditions]

What it implements, following the XML API reference (cloud.google.com/storage/docs/xml-api):
- PUT /BUCKET creates a bucket (a test helper's shortcut: real GCS needs a project).
- PUT/GET/HEAD/DELETE /BUCKET/OBJECT, with `x-goog-generation` / `x-goog-metageneration`,
  a quoted MD5 ETag, `x-goog-meta-*` user metadata and the Cache-Control, Content-Disposition,
  Content-Encoding, Content-Language and Content-Type an object keeps.
- Preconditions on writes and deletes: `x-goog-if-generation-match` (0: the object must not
  exist) and `x-goog-if-metageneration-match`; 412 PreconditionFailed when one fails.
- Copies (`x-goog-copy-source: BUCKET/OBJECT`, percent-encoded) with
  `x-goog-copy-source-generation`, `x-goog-copy-source-if-match`,
  `x-goog-copy-source-if-none-match`, `x-goog-copy-source-if-generation-match`,
  `x-goog-metadata-directive: COPY|REPLACE` and the destination preconditions above.
- GET/HEAD with Range (bytes=A-B, A-, -N), If-Match, If-None-Match, If-Modified-Since,
  If-Unmodified-Since, and `?generation=`.
- Listing: GET /BUCKET?list-type=2 with prefix, delimiter, max-keys, start-after and
  continuation-token.
- Compose (`PUT OBJECT?compose`, a ComposeRequest of components pinned by <Generation>,
  under the destination's `x-goog-if-generation-match`).
- XML multipart uploads: POST ?uploads, PUT ?partNumber=&uploadId=, POST ?uploadId=
  (complete, with the destination preconditions), DELETE ?uploadId= (abort).

And the subset of the JSON API (cloud.google.com/storage/docs/json_api) that rclone's GCS
backend uses, over the same objects (point rclone's `endpoint` at http://HOST:PORT/storage/v1/):
- GET /storage/v1/b/BUCKET (the bucket exists); GET /storage/v1/b/BUCKET/o (list: prefix,
  delimiter, maxResults, pageToken, startOffset, endOffset; live objects only).
- GET/PATCH/DELETE /storage/v1/b/BUCKET/o/OBJECT: the object resource (`metadata` is the XML
  API's `x-goog-meta-*`, `md5Hash` and `crc32c` in base64, `size`, `generation`, `updated`);
  media with `alt=media` or from /download/storage/v1/..., with Range.
- Uploads to /upload/storage/v1/b/BUCKET/o: uploadType=media, multipart (multipart/related)
  and resumable (chunks by PUT or POST, 308 or Google's `X-Http-Status-Code-Override`).
- POST .../o/OBJECT/copyTo/b/BUCKET/o/OBJECT and rewriteTo (done in one call).
- `ifGenerationMatch` / `ifMetagenerationMatch` on writes and deletes; errors in the JSON
  API's form ({"error": {"code", "message", "errors": [{"reason"}]}}).

Where it may differ from real GCS (said here so nobody trusts it further than this):
- Authentication is ignored (any or no Authorization header is accepted).
- JSON API paths are told apart from XML ones by their prefix, so an XML bucket named
  `storage`, `upload` or `download` is out of reach. Source preconditions on JSON copies,
  `versions=true` listings, `matchGlob` (refused with 400), ACLs and bucket writes through
  the JSON API are not implemented.
- If-Match / If-None-Match are honoured on GET and HEAD only, as the XML API documents them;
  on PUT and DELETE they are ignored (as we understand GCS to do), so a client that relied on
  them would be caught silently overwriting here too.
- Generations are increasing integers (microseconds since the epoch, made unique), as on GCS,
  but nothing else about them is modelled (no soft delete, no holds, no retention).
- A multipart object's ETag is S3's form (MD5 of the parts' MD5s, "-N"); GCS documents only
  that it is not the content's MD5.
- With --versioning, replaced and deleted objects stay readable by `?generation=` (a bucket
  with Object Versioning on); without it they are gone. Listing shows live objects only.
- Errors carry GCS's XML body (<Error><Code>..</Code><Message>..</Message></Error>); the codes
  are the documented ones for the cases here (NoSuchKey, NoSuchBucket, NoSuchUpload,
  PreconditionFailed, InvalidPart, InvalidArgument, InvalidRange).

Every request is decided under one lock, so conditional writes are atomic under concurrency.

With --ignore-preconditions it plays a server that does not implement conditional writes
(as Garage and s3s-fs ignore If-Match / If-None-Match): `x-goog-if-generation-match` and
`x-goog-if-metageneration-match` are ignored on every write and delete, and the write simply
happens. Only for testing how stratus notices and copes (tests/capability.rs).
"""
import argparse
import base64
import email.utils
import hashlib
import json
import threading
import time
import urllib.parse
import uuid
import xml.etree.ElementTree as ET
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from xml.sax.saxutils import escape

# Object attributes kept with the object and returned as headers.
CONTENT_HEADERS = (
    "cache-control",
    "content-disposition",
    "content-encoding",
    "content-language",
    "content-type",
)
META_PREFIX = "x-goog-meta-"


class Obj:
    __slots__ = ("data", "generation", "metageneration", "etag", "mtime", "headers", "meta", "crc")

    def __init__(self, data, generation, etag, headers, meta):
        self.data = data
        self.generation = generation
        self.metageneration = 1
        self.etag = etag
        self.mtime = time.time()
        self.headers = headers
        self.meta = meta
        self.crc = None  # the JSON API's crc32c, computed when first asked for


class State:
    def __init__(self, versioning):
        self.lock = threading.Lock()
        self.versioning = versioning
        self.buckets = {}  # name -> {key: Obj}
        self.old = {}  # (bucket, key, generation) -> Obj, with --versioning
        self.uploads = {}  # upload id -> dict(bucket, key, headers, meta, parts)
        self.last_generation = 0

    def next_generation(self):
        g = max(int(time.time() * 1_000_000), self.last_generation + 1)
        self.last_generation = g
        return g

    def retire(self, bucket, key, obj):
        if self.versioning and obj is not None:
            self.old[(bucket, key, obj.generation)] = obj


STATE = None
IGNORE_PRECONDITIONS = False


class Fail(Exception):
    def __init__(self, status, code, message=""):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


def http_date(t):
    return email.utils.formatdate(t, usegmt=True)


def iso_date(t):
    return datetime.fromtimestamp(t, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def quoted_md5(data):
    return '"%s"' % hashlib.md5(data).hexdigest()


def check_write_preconditions(headers, current):
    """`x-goog-if-generation-match` (0: must not exist) and `x-goog-if-metageneration-match`
    against the live object at the destination."""
    if IGNORE_PRECONDITIONS:
        return
    gen = headers.get("x-goog-if-generation-match")
    if gen is not None:
        gen = gen.strip()
        if gen == "0":
            if current is not None:
                raise Fail(412, "PreconditionFailed", "the object exists")
        elif current is None or str(current.generation) != gen:
            raise Fail(412, "PreconditionFailed", "generation does not match")
    meta = headers.get("x-goog-if-metageneration-match")
    if meta is not None and (current is None or str(current.metageneration) != meta.strip()):
        raise Fail(412, "PreconditionFailed", "metageneration does not match")


def etag_list_matches(header, etag):
    tags = [t.strip() for t in header.split(",")]
    return "*" in tags or etag in tags or etag.strip('"') in [t.strip('"') for t in tags]


def parse_range(header, size):
    """(first, last) byte of a single `bytes=` range, "unsatisfiable", or None to serve the
    whole object (a header we do not understand is ignored, as RFC 7233 allows)."""
    if not header.startswith("bytes=") or "," in header:
        return None
    first, _, last = header[6:].strip().partition("-")
    try:
        if first == "":
            n = int(last)
            if n == 0 or size == 0:
                return "unsatisfiable"
            return max(size - n, 0), size - 1
        start = int(first)
        end = min(int(last), size - 1) if last else size - 1
    except ValueError:
        return None
    if start >= size or end < start:
        return "unsatisfiable"
    return start, end


def parse_http_date(value):
    try:
        return email.utils.parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError):
        return None


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "stratus-gcs-test-server"

    def log_message(self, fmt, *args):  # quiet: the tests read only errors
        pass

    # ---------- plumbing ----------

    def body(self):
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            out = bytearray()
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return bytes(out)
                out += self.rfile.read(size)
                self.rfile.readline()
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""

    def reply(self, status, body=b"", headers=(), content_type=None):
        self.send_response(status)
        for k, v in headers:
            self.send_header(k, v)
        if content_type:
            self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD" and body:
            self.wfile.write(body)

    def xml(self, status, text, headers=()):
        body = ("<?xml version='1.0' encoding='UTF-8'?>" + text).encode()
        self.reply(status, body, headers, "application/xml; charset=UTF-8")

    def error(self, f):
        if self.command == "HEAD" or f.status == 304:
            self.reply(f.status)
            return
        self.xml(
            f.status,
            "<Error><Code>%s</Code><Message>%s</Message></Error>"
            % (escape(f.code), escape(f.message)),
        )

    def route(self):
        raw_path, _, raw_query = self.path.partition("?")
        if raw_path.startswith(JSON_PREFIXES):
            raise JsonRequest(raw_path, raw_query)
        query = urllib.parse.parse_qs(raw_query, keep_blank_values=True)
        query = {k: v[0] for k, v in query.items()}
        path = urllib.parse.unquote(raw_path, errors="strict")
        bucket, _, key = path.lstrip("/").partition("/")
        headers = {k.lower(): v for k, v in self.headers.items()}
        return bucket, key, query, headers

    def handle_any(self, fn):
        try:
            bucket, key, query, headers = self.route()
            body = b"" if self.command in ("GET", "HEAD") else self.body()
            fn(bucket, key, query, headers, body)
        except JsonRequest as j:
            json_api(self, j.raw_path, j.raw_query)
        except Fail as f:
            self.error(f)
        except UnicodeDecodeError:
            self.error(Fail(400, "InvalidArgument", "path is not UTF-8"))

    def do_GET(self):
        self.handle_any(self.get)

    def do_HEAD(self):
        self.handle_any(self.get)

    def do_PUT(self):
        self.handle_any(self.put)

    def do_POST(self):
        self.handle_any(self.post)

    def do_DELETE(self):
        self.handle_any(self.delete)

    def do_PATCH(self):
        raw_path, _, raw_query = self.path.partition("?")
        if not raw_path.startswith(JSON_PREFIXES):
            # What BaseHTTPRequestHandler answers for a method it has no do_ for, as before.
            return self.send_error(501, "Unsupported method (%r)" % self.command)
        json_api(self, raw_path, raw_query)

    # ---------- helpers under the lock ----------

    def objects(self, bucket):
        objects = STATE.buckets.get(bucket)
        if objects is None:
            raise Fail(404, "NoSuchBucket", "bucket %s does not exist" % bucket)
        return objects

    def object_headers(self, obj):
        out = [
            ("ETag", obj.etag),
            ("Last-Modified", http_date(obj.mtime)),
            ("x-goog-generation", str(obj.generation)),
            ("x-goog-metageneration", str(obj.metageneration)),
            ("x-goog-stored-content-length", str(len(obj.data))),
            ("x-goog-hash", "md5=" + base64.b64encode(hashlib.md5(obj.data).digest()).decode()),
            ("Accept-Ranges", "bytes"),
        ]
        for k, v in obj.headers.items():
            if k != "content-type":
                out.append((k, v))
        for k, v in obj.meta.items():
            out.append((META_PREFIX + k, v))
        return out

    @staticmethod
    def attributes_from(headers):
        content = {k: headers[k] for k in CONTENT_HEADERS if k in headers}
        content.setdefault("content-type", "application/octet-stream")
        meta = {k[len(META_PREFIX):]: v for k, v in headers.items() if k.startswith(META_PREFIX)}
        return content, meta

    # ---------- GET / HEAD ----------

    def get(self, bucket, key, query, headers, _body):
        if not key:
            if self.command == "HEAD":
                with STATE.lock:
                    self.objects(bucket)
                return self.reply(200)
            return self.list(bucket, query)
        with STATE.lock:
            objects = self.objects(bucket)
            obj = objects.get(key)
            want = query.get("generation")
            if want is not None and (obj is None or str(obj.generation) != want):
                obj = STATE.old.get((bucket, key, int(want) if want.isdigit() else -1))
            if obj is None:
                raise Fail(404, "NoSuchKey", "no such object: %s/%s" % (bucket, key))
        # RFC 7232's order: If-Match, If-Unmodified-Since, If-None-Match, If-Modified-Since.
        # Last-Modified travels in whole seconds, so the comparisons are made in seconds.
        mtime = int(obj.mtime)
        if "if-match" in headers:
            if not etag_list_matches(headers["if-match"], obj.etag):
                raise Fail(412, "PreconditionFailed", "If-Match")
        elif "if-unmodified-since" in headers:
            t = parse_http_date(headers["if-unmodified-since"])
            if t is not None and mtime > t:
                raise Fail(412, "PreconditionFailed", "If-Unmodified-Since")
        if "if-none-match" in headers:
            if etag_list_matches(headers["if-none-match"], obj.etag):
                return self.reply(304, headers=[("ETag", obj.etag)])
        elif "if-modified-since" in headers:
            t = parse_http_date(headers["if-modified-since"])
            if t is not None and mtime <= t:
                return self.reply(304, headers=[("ETag", obj.etag)])
        data = obj.data
        size = len(data)
        out = self.object_headers(obj)
        ctype = obj.headers.get("content-type")
        rng = headers.get("range")
        span = parse_range(rng, size) if rng else None
        if span == "unsatisfiable":
            body = b"" if self.command == "HEAD" else (
                "<?xml version='1.0' encoding='UTF-8'?><Error><Code>InvalidRange</Code>"
                "<Message>The requested range cannot be satisfied.</Message></Error>"
            ).encode()
            self.send_response(416)
            self.send_header("Content-Range", "bytes */%d" % size)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if body:
                self.wfile.write(body)
            return
        if span is not None:
            start, end = span
            out.append(("Content-Range", "bytes %d-%d/%d" % (start, end, size)))
            self.send_response(206)
            for k, v in out:
                self.send_header(k, v)
            if ctype:
                self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(end - start + 1))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data[start : end + 1])
            return
        self.send_response(200)
        for k, v in out:
            self.send_header(k, v)
        if ctype:
            self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(size))
        self.end_headers()
        if self.command != "HEAD" and data:
            self.wfile.write(data)

    def list(self, bucket, query):
        prefix = query.get("prefix", "")
        delimiter = query.get("delimiter", "")
        max_keys = int(query.get("max-keys", "1000") or 1000)
        max_keys = max(1, min(max_keys, 1000))
        after = query.get("start-after", "")
        skip_prefix = ""
        token = query.get("continuation-token")
        if token:
            try:
                t = json.loads(base64.urlsafe_b64decode(token.encode()).decode())
                after, skip_prefix = t["after"], t["skip"]
            except (ValueError, KeyError):
                raise Fail(400, "InvalidArgument", "bad continuation-token")
        with STATE.lock:
            objects = self.objects(bucket)
            # Python orders str by code point, which is UTF-8 byte order, as GCS lists.
            keys = sorted(k for k in objects if k.startswith(prefix) and k > after)
            contents, prefixes = [], []
            truncated, next_token = False, None
            last = None
            for k in keys:
                if skip_prefix and k.startswith(skip_prefix):
                    continue
                rest = k[len(prefix) :]
                cp = None
                if delimiter and delimiter in rest:
                    cp = prefix + rest[: rest.index(delimiter) + len(delimiter)]
                    if prefixes and prefixes[-1] == cp:
                        continue
                if len(contents) + len(prefixes) == max_keys:
                    truncated = True
                    next_token = base64.urlsafe_b64encode(
                        json.dumps({"after": last[0], "skip": last[1] or ""}).encode()
                    ).decode()
                    break
                if cp is not None:
                    prefixes.append(cp)
                    skip_prefix = cp
                    last = (k, cp)
                else:
                    o = objects[k]
                    contents.append((k, o))
                    last = (k, None)
            parts = [
                "<ListBucketResult xmlns='http://doc.s3.amazonaws.com/2006-03-01'>",
                "<Name>%s</Name>" % escape(bucket),
                "<Prefix>%s</Prefix>" % escape(prefix),
                "<MaxKeys>%d</MaxKeys>" % max_keys,
                "<KeyCount>%d</KeyCount>" % (len(contents) + len(prefixes)),
            ]
            if delimiter:
                parts.append("<Delimiter>%s</Delimiter>" % escape(delimiter))
            if query.get("start-after"):
                parts.append("<StartAfter>%s</StartAfter>" % escape(query["start-after"]))
            parts.append("<IsTruncated>%s</IsTruncated>" % ("true" if truncated else "false"))
            if next_token:
                parts.append("<NextContinuationToken>%s</NextContinuationToken>" % next_token)
            for k, o in contents:
                parts.append(
                    "<Contents><Key>%s</Key><Generation>%d</Generation>"
                    "<MetaGeneration>%d</MetaGeneration><LastModified>%s</LastModified>"
                    "<ETag>%s</ETag><Size>%d</Size><StorageClass>STANDARD</StorageClass>"
                    "</Contents>"
                    % (escape(k), o.generation, o.metageneration, iso_date(o.mtime),
                       escape(o.etag), len(o.data))
                )
            for cp in prefixes:
                parts.append("<CommonPrefixes><Prefix>%s</Prefix></CommonPrefixes>" % escape(cp))
            parts.append("</ListBucketResult>")
        self.xml(200, "".join(parts))

    # ---------- PUT ----------

    def put(self, bucket, key, query, headers, body):
        if not key:
            with STATE.lock:
                if bucket in STATE.buckets:
                    raise Fail(409, "BucketAlreadyOwnedByYou", bucket)
                STATE.buckets[bucket] = {}
            return self.reply(200)
        if "uploadId" in query:
            return self.put_part(bucket, key, query, body)
        if "x-goog-copy-source" in headers:
            return self.copy(bucket, key, headers)
        if "compose" in query:
            return self.compose(bucket, key, headers, body)
        content, meta = self.attributes_from(headers)
        with STATE.lock:
            objects = self.objects(bucket)
            current = objects.get(key)
            check_write_preconditions(headers, current)
            obj = Obj(body, STATE.next_generation(), quoted_md5(body), content, meta)
            STATE.retire(bucket, key, current)
            objects[key] = obj
        self.reply(
            200,
            headers=[
                ("ETag", obj.etag),
                ("x-goog-generation", str(obj.generation)),
                ("x-goog-metageneration", "1"),
            ],
        )

    def compose(self, bucket, key, headers, body):
        """`PUT key?compose`: the concatenation of up to 32 objects of the bucket (each may be
        pinned with <Generation>), with the request's metadata, under the destination's write
        preconditions. A composite object's ETag is not an MD5, as on GCS."""
        try:
            root = ET.fromstring(body)
        except ET.ParseError:
            raise Fail(400, "MalformedXML", "bad ComposeRequest body")
        wanted = []
        for comp in root.iter():
            if comp.tag.rsplit("}", 1)[-1] != "Component":
                continue
            fields = {c.tag.rsplit("}", 1)[-1]: (c.text or "") for c in comp}
            if not fields.get("Name"):
                raise Fail(400, "MalformedXML", "Component without Name")
            wanted.append((fields["Name"], (fields.get("Generation") or "").strip()))
        if not 1 <= len(wanted) <= 32:
            raise Fail(400, "InvalidArgument", "compose takes 1 to 32 components")
        content, meta = self.attributes_from(headers)
        with STATE.lock:
            objects = self.objects(bucket)
            chunks = []
            for name, gen in wanted:
                src = objects.get(name)
                if src is not None and gen and str(src.generation) != gen:
                    src = STATE.old.get((bucket, name, int(gen))) if gen.isdigit() else None
                if src is None:
                    raise Fail(404, "NoSuchKey", "component %s is missing" % name)
                chunks.append(src.data)
            current = objects.get(key)
            check_write_preconditions(headers, current)
            data = b"".join(chunks)
            generation = STATE.next_generation()
            etag = '"C%s"' % hashlib.md5(b"%d" % generation).hexdigest()[:16]
            obj = Obj(data, generation, etag, content, meta)
            STATE.retire(bucket, key, current)
            objects[key] = obj
        self.reply(
            200,
            headers=[
                ("ETag", obj.etag),
                ("x-goog-generation", str(obj.generation)),
                ("x-goog-metageneration", "1"),
            ],
        )

    def put_part(self, bucket, key, query, body):
        try:
            number = int(query.get("partNumber", ""))
        except ValueError:
            raise Fail(400, "InvalidArgument", "bad partNumber")
        if not 1 <= number <= 10000:
            raise Fail(400, "InvalidArgument", "partNumber out of range")
        etag = quoted_md5(body)
        with STATE.lock:
            up = STATE.uploads.get(query["uploadId"])
            if up is None or (up["bucket"], up["key"]) != (bucket, key):
                raise Fail(404, "NoSuchUpload", "no such upload")
            up["parts"][number] = (etag, body)
        self.reply(200, headers=[("ETag", etag)])

    def copy(self, bucket, key, headers):
        src = headers["x-goog-copy-source"].strip()
        src = urllib.parse.unquote(src.lstrip("/"))
        src_bucket, _, src_key = src.partition("/")
        directive = headers.get("x-goog-metadata-directive", "COPY").strip().upper()
        if directive not in ("COPY", "REPLACE"):
            raise Fail(400, "InvalidArgument", "x-goog-metadata-directive")
        with STATE.lock:
            src_objects = self.objects(src_bucket)
            objects = self.objects(bucket)
            source = src_objects.get(src_key)
            want_gen = headers.get("x-goog-copy-source-generation")
            if want_gen is not None and (source is None or str(source.generation) != want_gen.strip()):
                source = STATE.old.get((src_bucket, src_key, int(want_gen) if want_gen.strip().isdigit() else -1))
            if source is None:
                raise Fail(404, "NoSuchKey", "no such source object: %s" % src)
            if (src_bucket, src_key) == (bucket, key) and directive != "REPLACE":
                raise Fail(
                    400,
                    "InvalidArgument",
                    "copying an object onto itself needs x-goog-metadata-directive: REPLACE",
                )
            h = headers.get("x-goog-copy-source-if-match")
            if h is not None and not etag_list_matches(h, source.etag):
                raise Fail(412, "PreconditionFailed", "x-goog-copy-source-if-match")
            h = headers.get("x-goog-copy-source-if-none-match")
            if h is not None and etag_list_matches(h, source.etag):
                raise Fail(412, "PreconditionFailed", "x-goog-copy-source-if-none-match")
            h = headers.get("x-goog-copy-source-if-generation-match")
            if h is not None and str(source.generation) != h.strip():
                raise Fail(412, "PreconditionFailed", "x-goog-copy-source-if-generation-match")
            h = headers.get("x-goog-copy-source-if-metageneration-match")
            if h is not None and str(source.metageneration) != h.strip():
                raise Fail(412, "PreconditionFailed", "x-goog-copy-source-if-metageneration-match")
            current = objects.get(key)
            check_write_preconditions(headers, current)
            if directive == "REPLACE":
                content, meta = self.attributes_from(headers)
            else:
                content, meta = dict(source.headers), dict(source.meta)
            obj = Obj(source.data, STATE.next_generation(), source.etag, content, meta)
            STATE.retire(bucket, key, current)
            objects[key] = obj
        self.xml(
            200,
            "<CopyObjectResult><LastModified>%s</LastModified><ETag>%s</ETag></CopyObjectResult>"
            % (iso_date(obj.mtime), escape(obj.etag)),
            headers=[
                ("ETag", obj.etag),
                ("x-goog-generation", str(obj.generation)),
                ("x-goog-metageneration", "1"),
            ],
        )

    # ---------- POST (multipart) ----------

    def post(self, bucket, key, query, headers, body):
        if not key:
            raise Fail(400, "InvalidArgument", "POST needs an object")
        if "uploads" in query:
            content, meta = self.attributes_from(headers)
            upload_id = uuid.uuid4().hex
            with STATE.lock:
                self.objects(bucket)
                STATE.uploads[upload_id] = {
                    "bucket": bucket,
                    "key": key,
                    "headers": content,
                    "meta": meta,
                    "parts": {},
                }
            return self.xml(
                200,
                "<InitiateMultipartUploadResult><Bucket>%s</Bucket><Key>%s</Key>"
                "<UploadId>%s</UploadId></InitiateMultipartUploadResult>"
                % (escape(bucket), escape(key), upload_id),
            )
        if "uploadId" in query:
            return self.complete(bucket, key, query["uploadId"], headers, body)
        raise Fail(400, "InvalidArgument", "unsupported POST")

    def complete(self, bucket, key, upload_id, headers, body):
        try:
            root = ET.fromstring(body)
        except ET.ParseError:
            raise Fail(400, "MalformedXML", "bad CompleteMultipartUpload body")
        wanted = []
        for part in root.iter():
            if part.tag.rsplit("}", 1)[-1] != "Part":
                continue
            fields = {c.tag.rsplit("}", 1)[-1]: (c.text or "").strip() for c in part}
            try:
                wanted.append((int(fields["PartNumber"]), fields.get("ETag", "")))
            except (KeyError, ValueError):
                raise Fail(400, "MalformedXML", "Part without PartNumber")
        if not wanted:
            raise Fail(400, "MalformedXML", "a multipart upload needs at least one part")
        if [n for n, _ in wanted] != sorted(set(n for n, _ in wanted)):
            raise Fail(400, "InvalidPartOrder", "parts must be listed in ascending order")
        with STATE.lock:
            objects = self.objects(bucket)
            up = STATE.uploads.get(upload_id)
            if up is None or (up["bucket"], up["key"]) != (bucket, key):
                raise Fail(404, "NoSuchUpload", "no such upload")
            chunks, digests = [], b""
            for n, etag in wanted:
                have = up["parts"].get(n)
                if have is None or have[0].strip('"') != etag.strip('"'):
                    raise Fail(400, "InvalidPart", "part %d is missing or its ETag differs" % n)
                chunks.append(have[1])
                digests += bytes.fromhex(have[0].strip('"'))
            current = objects.get(key)
            check_write_preconditions(headers, current)
            etag = '"%s-%d"' % (hashlib.md5(digests).hexdigest(), len(wanted))
            obj = Obj(b"".join(chunks), STATE.next_generation(), etag, up["headers"], up["meta"])
            STATE.retire(bucket, key, current)
            objects[key] = obj
            del STATE.uploads[upload_id]
        self.xml(
            200,
            "<CompleteMultipartUploadResult><Location>/%s/%s</Location><Bucket>%s</Bucket>"
            "<Key>%s</Key><ETag>%s</ETag></CompleteMultipartUploadResult>"
            % (escape(bucket), escape(key), escape(bucket), escape(key), escape(etag)),
            headers=[("x-goog-generation", str(obj.generation)), ("ETag", etag)],
        )

    # ---------- DELETE ----------

    def delete(self, bucket, key, query, headers, _body):
        if not key:
            raise Fail(400, "InvalidArgument", "deleting buckets is not supported here")
        with STATE.lock:
            objects = self.objects(bucket)
            if "uploadId" in query:
                up = STATE.uploads.get(query["uploadId"])
                if up is None or (up["bucket"], up["key"]) != (bucket, key):
                    raise Fail(404, "NoSuchUpload", "no such upload")
                del STATE.uploads[query["uploadId"]]
                return self.reply(204)
            current = objects.get(key)
            if current is None:
                raise Fail(404, "NoSuchKey", "no such object: %s/%s" % (bucket, key))
            check_write_preconditions(headers, current)
            STATE.retire(bucket, key, current)
            del objects[key]
        self.reply(204)


# ---------- the JSON API (the subset rclone's GCS backend uses) ----------
#
# Routed by path prefix, before the XML API sees the request: an XML path whose bucket is
# named `storage`, `upload` or `download` would be taken for a JSON one (GCS itself tells the
# two apart by host name, which a server on 127.0.0.1 cannot). Object names travel in one
# percent-encoded path segment (`/` as %2F), so paths are split before they are decoded.

JSON_PREFIXES = ("/storage/v1/", "/upload/storage/v1/", "/download/storage/v1/")
JSON_TYPE = "application/json; charset=UTF-8"
# The XML API's stored headers and the JSON API's names for them.
JSON_FIELDS = (
    ("cache-control", "cacheControl"),
    ("content-disposition", "contentDisposition"),
    ("content-encoding", "contentEncoding"),
    ("content-language", "contentLanguage"),
    ("content-type", "contentType"),
)
JSON_REASONS = {400: "invalid", 404: "notFound", 409: "conflict", 412: "conditionNotMet",
                416: "requestedRangeNotSatisfiable"}


class JsonRequest(Exception):
    """Raised by `Handler.route` to hand a JSON API path to `json_api`."""

    def __init__(self, raw_path, raw_query):
        super().__init__(raw_path)
        self.raw_path = raw_path
        self.raw_query = raw_query


def _crc32c_table():
    table = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return table


CRC32C_TABLE = _crc32c_table()


def crc32c(data):
    c = 0xFFFFFFFF
    for b in data:
        c = CRC32C_TABLE[(c ^ b) & 0xFF] ^ (c >> 8)
    return c ^ 0xFFFFFFFF


def obj_crc32c(obj):
    """Base64 of the big-endian CRC32C, as the JSON API's `crc32c` and `x-goog-hash` carry it."""
    if obj.crc is None:
        obj.crc = base64.b64encode(crc32c(obj.data).to_bytes(4, "big")).decode()
    return obj.crc


def obj_md5(obj):
    return base64.b64encode(hashlib.md5(obj.data).digest()).decode()


def json_resource(host, bucket, key, obj):
    """The object resource (cloud.google.com/storage/docs/json_api/v1/objects)."""
    name = urllib.parse.quote(key, safe="")
    base = "http://%s" % host
    out = {
        "kind": "storage#object",
        "id": "%s/%s/%d" % (bucket, key, obj.generation),
        "selfLink": "%s/storage/v1/b/%s/o/%s" % (base, bucket, name),
        "mediaLink": "%s/download/storage/v1/b/%s/o/%s?generation=%d&alt=media"
        % (base, bucket, name, obj.generation),
        "name": key,
        "bucket": bucket,
        "generation": str(obj.generation),
        "metageneration": str(obj.metageneration),
        "storageClass": "STANDARD",
        "size": str(len(obj.data)),
        "md5Hash": obj_md5(obj),
        "crc32c": obj_crc32c(obj),
        "etag": obj.etag.strip('"'),
        "timeCreated": iso_date(obj.mtime),
        "updated": iso_date(obj.mtime),
    }
    for header, field in JSON_FIELDS:
        if header in obj.headers:
            out[field] = obj.headers[header]
    if obj.meta:
        out["metadata"] = dict(obj.meta)
    return out


def attributes_from_resource(resource):
    """(content headers, user metadata) from an object resource, as the XML API keeps them."""
    if not isinstance(resource, dict):
        raise Fail(400, "invalid", "the object resource is not a JSON object")
    content = {h: str(resource[f]) for h, f in JSON_FIELDS if resource.get(f) is not None}
    content.setdefault("content-type", "application/octet-stream")
    meta = resource.get("metadata") or {}
    if not isinstance(meta, dict):
        raise Fail(400, "invalid", "metadata is not a map")
    return content, {str(k): str(v) for k, v in meta.items() if v is not None}


def json_preconditions(query):
    """The JSON API's `ifGenerationMatch` / `ifMetagenerationMatch` as the XML headers
    `check_write_preconditions` reads."""
    out = {}
    if "ifGenerationMatch" in query:
        out["x-goog-if-generation-match"] = query["ifGenerationMatch"]
    if "ifMetagenerationMatch" in query:
        out["x-goog-if-metageneration-match"] = query["ifMetagenerationMatch"]
    return out


def parse_multipart_related(content_type, body):
    """The two parts of an `uploadType=multipart` body: the JSON resource and the media."""
    boundary = None
    for param in content_type.split(";")[1:]:
        k, _, v = param.strip().partition("=")
        if k.lower() == "boundary":
            boundary = v.strip('"')
    if not boundary:
        raise Fail(400, "invalid", "multipart upload without a boundary")
    delim = b"--" + boundary.encode()
    chunks = body.split(delim)
    parts = []
    for chunk in chunks[1:]:
        if chunk.startswith(b"--"):
            break
        head, sep, data = chunk.partition(b"\r\n\r\n")
        if not sep:
            raise Fail(400, "invalid", "multipart part without headers")
        if data.endswith(b"\r\n"):
            data = data[:-2]
        parts.append(data)
    if len(parts) != 2:
        raise Fail(400, "invalid", "a multipart upload has a resource and a media part")
    try:
        resource = json.loads(parts[0] or b"{}")
    except ValueError:
        raise Fail(400, "invalid", "the resource part is not JSON")
    return resource, parts[1]


class JsonHandler:
    """One JSON API request on `h` (a `Handler`): routing, errors in the JSON API's form."""

    def __init__(self, h, raw_path, raw_query):
        self.h = h
        query = urllib.parse.parse_qs(raw_query, keep_blank_values=True)
        self.query = {k: v[0] for k, v in query.items()}
        self.headers = {k.lower(): v for k, v in h.headers.items()}
        self.host = self.headers.get("host", "127.0.0.1")
        self.upload = raw_path.startswith("/upload/")
        self.download = raw_path.startswith("/download/")
        rest = raw_path.split("/storage/v1/", 1)[1]
        self.segments = [urllib.parse.unquote(s, errors="strict") for s in rest.split("/")]

    def send(self, status, value, headers=()):
        body = json.dumps(value).encode()
        self.h.reply(status, body, headers, JSON_TYPE)

    def fail(self, f):
        if self.h.command == "HEAD" or f.status in (304, 308):
            return self.h.reply(f.status)
        reason = JSON_REASONS.get(f.status, f.code)
        self.send(f.status, {"error": {"code": f.status, "message": f.message or f.code,
                                       "errors": [{"domain": "global", "reason": reason,
                                                   "message": f.message or f.code}]}})

    def run(self):
        try:
            body = b"" if self.h.command in ("GET", "HEAD") else self.h.body()
            self.dispatch(body)
        except Fail as f:
            self.fail(f)

    def dispatch(self, body):
        s, m = self.segments, self.h.command
        if len(s) < 2 or s[0] != "b" or not s[1]:
            raise Fail(404, "notFound", "no such JSON API path")
        bucket = s[1]
        if len(s) == 2 and m == "GET" and not self.upload:
            with STATE.lock:
                self.h.objects(bucket)
            return self.send(200, {"kind": "storage#bucket", "id": bucket, "name": bucket,
                                   "storageClass": "STANDARD", "location": "US"})
        if len(s) < 3 or s[2] != "o":
            raise Fail(404, "notFound", "no such JSON API path")
        if len(s) == 3:
            # A resumable upload's chunks come by PUT, or by POST from Google's Go client.
            if self.upload and m in ("PUT", "POST") and "upload_id" in self.query:
                return self.resume(bucket, body)
            if self.upload and m == "POST":
                return self.insert(bucket, body)
            if m == "GET":
                return self.list(bucket)
        elif len(s) == 4:
            key = s[3]
            if m in ("GET", "HEAD") and (self.download or self.query.get("alt") == "media"):
                return self.media(bucket, key)
            if m == "GET":
                return self.get(bucket, key)
            if m == "DELETE":
                return self.delete(bucket, key)
            if m == "PATCH":
                return self.patch(bucket, key, body)
        elif len(s) == 9 and m == "POST" and s[4] in ("copyTo", "rewriteTo") and s[5] == "b" \
                and s[7] == "o":
            return self.copy(bucket, s[3], s[6], s[8], s[4] == "rewriteTo", body)
        raise Fail(404, "notFound", "%s %s is not implemented here" % (m, "/".join(s)))

    def live(self, bucket, key):
        """The object, or the generation `?generation=` names (under the lock)."""
        obj = self.h.objects(bucket).get(key)
        want = self.query.get("generation")
        if want is not None and (obj is None or str(obj.generation) != want):
            obj = STATE.old.get((bucket, key, int(want) if want.isdigit() else -1))
        if obj is None:
            raise Fail(404, "notFound", "No such object: %s/%s" % (bucket, key))
        return obj

    def get(self, bucket, key):
        with STATE.lock:
            obj = self.live(bucket, key)
        self.send(200, json_resource(self.host, bucket, key, obj))

    def media(self, bucket, key):
        with STATE.lock:
            obj = self.live(bucket, key)
        want = self.query.get("ifGenerationMatch")
        if want is not None and want != str(obj.generation):
            raise Fail(412, "conditionNotMet", "generation does not match")
        data = obj.data
        headers = [
            ("ETag", obj.etag),
            ("Last-Modified", http_date(obj.mtime)),
            ("x-goog-generation", str(obj.generation)),
            ("x-goog-metageneration", str(obj.metageneration)),
            ("x-goog-stored-content-length", str(len(data))),
            ("x-goog-hash", "crc32c=%s,md5=%s" % (obj_crc32c(obj), obj_md5(obj))),
            ("Accept-Ranges", "bytes"),
        ]
        for k, v in obj.headers.items():
            if k != "content-type":
                headers.append((k, v))
        ctype = obj.headers.get("content-type", "application/octet-stream")
        rng = self.headers.get("range")
        span = parse_range(rng, len(data)) if rng else None
        if span == "unsatisfiable":
            raise Fail(416, "requestedRangeNotSatisfiable", "the range cannot be satisfied")
        status = 200
        if span is not None:
            start, end = span
            headers.append(("Content-Range", "bytes %d-%d/%d" % (start, end, len(data))))
            data, status = data[start : end + 1], 206
        self.h.reply(status, data, headers, ctype)

    def list(self, bucket):
        q = self.query
        if "matchGlob" in q:
            raise Fail(400, "invalid", "matchGlob is not implemented here")
        prefix = q.get("prefix", "")
        delimiter = q.get("delimiter", "")
        start, end = q.get("startOffset", ""), q.get("endOffset")
        try:
            limit = max(1, min(int(q.get("maxResults") or 1000), 1000))
        except ValueError:
            raise Fail(400, "invalid", "bad maxResults")
        after = None
        if q.get("pageToken"):
            try:
                after = base64.urlsafe_b64decode(q["pageToken"].encode()).decode()
            except ValueError:
                raise Fail(400, "invalid", "bad pageToken")
        with STATE.lock:
            objects = self.h.objects(bucket)
            # Each common prefix stands once, where its first key would; the page token is
            # the last entry returned, and every later entry sorts after it.
            entries = []
            for k in sorted(objects):
                if not k.startswith(prefix) or k < start or (end is not None and k >= end):
                    continue
                rest = k[len(prefix) :]
                if delimiter and delimiter in rest:
                    cp = prefix + rest[: rest.index(delimiter) + len(delimiter)]
                    if not entries or entries[-1] != (cp, None):
                        entries.append((cp, None))
                    continue
                entries.append((k, objects[k]))
            if after is not None:
                entries = [e for e in entries if e[0] > after]
            page = entries[:limit]
            items = [json_resource(self.host, bucket, k, o) for k, o in page if o is not None]
        out = {"kind": "storage#objects"}
        prefixes = [k for k, o in page if o is None]
        if prefixes:
            out["prefixes"] = prefixes
        if items:
            out["items"] = items
        if len(entries) > limit:
            out["nextPageToken"] = base64.urlsafe_b64encode(page[-1][0].encode()).decode()
        self.send(200, out)

    def store(self, bucket, key, data, content, meta):
        """Writes a new generation under the lock, with the request's preconditions."""
        if not key:
            raise Fail(400, "required", "an object needs a name")
        with STATE.lock:
            objects = self.h.objects(bucket)
            current = objects.get(key)
            check_write_preconditions(json_preconditions(self.query), current)
            obj = Obj(data, STATE.next_generation(), quoted_md5(data), content, meta)
            STATE.retire(bucket, key, current)
            objects[key] = obj
        return obj

    def insert(self, bucket, body):
        kind = self.query.get("uploadType", "")
        if kind == "media":
            key = self.query.get("name", "")
            content = {"content-type": self.headers.get("content-type",
                                                     "application/octet-stream")}
            obj = self.store(bucket, key, body, content, {})
        elif kind == "multipart":
            resource, data = parse_multipart_related(self.headers.get("content-type", ""), body)
            content, meta = attributes_from_resource(resource)
            key = resource.get("name") or self.query.get("name", "")
            obj = self.store(bucket, key, data, content, meta)
        elif kind == "resumable":
            try:
                resource = json.loads(body or b"{}")
            except ValueError:
                raise Fail(400, "invalid", "the resource is not JSON")
            content, meta = attributes_from_resource(resource)
            key = resource.get("name") or self.query.get("name", "")
            if not key:
                raise Fail(400, "required", "an object needs a name")
            upload_id = uuid.uuid4().hex
            with STATE.lock:
                self.h.objects(bucket)
                STATE.uploads[upload_id] = {"bucket": bucket, "key": key, "headers": content,
                                            "meta": meta, "data": bytearray(),
                                            "query": dict(self.query)}
            location = "http://%s/upload/storage/v1/b/%s/o?uploadType=resumable&upload_id=%s" % (
                self.host, urllib.parse.quote(bucket, safe=""), upload_id)
            return self.h.reply(200, b"", [("Location", location)])
        else:
            raise Fail(400, "invalid", "uploadType %r is not implemented here" % kind)
        self.send(200, json_resource(self.host, bucket, key, obj))

    def resume(self, bucket, body):
        """A chunk of a resumable upload: `Content-Range: bytes A-B/TOTAL` (or `*/TOTAL` to
        ask how far it got or to finish, `A-B/*` while the total is unknown); 308 until the
        upload is complete."""
        upload_id = self.query.get("upload_id", "")
        with STATE.lock:
            up = STATE.uploads.get(upload_id)
            if up is None or up["bucket"] != bucket or "data" not in up:
                raise Fail(404, "notFound", "no such upload")
            spec = self.headers.get("content-range", "").strip()
            unit, _, spec = spec.partition(" ")
            span, _, total = spec.partition("/")
            if unit != "bytes" or not total:
                raise Fail(400, "invalid", "bad Content-Range")
            if span != "*":
                first = int(span.partition("-")[0])
                if first != len(up["data"]):
                    raise Fail(400, "invalid", "chunk starts at %d, have %d" %
                               (first, len(up["data"])))
                up["data"] += body
            done = total != "*" and int(total) == len(up["data"])
            if not done:
                have = len(up["data"])
                headers = [("Range", "bytes=0-%d" % (have - 1))] if have else []
                # Google's Go client asks for 200 plus this header instead of a bare 308.
                if self.headers.get("x-guploader-no-308", "").lower() == "yes":
                    headers.append(("X-Http-Status-Code-Override", "308"))
                    return self.h.reply(200, b"", headers)
                return self.h.reply(308, b"", headers)
            del STATE.uploads[upload_id]
        self.query = up["query"]
        obj = self.store(bucket, up["key"], bytes(up["data"]), up["headers"], up["meta"])
        self.send(200, json_resource(self.host, bucket, up["key"], obj))

    def delete(self, bucket, key):
        with STATE.lock:
            objects = self.h.objects(bucket)
            current = objects.get(key)
            if current is None:
                raise Fail(404, "notFound", "No such object: %s/%s" % (bucket, key))
            check_write_preconditions(json_preconditions(self.query), current)
            STATE.retire(bucket, key, current)
            del objects[key]
        self.h.reply(204)

    def patch(self, bucket, key, body):
        """Metadata only, in place: a new metageneration, the same generation. A `null`
        metadata value removes that key, as on GCS."""
        try:
            resource = json.loads(body or b"{}")
        except ValueError:
            raise Fail(400, "invalid", "the resource is not JSON")
        with STATE.lock:
            objects = self.h.objects(bucket)
            obj = objects.get(key)
            if obj is None:
                raise Fail(404, "notFound", "No such object: %s/%s" % (bucket, key))
            check_write_preconditions(json_preconditions(self.query), obj)
            for header, field in JSON_FIELDS:
                if field in resource:
                    if resource[field] is None:
                        obj.headers.pop(header, None)
                    else:
                        obj.headers[header] = str(resource[field])
            for k, v in (resource.get("metadata") or {}).items():
                if v is None:
                    obj.meta.pop(k, None)
                else:
                    obj.meta[k] = str(v)
            obj.metageneration += 1
        self.send(200, json_resource(self.host, bucket, key, obj))

    def copy(self, src_bucket, src_key, bucket, key, rewrite, body):
        """copyTo and rewriteTo (done in one call): the body's resource, when it names any
        field, replaces the source's metadata, as rclone's SetModTime relies on."""
        try:
            resource = json.loads(body or b"{}")
        except ValueError:
            raise Fail(400, "invalid", "the resource is not JSON")
        with STATE.lock:
            source = self.h.objects(src_bucket).get(src_key)
            want = self.query.get("sourceGeneration")
            if want is not None and (source is None or str(source.generation) != want):
                source = STATE.old.get((src_bucket, src_key, int(want) if want.isdigit() else -1))
            if source is None:
                raise Fail(404, "notFound", "No such object: %s/%s" % (src_bucket, src_key))
            if resource:
                content, meta = attributes_from_resource(resource)
            else:
                content, meta = dict(source.headers), dict(source.meta)
            objects = self.h.objects(bucket)
            current = objects.get(key)
            check_write_preconditions(json_preconditions(self.query), current)
            obj = Obj(source.data, STATE.next_generation(), source.etag, content, meta)
            STATE.retire(bucket, key, current)
            objects[key] = obj
        out = json_resource(self.host, bucket, key, obj)
        if rewrite:
            size = str(len(obj.data))
            out = {"kind": "storage#rewriteResponse", "totalBytesRewritten": size,
                   "objectSize": size, "done": True, "resource": out}
        self.send(200, out)


def json_api(handler, raw_path, raw_query):
    try:
        j = JsonHandler(handler, raw_path, raw_query)
    except UnicodeDecodeError:
        return handler.error(Fail(400, "InvalidArgument", "path is not UTF-8"))
    j.run()


def main():
    global STATE, IGNORE_PRECONDITIONS
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("-H", "--host", default="127.0.0.1")
    p.add_argument("-p", "--port", type=int, default=4443)
    p.add_argument("--versioning", action="store_true",
                   help="keep replaced and deleted generations readable (Object Versioning)")
    p.add_argument("--ignore-preconditions", action="store_true",
                   help="ignore x-goog-if-generation-match on writes (a server without "
                   "conditional writes, for tests)")
    a = p.parse_args()
    IGNORE_PRECONDITIONS = a.ignore_preconditions
    STATE = State(a.versioning)
    server = ThreadingHTTPServer((a.host, a.port), Handler)
    server.daemon_threads = True
    print("gcs test server on http://%s:%d" % (a.host, a.port), flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
