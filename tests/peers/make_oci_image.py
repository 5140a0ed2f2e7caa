#!/usr/bin/env python3
"""Writes a tiny, byte-for-byte reproducible OCI image layout (one tar layer, a config, a manifest
and an index) to DIR, tagged TAG, for pushing to the test registries with
`skopeo copy oci:DIR:TAG docker://...`. Usage: make_oci_image.py DIR TAG
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


def layer_tar() -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        content = b"pullkeeper test image: if you can read this, the pull worked.\n"
        info = tarfile.TarInfo("pullkeeper-test.txt")
        info.size = len(content)
        info.mode = 0o644
        info.mtime = 0
        info.uname = info.gname = ""
        tar.addfile(info, io.BytesIO(content))
    return buf.getvalue()


def main():
    if len(sys.argv) != 3:
        raise SystemExit("usage: make_oci_image.py DIR TAG")
    out, tag = sys.argv[1], sys.argv[2]
    blobs = os.path.join(out, "blobs", "sha256")
    os.makedirs(blobs, exist_ok=True)

    def put(data: bytes) -> dict:
        digest = hashlib.sha256(data).hexdigest()
        with open(os.path.join(blobs, digest), "wb") as f:
            f.write(data)
        return {"digest": "sha256:" + digest, "size": len(data)}

    def canonical(obj) -> bytes:
        return json.dumps(obj, separators=(",", ":"), sort_keys=True).encode()

    layer = put(layer_tar())
    config = put(
        canonical(
            {
                "architecture": "amd64",
                "os": "linux",
                "config": {},
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
    print(manifest["digest"])


if __name__ == "__main__":
    main()
