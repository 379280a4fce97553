"""schemathesis hooks for tools/schemathesis/run (loaded with SCHEMATHESIS_HOOKS=hooks).

schemathesis cannot build a gzip'd tar whose SHA-256 matches the `checksum` field, so without
help every upload it generates ends in the package checks (400, 415) and the links of the
stateful phase are never followed. Here every other multipart `POST /registries` case gets a
real package instead of its generated body: a fresh version of `@demo/schemathesis` with its
checksum (SPEC §5.1). Its manifest has an explicit `path` equal to its name, so it is stored at
`@demo/schemathesis/<version>`, where the `GetUploadedVersionUntyped` link reads it. The other
cases keep their generated bodies, so the package checks are still fuzzed. The case's token is
left alone: with the admin token (pass 1) the upload is a 201, without one (pass 2) a 401.
"""

import hashlib
import io
import itertools
import json
import tarfile
import threading

import schemathesis

NAMESPACE = "@demo"
NAME = "schemathesis"

_lock = threading.Lock()
_uploads = itertools.count()
_versions = itertools.count(1)


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o644
    tar.addfile(info, io.BytesIO(data))


def package(version: str) -> bytes:
    """A valid .tar.gz: registry.json at the root and the one template file it declares."""
    manifest = {
        "name": NAME,
        "namespace": NAMESPACE,
        "path": NAME,
        "version": version,
        "type": "registry:feature",
        "priority": 0,
        "description": "published by the schemathesis run",
        "files": [
            {"target": "SCHEMATHESIS.md", "type": "registry:docs", "path": "templates/SCHEMATHESIS.md"}
        ],
    }
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w:gz", format=tarfile.PAX_FORMAT) as tar:
        _add(tar, "registry.json", json.dumps(manifest, indent=2).encode())
        _add(tar, "templates/SCHEMATHESIS.md", f"# schemathesis {version}\n".encode())
    return raw.getvalue()


def _every_other(counter: itertools.count) -> bool:
    with _lock:
        return next(counter) % 2 == 0


def _valid_upload(case) -> None:
    # Only multipart cases (the others are there for the 415).
    if not (case.media_type or "").startswith("multipart/form-data"):
        return
    if not _every_other(_uploads):
        return
    with _lock:
        version = f"1.0.{next(_versions)}"
    body = package(version)
    case.body = {"package": body, "checksum": hashlib.sha256(body).hexdigest()}
    # A generated Content-Type header would replace the multipart one (a 415).
    if case.headers:
        for name in [n for n in case.headers if n.lower() == "content-type"]:
            del case.headers[name]


@schemathesis.hook
def before_call(ctx, case, **kwargs):
    if case.operation.method.upper() == "POST" and case.operation.path == "/registries":
        _valid_upload(case)
