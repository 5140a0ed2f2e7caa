#!/usr/bin/env python3
"""Builds pullkeeper's container image without a container engine: an OCI image layout of the
same shape as the Dockerfile's result — the static binary at /pullkeeper, CA certificates, an
/etc/passwd with the nonroot user (UID 65532) as distroless/static has them, no shell — with the
Dockerfile's user, entrypoint, command, exposed port and labels. Byte-for-byte reproducible: the
same binary and CA bundle give the same digest.

Usage:
  build-oci.py [--label KEY=VALUE]... BINARY OUT_DIR TAG [CA_BUNDLE]
                                                writes the layout, prints the manifest digest;
                                                --label adds a label beyond the Dockerfile's (a
                                                release's revision; the tests' second image)
  build-oci.py --check DOCKERFILE OUT_DIR       compares the layout's config with what the
                                                Dockerfile's final stage declares; exit 1 on a
                                                difference
"""

import hashlib
import io
import json
import os
import re
import sys
import tarfile

MEDIA_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_CONFIG = "application/vnd.oci.image.config.v1+json"
MEDIA_LAYER = "application/vnd.oci.image.layer.v1.tar"

# What the image declares (kept equal to the Dockerfile by --check) and what distroless/static
# sets in its own config (PATH, SSL_CERT_FILE), which the Dockerfile inherits.
CONFIG = {
    "User": "65532:65532",
    "Entrypoint": ["/pullkeeper"],
    "Cmd": ["run", "--config", "/etc/pullkeeper"],
    "ExposedPorts": {"9090/tcp": {}},
    "Env": [
        "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt",
    ],
    "Labels": {},
    "WorkingDir": "/",
}
PASSWD = b"root:x:0:0:root:/root:/sbin/nologin\nnobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n"
GROUP = b"root:x:0:\nnobody:x:65534:\nnonroot:x:65532:\n"


def entry(tar, name, content=None, mode=0o644, uid=0, directory=False):
    info = tarfile.TarInfo(name)
    info.mtime = 0
    info.uid = info.gid = uid
    info.uname = info.gname = ""
    info.mode = mode
    if directory:
        info.type = tarfile.DIRTYPE
        tar.addfile(info)
    else:
        info.size = len(content)
        tar.addfile(info, io.BytesIO(content))


def layer(binary: bytes, cas: bytes) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for d in ["etc", "etc/ssl", "etc/ssl/certs", "home"]:
            entry(tar, d, mode=0o755, directory=True)
        entry(tar, "home/nonroot", mode=0o700, uid=65532, directory=True)
        entry(tar, "tmp", mode=0o1777, directory=True)
        entry(tar, "etc/passwd", PASSWD)
        entry(tar, "etc/group", GROUP)
        entry(tar, "etc/ssl/certs/ca-certificates.crt", cas)
        entry(tar, "pullkeeper", binary, mode=0o755)
    return buf.getvalue()


def canonical(obj) -> bytes:
    return json.dumps(obj, separators=(",", ":"), sort_keys=True).encode()


def write_layout(out, layer_tar: bytes, config: dict, tag) -> str:
    """Writes an OCI image layout of one uncompressed layer and the image config `config` (the
    `config` member of the image configuration) to OUT, tagged TAG; returns the manifest digest.
    Canonical JSON throughout, so the same inputs give the same bytes. tests/peers/make_oci_image.py
    writes the test images with it too."""
    blobs = os.path.join(out, "blobs", "sha256")
    os.makedirs(blobs, exist_ok=True)

    def put(data: bytes) -> dict:
        digest = hashlib.sha256(data).hexdigest()
        with open(os.path.join(blobs, digest), "wb") as f:
            f.write(data)
        return {"digest": "sha256:" + digest, "size": len(data)}

    lay = put(layer_tar)
    image_config = put(canonical({
        "architecture": "amd64",
        "os": "linux",
        "config": config,
        "rootfs": {"type": "layers", "diff_ids": [lay["digest"]]},
    }))
    manifest = put(canonical({
        "schemaVersion": 2,
        "mediaType": MEDIA_MANIFEST,
        "config": {"mediaType": MEDIA_CONFIG, **image_config},
        "layers": [{"mediaType": MEDIA_LAYER, **lay}],
    }))
    with open(os.path.join(out, "index.json"), "wb") as f:
        f.write(canonical({"schemaVersion": 2, "manifests": [
            {"mediaType": MEDIA_MANIFEST, **manifest, "annotations": {"org.opencontainers.image.ref.name": tag}}]}))
    with open(os.path.join(out, "oci-layout"), "wb") as f:
        f.write(canonical({"imageLayoutVersion": "1.0.0"}))
    return manifest["digest"]


def build(binary_path, out, tag, ca_path, labels):
    with open(binary_path, "rb") as f:
        binary = f.read()
    with open(ca_path, "rb") as f:
        cas = f.read()
    config = {**CONFIG, "Labels": {**CONFIG["Labels"], **labels}}
    print(write_layout(out, layer(binary, cas), config, tag))


def dockerfile_final_stage(path):
    """USER, ENTRYPOINT, CMD, EXPOSE and LABEL of the Dockerfile's last stage."""
    stages, current = [], None
    for raw in open(path).read().replace("\\\n", " ").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        word, _, rest = line.partition(" ")
        word = word.upper()
        if word == "FROM":
            current = {"Labels": {}, "ExposedPorts": {}}
            stages.append(current)
        elif current is None:
            continue
        elif word == "USER":
            current["User"] = rest.strip()
        elif word in ("ENTRYPOINT", "CMD"):
            current["Entrypoint" if word == "ENTRYPOINT" else "Cmd"] = json.loads(rest)
        elif word == "EXPOSE":
            for port in rest.split():
                current["ExposedPorts"][port if "/" in port else port + "/tcp"] = {}
        elif word == "LABEL":
            for k, v in re.findall(r'(\S+?)=("(?:[^"\\]|\\.)*"|\S+)', rest):
                current["Labels"][k] = json.loads(v) if v.startswith('"') else v
        elif word == "ENV":
            current.setdefault("Env", []).append(rest.strip().replace(" ", "=", 1) if "=" not in rest else rest.strip())
    return stages[-1]


def check(dockerfile, out):
    index = json.load(open(os.path.join(out, "index.json")))
    blob = lambda d: open(os.path.join(out, "blobs", "sha256", d.split(":", 1)[1]), "rb").read()
    manifest = json.loads(blob(index["manifests"][0]["digest"]))
    config = json.loads(blob(manifest["config"]["digest"]))["config"]
    declared = dockerfile_final_stage(dockerfile)
    problems = []
    for key in ("User", "Entrypoint", "Cmd", "ExposedPorts", "Labels"):
        if config.get(key) != declared.get(key, {} if key in ("Labels", "ExposedPorts") else None):
            problems.append(f"{key}: the image has {config.get(key)!r}, the Dockerfile declares {declared.get(key)!r}")
    for env in declared.get("Env", []):
        if env not in config.get("Env", []):
            problems.append(f"Env: the Dockerfile sets {env!r}, the image does not")
    for p in problems:
        print(f"build-oci.py: {p}", file=sys.stderr)
    return 1 if problems else 0


def main():
    if len(sys.argv) == 4 and sys.argv[1] == "--check":
        raise SystemExit(check(sys.argv[2], sys.argv[3]))
    args, labels = sys.argv[1:], {}
    while len(args) >= 2 and args[0] == "--label" and "=" in args[1]:
        key, _, value = args[1].partition("=")
        labels[key] = value
        args = args[2:]
    if len(args) not in (3, 4):
        raise SystemExit(__doc__)
    ca = args[3] if len(args) == 4 else "/etc/ssl/certs/ca-certificates.crt"
    build(args[0], args[1], args[2], ca, labels)


if __name__ == "__main__":
    main()
