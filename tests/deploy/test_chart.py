"""charts/stellarium-csi: templates parse once their actions are neutralized, every
.Values path exists in values.yaml and values.schema.json, every value is used, the
schema accepts the defaults and rejects bad input, and with its defaults the chart
produces the same objects, images and sidecar flags as manifests/."""

import copy
import json
import re
import unittest

import jsonschema
import yaml

from chart_text import Comparer, PLACEHOLDER_RE, lookup, neutralize, values_paths
from common import CHART, TEMPLATES, daemonset_containers, install_objects, values
from sidecar_flags import SIDECARS
from test_manifests import check_sidecar_args

# manifests/ objects with no chart template: the chart installs into the release
# namespace (helm --create-namespace), and StorageClasses come from a range over
# .Values.storageClasses (compared separately below).
NOT_IN_CHART = {"Namespace", "StorageClass"}


def yaml_templates():
    return sorted(TEMPLATES.glob("*.yaml"))


def chart_objects():
    """(file, neutralized, doc) for every document of every template."""
    out = []
    for path in yaml_templates():
        n = neutralize(path.read_text())
        try:
            docs = [d for d in yaml.safe_load_all(n.text) if d is not None]
        except yaml.YAMLError as e:
            raise AssertionError(f"{path.name}: not YAML once actions are neutralized: {e}\n"
                                 f"{n.text}") from e
        out.extend((path.name, n, d) for d in docs)
    return out


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


class ChartFilesTest(unittest.TestCase):
    def test_chart_yaml(self):
        chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
        self.assertEqual(chart["apiVersion"], "v2")
        self.assertEqual(chart["name"], "stellarium-csi")
        for key in ("version", "appVersion", "description"):
            self.assertTrue(chart.get(key), key)
        cmake = (CHART.parents[1] / "CMakeLists.txt").read_text()
        project_version = re.search(r"project\(stellarium VERSION ([0-9.]+)", cmake).group(1)
        self.assertEqual(chart["appVersion"], project_version, "appVersion follows CMake's")
        self.assertEqual(values()["image"]["stellarium"]["tag"], project_version)

    def test_every_template_document_is_a_named_object(self):
        objs = chart_objects()
        self.assertGreaterEqual(len(objs), 12)
        for name, _, doc in objs:
            self.assertIsInstance(doc, dict, name)
            for key in ("apiVersion", "kind"):
                self.assertIsInstance(doc.get(key), str, f"{name}: no {key}")
            self.assertIsInstance(doc.get("metadata", {}).get("name"), str,
                                  f"{name} {doc.get('kind')}: no metadata.name")

    def test_neutralizer_keeps_structure(self):
        n = neutralize('a: {{ .Values.x }}\n{{- if .Values.y }}\nb:\n  {{- toYaml .Values.z | nindent 2 }}\n{{- end }}\n')
        doc = yaml.safe_load(n.text)
        self.assertEqual(set(doc), {"a", "b"})
        self.assertEqual(n.action(doc["a"]), ".Values.x")
        (block,) = doc["b"]
        self.assertEqual(n.action(block), "toYaml .Values.z | nindent 2")


class ValuesTest(unittest.TestCase):
    def setUp(self):
        self.values = values()
        self.schema = json.loads((CHART / "values.schema.json").read_text())
        self.used = set()
        for path in list(TEMPLATES.glob("*")):
            self.used |= values_paths(path.read_text())

    def test_every_values_path_in_templates_exists_in_values_and_schema(self):
        self.assertGreater(len(self.used), 20)
        for path in sorted(self.used):
            try:
                lookup(self.values, path)
            except KeyError as e:
                self.fail(f".Values.{path} used in a template, but values.yaml has no {e}")
            try:
                schema_node(self.schema, path)
            except KeyError:
                self.fail(f".Values.{path} used in a template, but values.schema.json lacks it")

    def test_every_value_is_used(self):
        for leaf in leaves(self.values):
            self.assertTrue(any(leaf == u or leaf.startswith(u + ".") for u in self.used),
                            f"values.yaml {leaf} is used by no template")

    def test_every_storage_class_key_is_used(self):
        text = (TEMPLATES / "storageclasses.yaml").read_text()
        for sc in self.values["storageClasses"]:
            for key in sc:
                self.assertRegex(text, r"\{\{[^}]*\s\." + key + r"\b", f"storageClasses[].{key}")

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
        ]
        validator = jsonschema.Draft7Validator(self.schema)
        for name, mutate in cases:
            bad = copy.deepcopy(self.values)
            mutate(bad)
            errors = list(validator.iter_errors(bad))
            self.assertTrue(errors, f"schema accepted a bad {name}")
            text = " ".join(f"{'/'.join(map(str, e.absolute_path))} {e.message}" for e in errors)
            self.assertIn(name, text, f"the error should name {name}: {text}")


class ChartAgreesWithManifestsTest(unittest.TestCase):
    def setUp(self):
        self.values = values()
        self.manifests = [doc for _, doc in install_objects()]

    def test_objects_match_manifests(self):
        chart = [(f, n, d) for f, n, d in chart_objects() if d["kind"] not in NOT_IN_CHART]
        wanted = [d for d in self.manifests if d["kind"] not in NOT_IN_CHART]
        matched = set()
        for fname, n, doc in chart:
            cmp = Comparer(n, self.values)
            candidates = [i for i, m in enumerate(wanted) if m["kind"] == doc["kind"]
                          and cmp.matches_scalar(doc["metadata"]["name"], m["metadata"]["name"])]
            self.assertEqual(len(candidates), 1,
                             f"{fname}: {doc['kind']} {doc['metadata']['name']} matches "
                             f"{len(candidates)} manifests/ objects")
            (i,) = candidates
            self.assertNotIn(i, matched)
            matched.add(i)
            cmp.compare(doc, wanted[i], f"{fname} {doc['kind']}")
            self.assertEqual(cmp.errors, [], "\n".join(cmp.errors))
        missing = [f"{m['kind']} {m['metadata']['name']}" for i, m in enumerate(wanted)
                   if i not in matched]
        self.assertEqual(missing, [], "manifests/ objects with no chart template")

    def test_images_match_manifests(self):
        (ds,) = [d for d in self.manifests if d["kind"] == "DaemonSet"]
        containers = daemonset_containers(ds)
        keys = {"stellarium-csi": "stellarium", "fd-holder": "stellarium",
                "csi-provisioner": "csiProvisioner",
                "csi-snapshotter": "csiSnapshotter", "csi-resizer": "csiResizer",
                "node-driver-registrar": "nodeDriverRegistrar", "liveness-probe": "livenessProbe"}
        self.assertEqual(set(keys), set(containers))
        self.assertEqual(set(keys.values()), set(self.values["image"]))
        for name, key in keys.items():
            img = self.values["image"][key]
            self.assertEqual(f"{img['repository']}:{img['tag']}", containers[name]["image"], name)
            self.assertEqual(img["pullPolicy"], containers[name]["imagePullPolicy"], name)

    def test_chart_sidecar_args_are_flags_of_the_pinned_releases(self):
        (fname, n, ds) = next(o for o in chart_objects() if o[2]["kind"] == "DaemonSet")
        cmp = Comparer(n, self.values)

        def substitute(text):
            # .Values references take their default; other actions stay placeholders.
            def sub(m):
                known, value = cmp._value_of(n.actions[int(m.group(2))])
                return str(value) if known else m.group(0)
            return PLACEHOLDER_RE.sub(sub, text)

        def resolve(arg):
            name = arg.split("=", 1)[0]
            self.assertFalse(PLACEHOLDER_RE.search(name), f"{fname}: templated flag name {arg}")
            return substitute(arg)

        check_sidecar_args(self, daemonset_containers(ds), resolve)
        for name, spec in SIDECARS.items():
            c = daemonset_containers(ds)[name]
            self.assertEqual(substitute(c["image"]), f"{spec['image']}:{spec['tag']}", name)

    def test_storage_classes_match_manifests(self):
        sc_manifests = {d["metadata"]["name"]: d for d in self.manifests
                        if d["kind"] == "StorageClass"}
        self.assertEqual({sc["name"] for sc in self.values["storageClasses"]}, set(sc_manifests))
        for sc in self.values["storageClasses"]:
            m = sc_manifests[sc["name"]]
            self.assertEqual(sc["parameters"], m["parameters"], sc["name"])
            self.assertEqual(sc["reclaimPolicy"], m["reclaimPolicy"], sc["name"])
            self.assertEqual(sc["allowVolumeExpansion"], m["allowVolumeExpansion"], sc["name"])
            self.assertEqual(self.values["driver"]["name"], m["provisioner"])
            self.assertEqual(m["volumeBindingMode"], "WaitForFirstConsumer")
        (fname, n, doc) = next(o for o in chart_objects() if o[2]["kind"] == "StorageClass")
        self.assertEqual(doc["volumeBindingMode"], "WaitForFirstConsumer")


if __name__ == "__main__":
    unittest.main()
