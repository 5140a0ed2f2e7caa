#!/usr/bin/env bash
# Proves the image's build without a container engine: runs deploy/image/build-static.sh (the
# script the Dockerfile's build stage runs), then checks that the binary is fully static (no
# program interpreter, no shared-library dependencies) and that it starts as UID 65532 in an empty
# root directory, as it does on distroless/static or scratch, and there checks the kustomize
# base's ConfigMap with `pullkeeper check` (refused: it ships no registry file; accepted with one).
# Prints the binary's size.
#
# The release build is slow when cold; its target dir defaults to a cache outside the clone
# ($HOME/.cache/pullkeeper/static-target, or STATIC_TARGET_DIR) so later runs only rebuild
# pullkeeper itself.
set -euo pipefail
cd "$(dirname "$0")/../.."

fail() { echo "static-build.sh: FAIL: $*" >&2; exit 1; }

# The Dockerfile must build with the same script and ship the result as /pullkeeper.
grep -q '^ *deploy/image/build-static.sh /pullkeeper$' Dockerfile \
  || fail "Dockerfile does not run deploy/image/build-static.sh /pullkeeper"
grep -q '^ENTRYPOINT \["/pullkeeper"\]$' Dockerfile || fail "Dockerfile ENTRYPOINT is not [\"/pullkeeper\"]"
grep -q '^USER 65532:65532$' Dockerfile || fail "Dockerfile does not run as 65532:65532"
grep -q '^FROM gcr.io/distroless/static' Dockerfile || fail "Dockerfile's final stage is not distroless/static"

for tool in file readelf; do
  command -v "$tool" >/dev/null 2>&1 && continue
  echo "static-build.sh: installing $tool"
  apt-get update -qq >/dev/null
  apt-get install -y -qq file binutils >/dev/null || fail "could not install file and binutils"
  break
done

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

export CARGO_TARGET_DIR="${STATIC_TARGET_DIR:-$HOME/.cache/pullkeeper/static-target}"
mkdir -p "$CARGO_TARGET_DIR"
echo "static-build.sh: building (target dir $CARGO_TARGET_DIR)"
start=$SECONDS
deploy/image/build-static.sh "$tmp/pullkeeper" || fail "deploy/image/build-static.sh failed"
echo "static-build.sh: build took $((SECONDS - start)) s"
bin="$tmp/pullkeeper"

desc="$(file -b "$bin")"
echo "static-build.sh: file: $desc"
case "$desc" in
  *"static-pie linked"* | *"statically linked"*) ;;
  *) fail "binary is not statically linked: $desc" ;;
esac
if readelf -lW "$bin" | grep -q 'Requesting program interpreter'; then
  fail "binary requests a program interpreter (dynamic loader)"
fi
if readelf -dW "$bin" | grep -q '(NEEDED)'; then
  fail "binary needs shared libraries: $(readelf -dW "$bin" | grep '(NEEDED)' | tr -s ' ')"
fi
ldd_out="$(ldd "$bin" 2>&1 || true)"
case "$ldd_out" in
  *"not a dynamic executable"* | *"statically linked"*) echo "static-build.sh: ldd: $(echo "$ldd_out" | head -1 | tr -d '\t')" ;;
  *) fail "ldd lists dependencies: $ldd_out" ;;
esac

# Start it in an empty root as the image's user: no libc, no loader, no /etc.
root="$tmp/root"
mkdir -p "$root"
cp "$bin" "$root/pullkeeper"
# The kustomize base's ConfigMap at the image's config path, validated by the static binary
# (`pullkeeper check`, the config code the image's CMD runs). The base ships no registry file on
# purpose, so the binary must refuse it with the empty-config guard's message; with a user's
# registry file added (config/examples/ecr.yaml, as the overlay pattern in deploy/README.md
# merges it) it must accept it.
kubectl kustomize deploy/kustomize/base > "$tmp/base.yaml" || fail "kubectl kustomize deploy/kustomize/base failed"
python3 deploy/check_rendered.py config-dir "$tmp/base.yaml" "$root/etc/pullkeeper" || fail "no ConfigMap in the base"
if [ "$(id -u)" = 0 ]; then
  in_root() { chroot --userspec=65532:65532 "$root" "$@"; }
  how="in an empty root as UID 65532"
else
  in_root() { (cd "$root" && env -i "$root$1" "${@:2}"); }
  how="with an empty environment (not root: no chroot)"
fi
out="$(in_root /pullkeeper --help 2>&1)" || fail "the binary does not start $how: $out"
grep -q 'check' <<<"$out" || fail "unexpected --help output: $out"
conf=/etc/pullkeeper
[ "$(id -u)" = 0 ] || conf="$root/etc/pullkeeper"
if out="$(in_root /pullkeeper check --config "$conf" 2>&1)"; then
  fail "the static binary accepts the base's empty ConfigMap $how (the empty-config guard is off): $out"
fi
grep -q 'no registry file' <<<"$out" || fail "the base's empty ConfigMap is refused for another reason $how: $out"
echo "static-build.sh: starts $how and refuses the base's empty ConfigMap: $(head -1 <<<"$out" | sed 's/^[^:]*: //' | cut -c1-80)…"
cp config/examples/ecr.yaml "$root/etc/pullkeeper/ecr.yaml"
out="$(in_root /pullkeeper check --config "$conf" 2>&1)" \
  || fail "the static binary rejects the base with a registry file $how: $out"
echo "static-build.sh: accepts the base with config/examples/ecr.yaml: $(head -1 <<<"$out" | sed 's/^[^:]*: //')"

size=$(stat -c %s "$bin")
echo "static-build.sh: binary size $size bytes ($(awk -v s="$size" 'BEGIN { printf "%.1f", s / 1048576 }') MiB)"

# The image itself, without a container engine (deploy/image/build-oci.py): the same binary in an
# OCI layout of the Dockerfile's shape, reproducible, its config equal to what the Dockerfile
# declares, and accepted by a real registry.
[[ -s /etc/ssl/certs/ca-certificates.crt ]] || fail "no CA bundle at /etc/ssl/certs/ca-certificates.crt (Debian ca-certificates)"
one=$(python3 deploy/image/build-oci.py "$bin" "$tmp/oci-1" latest) || fail "build-oci.py failed"
two=$(python3 deploy/image/build-oci.py "$bin" "$tmp/oci-2" latest) || fail "build-oci.py failed"
[[ $one == "$two" ]] || fail "the image is not reproducible: $one then $two"
python3 deploy/image/build-oci.py --check Dockerfile "$tmp/oci-1" || fail "the image's config differs from the Dockerfile"
# The comparison can fail: a Dockerfile that declares another user is refused.
sed 's/^USER 65532:65532$/USER 0:0/' Dockerfile >"$tmp/Dockerfile.other"
if python3 deploy/image/build-oci.py --check "$tmp/Dockerfile.other" "$tmp/oci-1" 2>/dev/null; then
  fail "build-oci.py --check accepted a Dockerfile with another USER"
fi
image_size=$(du -sb "$tmp/oci-1/blobs" | cut -f1)
echo "static-build.sh: image $one, reproducible, config as the Dockerfile declares, $image_size bytes of blobs"
if [[ -n ${PK_REGISTRY_HTPASSWD:-} ]]; then
  creds="$PK_REGISTRY_HTPASSWD_USER:$PK_REGISTRY_HTPASSWD_PASSWORD"
  # push LAYOUT REF: copies the layout's image to REF and prints the digest the registry serves.
  push() {
    skopeo copy --quiet --dest-tls-verify=false --dest-creds "$creds" "oci:$1:latest" "docker://$2" \
      || fail "pushing $2 to the test registry failed"
    skopeo inspect --tls-verify=false --creds "$creds" --format '{{.Digest}}' "docker://$2" \
      || fail "the registry does not serve $2"
  }
  ref="$PK_REGISTRY_HTPASSWD/pullkeeper/pullkeeper:ci"
  served=$(push "$tmp/oci-1" "$ref") || exit 1
  echo "static-build.sh: pushed to the test registry as $ref ($served)"
  # A second image for the in-cluster upgrade test: the same binary with one more label, so
  # another digest.
  next="$PK_REGISTRY_HTPASSWD/pullkeeper/pullkeeper:ci-next"
  next_digest=$(python3 deploy/image/build-oci.py --label org.opencontainers.image.revision=ci-next \
    "$bin" "$tmp/oci-next" latest) || fail "build-oci.py --label failed"
  [[ $next_digest != "$one" ]] || fail "a label did not change the image's digest"
  next_served=$(push "$tmp/oci-next" "$next") || exit 1
  [[ $next_served != "$served" ]] || fail "the second image has the first one's digest"
  echo "static-build.sh: pushed $next ($next_served)"
  # What a node pulls: the registry's manifest (skopeo compressed the layer on the push).
  pull_bytes=$(skopeo inspect --raw --tls-verify=false --creds "$creds" "docker://$ref" \
    | python3 -c 'import json, sys; m = json.load(sys.stdin); print(m["config"]["size"] + sum(l["size"] for l in m["layers"]))') \
    || fail "cannot read the pushed manifest"
  echo "static-build.sh: a node pulls $pull_bytes bytes ($(awk -v s="$pull_bytes" 'BEGIN { printf "%.1f", s / 1048576 }') MiB) for the image"
  # tests/in_cluster.rs installs these (tests/run-all.sh sources the file before cargo test).
  if [[ -n ${PK_IMAGE_ENV:-} ]]; then
    {
      echo "export PK_IMAGE=$ref"
      echo "export PK_IMAGE_DIGEST=$served"
      echo "export PK_IMAGE_NEXT=$next"
      echo "export PK_IMAGE_NEXT_DIGEST=$next_served"
      echo "export PK_IMAGE_BYTES=$image_size"
      echo "export PK_IMAGE_PULL_BYTES=$pull_bytes"
    } >"$PK_IMAGE_ENV"
    echo "static-build.sh: wrote $PK_IMAGE_ENV"
  fi
fi
echo "static-build.sh: ok"
