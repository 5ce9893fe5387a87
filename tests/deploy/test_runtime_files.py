"""The image's runtime file set, built without Docker by scripts/stage-runtime.sh, runs
the binaries outside the build tree: from a staging directory that is then moved,
with an empty environment, and with every library resolved inside that directory."""

import os
import platform
import pathlib
import shutil
import subprocess
import tempfile
import unittest

from common import REPO

SCRIPT = REPO / "scripts" / "stage-runtime.sh"
CLEAN_ENV = {"PATH": "/usr/bin:/bin"}


# The binaries the image ships (Dockerfile) and the variable naming each one's build.
BINARY_VARS = {"stellarium": "STELLARIUM_BIN", "stellarium-csi": "STELLARIUM_CSI_BIN",
               "stellarium-fd-holder": "STELLARIUM_FD_HOLDER_BIN"}


def built(var):
    path = os.environ.get(var, "")
    return pathlib.Path(path) if path and pathlib.Path(path).is_file() else None


def stage(build_dir, out_dir, *names):
    return subprocess.run(["bash", str(SCRIPT), str(build_dir), str(out_dir), *names],
                          capture_output=True, text=True, timeout=300)


class StageRuntimeTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = pathlib.Path(tempfile.mkdtemp(prefix="stellarium-stage-"))
        cls.binaries = {}
        for name, var in BINARY_VARS.items():
            path = built(var)
            if path:
                cls.binaries[name] = path
        # A build directory holding only the binaries, like the Dockerfile's /build.
        cls.build = cls.tmp / "build"
        for name, path in cls.binaries.items():
            (cls.build / name).mkdir(parents=True)
            shutil.copy2(path, cls.build / name / name)
        staged = cls.tmp / "staged"
        cls.result = stage(cls.build, staged, *cls.binaries) if cls.binaries else None
        # Run from a directory that is neither the build tree nor where it was staged.
        cls.out = cls.tmp / "moved" / "opt-stellarium"
        if cls.result is not None and cls.result.returncode == 0:
            cls.out.parent.mkdir()
            staged.rename(cls.out)

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def need(self, name):
        if name not in self.binaries:
            var = BINARY_VARS[name]
            self.skipTest(f"{name} is not built in this build tree ({var} is empty): "
                          f"its CMake target does not exist yet")
        self.assertEqual(self.result.returncode, 0, self.result.stderr)

    def run_staged(self, name, *args):
        return subprocess.run([str(self.out / "bin" / name), *args], capture_output=True,
                              text=True, env=CLEAN_ENV, cwd="/", timeout=60)

    def test_stellarium_version_runs_from_the_staged_set(self):
        self.need("stellarium")
        r = self.run_staged("stellarium", "--version")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertRegex(r.stdout + r.stderr, r"\b\d+\.\d+\.\d+\b")
        if platform.machine() == "x86_64":
            # The multi-buffer SHA-256 library came along in the staged set and starts.
            self.assertIn("(chunk hashing: ipsec-mb ", r.stdout + r.stderr)

    def test_stellarium_csi_help_runs_from_the_staged_set(self):
        self.need("stellarium-csi")
        r = self.run_staged("stellarium-csi", "--help")
        self.assertEqual(r.returncode, 0, r.stderr)
        for flag in ("--endpoint", "--node-id", "--store", "--import-root"):
            self.assertIn(flag, r.stdout)

    def test_fd_holder_help_runs_from_the_staged_set(self):
        self.need("stellarium-fd-holder")
        r = self.run_staged("stellarium-fd-holder", "--help")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("--socket", r.stdout)

    def test_every_library_resolves_inside_the_staged_set(self):
        if not self.binaries:
            self.need("stellarium")
        lib = self.out / "lib"
        loaders = [p for p in lib.iterdir() if p.name.startswith("ld-linux")]
        self.assertEqual(len(loaders), 1, sorted(p.name for p in lib.iterdir()))
        for name in self.binaries:
            r = subprocess.run([str(loaders[0]), "--inhibit-cache", "--library-path", str(lib),
                                "--list", str(self.out / "libexec" / name)],
                               capture_output=True, text=True, env=CLEAN_ENV, timeout=60)
            self.assertEqual(r.returncode, 0, r.stderr)
            resolved = [line.split("=>")[1].split("(")[0].strip()
                        for line in r.stdout.splitlines() if "=>" in line]
            self.assertGreater(len(resolved), 3, r.stdout)
            for path in resolved:
                self.assertTrue(path.startswith(str(lib) + "/"),
                                f"{name} loads {path} from outside the staged set:\n{r.stdout}")

    def test_manifest_lists_every_staged_file_with_its_hash(self):
        if not self.binaries:
            self.need("stellarium")
        files = sorted(str(p.relative_to(self.out)) for p in self.out.rglob("*")
                       if p.is_file() and p.name != "MANIFEST")
        lines = (self.out / "MANIFEST").read_text().splitlines()
        self.assertEqual(sorted(line.split("  ", 1)[1] for line in lines), files)
        r = subprocess.run(["sha256sum", "--check", "--quiet", "MANIFEST"], cwd=self.out,
                           capture_output=True, text=True, timeout=120)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)


class StageRuntimeErrorsTest(unittest.TestCase):
    """Bad input: a clear error naming the thing, and nothing staged."""

    def setUp(self):
        self.tmp = pathlib.Path(tempfile.mkdtemp(prefix="stellarium-stage-err-"))
        self.addCleanup(shutil.rmtree, self.tmp, True)

    def test_missing_binary_is_named(self):
        (self.tmp / "build").mkdir()
        r = stage(self.tmp / "build", self.tmp / "out", "stellarium")
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("binary 'stellarium' not found", r.stderr)
        self.assertFalse(any((self.tmp / "out" / "libexec").glob("*")))

    def test_missing_build_dir_is_named(self):
        r = stage(self.tmp / "nope", self.tmp / "out")
        self.assertNotEqual(r.returncode, 0)
        self.assertIn(f"build directory {self.tmp / 'nope'} does not exist", r.stderr)
        self.assertFalse((self.tmp / "out").exists())

    def test_non_empty_output_dir_is_refused(self):
        (self.tmp / "build").mkdir()
        (self.tmp / "out").mkdir()
        (self.tmp / "out" / "keep").write_text("mine")
        r = stage(self.tmp / "build", self.tmp / "out", "stellarium")
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("exists and is not empty", r.stderr)
        self.assertEqual(sorted(p.name for p in (self.tmp / "out").iterdir()), ["keep"])

    def test_a_library_ldd_cannot_find_is_named(self):
        # A real binary whose needed library is absent: copy a system ELF and point it at
        # a library name that does not exist by editing its DT_NEEDED string in place.
        src = pathlib.Path("/bin/true").read_bytes()
        needle = b"libc.so.6\x00"
        self.assertIn(needle, src)
        broken = src.replace(needle, b"libq.so.6\x00", 1)
        (self.tmp / "build").mkdir()
        target = self.tmp / "build" / "stellarium"
        target.write_bytes(broken)
        target.chmod(0o755)
        r = stage(self.tmp / "build", self.tmp / "out", "stellarium")
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("stellarium needs libq.so.6", r.stderr)


if __name__ == "__main__":
    unittest.main()
