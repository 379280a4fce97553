#!/usr/bin/env python3
"""Seed the fuzz corpora (fuzz/corpus/<target>/) from the fixtures and the conformance world.

Usage: fuzz/seed.py [FIXTURES]   (default: $RACK_FIXTURES or ../shared/fixtures/rack-storage)
Seeds are named seed-*, so a re-run replaces them; `fuzz/run.sh cmin` then minimizes.
"""
import glob, gzip, hashlib, io, json, os, sys, tarfile

root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
fixtures = sys.argv[1] if len(sys.argv) > 1 else os.environ.get(
    "RACK_FIXTURES", os.path.join(root, "..", "shared", "fixtures", "rack-storage"))
corpus = os.path.join(root, "fuzz", "corpus")


def put(target, name, data):
    d = os.path.join(corpus, target)
    os.makedirs(d, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(d, "seed-" + name), "wb") as f:
        f.write(data)


# Version directories (holding a registry.json) of the fixtures and the conformance world.
versions = []
for base in [fixtures, os.path.join(root, "conformance", "world", "storage")]:
    for m in sorted(glob.glob(os.path.join(base, "@*", "**", "registry.json"), recursive=True)):
        versions.append(os.path.dirname(m))

# route: every path of the conformance cases, and every stored object's URL.
paths = set()
for case_file in glob.glob(os.path.join(root, "conformance", "cases", "*.json")):
    for case in json.load(open(case_file)).get("cases", []):
        p = case.get("request", {}).get("path")
        if p:
            paths.add(p.split("?")[0])
for v in versions:
    base = v.split(os.sep + "@", 1)[1]
    key = "@" + base
    paths.add("/registries/" + key)
    paths.add("/registries/" + key.rsplit("/", 1)[0] + "/versions")
    for f in glob.glob(os.path.join(v, "**", "*"), recursive=True):
        if os.path.isfile(f):
            paths.add("/registries/" + key + "/files/" + os.path.relpath(f, v))
for i, p in enumerate(sorted(paths)):
    put("route", "%03d" % i, p)

# auth_json / webhooks_json: the conformance policy and hand-written shapes.
put("auth_json", "world", open(os.path.join(root, "conformance", "world", "auth.json")).read())
for i, doc in enumerate([
    '{"@a": []}',
    '{"@a": [{"token": "t", "publish": true, "expiresAt": "2999-01-01T00:00:00.5+02:00"}]}',
    '{"@a": [{"sha256": "%s", "mark": "m"}], "bad": 1}' % hashlib.sha256(b"t").hexdigest(),
    '{"@a": [{"token": ""}, {"token": "x", "expiresAt": 5}]}',
]):
    put("auth_json", "hand%d" % i, doc)
for i, doc in enumerate([
    '{"webhooks": []}',
    '{"webhooks": [{"url": "http://127.0.0.1:1/hook", "secret": "whsec-x", "events": ["uploaded", "version.created"], "enabled": true}]}',
    '{"webhooks": [{"url": "https://h/x", "secret": "s", "events": ["*"], "enabled": false, "timeoutMs": 100}]}',
    '{"webhooks":[{"url":"","secret":"whsec-x","events":["uploaded"],"enabled":true}]}',
]):
    put("webhooks_json", "hand%d" % i, doc)

# registry_json: every manifest.
for i, v in enumerate(versions):
    put("registry_json", "%02d" % i, open(os.path.join(v, "registry.json"), "rb").read())


def tar_of(entries):
    """entries: list of (TarInfo, bytes or None)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as t:
        for info, data in entries:
            t.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def file_entry(name, data):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info, data


def special(name, kind, link=""):
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = link
    return info, None


tars = []
for v in versions[:6]:
    entries = [special("./", tarfile.DIRTYPE)]
    for f in sorted(glob.glob(os.path.join(v, "**", "*"), recursive=True)):
        rel = "./" + os.path.relpath(f, v)
        if os.path.isdir(f):
            entries.append(special(rel + "/", tarfile.DIRTYPE))
        else:
            entries.append(file_entry(rel, open(f, "rb").read()))
    tars.append(tar_of(entries))
manifest = b'{"name":"x","namespace":"@a","type":"registry:build","version":"1.0.0","files":[{"path":"a.txt"}]}'
tars += [
    tar_of([file_entry("registry.json", manifest), special("a.txt", tarfile.SYMTYPE, "../../etc/passwd")]),
    tar_of([file_entry("registry.json", manifest), special("a.txt", tarfile.LNKTYPE, "registry.json")]),
    tar_of([file_entry("registry.json", manifest), file_entry("../a.txt", b"x")]),
    tar_of([file_entry("registry.json", manifest), file_entry("d/" + "n" * 300, b"x")]),
    tar_of([file_entry("registry.json", manifest), file_entry("a.txt", b"1"), file_entry("a.txt/b", b"2")]),
    tar_of([file_entry("registry.json", manifest), special("fifo", tarfile.FIFOTYPE)]),
]
pax = io.BytesIO()
with tarfile.open(fileobj=pax, mode="w", format=tarfile.PAX_FORMAT) as t:
    info, data = file_entry("p/" + "\u00e9" * 80 + ".txt", b"pax")
    t.addfile(info, io.BytesIO(data))
tars.append(pax.getvalue())
for i, t in enumerate(tars):
    put("archive_tar", "%02d" % i, t)
    put("archive_gz", "%02d" % i, gzip.compress(t, compresslevel=6, mtime=0))

# multipart: a chunk-size byte, the boundary, a newline, the body.
for i, t in enumerate(tars[:3] + tars[6:8]):
    pkg = gzip.compress(t, mtime=0)
    sha = hashlib.sha256(pkg).hexdigest()
    b = "XyZ%d" % i
    body = (
        ("--%s\r\nContent-Disposition: form-data; name=\"checksum\"\r\n\r\n%s\r\n" % (b, sha)).encode()
        + ("--%s\r\nContent-Disposition: form-data; name=\"file\"; filename=\"p.tar.gz\"\r\n"
           "Content-Type: application/gzip\r\n\r\n" % b).encode()
        + pkg + ("\r\n--%s--\r\n" % b).encode())
    put("multipart", "%02d" % i, bytes([i * 37 % 256]) + b.encode() + b"\n" + body)

# headers: Accept-Encoding, If-None-Match, an ETag, Authorization, X-Registry-Token,
# X-Forwarded-For (values of repeated headers separated by \x01).
for i, h in enumerate([
    'gzip, deflate, br;q=0.9, zstd;q=1.0\nW/"abc-br", "def"\n"abc"\nBearer  tok\nx\n203.0.113.9, 10.0.0.1',
    '*;q=0.5, br;q=0\n*\n"0123"\nbearer\t t\n\n::1,\x012001:db8::1 , 10.0.0.2',
    'identity\n"x-gzip"\n"x"\nBasic abc\n  tok  \nnot-an-ip',
]):
    put("headers", "%02d" % i, h)
print("seeded", corpus)
