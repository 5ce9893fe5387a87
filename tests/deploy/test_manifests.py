"""manifests/: every file parses into Kubernetes objects, the install set is complete
and consistent (and `kubectl kustomize` builds it), every container is locked down, and
every container argument is a flag the pinned sidecar has."""

import os
import pathlib
import shutil
import subprocess
import tempfile
import time
import unittest

import yaml

from common import (MANIFESTS, daemonset_containers, flag_name, install_objects,
                    load_docs, manifest_files, stop_process)
from rendered import (OPTIONAL_KUSTOMIZATIONS, all_manifest_objects, check_security,
                      check_snapshot_wiring, key, kustomize_objects)
from sidecar_flags import REQUIRED_ARGS, SIDECARS, SNAPSHOT_CONTROLLER, STELLARIUM_CSI_FLAGS

DRIVER = "csi.stellarium.io"


def objects_of(kind):
    return [doc for _, doc in install_objects() if doc["kind"] == kind]


class ManifestFilesTest(unittest.TestCase):
    def test_every_document_is_a_named_object(self):
        files = manifest_files()
        self.assertGreaterEqual(len(files), 10, "manifests/ looks empty")
        for path in files:
            docs = load_docs(path)
            self.assertTrue(docs, f"{path}: no YAML document")
            for i, doc in enumerate(docs):
                where = f"{path.relative_to(MANIFESTS)} document {i}"
                self.assertIsInstance(doc, dict, where)
                for key in ("apiVersion", "kind"):
                    self.assertIsInstance(doc.get(key), str, f"{where}: no {key}")
                self.assertIsInstance(doc.get("metadata", {}).get("name"), str,
                                      f"{where}: no metadata.name")

    def test_kustomization_lists_exactly_the_install_files(self):
        kust = load_docs(MANIFESTS / "kustomization.yaml")[0]
        self.assertEqual(kust["kind"], "Kustomization")
        listed = kust["resources"]
        self.assertEqual(len(listed), len(set(listed)), "a resource is listed twice")
        on_disk = {p.name for p in manifest_files(include_examples=False)} - {"kustomization.yaml"}
        self.assertEqual(set(listed), on_disk,
                         "kustomization.yaml resources must be every manifests/*.yaml")

    def test_kustomize_build_yields_the_same_objects(self):
        built = sorted(key(d) for d in kustomize_objects())
        expected = sorted(key(d) for _, d in install_objects())
        self.assertEqual(built, expected)

    def test_optional_kustomizations_list_exactly_their_files(self):
        for sub in OPTIONAL_KUSTOMIZATIONS:
            kust = load_docs(MANIFESTS / sub / "kustomization.yaml")[0]
            on_disk = sorted(str(p.relative_to(MANIFESTS / sub))
                             for p in (MANIFESTS / sub).rglob("*.yaml")
                             if p.name != "kustomization.yaml")
            self.assertEqual(sorted(kust["resources"]), on_disk, sub)
            built = sorted(key(d) for d in kustomize_objects(sub))
            files = sorted(key(d) for f in on_disk for d in load_docs(MANIFESTS / sub / f))
            self.assertEqual(built, files, sub)

    def test_chart_crds_are_the_manifests_crds(self):
        # One copy: the chart's crds/ are links to manifests/snapshot-controller/crds/.
        crds = MANIFESTS / "snapshot-controller" / "crds"
        chart_crds = MANIFESTS.parent / "charts" / "stellarium-csi" / "crds"
        self.assertEqual(sorted(p.name for p in chart_crds.iterdir()),
                         sorted(p.name for p in crds.iterdir()))
        for p in chart_crds.iterdir():
            self.assertTrue(p.is_symlink(), f"{p} must link to {crds / p.name}")
            self.assertEqual(p.resolve(), (crds / p.name).resolve())

    def test_namespaced_objects_live_in_the_driver_namespace(self):
        ns = objects_of("Namespace")
        self.assertEqual(len(ns), 1)
        name = ns[0]["metadata"]["name"]
        for kind in ("ServiceAccount", "DaemonSet", "Role", "RoleBinding"):
            for obj in objects_of(kind):
                self.assertEqual(obj["metadata"].get("namespace"), name,
                                 f"{kind} {obj['metadata']['name']}")
        for kind in ("ClusterRoleBinding", "RoleBinding"):
            for obj in objects_of(kind):
                for subject in obj["subjects"]:
                    self.assertEqual(subject.get("namespace"), name,
                                     f"{kind} {obj['metadata']['name']} subject")

    def test_bindings_point_at_existing_roles_and_service_account(self):
        roles = {(d["kind"], d["metadata"]["name"]) for _, d in install_objects()
                 if d["kind"] in ("Role", "ClusterRole")}
        sas = {d["metadata"]["name"] for d in objects_of("ServiceAccount")}
        ds = objects_of("DaemonSet")[0]
        self.assertIn(ds["spec"]["template"]["spec"]["serviceAccountName"], sas)
        bindings = objects_of("ClusterRoleBinding") + objects_of("RoleBinding")
        self.assertEqual(len(bindings), 5, "provisioner x2, snapshotter x1, resizer x2")
        for b in bindings:
            self.assertIn((b["roleRef"]["kind"], b["roleRef"]["name"]), roles)
            for s in b["subjects"]:
                self.assertEqual(s["kind"], "ServiceAccount")
                self.assertIn(s["name"], sas)

    def test_csidriver_spec(self):
        (drv,) = objects_of("CSIDriver")
        self.assertEqual(drv["metadata"]["name"], DRIVER)
        self.assertEqual(drv["spec"], {
            "attachRequired": False, "podInfoOnMount": True, "storageCapacity": True,
            "fsGroupPolicy": "File", "seLinuxMount": True,
            "volumeLifecycleModes": ["Persistent"]})

    def test_every_container_is_locked_down(self):
        check_security(self, all_manifest_objects(), "manifests/")

    def test_snapshot_wiring(self):
        objs = all_manifest_objects()
        check_snapshot_wiring(self, objs, "manifests/")
        (ctrl,) = [o for o in objs if o["kind"] == "Deployment"]
        (c,) = ctrl["spec"]["template"]["spec"]["containers"]
        self.assertEqual(c["image"], f"{SNAPSHOT_CONTROLLER['image']}:{SNAPSHOT_CONTROLLER['tag']}")
        check_args(self, "snapshot-controller", SNAPSHOT_CONTROLLER, c["args"])

    def test_namespace_allows_privileged_pods(self):
        (ns,) = objects_of("Namespace")
        self.assertEqual(ns["metadata"]["labels"].get("pod-security.kubernetes.io/enforce"),
                         "privileged")

    def test_storage_classes_bind_on_first_consumer(self):
        classes = objects_of("StorageClass")
        self.assertEqual(len(classes), 2, "one blank, one from an image")
        self.assertEqual(sum(1 for sc in classes if "image" in sc["parameters"]), 1)
        for sc in classes:
            self.assertEqual(sc["provisioner"], DRIVER)
            self.assertEqual(sc["volumeBindingMode"], "WaitForFirstConsumer")
            self.assertLessEqual(set(sc["parameters"]),
                                 {"image", "imageDir", "blockSize", "fsType", "exposure"})
        (vsc,) = objects_of("VolumeSnapshotClass")
        self.assertEqual(vsc["driver"], DRIVER)

    def test_examples_use_installed_classes(self):
        classes = {sc["metadata"]["name"] for sc in objects_of("StorageClass")}
        snap_classes = {c["metadata"]["name"] for c in objects_of("VolumeSnapshotClass")}
        kinds = set()
        for path in sorted((MANIFESTS / "examples").glob("*.yaml")):
            docs = load_docs(path)
            local = {d["metadata"]["name"] for d in docs if d["kind"] == "StorageClass"}
            for d in docs:
                kinds.add((d["kind"], d.get("spec", {}).get("volumeMode", "")))
                if d["kind"] == "PersistentVolumeClaim":
                    self.assertIn(d["spec"]["storageClassName"], classes | local, path.name)
                if d["kind"] == "VolumeSnapshot":
                    self.assertIn(d["spec"]["volumeSnapshotClassName"], snap_classes, path.name)
        for wanted in (("PersistentVolumeClaim", "Block"), ("VolumeSnapshot", ""), ("Pod", "")):
            self.assertIn(wanted, kinds)


class DaemonSetTest(unittest.TestCase):
    def setUp(self):
        (self.ds,) = objects_of("DaemonSet")
        self.containers = daemonset_containers(self.ds)

    def test_containers_are_the_driver_and_the_known_sidecars(self):
        self.assertEqual(set(self.containers), {"stellarium-csi", "fd-holder"} | set(SIDECARS))

    def test_fd_holder_serves_the_drivers_state_dir(self):
        # The driver looks for its fd holder at <state-dir>/fd-holder.sock
        # (docs/EXPOSURE.md, "Driver restarts").
        holder = self.containers["fd-holder"]
        drv = self.containers["stellarium-csi"]
        self.assertEqual(holder["image"], drv["image"])
        self.assertEqual(holder["command"], ["/usr/local/bin/stellarium-fd-holder"])
        state = next(a.split("=", 1)[1] for a in drv["args"] if a.startswith("--state-dir="))
        self.assertEqual(holder["args"], [f"--socket={state}/fd-holder.sock"])
        drv_mounts = {m["mountPath"]: m["name"] for m in drv["volumeMounts"]}
        holder_mounts = {m["mountPath"]: m["name"] for m in holder["volumeMounts"]}
        self.assertTrue(any(state.startswith(p + "/") and drv_mounts.get(p) == n
                            for p, n in holder_mounts.items()), holder_mounts)

    def test_sidecar_images_are_pinned_to_the_checked_releases(self):
        for name, spec in SIDECARS.items():
            self.assertEqual(self.containers[name]["image"], f"{spec['image']}:{spec['tag']}",
                             f"{name}: a new tag needs its flag list re-read ({spec['source']})")

    def test_every_sidecar_arg_is_a_flag_of_that_release(self):
        check_sidecar_args(self, self.containers)

    def test_driver_args_are_agreed_flags(self):
        args = self.containers["stellarium-csi"]["args"]
        for arg in args:
            self.assertIn(flag_name(arg), STELLARIUM_CSI_FLAGS, f"stellarium-csi arg {arg}")
        self.assertIn("--endpoint=unix:///csi/csi.sock", args)
        self.assertIn(f"--driver-name={DRIVER}", args)

    def test_driver_container_is_privileged_with_bidirectional_kubelet_mounts(self):
        drv = self.containers["stellarium-csi"]
        self.assertTrue(drv["securityContext"]["privileged"])
        mounts = {m["mountPath"]: m for m in drv["volumeMounts"]}
        for path in ("/var/lib/kubelet/pods", "/var/lib/kubelet/plugins", "/var/lib/stellarium"):
            self.assertEqual(mounts[path].get("mountPropagation"), "Bidirectional", path)
        self.assertIn("/dev", mounts)
        volumes = {v["name"]: v for v in self.ds["spec"]["template"]["spec"]["volumes"]}
        # Paths written into host-read descriptors must be the same inside and outside.
        for path in ("/var/lib/kubelet/pods", "/var/lib/kubelet/plugins", "/var/lib/stellarium",
                     "/run/kata-containers/shared/direct-volumes"):
            self.assertEqual(volumes[mounts[path]["name"]]["hostPath"]["path"], path)
        for name, c in self.containers.items():
            if name != "stellarium-csi":
                self.assertFalse(any(m.get("mountPropagation") for m in c["volumeMounts"]), name)

    def test_driver_paths_are_inside_the_mounted_host_directories(self):
        drv = self.containers["stellarium-csi"]
        mounts = [m["mountPath"] for m in drv["volumeMounts"]]
        for arg in drv["args"]:
            name, _, value = arg.partition("=")
            if name in ("--store", "--state-dir", "--import-root", "--kubelet-dir"):
                self.assertTrue(any(value == m or value.startswith(m + "/") for m in mounts)
                                or value == "/var/lib/kubelet", arg)

    def test_init_container_creates_exactly_the_import_roots(self):
        (init,) = self.ds["spec"]["template"]["spec"]["initContainers"]
        self.assertEqual(init["command"], ["mkdir", "-p", "--"])
        roots = [a.split("=", 1)[1] for a in self.containers["stellarium-csi"]["args"]
                 if a.startswith("--import-root=")]
        self.assertTrue(roots)
        self.assertEqual(init["args"], roots)
        self.assertEqual(init["image"], self.containers["stellarium-csi"]["image"])
        mounts = {m["mountPath"] for m in init["volumeMounts"]}
        for root in roots:
            self.assertTrue(any(root.startswith(m + "/") for m in mounts), root)

    def test_socket_paths_agree(self):
        volumes = {v["name"]: v for v in self.ds["spec"]["template"]["spec"]["volumes"]}
        reg = self.containers["node-driver-registrar"]["args"]
        reg_path = next(a.split("=", 1)[1] for a in reg if a.startswith("--kubelet-registration-path="))
        self.assertEqual(reg_path, volumes["socket-dir"]["hostPath"]["path"] + "/csi.sock")
        self.assertEqual(reg_path, f"/var/lib/kubelet/plugins/{DRIVER}/csi.sock")
        for name, c in self.containers.items():
            if name == "fd-holder":  # talks to the driver over its own socket only
                continue
            self.assertIn({"name": "socket-dir", "mountPath": "/csi"}, c["volumeMounts"], name)

    def test_liveness_probe_port_is_the_probe_sidecars_endpoint(self):
        drv = self.containers["stellarium-csi"]
        ports = {p["name"]: p["containerPort"] for p in drv["ports"]}
        self.assertEqual(drv["livenessProbe"]["httpGet"]["port"], "healthz")
        self.assertIn(f"--http-endpoint=:{ports['healthz']}", self.containers["liveness-probe"]["args"])
        metrics = next(a for a in drv["args"] if a.startswith("--metrics-address="))
        self.assertEqual(metrics, f"--metrics-address=:{ports['metrics']}")

    def test_distributed_sidecars_get_their_node_name(self):
        for name in ("csi-provisioner", "csi-snapshotter"):
            env = {e["name"]: e for e in self.containers[name]["env"]}
            self.assertEqual(env["NODE_NAME"]["valueFrom"]["fieldRef"]["fieldPath"], "spec.nodeName")
        env = {e["name"] for e in self.containers["csi-provisioner"]["env"]}
        self.assertLessEqual({"NAMESPACE", "POD_NAME"}, env, "--enable-capacity ownerref needs them")
        self.assertNotIn("--leader-election=true", self.containers["csi-snapshotter"]["args"],
                         "csi-snapshotter refuses leader election with --node-deployment")


class DriverAcceptsDaemonSetArgsTest(unittest.TestCase):
    """The built stellarium-csi accepts the DaemonSet's args once the init container ran.

    Host paths are moved under a temporary directory; the init container's command runs
    for real, then `stellarium-csi ARGS --dump-config` must succeed and report them."""

    def setUp(self):
        path = os.environ.get("STELLARIUM_CSI_BIN", "")
        if not path or not pathlib.Path(path).is_file():
            self.skipTest("stellarium-csi is not built in this build tree "
                          "(STELLARIUM_CSI_BIN is empty): DaemonSet args not run")
        self.bin = path
        self.tmp = tempfile.mkdtemp(prefix="stellarium-ds-args-")
        self.addCleanup(shutil.rmtree, self.tmp, True)

    def test_driver_starts_config_from_daemonset_args(self):
        (ds,) = objects_of("DaemonSet")
        spec = ds["spec"]["template"]["spec"]
        move = lambda s: s.replace("/var/lib/stellarium", self.tmp + "/var/lib/stellarium")
        (init,) = spec["initContainers"]
        r = subprocess.run(init["command"] + [move(a) for a in init["args"]],
                           capture_output=True, text=True, timeout=60)
        self.assertEqual(r.returncode, 0, r.stderr)
        args = [move(a).replace("$(NODE_NAME)", "worker-1")
                for a in daemonset_containers(ds)["stellarium-csi"]["args"]]
        r = subprocess.run([self.bin, *args, "--dump-config"], capture_output=True, text=True,
                           timeout=60, env={"PATH": "/usr/bin:/bin"})
        self.assertEqual(r.returncode, 0, f"stellarium-csi refused the DaemonSet args: {r.stderr}")
        config = yaml.safe_load(r.stdout)
        for arg in args:
            flag, _, value = arg.partition("=")
            key = flag.lstrip("-").replace("-", "_")
            got = config[key]
            if isinstance(got, list):
                self.assertIn(value, got, key)
            elif isinstance(got, bool):
                self.assertEqual(got, value == "true", key)
            else:
                self.assertEqual(str(got), value, key)


class ShippedClassesAgainstDriverTest(unittest.TestCase):
    """CreateVolume over real gRPC with the parameters of every shipped StorageClass.

    stellarium-csi runs with the DaemonSet's args (host paths moved under a temporary
    directory, endpoint on a temporary socket); stellarium-csi-client sends what
    csi-provisioner sends: the class parameters plus the --extra-create-metadata keys.
    Then a snapshot and a restore, as the VolumeSnapshotClass (no parameters) asks."""

    def setUp(self):
        self.bin = os.environ.get("STELLARIUM_CSI_BIN", "")
        self.client = os.environ.get("STELLARIUM_CSI_CLIENT_BIN", "")
        if not (self.bin and pathlib.Path(self.bin).is_file() and self.client
                and pathlib.Path(self.client).is_file()):
            self.skipTest("stellarium-csi or stellarium-csi-client is not built in this build "
                          "tree (STELLARIUM_CSI_BIN / STELLARIUM_CSI_CLIENT_BIN empty)")
        self.tmp = tempfile.mkdtemp(prefix="stellarium-sc-")
        self.addCleanup(shutil.rmtree, self.tmp, True)

    def move(self, s):
        return s.replace("/var/lib/stellarium", self.tmp + "/var/lib/stellarium")

    def start_driver(self):
        (ds,) = objects_of("DaemonSet")
        (init,) = ds["spec"]["template"]["spec"]["initContainers"]
        subprocess.run(init["command"] + [self.move(a) for a in init["args"]], check=True)
        self.socket = f"unix://{self.tmp}/csi.sock"
        args = []
        for a in daemonset_containers(ds)["stellarium-csi"]["args"]:
            a = self.move(a).replace("$(NODE_NAME)", "worker-1")
            if a.startswith("--endpoint="):
                a = "--endpoint=" + self.socket
            elif a.startswith("--kubelet-dir="):
                a = f"--kubelet-dir={self.tmp}/kubelet"
            elif a.startswith("--metrics-address="):
                continue  # no fixed port on a shared test machine
            args.append(a)
        log = open(os.path.join(self.tmp, "driver.log"), "w")
        self.addCleanup(log.close)
        proc = subprocess.Popen([self.bin, *args], stdout=log, stderr=subprocess.STDOUT)

        self.addCleanup(stop_process, proc)
        for _ in range(300):  # the socket appears once the server listens
            if os.path.exists(f"{self.tmp}/csi.sock") or proc.poll() is not None:
                break
            time.sleep(0.1)
        self.assertIsNone(proc.poll(), pathlib.Path(self.tmp, "driver.log").read_text())

    def call(self, *args):
        r = subprocess.run([self.client, "--endpoint", self.socket, "--timeout", "120", *args],
                           capture_output=True, text=True, timeout=180)
        self.assertEqual(r.returncode, 0, f"{args}: {r.stderr}")
        return dict(line.split("=", 1) for line in r.stdout.splitlines() if "=" in line)

    def test_every_shipped_class_creates_a_volume(self):
        self.start_driver()
        classes = objects_of("StorageClass")
        for sc in classes:
            params = {k: self.move(v) for k, v in sc["parameters"].items()}
            if "image" in params:  # the golden image the class names, on this "node"
                image = pathlib.Path(params["image"])
                self.assertTrue(str(image.parent).startswith(self.tmp), image)
                image.write_bytes(os.urandom(1 << 20) + bytes(3 << 20))
            name = "pvc-" + sc["metadata"]["name"]
            args = ["create-volume", "--name", name, "--size", "64M"]
            for k, v in {**params, "csi.storage.k8s.io/pvc/name": "data",
                         "csi.storage.k8s.io/pvc/namespace": "default",
                         "csi.storage.k8s.io/pv/name": name}.items():
                args += ["--param", f"{k}={v}"]
            vol = self.call(*args)
            self.assertTrue(vol["volume_id"], vol)
            self.assertEqual(vol["topology.topology.stellarium.io/node"], "worker-1")
            self.assertEqual(vol["context.stellarium.io/source-kind"],
                             "image" if "image" in params else "blank")
        snap = self.call("create-snapshot", "--name", "snapshot-1", "--volume", vol["volume_id"])
        restored = self.call("create-volume", "--name", "pvc-restored", "--size", "64M",
                             "--snapshot", snap["snapshot_id"])
        self.assertEqual(restored["context.stellarium.io/source-kind"], "snapshot")


def check_args(test, name, spec, args):
    """Every arg is a flag of the pinned release `spec`, every feature gate one it has."""
    for arg in args:
        flag = flag_name(arg)
        test.assertIsNotNone(flag, f"{name}: positional argument {arg!r}")
        test.assertIn(flag, spec["flags"],
                      f"{name} {spec['tag']} has no flag --{flag} (source: {spec['source']})")
        if flag == "feature-gates":
            for gate in arg.split("=", 1)[1].split(","):
                test.assertIn(gate.split("=")[0], spec["feature_gates"], f"{name}: {arg}")


def check_sidecar_args(test, containers):
    """Every arg of every sidecar is a flag of its pinned release; required ones are set."""
    for name, spec in SIDECARS.items():
        args = containers[name]["args"]
        check_args(test, name, spec, args)
        for required in REQUIRED_ARGS.get(name, ()):
            test.assertIn(required, args, f"{name} needs {required} for distributed provisioning")


if __name__ == "__main__":
    unittest.main()
