# syntax=docker/dockerfile:1
# Stellarium CSI image: the CSI driver `stellarium-csi`, its fd holder
# `stellarium-fd-holder` (keeps the FUSE connection across driver restarts) and the CLI
# `stellarium`.
#
#   docker build -t ghcr.io/stellarium-csi/stellarium-csi:0.1.0 .
#
# Two stages on Debian 12 (bookworm):
#   build    installs the -dev packages listed in scripts/deps/*.txt (the same lists
#            CI installs), builds the two binaries, and stages them with every shared
#            library they load into /out (scripts/stage-runtime.sh);
#   runtime  debian:bookworm-slim with the tools the driver runs (mkfs.ext4, resize2fs,
#            losetup, mount, fusermount3) and /out copied to /opt/stellarium.
# tests/deploy/test_runtime_files.py runs the binaries from a directory that the same
# script stages, so the runtime file set is tested without a Docker engine.
#
# Health: no HEALTHCHECK. Kubernetes ignores it; the node DaemonSet runs the
# livenessprobe sidecar, which calls the driver's CSI Probe RPC on /healthz.
# User: the image runs as the unprivileged user 65532 by default (enough for the
# `stellarium` CLI on a store it owns). The node DaemonSet's driver container
# overrides this with runAsUser: 0 and privileged: true, which mounts, loop devices
# and FUSE need.

ARG DEBIAN_IMAGE=debian:bookworm
ARG RUNTIME_IMAGE=debian:bookworm-slim

FROM ${DEBIAN_IMAGE} AS build
ENV DEBIAN_FRONTEND=noninteractive
# Dependency layer first: it only changes when a package list changes.
COPY scripts/install-deps.sh /src/scripts/install-deps.sh
COPY scripts/deps/ /src/scripts/deps/
RUN /src/scripts/install-deps.sh && rm -rf /var/lib/apt/lists/*
COPY . /src
WORKDIR /src
RUN cmake -S /src -B /build -DCMAKE_BUILD_TYPE=RelWithDebInfo \
      -DSTELLARIUM_BUILD_TESTS=OFF -DSTELLARIUM_BUILD_BENCH=OFF \
 && cmake --build /build --parallel "$(nproc)" --target stellarium stellarium-csi stellarium-fd-holder \
 && /src/scripts/stage-runtime.sh /build /out stellarium stellarium-csi stellarium-fd-holder

FROM ${RUNTIME_IMAGE} AS runtime
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="stellarium-csi" \
      org.opencontainers.image.description="Stellarium CSI driver: node-local, deduplicated, instantly clonable volumes" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.source="https://github.com/stellarium-csi/stellarium-csi" \
      org.opencontainers.image.documentation="docs/install.md"
# e2fsprogs: mkfs.ext4 -d, resize2fs, e2fsck; util-linux: losetup, blkid;
# mount: mount, umount; fuse3: fusermount3 and /etc/fuse.conf.
RUN apt-get update -q \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
      e2fsprogs util-linux mount fuse3 \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /out/ /opt/stellarium/
RUN ln -s /opt/stellarium/bin/stellarium /usr/local/bin/stellarium \
 && ln -s /opt/stellarium/bin/stellarium-csi /usr/local/bin/stellarium-csi \
 && ln -s /opt/stellarium/bin/stellarium-fd-holder /usr/local/bin/stellarium-fd-holder \
 && /usr/local/bin/stellarium-fd-holder --help \
 && /usr/local/bin/stellarium --version \
 && /usr/local/bin/stellarium-csi --version
USER 65532:65532
HEALTHCHECK NONE
ENTRYPOINT ["/usr/local/bin/stellarium-csi"]
