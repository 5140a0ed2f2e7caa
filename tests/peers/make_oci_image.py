#!/usr/bin/env python3
"""Writes a tiny, byte-for-byte reproducible OCI image layout (one tar layer, a config, a manifest
and an index) to DIR, tagged TAG, for pushing to the test registries with
`skopeo copy oci:DIR:TAG docker://...`.

Usage: make_oci_image.py DIR TAG [ENTRYPOINT [ARCHIVE]]

With ENTRYPOINT (a static executable, e.g. tests/cluster/cmd/pk-sleep built with CGO_ENABLED=0)
the layer also holds it as /pk-sleep (mode 0755) and the config runs it, so the image can run as a
container on the test node. With ARCHIVE the layout is also written as one reproducible tar, the
OCI archive that `ctr images import` reads. Same inputs, same bytes, same digest.
"""

import hashlib
import io
import json
import os
import sys
import tarfile

MEDIA_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_CONFIG = "application/vnd.oci.image.config.v1+json"
MEDIA_LAYER = "application/vnd.oci.image.layer.v1.tar"


ENTRYPOINT_PATH = "pk-sleep"


def add_file(tar: tarfile.TarFile, name: str, content: bytes, mode: int):
    info = tarfile.TarInfo(name)
    info.size = len(content)
    info.mode = mode
    info.mtime = 0
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    tar.addfile(info, io.BytesIO(content))


def layer_tar(entrypoint) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        add_file(tar, "pullkeeper-test.txt", b"pullkeeper test image: if you can read this, the pull worked.\n", 0o644)
        if entrypoint is not None:
            add_file(tar, ENTRYPOINT_PATH, entrypoint, 0o755)
    return buf.getvalue()


def write_archive(layout: str, archive: str):
    """The layout directory as one tar with sorted members and zeroed metadata."""
    members = []
    for base, dirs, files in os.walk(layout):
        dirs.sort()
        for name in sorted(files):
            full = os.path.join(base, name)
            members.append((os.path.relpath(full, layout), full))
    with tarfile.open(archive, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for rel, full in sorted(members):
            with open(full, "rb") as f:
                add_file(tar, rel, f.read(), 0o644)


def main():
    if not 3 <= len(sys.argv) <= 5:
        raise SystemExit("usage: make_oci_image.py DIR TAG [ENTRYPOINT [ARCHIVE]]")
    out, tag = sys.argv[1], sys.argv[2]
    entrypoint = None
    if len(sys.argv) >= 4:
        with open(sys.argv[3], "rb") as f:
            entrypoint = f.read()
    blobs = os.path.join(out, "blobs", "sha256")
    os.makedirs(blobs, exist_ok=True)

    def put(data: bytes) -> dict:
        digest = hashlib.sha256(data).hexdigest()
        with open(os.path.join(blobs, digest), "wb") as f:
            f.write(data)
        return {"digest": "sha256:" + digest, "size": len(data)}

    def canonical(obj) -> bytes:
        return json.dumps(obj, separators=(",", ":"), sort_keys=True).encode()

    layer = put(layer_tar(entrypoint))
    config = put(
        canonical(
            {
                "architecture": "amd64",
                "os": "linux",
                "config": {"Entrypoint": ["/" + ENTRYPOINT_PATH]} if entrypoint is not None else {},
                "rootfs": {"type": "layers", "diff_ids": [layer["digest"]]},
            }
        )
    )
    manifest = put(
        canonical(
            {
                "schemaVersion": 2,
                "mediaType": MEDIA_MANIFEST,
                "config": {"mediaType": MEDIA_CONFIG, **config},
                "layers": [{"mediaType": MEDIA_LAYER, **layer}],
            }
        )
    )
    index = {
        "schemaVersion": 2,
        "manifests": [
            {"mediaType": MEDIA_MANIFEST, **manifest, "annotations": {"org.opencontainers.image.ref.name": tag}}
        ],
    }
    with open(os.path.join(out, "index.json"), "wb") as f:
        f.write(canonical(index))
    with open(os.path.join(out, "oci-layout"), "wb") as f:
        f.write(canonical({"imageLayoutVersion": "1.0.0"}))
    if len(sys.argv) == 5:
        write_archive(out, sys.argv[4])
    print(manifest["digest"])


if __name__ == "__main__":
    main()
