"""The Dockerfile, read as text (no Docker engine runs here): two bookworm stages; the
build stage installs the build package list only and stages the project's binaries
with scripts/stage-runtime.sh; the runtime stage installs the runtime package list only
and copies exactly the staged binaries; every file the build context needs is in it.
test_runtime_image.py runs what these stages produce."""

import fnmatch
import re
import subprocess
import unittest

from common import REPO
from dockerfile import installed_lists, runs, smoke_commands, staged_binaries, stages

DEPS = REPO / "scripts" / "deps"
# Tools that belong to tests and fuzzing, never to the image's build stage.
TEST_TOOLS = {"qemu-system-x86", "qemu-utils", "busybox-static", "clang", "libclang-rt-14-dev",
              "libgtest-dev", "libgmock-dev", "debootstrap", "python3-yaml", "git"}


def package_list(*names):
    """The packages install-deps.sh installs for these lists on this architecture."""
    args = ["bash", str(REPO / "scripts" / "install-deps.sh"), "--print"]
    for name in names:
        args += ["--only", name]
    r = subprocess.run(args, capture_output=True, text=True, timeout=60)
    if r.returncode != 0:
        raise AssertionError(f"install-deps.sh --print {names}: {r.stderr}")
    return set(r.stdout.split())


class DockerfileTest(unittest.TestCase):
    def setUp(self):
        self.stages = stages()
        text = (REPO / "Dockerfile").read_text()
        self.args = dict(m.groups() for m in re.finditer(r"^ARG (\w+)=(\S+)", text, re.M))

    def base(self, stage):
        image = self.stages[stage]["from"]
        return re.sub(r"\$\{(\w+)\}", lambda m: self.args[m.group(1)], image)

    def test_two_bookworm_stages(self):
        self.assertEqual(list(self.stages), ["build", "runtime"])
        self.assertEqual(self.base("build"), "debian:bookworm")
        self.assertEqual(self.base("runtime"), "debian:bookworm-slim")

    def test_build_stage_installs_build_dependencies_only(self):
        self.assertEqual(installed_lists("build"), ["build"])
        copies = [a for i, a in self.stages["build"]["ins"] if i == "COPY"]
        self.assertIn("scripts/deps/build.txt /src/scripts/deps/build.txt", copies)
        self.assertFalse(any(c.startswith("scripts/deps/ ") for c in copies),
                         "the build stage must not see the other lists")
        self.assertNotRegex(runs("build"), r"apt-get\s+install",
                            "packages come from scripts/deps/build.txt only")
        build = package_list("build")
        self.assertEqual(build & TEST_TOOLS, set(), "test tools in scripts/deps/build.txt")
        self.assertEqual(build & package_list("test"), set(),
                         "a package is both in build.txt and test.txt")

    def test_build_stage_stages_the_shipped_binaries_stripped(self):
        names = staged_binaries()
        self.assertEqual(names, ["stellarium", "stellarium-csi", "stellarium-fd-holder",
                                 "stellarium-csi-client"])
        build = runs("build")
        self.assertRegex(build, r"--target " + " ".join(names))
        # Each staged name is a CMake executable target of this tree.
        targets = set()
        for cmake in REPO.glob("**/CMakeLists.txt"):
            if "build" not in cmake.relative_to(REPO).parts[:1]:
                targets |= set(re.findall(r"add_executable\(\s*([\w.-]+)", cmake.read_text()))
        for name in names:
            self.assertIn(name, targets, f"{name}: no add_executable target")
        script = (REPO / "scripts" / "stage-runtime.sh").read_text()
        self.assertIn("strip --strip-all", script)
        self.assertNotIn("ldd", script, "libraries come from Debian packages, not the build stage")

    def test_runtime_stage_installs_the_runtime_list_and_copies_only_the_binaries(self):
        self.assertEqual(installed_lists("runtime"), ["runtime"])
        ins = self.stages["runtime"]["ins"]
        run = runs("runtime")
        self.assertNotRegex(run, r"apt-get\s+install", "packages come from runtime.txt only")
        self.assertIn("rm -rf /var/lib/apt/lists/*", run)
        copies = [a for i, a in ins if i == "COPY"]
        self.assertEqual(copies, ["--from=build /out/ /"])
        self.assertEqual(sorted(smoke_commands()), sorted(staged_binaries()),
                         "the runtime stage starts every staged binary")
        self.assertEqual([a for i, a in ins if i == "ENTRYPOINT"],
                         ['["/usr/local/bin/stellarium-csi"]'])
        runtime = package_list("runtime")
        self.assertIn("ca-certificates", runtime)
        self.assertEqual(runtime & TEST_TOOLS, set())

    def test_runtime_stage_is_non_root_labelled_and_states_its_health_check(self):
        ins = self.stages["runtime"]["ins"]
        (user,) = [a for i, a in ins if i == "USER"]
        self.assertRegex(user, r"^[1-9][0-9]*:[1-9][0-9]*$")
        labels = " ".join(a for i, a in ins if i == "LABEL")
        for key in ("title", "description", "version", "source"):
            self.assertIn(f"org.opencontainers.image.{key}=", labels)
        self.assertIn(("HEALTHCHECK", "NONE"), ins)

    def test_copied_sources_exist_and_are_not_docker_ignored(self):
        ignore = [l.strip() for l in (REPO / ".dockerignore").read_text().splitlines()
                  if l.strip() and not l.startswith("#")]
        needed = ["scripts/install-deps.sh", "scripts/deps/build.txt", "scripts/deps/runtime.txt",
                  "scripts/stage-runtime.sh", "CMakeLists.txt", "core", "builder", "csi"]
        for stage in self.stages.values():
            for i, a in stage["ins"]:
                if i == "COPY" and not a.startswith("--from"):
                    src = a.split()[0]
                    if src != ".":
                        needed.append(src.rstrip("/"))
        for m in re.finditer(r"--mount=type=bind,source=([\w./-]+)", runs("runtime")):
            needed.append(m.group(1))
        for path in needed:
            self.assertTrue((REPO / path).exists(), f"COPY source {path} is missing")
            for pattern in ignore:
                self.assertFalse(fnmatch.fnmatch(path, pattern.rstrip("/")) or
                                 fnmatch.fnmatch(path.split("/")[0] + "/", pattern),
                                 f".dockerignore pattern {pattern} hides {path}")


class InstallDepsTest(unittest.TestCase):
    """scripts/install-deps.sh: what CI installs covers every list; --only is exact."""

    def test_default_installs_build_runtime_and_test(self):
        everything = package_list("build", "runtime", "test")
        r = subprocess.run(["bash", str(REPO / "scripts" / "install-deps.sh"), "--print"],
                           capture_output=True, text=True, timeout=60)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(set(r.stdout.split()), everything)
        self.assertEqual({p.stem for p in DEPS.glob("*.txt")},
                         {"build", "runtime", "test", "bench"},
                         "a new list must be installed by default (or be bench.txt)")

    def test_unknown_list_is_named(self):
        r = subprocess.run(["bash", str(REPO / "scripts" / "install-deps.sh"), "--print",
                            "--only", "nope"], capture_output=True, text=True, timeout=60)
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("there is no scripts/deps/nope.txt", r.stderr)


if __name__ == "__main__":
    unittest.main()
