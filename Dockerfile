# syntax=docker/dockerfile:1
# Stellarium CSI image: the CSI driver `stellarium-csi`, its fd holder
# `stellarium-fd-holder` (keeps the FUSE connection across driver restarts), the CLI
# `stellarium` and the debugging client `stellarium-csi-client`, in /usr/local/bin.
#
#   docker build -t ghcr.io/stellarium-csi/stellarium-csi:0.1.0 .
#
# Two stages on Debian 12 (bookworm):
#   build    installs the build dependencies only (scripts/deps/build.txt: compilers and
#            -dev packages, no test tools), builds the four binaries and stages them
#            stripped into /out/usr/local/bin (scripts/stage-runtime.sh);
#   runtime  debian:bookworm-slim plus the Debian packages of scripts/deps/runtime.txt:
#            the shared libraries the binaries link, ca-certificates (HTTPS image
#            sources), and the programs the driver runs (mount, umount, blkid,
#            mkfs.ext4, resize2fs, fusermount3); then /out copied to /.
# Every file the binaries load belongs to a Debian package, so dpkg and CVE scanners
# see it and a rebuild on a patched base image or `apt-get upgrade` fixes it.
# tests/deploy/test_runtime_image.py runs the same runtime without a Docker engine: it
# debootstraps Debian 12, installs runtime.txt with the same script, stages the binaries
# with the same script, and imports, snapshots, clones and stages volumes there.
#
# Health: no HEALTHCHECK. Kubernetes ignores it; the node DaemonSet runs the
# livenessprobe sidecar, which calls the driver's CSI Probe RPC on /healthz.
# User: the image runs as the unprivileged user 65532 by default (enough for the
# `stellarium` CLI on a store it owns). The node DaemonSet's driver container
# overrides this with runAsUser: 0 and privileged: true, which mounts, loop devices
# and FUSE need; its root file system is read-only (the driver writes only to its
# host directories and /tmp).

ARG DEBIAN_IMAGE=debian:bookworm
ARG RUNTIME_IMAGE=debian:bookworm-slim

FROM ${DEBIAN_IMAGE} AS build
ENV DEBIAN_FRONTEND=noninteractive
# Dependency layer first: it only changes when the build package list changes.
COPY scripts/install-deps.sh /src/scripts/install-deps.sh
COPY scripts/deps/build.txt /src/scripts/deps/build.txt
RUN /src/scripts/install-deps.sh --only build && rm -rf /var/lib/apt/lists/*
COPY . /src
WORKDIR /src
RUN cmake -S /src -B /build -DCMAKE_BUILD_TYPE=RelWithDebInfo \
      -DSTELLARIUM_BUILD_TESTS=OFF -DSTELLARIUM_BUILD_BENCH=OFF \
 && cmake --build /build --parallel "$(nproc)" \
      --target stellarium stellarium-csi stellarium-fd-holder stellarium-csi-client \
 && /src/scripts/stage-runtime.sh /build /out \
      stellarium stellarium-csi stellarium-fd-holder stellarium-csi-client

FROM ${RUNTIME_IMAGE} AS runtime
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="stellarium-csi" \
      org.opencontainers.image.description="Stellarium CSI driver: node-local, deduplicated, instantly clonable volumes" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.source="https://github.com/stellarium-csi/stellarium-csi" \
      org.opencontainers.image.documentation="docs/install.md"
# The package list is bind-mounted, not copied: no script or list stays in a layer.
RUN --mount=type=bind,source=scripts,target=/tmp/stellarium-scripts,readonly \
    /tmp/stellarium-scripts/install-deps.sh --only runtime \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /out/ /
RUN stellarium --version \
 && stellarium-csi --version \
 && stellarium-fd-holder --help >/dev/null \
 && stellarium-csi-client --help >/dev/null
USER 65532:65532
HEALTHCHECK NONE
ENTRYPOINT ["/usr/local/bin/stellarium-csi"]
