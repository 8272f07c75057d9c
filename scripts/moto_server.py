#!/usr/bin/env python3
"""moto's S3 server, with one dev-server quirk removed: werkzeug drops every request header
whose name holds '_' (x-amz-meta-stratus_mtime), which real S3, Azure and GCS keep. Without
this, no test against moto could see our object metadata. Same arguments as moto_server."""
import werkzeug.serving as serving

_make_environ = serving.WSGIRequestHandler.make_environ


def make_environ(self):
    environ = _make_environ(self)
    for key, value in self.headers.items():
        if "_" in key:
            environ.setdefault("HTTP_" + key.upper().replace("-", "_"), value.replace("\r\n", ""))
    return environ


serving.WSGIRequestHandler.make_environ = make_environ

from moto.server import main  # noqa: E402  (after the patch, so run_simple uses it)

if __name__ == "__main__":
    main()
