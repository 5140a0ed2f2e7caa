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

import importlib.util
import io
import os
import sys
import tarfile

# The layout writer of pullkeeper's own image (deploy/image/build-oci.py; its name is no module name).
_spec = importlib.util.spec_from_file_location(
    "build_oci", os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "deploy", "image", "build-oci.py"))
BUILD_OCI = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(BUILD_OCI)


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
    config = {"Entrypoint": ["/" + ENTRYPOINT_PATH]} if entrypoint is not None else {}
    digest = BUILD_OCI.write_layout(out, layer_tar(entrypoint), config, tag)
    if len(sys.argv) == 5:
        write_archive(out, sys.argv[4])
    print(digest)


if __name__ == "__main__":
    main()
