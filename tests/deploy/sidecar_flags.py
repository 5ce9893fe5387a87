"""Command-line flags of the pinned CSI sidecar releases, with where each list comes from.

The manifests and the chart may only pass these flags. Each list was read from the
sidecar's flag definitions (flag.String/Bool/... calls in its main package, or the
csi-lib-utils helpers it registers) and its README, at the release the image tag names.
When a tag changes, re-read the sources and update the list and `tag` together:
test_manifests.py fails when an image tag differs from the one a list was checked for.

Flags every sidecar gets from its logging library are listed per sidecar too:
klog.InitFlags adds -v/-vmodule/...; logsapi.AddGoFlags (k8s.io/component-base/logs)
adds -v/-vmodule/--logging-format/...
"""

# k8s.io/klog/v2 klog.InitFlags(nil)
KLOG_FLAGS = {
    "v", "vmodule", "logtostderr", "alsologtostderr", "stderrthreshold", "log_dir",
    "log_file", "log_file_max_size", "add_dir_header", "skip_headers",
    "skip_log_headers", "one_output",
}
# k8s.io/component-base/logs/api/v1 AddGoFlags
LOGSAPI_FLAGS = {"v", "vmodule", "logging-format", "log-flush-frequency",
                 "log-json-split-stream", "log-json-info-buffer-size",
                 "log-text-split-stream", "log-text-info-buffer-size"}

SIDECARS = {
    "csi-provisioner": {
        "image": "registry.k8s.io/sig-storage/csi-provisioner",
        "tag": "v6.4.0",
        "source": (
            "kubernetes-csi/external-provisioner cmd/csi-provisioner/csi-provisioner.go "
            "(flag definitions), README.md 'Command line options' incl. 'Distributed "
            "provisioning'; CHANGELOG/CHANGELOG-6.0.md .. 6.4.md (6.4.0 is the current "
            "release; no flag removed, --leader-election-namespace kept, feature gate "
            "HonorPVReclaimPolicy removed in 6.2); pkg/features/features.go: "
            "Topology {Default: false, PreRelease: GA}"),
        "flags": {
            "master", "kubeconfig", "csi-address", "volume-name-prefix",
            "volume-name-uuid-length", "version", "retry-interval-start",
            "retry-interval-max", "worker-threads", "cloning-protection-threads",
            "capacity-threads", "timeout", "leader-election", "leader-election-namespace",
            "leader-election-lease-duration", "leader-election-renew-deadline",
            "leader-election-retry-period", "strict-topology", "immediate-topology",
            "extra-create-metadata", "metrics-address", "http-endpoint", "metrics-path",
            "enable-pprof", "default-fstype", "kube-api-qps", "kube-api-burst",
            "kube-api-capacity-qps", "kube-api-capacity-burst", "enable-capacity",
            "capacity-for-immediate-binding", "capacity-poll-interval",
            "capacity-ownerref-level", "node-deployment",
            "node-deployment-immediate-binding", "node-deployment-base-delay",
            "node-deployment-max-delay", "controller-publish-readonly",
            "prevent-volume-mode-conversion", "feature-gates",
        } | KLOG_FLAGS,
        "feature_gates": {"Topology", "CrossNamespaceVolumeDataSource",
                          "VolumeAttributesClass"},
    },
    "csi-snapshotter": {
        "image": "registry.k8s.io/sig-storage/csi-snapshotter",
        "tag": "v8.7.0",
        "source": (
            "kubernetes-csi/external-snapshotter cmd/csi-snapshotter/main.go of the v8 "
            "module (github.com/kubernetes-csi/external-snapshotter/v8); CHANGELOG-8.7.md. "
            "--node-deployment requires NODE_NAME and forbids --leader-election."),
        "flags": {
            "kubeconfig", "csi-address", "resync-period", "snapshot-name-prefix",
            "snapshot-name-uuid-length", "version", "worker-threads", "timeout",
            "extra-create-metadata", "leader-election", "leader-election-namespace",
            "leader-election-lease-duration", "leader-election-renew-deadline",
            "leader-election-retry-period", "kube-api-qps", "kube-api-burst",
            "metrics-address", "http-endpoint", "metrics-path", "retry-interval-start",
            "retry-interval-max", "node-deployment", "groupsnapshot-name-prefix",
            "groupsnapshot-name-uuid-length", "feature-gates",
        } | LOGSAPI_FLAGS,
        # The gate's name is CSIVolumeGroupSnapshot (pkg/features/features.go);
        # v8.7 turns it on by default.
        "feature_gates": {"CSIVolumeGroupSnapshot", "ReleaseLeaderElectionOnExit"},
    },
    "csi-resizer": {
        "image": "registry.k8s.io/sig-storage/csi-resizer",
        "tag": "v2.3.0",
        "source": (
            "kubernetes-csi/external-resizer cmd/csi-resizer/main.go (v2: master, "
            "resync-period, workers, extra-modify-metadata, timeout, retry-interval-*, "
            "handle-volume-inuse-error, feature-gates) + kubernetes-csi/csi-lib-utils "
            "standardflags/flags.go RegisterCommonFlags (version, kubeconfig, "
            "csi-address, leader-election*, kube-api-*, http-endpoint, metrics-*); "
            "CHANGELOG-2.3.md (--resize-timeout, --modify-timeout)"),
        "flags": {
            "master", "resync-period", "workers", "extra-modify-metadata", "timeout",
            "resize-timeout", "modify-timeout", "retry-interval-start",
            "retry-interval-max", "handle-volume-inuse-error", "feature-gates",
            "version", "kubeconfig", "csi-address", "leader-election",
            "leader-election-namespace", "leader-election-lease-duration",
            "leader-election-renew-deadline", "leader-election-retry-period",
            "leader-election-labels", "kube-api-qps", "kube-api-burst",
            "http-endpoint", "metrics-address", "metrics-path", "automaxprocs",
        } | LOGSAPI_FLAGS,
        "feature_gates": {"VolumeAttributesClass", "ReleaseLeaderElectionOnExit"},
    },
    "node-driver-registrar": {
        "image": "registry.k8s.io/sig-storage/csi-node-driver-registrar",
        "tag": "v2.17.0",
        "source": (
            "kubernetes-csi/node-driver-registrar cmd/csi-node-driver-registrar/main.go "
            "(--mode deprecated, --enable-pprof, --http-endpoint serves /healthz); "
            "CHANGELOG-2.17.md"),
        "flags": {
            "connection-timeout", "timeout", "csi-address", "plugin-registration-path",
            "kubelet-registration-path", "health-port", "http-endpoint", "version",
            "mode", "enable-pprof",
        } | LOGSAPI_FLAGS,
        "feature_gates": set(),
    },
    "liveness-probe": {
        "image": "registry.k8s.io/sig-storage/livenessprobe",
        "tag": "v2.20.0",
        "source": (
            "kubernetes-csi/livenessprobe cmd/livenessprobe/main.go (probe-timeout, "
            "csi-address, health-port, metrics-address, http-endpoint serving /healthz, "
            "metrics-path); CHANGELOG-2.20.md"),
        "flags": {
            "probe-timeout", "csi-address", "health-port", "metrics-address",
            "http-endpoint", "metrics-path",
        } | LOGSAPI_FLAGS,
        "feature_gates": set(),
    },
}

# The optional snapshot-controller (charts: snapshotController.create,
# manifests/snapshot-controller/), checked the same way as the sidecars.
SNAPSHOT_CONTROLLER = {
    "image": "registry.k8s.io/sig-storage/snapshot-controller",
    "tag": "v8.7.0",
    "source": (
        "kubernetes-csi/external-snapshotter cmd/snapshot-controller/main.go of the v8 "
        "module (flag definitions; --enable-distributed-snapshotting labels contents with "
        "their node); pkg/features/features.go: CSIVolumeGroupSnapshot, "
        "ReleaseLeaderElectionOnExit; CHANGELOG-8.7.md (VolumeGroupSnapshot gate enabled)"),
    "flags": {
        "kubeconfig", "resync-period", "version", "worker-threads", "leader-election",
        "leader-election-namespace", "leader-election-lease-duration",
        "leader-election-renew-deadline", "leader-election-retry-period", "kube-api-qps",
        "kube-api-burst", "http-endpoint", "metrics-path", "retry-interval-start",
        "retry-interval-max", "enable-distributed-snapshotting",
        "prevent-volume-mode-conversion", "retry-crd-interval-max", "feature-gates",
    } | LOGSAPI_FLAGS,
    "feature_gates": {"CSIVolumeGroupSnapshot", "ReleaseLeaderElectionOnExit"},
}

# The stellarium-csi flags agreed for the driver (docs/configuration.md). When the
# binary is built, test_docs.py also checks them against `stellarium-csi --help`.
STELLARIUM_CSI_FLAGS = {
    "config", "endpoint", "node-id", "store", "state-dir", "driver-name", "kubelet-dir",
    "import-root", "max-volumes-per-node", "log-level", "log-format", "metrics-address",
    "max-image-size", "max-concurrent-imports",
    "controller-expansion", "kata-direct-volume-dir", "block-device", "store-mmap-reads",
    "store-disk-readahead-mib", "exposure-readahead-mib", "gc-interval-seconds", "gc-duty",
    "ceph-conf", "ceph-id", "cache", "cache-mib",
    "version", "help", "dump-config",
}

# Flags that distributed provisioning needs (issue 5), per container.
REQUIRED_ARGS = {
    "csi-provisioner": {"--node-deployment=true", "--feature-gates=Topology=true",
                        "--enable-capacity=true", "--capacity-ownerref-level=0",
                        "--strict-topology=true"},
    "csi-snapshotter": {"--node-deployment=true"},
}
