# syntax=docker/dockerfile:1
#
# pullkeeper's image: one static binary on distroless/static (CA certificates, /etc/passwd with the
# nonroot user, no shell, no libc). Runs as UID 65532 with a read-only root filesystem; it writes
# nothing to disk.
#
# The binary is built by deploy/image/build-static.sh, the very script tests/checks/static-build.sh
# runs and checks (static-pie, no dynamic loader, starts in an empty root), so CI proves this
# build without a container engine.
# Static glibc resolves names without NSS modules or nsswitch.conf (/etc/hosts, then DNS from
# /etc/resolv.conf, both of which the kubelet mounts).

ARG RUST_VERSION=1.95

FROM docker.io/library/rust:${RUST_VERSION}-bookworm AS build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    deploy/image/build-static.sh /pullkeeper

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /pullkeeper /pullkeeper
USER 65532:65532
EXPOSE 9090
ENTRYPOINT ["/pullkeeper"]
CMD ["run", "--config", "/etc/pullkeeper"]
