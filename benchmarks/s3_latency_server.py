"""A small S3-shaped HTTP server for read benchmarks: keep-alive, ranged GETs, an added latency.

moto (the tests' server) copies the whole object on every ranged GET and closes each connection,
so it measures moto, not the client. This one serves ``ROOT/BUCKET/KEY`` files straight from disk
over HTTP/1.1 keep-alive with ``--latency-ms`` added before every response (a stand-in for the
network round trip to OBS/S3), enough S3 for mmdata's reads: GET (with Range), HEAD object and
bucket, ListObjectsV2 (prefix, delimiter, max-keys). Signatures are not checked.

    python benchmarks/s3_latency_server.py ROOT --port 9000 --latency-ms 20
    AWS_ENDPOINT_URL=http://127.0.0.1:9000 AWS_ACCESS_KEY_ID=x AWS_SECRET_ACCESS_KEY=x ...
"""

from __future__ import annotations

import argparse
import os
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit
from xml.sax.saxutils import escape

_LAST_MODIFIED = "2026-01-01T00:00:00.000Z"


def _list_xml(bucket: str, prefix: str, delimiter: str, max_keys: int, keys: list[tuple[str, int]]) -> bytes:
    contents, prefixes = [], []
    for key, size in keys:
        rest = key[len(prefix):]
        if delimiter and delimiter in rest:
            p = prefix + rest.split(delimiter, 1)[0] + delimiter
            if p not in prefixes:
                prefixes.append(p)
        else:
            contents.append((key, size))
    items = [("c", k, s) for k, s in contents] + [("p", p, 0) for p in prefixes]
    items.sort(key=lambda x: x[1])
    truncated = len(items) > max_keys
    items = items[:max_keys]
    body = [f"<Name>{escape(bucket)}</Name><Prefix>{escape(prefix)}</Prefix><KeyCount>{len(items)}</KeyCount>"
            f"<MaxKeys>{max_keys}</MaxKeys><Delimiter>{escape(delimiter)}</Delimiter>"
            f"<IsTruncated>{'true' if truncated else 'false'}</IsTruncated>"]
    for kind, k, s in items:
        if kind == "c":
            body.append(f"<Contents><Key>{escape(k)}</Key><LastModified>{_LAST_MODIFIED}</LastModified>"
                        f"<ETag>\"0\"</ETag><Size>{s}</Size><StorageClass>STANDARD</StorageClass></Contents>")
        else:
            body.append(f"<CommonPrefixes><Prefix>{escape(k)}</Prefix></CommonPrefixes>")
    return ('<?xml version="1.0" encoding="UTF-8"?>\n<ListBucketResult xmlns="http://s3.amazonaws.com/doc/'
            '2006-03-01/">' + "".join(body) + "</ListBucketResult>").encode()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive
    disable_nagle_algorithm = True  # headers and body go out as two writes: no 40 ms delayed-ACK stall
    root: Path = Path(".")
    latency_s: float = 0.0
    requests = 0
    _count_lock = threading.Lock()

    def log_message(self, *args) -> None:  # quiet
        pass

    def _split(self) -> tuple[str, str, dict]:
        u = urlsplit(self.path)
        bucket, _, key = unquote(u.path).lstrip("/").partition("/")
        return bucket, key, {k: v[0] for k, v in parse_qs(u.query, keep_blank_values=True).items()}

    def _send(self, code: int, body: bytes = b"", headers: dict | None = None, head: bool = False) -> None:
        with Handler._count_lock:
            Handler.requests += 1
        if self.latency_s:
            time.sleep(self.latency_s)
        self.send_response(code)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str((headers or {}).get("_len", len(body))))
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def _missing(self, head: bool) -> None:
        body = b"" if head else b'<?xml version="1.0"?><Error><Code>NoSuchKey</Code></Error>'
        self._send(404, body, {"Content-Type": "application/xml"}, head=head)

    def do_HEAD(self) -> None:  # noqa: N802
        bucket, key, _ = self._split()
        p = self.root / bucket / key
        if not key:
            return self._send(200 if p.is_dir() else 404, head=True)
        if not p.is_file():
            return self._missing(True)
        size = p.stat().st_size
        self._send(200, b"", {"_len": size, "ETag": '"0"', "Last-Modified": "Thu, 01 Jan 2026 00:00:00 GMT",
                               "Accept-Ranges": "bytes"}, head=True)

    def do_GET(self) -> None:  # noqa: N802
        bucket, key, q = self._split()
        if not key and q.get("list-type") == "2" or (not key and "prefix" in q):
            return self._list(bucket, q)
        p = self.root / bucket / key
        if not p.is_file():
            return self._missing(False)
        size = p.stat().st_size
        rng = self.headers.get("Range")
        start, end = 0, size - 1
        if rng and rng.startswith("bytes="):
            a, _, b = rng[6:].partition("-")
            start = int(a) if a else max(0, size - int(b))
            end = min(size - 1, int(b)) if a and b else size - 1
        with open(p, "rb") as f:
            f.seek(start)
            body = f.read(max(0, end - start + 1))
        headers = {"ETag": '"0"', "Accept-Ranges": "bytes", "Last-Modified": "Thu, 01 Jan 2026 00:00:00 GMT"}
        if rng:
            headers["Content-Range"] = f"bytes {start}-{end}/{size}"
        self._send(206 if rng else 200, body, headers)

    def _list(self, bucket: str, q: dict) -> None:
        base = self.root / bucket
        if not base.is_dir():
            return self._send(404, b'<?xml version="1.0"?><Error><Code>NoSuchBucket</Code></Error>')
        prefix, delim = q.get("prefix", ""), q.get("delimiter", "")
        keys = []
        for dirpath, _, files in os.walk(base):
            for f in files:
                k = os.path.relpath(os.path.join(dirpath, f), base).replace(os.sep, "/")
                if k.startswith(prefix):
                    keys.append((k, os.path.getsize(os.path.join(dirpath, f))))
        keys.sort()
        body = _list_xml(bucket, prefix, delim, int(q.get("max-keys", 1000)), keys)
        self._send(200, body, {"Content-Type": "application/xml"})


def serve(root: str | Path, port: int = 0, latency_ms: float = 0.0) -> ThreadingHTTPServer:
    """Start serving in a background thread; returns the server (``server.server_address[1]`` is the port)."""
    handler = type("H", (Handler,), {"root": Path(root), "latency_s": latency_ms / 1000.0})
    srv = ThreadingHTTPServer(("127.0.0.1", port), handler)
    srv.daemon_threads = True
    threading.Thread(target=srv.serve_forever, daemon=True, name="s3-latency-server").start()
    return srv


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("root", help="folder whose subfolders are buckets")
    ap.add_argument("--port", type=int, default=9000)
    ap.add_argument("--latency-ms", type=float, default=20.0)
    a = ap.parse_args()
    srv = serve(a.root, a.port, a.latency_ms)
    print(f"serving {a.root} at http://127.0.0.1:{srv.server_address[1]} (+{a.latency_ms} ms per request)", flush=True)
    threading.Event().wait()


if __name__ == "__main__":
    main()
