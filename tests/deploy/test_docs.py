"""docs/: the configuration reference documents every stellarium-csi flag and YAML key
(checked against the built binary's --help and --dump-config when it is built) and every
chart value; links between docs and to manifests/ resolve; pinned versions quoted in
docs are the ones deployed."""

import os
import pathlib
import re
import subprocess
import unittest

import yaml

from common import DOCS, REPO, values
from sidecar_flags import SIDECARS, SNAPSHOT_CONTROLLER, STELLARIUM_CSI_FLAGS

DOC_FILES = ("install.md", "usage.md", "configuration.md", "troubleshooting.md", "upgrade.md")


def config_doc():
    return (DOCS / "configuration.md").read_text()


def driver_flag_table(text):
    """Flags in the rows of the stellarium-csi flag table: | `--flag` | `key` | ..."""
    return {m.group(1) for m in re.finditer(r"^\|\s*`--([a-z0-9-]+)`", text, re.M)}


def leaves(node, prefix=""):
    if isinstance(node, dict) and node:
        for k, v in node.items():
            yield from leaves(v, f"{prefix}.{k}" if prefix else k)
    else:
        yield prefix


class ConfigurationReferenceTest(unittest.TestCase):
    def test_every_agreed_driver_flag_has_a_row(self):
        rows = driver_flag_table(config_doc())
        self.assertEqual(rows, STELLARIUM_CSI_FLAGS,
                         "the flag table of docs/configuration.md vs the agreed flags")

    def test_every_yaml_key_is_the_flag_name_with_underscores(self):
        text = config_doc()
        for flag in STELLARIUM_CSI_FLAGS - {"help", "version", "dump-config", "config"}:
            row = re.search(rf"^\|\s*`--{flag}`\s*\|\s*`([a-z0-9_]+)`", text, re.M)
            self.assertIsNotNone(row, f"--{flag}: no YAML key column")
            self.assertEqual(row.group(1), flag.replace("-", "_"))

    def test_every_chart_value_is_documented(self):
        text = config_doc()
        for leaf in leaves(values()):
            # A leaf is documented by its own row or by a row for a parent at least two
            # levels deep (`node.resources` covers node.resources.csiResizer.limits.memory).
            parts = leaf.split(".")
            prefixes = [".".join(parts[:i]) for i in range(min(2, len(parts)), len(parts) + 1)]
            self.assertTrue(any(f"`{p}`" in text for p in prefixes),
                            f"chart value {leaf} is not in docs/configuration.md")


class BuiltDriverTest(unittest.TestCase):
    """Against the real binary: skipped only while stellarium-csi is not built."""

    def setUp(self):
        path = os.environ.get("STELLARIUM_CSI_BIN", "")
        if not path or not pathlib.Path(path).is_file():
            self.skipTest("stellarium-csi is not built in this build tree "
                          "(STELLARIUM_CSI_BIN is empty): --help/--dump-config not checked")
        self.bin = path

    def run_bin(self, *args):
        return subprocess.run([self.bin, *args], capture_output=True, text=True, timeout=60,
                              env={"PATH": "/usr/bin:/bin"})

    def test_every_help_flag_is_documented(self):
        r = self.run_bin("--help")
        self.assertEqual(r.returncode, 0, r.stderr)
        flags = set(re.findall(r"(?<![\w-])--([a-z][a-z0-9-]*)", r.stdout))
        self.assertGreaterEqual(len(flags), 10, r.stdout)
        rows = driver_flag_table(config_doc())
        self.assertEqual(sorted(flags - rows), [], "flags of --help missing in docs/configuration.md")
        self.assertEqual(sorted(rows - flags), [], "docs/configuration.md documents flags --help lacks")

    def test_every_dump_config_key_is_documented(self):
        r = self.run_bin("--dump-config")
        if r.returncode != 0:  # the node id may have to be given when the hostname is unusable
            r = self.run_bin("--dump-config", "--node-id", "docs-check")
        self.assertEqual(r.returncode, 0, r.stderr)
        dumped = yaml.safe_load(r.stdout)
        self.assertIsInstance(dumped, dict, r.stdout)
        text = config_doc()
        for key in leaves(dumped):
            self.assertRegex(text, rf"\|\s*`--[a-z0-9-]+`\s*\|\s*`{re.escape(key)}`",
                             f"--dump-config key {key} has no row in docs/configuration.md")


class DocsTest(unittest.TestCase):
    def test_docs_exist_and_links_resolve(self):
        for name in DOC_FILES:
            path = DOCS / name
            self.assertTrue(path.is_file(), f"docs/{name} is missing")
            text = path.read_text()
            self.assertGreater(len(text), 1500, f"docs/{name} is a stub")
            for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text):
                if re.match(r"[a-z]+://", target):
                    continue
                self.assertTrue((path.parent / target).resolve().exists(),
                                f"docs/{name} links to {target}, which does not exist")

    def test_referenced_repository_files_exist(self):
        for name in DOC_FILES:
            text = (DOCS / name).read_text()
            for ref in set(re.findall(r"\b((?:manifests|charts|scripts|tests)/[\w./-]+\.(?:yaml|sh|json|py))", text)):
                self.assertTrue((REPO / ref).exists(), f"docs/{name} names {ref}, which does not exist")

    def test_quoted_sidecar_versions_are_the_pinned_ones(self):
        pinned = {spec["image"].rsplit("/", 1)[1]: spec["tag"]
                  for spec in [*SIDECARS.values(), SNAPSHOT_CONTROLLER]}
        for name in DOC_FILES:
            text = (DOCS / name).read_text()
            for image, tag in re.findall(r"\b(csi-provisioner|csi-snapshotter|csi-resizer|"
                                         r"csi-node-driver-registrar|livenessprobe|"
                                         r"snapshot-controller):(v[0-9.]+)", text):
                self.assertEqual(tag, pinned[image], f"docs/{name} quotes {image}:{tag}")

    def test_microvm_descriptors_match_what_the_driver_writes(self):
        # usage.md and the README name the files and values the driver's code writes.
        code = "".join((REPO / "csi" / f).read_text()
                       for f in ("node/descriptor_exposure.cc", "node/node_exposure.cc", "options.cc"))
        facts = ("spdkvol", ".firecracker-drive.json", ".cloud-hypervisor-disk",
                 "--kata-direct-volume-dir", "mountInfo.json")
        for fact in facts:
            self.assertIn(fact, code, f"the driver no longer writes {fact}: update this test")
        for doc in (DOCS / "usage.md", REPO / "README.md"):
            text = doc.read_text()
            for fact in facts:
                self.assertIn(fact, text, f"{doc.name} does not document {fact}")
            self.assertNotIn("Being built", text, f"{doc.name}: the microVM exposure is built")

if __name__ == "__main__":
    unittest.main()
