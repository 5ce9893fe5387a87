"""The chart rendered by a real helm and manifests/ built by a real `kubectl kustomize`
(scripts/install-helm.sh installs both), and the checks that hold for either: the
securityContext of every container, no RBAC for group snapshots, the flags distributed
snapshotting needs."""

import copy
import functools
import shutil
import subprocess

import yaml

from common import CHART, MANIFESTS, daemonset_containers

RELEASE = NAMESPACE = "stellarium-csi"
# Labels only Helm adds (release bookkeeping); everything else must match manifests/.
HELM_LABELS = {"helm.sh/chart", "app.kubernetes.io/managed-by", "app.kubernetes.io/instance",
               "app.kubernetes.io/version"}
# Every chart option that adds objects, switched on.
ALL_OPTIONAL = ("--include-crds", "--set", "snapshotController.create=true",
                "--set", "metrics.serviceMonitor.create=true")
OPTIONAL_KUSTOMIZATIONS = ("snapshot-controller", "monitoring")


@functools.lru_cache(maxsize=None)
def tool(name):
    path = shutil.which(name)
    if not path:
        raise AssertionError(f"{name} is not installed: run scripts/install-helm.sh (CI runs it "
                             f"from scripts/install-deps.sh)")
    return path


def helm(*args, check=True):
    r = subprocess.run([tool("helm"), *args], capture_output=True, text=True, timeout=120)
    if check and r.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} failed:\n{r.stderr}")
    return r


@functools.lru_cache(maxsize=None)
def _render(args):
    r = helm("template", RELEASE, str(CHART), "--namespace", NAMESPACE, *args)
    return [d for d in yaml.safe_load_all(r.stdout) if d]


def chart_objects(*args):
    """The objects `helm template` renders with these extra arguments (a deep copy)."""
    return copy.deepcopy(_render(tuple(args)))


@functools.lru_cache(maxsize=None)
def _kustomize(path):
    r = subprocess.run([tool("kubectl"), "kustomize", path], capture_output=True, text=True,
                       timeout=120)
    if r.returncode != 0:
        raise AssertionError(f"kubectl kustomize {path} failed:\n{r.stderr}")
    return [d for d in yaml.safe_load_all(r.stdout) if d]


def kustomize_objects(subdir=""):
    """The objects `kubectl kustomize manifests/<subdir>` builds (a deep copy)."""
    return copy.deepcopy(_kustomize(str(MANIFESTS / subdir)))


def all_manifest_objects():
    objs = kustomize_objects()
    for sub in OPTIONAL_KUSTOMIZATIONS:
        objs += kustomize_objects(sub)
    return objs


def key(obj):
    return (obj["kind"], obj["metadata"].get("namespace", ""), obj["metadata"]["name"])


def normalized(obj):
    """obj without Helm's own labels and without empty lists (`imagePullSecrets: []` is
    the same as none)."""
    def walk(node, parent_key=None):
        if isinstance(node, dict):
            out = {}
            for k, v in node.items():
                if k == "labels" and isinstance(v, dict):
                    v = {lk: lv for lk, lv in v.items() if lk not in HELM_LABELS}
                v = walk(v, k)
                if v == []:
                    continue
                out[k] = v
            return out
        if isinstance(node, list):
            return [walk(v) for v in node]
        return node
    return walk(copy.deepcopy(obj))


def first_difference(a, b, where=""):
    """A readable path to the first place a and b differ, or None."""
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b), key=str):
            if k not in a:
                return f"{where}.{k}: only in manifests/ ({b[k]!r})"
            if k not in b:
                return f"{where}.{k}: only in the chart ({a[k]!r})"
            d = first_difference(a[k], b[k], f"{where}.{k}")
            if d:
                return d
        return None
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return f"{where}: chart has {len(a)} items, manifests/ {len(b)}: {a!r} vs {b!r}"
        for i, (x, y) in enumerate(zip(a, b)):
            d = first_difference(x, y, f"{where}[{i}]")
            if d:
                return d
        return None
    return None if a == b else f"{where}: chart {a!r}, manifests/ {b!r}"


def workloads(objs):
    return [o for o in objs if o["kind"] in ("DaemonSet", "Deployment")]


def containers_of(workload):
    spec = workload["spec"]["template"]["spec"]
    return spec.get("initContainers", []) + spec["containers"]


# The node plugin container that must be privileged (mounts, loop devices, /dev/fuse,
# Bidirectional propagation); every other container runs without privileges.
PRIVILEGED = {("DaemonSet", "stellarium-csi")}


def check_security(test, objs, source):
    """Every container: read-only root, and either the one privileged driver container
    or no privilege escalation with every capability dropped; a user that is not root
    unless the container is in the node pod (whose sockets are root's 0600)."""
    found = 0
    for w in workloads(objs):
        pod = w["spec"]["template"]["spec"]
        test.assertEqual(pod.get("securityContext", {}).get("seccompProfile"),
                         {"type": "RuntimeDefault"}, f"{source} {w['kind']} pod seccompProfile")
        for c in containers_of(w):
            found += 1
            where = f"{source} {w['kind']} {w['metadata']['name']} container {c['name']}"
            sc = c.get("securityContext")
            test.assertIsNotNone(sc, f"{where}: no securityContext")
            test.assertIs(sc.get("readOnlyRootFilesystem"), True, f"{where}: writable root")
            if (w["kind"], c["name"]) in PRIVILEGED:
                test.assertIs(sc.get("privileged"), True, where)
                continue
            test.assertNotIn("privileged", sc, where)
            test.assertIs(sc.get("allowPrivilegeEscalation"), False, where)
            test.assertEqual(sc.get("capabilities"), {"drop": ["ALL"]}, where)
            user = sc.get("runAsUser", pod.get("securityContext", {}).get("runAsUser"))
            if w["kind"] == "DaemonSet":
                test.assertEqual(user, 0, f"{where}: the node pod's sockets are root's")
            else:
                test.assertIsNotNone(user, where)
                test.assertNotEqual(user, 0, f"{where} runs as root")
                test.assertIs(pod["securityContext"].get("runAsNonRoot"), True, where)
    test.assertGreaterEqual(found, 7, f"{source}: containers missing")


def check_snapshot_wiring(test, objs, source):
    """Distributed snapshotting on, group snapshots off, and no RBAC for them."""
    for o in objs:
        for rule in o.get("rules", []):
            test.assertFalse(any("groupsnapshot" in g for g in rule.get("apiGroups", [])),
                             f"{source} {o['kind']} {o['metadata']['name']}: group-snapshot RBAC")
    (ds,) = [o for o in objs if o["kind"] == "DaemonSet"]
    args = daemonset_containers(ds)["csi-snapshotter"]["args"]
    test.assertIn("--feature-gates=CSIVolumeGroupSnapshot=false", args, source)
    ctrls = [o for o in objs if o["kind"] == "Deployment"
             and o["metadata"]["name"].endswith("snapshot-controller")]
    test.assertEqual(len(ctrls), 1, f"{source}: one snapshot-controller Deployment")
    (ctrl,) = ctrls[0]["spec"]["template"]["spec"]["containers"]
    for arg in ("--enable-distributed-snapshotting=true", "--leader-election=true",
                "--feature-gates=CSIVolumeGroupSnapshot=false"):
        test.assertIn(arg, ctrl["args"], source)
    crds = {o["metadata"]["name"] for o in objs if o["kind"] == "CustomResourceDefinition"}
    test.assertEqual(crds, {f"{p}.snapshot.storage.k8s.io" for p in
                            ("volumesnapshots", "volumesnapshotcontents", "volumesnapshotclasses")},
                     source)
