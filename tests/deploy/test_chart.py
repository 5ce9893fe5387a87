"""charts/stellarium-csi, with a real helm (scripts/install-helm.sh): `helm lint` passes;
`helm template` with the defaults renders exactly the objects of `kubectl kustomize
manifests/` (the Namespace aside), and with every option on, exactly those of the optional
kustomizations too; every container is locked down; values.yaml, values.schema.json
and the templates agree; the schema rejects bad values through helm itself."""

import copy
import json
import re
import unittest

import jsonschema
import yaml

from common import CHART, TEMPLATES, daemonset_containers, values
from rendered import (ALL_OPTIONAL, NAMESPACE, OPTIONAL_KUSTOMIZATIONS, chart_objects,
                      check_security, check_snapshot_wiring, first_difference, helm, key,
                      kustomize_objects, normalized)
from sidecar_flags import SIDECARS, SNAPSHOT_CONTROLLER
from test_manifests import check_args, check_sidecar_args

VALUES_PATH_RE = re.compile(r"\$?\.Values((?:\.[A-Za-z_][A-Za-z0-9_]*)+)")


def values_paths(text):
    """Every `.Values.a.b` path a template refers to, as 'a.b'."""
    return {m.group(1)[1:] for m in VALUES_PATH_RE.finditer(text)}


def lookup(node, dotted):
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            raise KeyError(dotted)
        node = node[part]
    return node


def leaves(node, prefix=""):
    if isinstance(node, dict) and node:
        for k, v in node.items():
            yield from leaves(v, f"{prefix}.{k}" if prefix else k)
    else:
        yield prefix


def schema_node(schema, dotted):
    node = schema
    for part in dotted.split("."):
        props = node.get("properties", {})
        if part not in props:
            raise KeyError(dotted)
        node = props[part]
    return node


class HelmTest(unittest.TestCase):
    def test_lint_passes_with_defaults_and_with_every_option(self):
        for extra in ((), ALL_OPTIONAL[1:]):
            r = helm("lint", "--strict", str(CHART), *extra)
            self.assertIn("0 chart(s) failed", r.stdout, r.stdout + r.stderr)

    def test_helm_rejects_bad_values_naming_them(self):
        for setting, name in (("logLevel=loud", "logLevel"),
                              ("metrics.serviceMonitor.interval=often", "interval"),
                              ("snapshotController.replicas=0", "replicas"),
                              ("node.importRoots[0]=/elsewhere", "importRoots")):
            r = helm("template", "x", str(CHART), "--set", setting, check=False)
            self.assertNotEqual(r.returncode, 0, f"helm accepted {setting}")
            self.assertIn(name, r.stderr, f"{setting}: {r.stderr}")
        r = helm("template", "x", str(CHART), "--set", "metrics.service.create=false",
                 "--set", "metrics.serviceMonitor.create=true", check=False)
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("metrics.serviceMonitor.create needs metrics.service.create", r.stderr)

    def test_version_matches_cmake_and_the_image(self):
        chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
        self.assertEqual(chart["apiVersion"], "v2")
        cmake = (CHART.parents[1] / "CMakeLists.txt").read_text()
        project_version = re.search(r"project\(stellarium VERSION ([0-9.]+)", cmake).group(1)
        self.assertEqual(chart["appVersion"], project_version, "appVersion follows CMake's")
        self.assertEqual(values()["image"]["stellarium"]["tag"], project_version)


class ChartEqualsManifestsTest(unittest.TestCase):
    def compare(self, chart, manifests, what):
        chart_keys = {key(o): o for o in chart}
        manifest_keys = {key(o): o for o in manifests}
        self.assertEqual(sorted(chart_keys), sorted(manifest_keys), f"{what}: object sets")
        for k, obj in chart_keys.items():
            diff = first_difference(normalized(obj), normalized(manifest_keys[k]))
            self.assertIsNone(diff, f"{what}: {k}: {diff}")

    def test_defaults_render_the_objects_of_manifests(self):
        manifests = kustomize_objects()
        (ns,) = [o for o in manifests if o["kind"] == "Namespace"]
        self.assertEqual(ns["metadata"]["name"], NAMESPACE)
        # The chart installs into the release namespace: Helm does not create it.
        self.compare(chart_objects(), [o for o in manifests if o["kind"] != "Namespace"],
                     "helm template (defaults) vs kubectl kustomize manifests/")

    def test_every_option_renders_the_optional_kustomizations(self):
        base = {key(o) for o in chart_objects()}
        optional = [o for o in chart_objects(*ALL_OPTIONAL) if key(o) not in base]
        expected = []
        for sub in OPTIONAL_KUSTOMIZATIONS:
            expected += kustomize_objects(sub)
        self.compare(optional, expected,
                     "helm template (every option) vs manifests/{" +
                     ",".join(OPTIONAL_KUSTOMIZATIONS) + "}")

    def test_non_default_values_reach_the_objects(self):
        objs = chart_objects("--set", "kubeletDir=/var/snap/k8s/kubelet",
                             "--set", "driver.name=csi.example.org",
                             "--set", "node.metricsPort=9999")
        (ds,) = [o for o in objs if o["kind"] == "DaemonSet"]
        c = daemonset_containers(ds)
        self.assertIn("--kubelet-registration-path=/var/snap/k8s/kubelet/plugins/"
                      "csi.example.org/csi.sock", c["node-driver-registrar"]["args"])
        self.assertIn("--metrics-address=:9999", c["stellarium-csi"]["args"])
        (svc,) = [o for o in objs if o["kind"] == "Service"]
        self.assertEqual(svc["spec"]["ports"][0]["port"], 9999)
        (drv,) = [o for o in objs if o["kind"] == "CSIDriver"]
        self.assertEqual(drv["metadata"]["name"], "csi.example.org")


class RenderedChartTest(unittest.TestCase):
    def setUp(self):
        self.objs = chart_objects(*ALL_OPTIONAL)

    def test_every_container_is_locked_down(self):
        check_security(self, self.objs, "chart")

    def test_snapshot_wiring(self):
        check_snapshot_wiring(self, self.objs, "chart")

    def test_sidecar_and_controller_args_are_flags_of_the_pinned_releases(self):
        (ds,) = [o for o in self.objs if o["kind"] == "DaemonSet"]
        check_sidecar_args(self, daemonset_containers(ds))
        for name, spec in SIDECARS.items():
            self.assertEqual(daemonset_containers(ds)[name]["image"],
                             f"{spec['image']}:{spec['tag']}", name)
        (ctrl,) = [o for o in self.objs if o["kind"] == "Deployment"]
        (c,) = ctrl["spec"]["template"]["spec"]["containers"]
        self.assertEqual(c["image"], f"{SNAPSHOT_CONTROLLER['image']}:{SNAPSHOT_CONTROLLER['tag']}")
        check_args(self, "snapshot-controller", SNAPSHOT_CONTROLLER, c["args"])

    def test_csidriver_asks_for_selinux_mounts(self):
        (drv,) = [o for o in self.objs if o["kind"] == "CSIDriver"]
        self.assertIs(drv["spec"]["seLinuxMount"], True)

    def test_metrics_service_and_monitor_reach_the_driver_port(self):
        (ds,) = [o for o in self.objs if o["kind"] == "DaemonSet"]
        drv = daemonset_containers(ds)["stellarium-csi"]
        port = int(next(a for a in drv["args"] if a.startswith("--metrics-address=")).rsplit(":", 1)[1])
        self.assertIn({"name": "metrics", "containerPort": port, "protocol": "TCP"}, drv["ports"])
        (svc,) = [o for o in self.objs if o["kind"] == "Service"]
        self.assertEqual(svc["spec"]["clusterIP"], "None")
        pod_labels = ds["spec"]["template"]["metadata"]["labels"]
        self.assertLessEqual(svc["spec"]["selector"].items(), pod_labels.items())
        self.assertEqual(svc["spec"]["ports"], [{"name": "metrics", "port": port,
                                                 "targetPort": "metrics", "protocol": "TCP"}])
        (mon,) = [o for o in self.objs if o["kind"] == "ServiceMonitor"]
        self.assertLessEqual(mon["spec"]["selector"]["matchLabels"].items(),
                             svc["metadata"]["labels"].items())
        self.assertEqual(mon["spec"]["endpoints"][0]["port"], "metrics")
        self.assertEqual(mon["spec"]["namespaceSelector"]["matchNames"], [NAMESPACE])
        labelled = chart_objects("--set", "metrics.serviceMonitor.create=true",
                                 "--set", "metrics.serviceMonitor.labels.release=prom")
        (mon,) = [o for o in labelled if o["kind"] == "ServiceMonitor"]
        self.assertEqual(mon["metadata"]["labels"]["release"], "prom")

    def test_notes_tell_how_to_allow_privileged_pods(self):
        r = helm("install", "--dry-run=client", "stellarium-csi", str(CHART),
                 "--namespace", NAMESPACE)
        notes = r.stdout.split("NOTES:", 1)[1]
        self.assertIn(f"kubectl label namespace {NAMESPACE} "
                      "pod-security.kubernetes.io/enforce=privileged", notes)
        self.assertIn("--enable-distributed-snapshotting=true", notes)


class ValuesTest(unittest.TestCase):
    def setUp(self):
        self.values = values()
        self.schema = json.loads((CHART / "values.schema.json").read_text())
        self.used = set()
        for path in TEMPLATES.glob("*"):
            self.used |= values_paths(path.read_text())

    def test_every_values_path_in_templates_exists_in_values_and_schema(self):
        self.assertGreater(len(self.used), 20)
        for path in sorted(self.used):
            try:
                lookup(self.values, path)
            except KeyError:
                self.fail(f".Values.{path} used in a template, but values.yaml lacks it")
            try:
                schema_node(self.schema, path)
            except KeyError:
                self.fail(f".Values.{path} used in a template, but values.schema.json lacks it")

    def test_every_value_is_used(self):
        for leaf in leaves(self.values):
            self.assertTrue(any(leaf == u or leaf.startswith(u + ".") for u in self.used),
                            f"values.yaml {leaf} is used by no template")

    def test_schema_is_valid_and_accepts_the_defaults(self):
        jsonschema.Draft7Validator.check_schema(self.schema)
        jsonschema.Draft7Validator(self.schema).validate(self.values)

    def test_schema_rejects_bad_values_naming_them(self):
        cases = [
            ("logLevel", lambda v: v.__setitem__("logLevel", "loud")),
            ("kubeletDir", lambda v: v.__setitem__("kubeletDir", "var/lib/kubelet")),
            ("kubeletdir", lambda v: v.__setitem__("kubeletdir", "/var/lib/kubelet")),
            ("exposure", lambda v: v["storageClasses"][0]["parameters"].__setitem__("exposure", "nbd")),
            ("blockSize", lambda v: v["storageClasses"][0]["parameters"].__setitem__("blockSize", "1000")),
            ("storageClasses/1/parameters",
             lambda v: v["storageClasses"][1]["parameters"].__setitem__("imageDir", "/var/lib/stellarium/images/t")),
            ("importRoots", lambda v: v["node"].__setitem__("importRoots", ["images"])),
            ("metricsPort", lambda v: v["node"].__setitem__("metricsPort", 70000)),
            ("pullPolicy", lambda v: v["image"]["csiProvisioner"].__setitem__("pullPolicy", "Sometimes")),
            ("serviceMonitor", lambda v: v["metrics"]["serviceMonitor"].__setitem__("enabled", True)),
            ("replicas", lambda v: v["snapshotController"].__setitem__("replicas", 0)),
        ]
        validator = jsonschema.Draft7Validator(self.schema)
        for name, mutate in cases:
            bad = copy.deepcopy(self.values)
            mutate(bad)
            errors = list(validator.iter_errors(bad))
            self.assertTrue(errors, f"schema accepted a bad {name}")
            text = " ".join(f"{'/'.join(map(str, e.absolute_path))} {e.message}" for e in errors)
            self.assertIn(name, text, f"the error should name {name}: {text}")

    def test_storage_classes_render_from_values(self):
        rendered = {o["metadata"]["name"]: o for o in chart_objects() if o["kind"] == "StorageClass"}
        self.assertEqual(set(rendered), {sc["name"] for sc in self.values["storageClasses"]})
        for sc in self.values["storageClasses"]:
            obj = rendered[sc["name"]]
            self.assertEqual(obj["parameters"], sc["parameters"])
            self.assertEqual(obj["volumeBindingMode"], "WaitForFirstConsumer")


if __name__ == "__main__":
    unittest.main()
