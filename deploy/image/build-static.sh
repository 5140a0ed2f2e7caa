#!/usr/bin/env bash
# Builds the fully static pullkeeper binary that the container image ships.
#
# The Dockerfile runs this script, and tests/checks/static-build.sh runs it too and then proves the
# result is static, so CI checks the very build the image makes even though no container engine is
# available there. A static-pie glibc binary (crt-static on the -gnu target) needs no libc in the
# image, so it runs on distroless/static or scratch; it also needs no extra rustup target, which a
# musl build would.
#
# usage: build-static.sh OUT_FILE
set -euo pipefail

out="${1:?usage: build-static.sh OUT_FILE}"
arch="$(uname -m)"
case "$arch" in
  x86_64 | aarch64) target="${arch}-unknown-linux-gnu" ;;
  *) echo "build-static.sh: unsupported architecture $arch" >&2; exit 1 ;;
esac

# RUSTFLAGS given together with --target apply to the shipped binary only, not to build scripts
# and proc-macros, which stay dynamically linked host programs.
# Stripping keeps symbol tables out of the image; panics still print their message.
RUSTFLAGS="-C target-feature=+crt-static" \
CARGO_PROFILE_RELEASE_STRIP=symbols \
  cargo build --locked --release --target "$target" --bin pullkeeper

install -m 0755 "${CARGO_TARGET_DIR:-target}/$target/release/pullkeeper" "$out"
