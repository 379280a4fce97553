#!/usr/bin/env python3
"""Count conditional-write races with more than one winner on an S3 server.

    python3 tools/ministack/race.py http://127.0.0.1:<port> [rounds] [writers] [body_bytes]

Each round creates a fresh key and lets `writers` threads (default 8) race, released together by
a barrier, each on its own keep-alive connection, each writing its own body (`body_bytes`,
default 16: the larger the body, the longer a server that checks and stores separately takes
between the two, e.g. moto hashing and spooling the body):

- create-only: every writer PUTs the new key with `If-None-Match: *`; exactly one may get 2xx.
- If-Match: the key is first written once; every writer then PUTs its own bytes with
  `If-Match: <that ETag>`; exactly one may get 2xx.

A round with two or more 2xx answers is a broken race (a lost write that the loser was told had
succeeded). Prints the counts; exits 1 if any round had two winners. Path-style
requests signed with Signature Version 4 and made-up credentials (moto refuses unsigned
conditional PUTs with 403; neither server checks the keys); standard library only. Docs: docs/RELIABILITY.md
("The test S3 servers").
"""
import datetime
import hashlib
import hmac
import http.client
import sys
import threading
import time
import urllib.parse
import uuid


def sign(method, host, path, headers, key="rack-race-key", secret="rack-race-secret"):
    """SigV4 headers for a request with an unsigned payload (region us-east-1, service s3)."""
    now = datetime.datetime.now(datetime.timezone.utc)
    amz_date, day = now.strftime("%Y%m%dT%H%M%SZ"), now.strftime("%Y%m%d")
    signed = {"host": host, "x-amz-content-sha256": "UNSIGNED-PAYLOAD", "x-amz-date": amz_date}
    names = ";".join(sorted(signed))
    canonical = "\n".join(
        [method, urllib.parse.quote(path), "", *(f"{k}:{signed[k]}" for k in sorted(signed)), "",
         names, "UNSIGNED-PAYLOAD"]
    )
    scope = f"{day}/us-east-1/s3/aws4_request"
    to_sign = "\n".join(
        ["AWS4-HMAC-SHA256", amz_date, scope, hashlib.sha256(canonical.encode()).hexdigest()]
    )
    k = ("AWS4" + secret).encode()
    for part in (day, "us-east-1", "s3", "aws4_request"):
        k = hmac.new(k, part.encode(), hashlib.sha256).digest()
    signature = hmac.new(k, to_sign.encode(), hashlib.sha256).hexdigest()
    out = dict(headers)
    out["x-amz-content-sha256"] = "UNSIGNED-PAYLOAD"
    out["x-amz-date"] = amz_date
    out["Authorization"] = (
        f"AWS4-HMAC-SHA256 Credential={key}/{scope}, SignedHeaders={names}, Signature={signature}"
    )
    return out


def main():
    endpoint = sys.argv[1]
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 600
    writers = int(sys.argv[3]) if len(sys.argv) > 3 else 8
    size = int(sys.argv[4]) if len(sys.argv) > 4 else 16
    url = urllib.parse.urlsplit(endpoint)
    host, port = url.hostname, url.port or 80
    bucket = "race-" + uuid.uuid4().hex[:12]

    def conn():
        return http.client.HTTPConnection(host, port, timeout=60)

    def put(c, key, body, headers):
        path = f"/{bucket}/{key}" if key else f"/{bucket}"
        c.request("PUT", path, body=body, headers=sign("PUT", f"{host}:{port}", path, headers))
        r = c.getresponse()
        r.read()
        return r.status, r.getheader("ETag")

    setup = conn()
    status, _ = put(setup, "", b"", {})
    assert status in (200, 409), f"create bucket {bucket}: {status}"
    del status

    conns = [conn() for _ in range(writers)]
    statuses = {}

    def race(kind, n, headers_of):
        key = f"{kind}/{n}"
        barrier = threading.Barrier(writers)
        results = [None] * writers

        def writer(i):
            barrier.wait()
            try:
                body = f"writer {i} ".encode().ljust(size, b".")
                results[i] = put(conns[i], key, body, headers_of(i))[0]
            except Exception as e:  # a dropped connection counts as no win
                results[i] = repr(e)
                conns[i] = conn()

        threads = [threading.Thread(target=writer, args=(i,)) for i in range(writers)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for s in results:
            statuses[(kind, s)] = statuses.get((kind, s), 0) + 1
        return sum(1 for s in results if isinstance(s, int) and 200 <= s < 300)

    broken = {"create-only": 0, "if-match": 0}
    none_won = {"create-only": 0, "if-match": 0}
    started = time.monotonic()
    for n in range(rounds):
        won = race("create-only", n, lambda i: {"If-None-Match": "*"})
        broken["create-only"] += won > 1
        none_won["create-only"] += won == 0

        status, etag = put(setup, f"if-match/{n}", b"initial", {})
        assert status == 200 and etag, f"initial write: {status} {etag}"
        won = race("if-match", n, lambda i, etag=etag: {"If-Match": etag})
        broken["if-match"] += won > 1
        none_won["if-match"] += won == 0

    took = time.monotonic() - started
    for kind in broken:
        print(
            f"{kind}: {rounds} races of {writers} writers ({size} bytes each), {broken[kind]} with two or more "
            f"winners, {none_won[kind]} with none"
        )
    print("answers:", ", ".join(f"{k} {s}: {c}" for (k, s), c in sorted(statuses.items(), key=str)))
    print(f"took {took:.1f} s")
    sys.exit(1 if any(broken.values()) else 0)


if __name__ == "__main__":
    main()
