"""The Dockerfile, read as text (no Docker engine runs here): two bookworm stages, the
build stage installs the project's own package lists and stages the runtime set with
scripts/stage-runtime.sh, the runtime stage copies exactly that set, and every file the
build context needs is in the context."""

import fnmatch
import re
import unittest

from common import REPO


def instructions(text):
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    out, current = [], ""
    for line in text.splitlines():
        if not current and (not line.strip() or line.lstrip().startswith("#")):
            continue
        current += line.rstrip("\\").strip() + " " if line.endswith("\\") else line.strip()
        if not line.endswith("\\"):
            word, _, rest = current.partition(" ")
            out.append((word.upper(), rest.strip()))
            current = ""
    return out


class DockerfileTest(unittest.TestCase):
    def setUp(self):
        self.ins = instructions((REPO / "Dockerfile").read_text())
        self.args = {a.split("=", 1)[0]: a.split("=", 1)[1] for i, a in self.ins
                     if i == "ARG" and "=" in a}
        self.stages = {}
        name = None
        for i, a in self.ins:
            if i == "FROM":
                m = re.fullmatch(r"(\S+) AS (\S+)", a)
                self.assertIsNotNone(m, f"FROM without a stage name: {a}")
                name = m.group(2)
                self.stages[name] = {"from": m.group(1), "ins": []}
            elif name:
                self.stages[name]["ins"].append((i, a))

    def base(self, stage):
        image = self.stages[stage]["from"]
        return re.sub(r"\$\{(\w+)\}", lambda m: self.args[m.group(1)], image)

    def test_two_bookworm_stages(self):
        self.assertEqual(list(self.stages), ["build", "runtime"])
        self.assertEqual(self.base("build"), "debian:bookworm")
        self.assertEqual(self.base("runtime"), "debian:bookworm-slim")

    def test_build_stage_uses_the_project_package_lists_and_stages_the_binaries(self):
        runs = " ".join(a for i, a in self.stages["build"]["ins"] if i == "RUN")
        self.assertIn("scripts/install-deps.sh", runs)
        self.assertRegex(runs, r"--target stellarium stellarium-csi")
        self.assertRegex(runs, r"scripts/stage-runtime\.sh /build /out stellarium stellarium-csi")
        copies = [a for i, a in self.stages["build"]["ins"] if i == "COPY"]
        self.assertIn("scripts/deps/ /src/scripts/deps/", copies)

    def test_runtime_stage_has_the_tools_and_only_the_staged_set(self):
        ins = self.stages["runtime"]["ins"]
        runs = " ".join(a for i, a in ins if i == "RUN")
        for pkg in ("e2fsprogs", "util-linux", "mount", "fuse3"):
            self.assertRegex(runs, rf"\b{pkg}\b")
        copies = [a for i, a in ins if i == "COPY"]
        self.assertEqual(copies, ["--from=build /out/ /opt/stellarium/"])
        self.assertIn("/usr/local/bin/stellarium --version", runs)
        self.assertIn("/usr/local/bin/stellarium-csi --version", runs)
        self.assertEqual([a for i, a in ins if i == "ENTRYPOINT"], ['["/usr/local/bin/stellarium-csi"]'])

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
        needed = ["scripts/install-deps.sh", "scripts/deps/core.txt", "scripts/stage-runtime.sh",
                  "CMakeLists.txt", "core", "builder", "csi"]
        for i, a in self.stages["build"]["ins"]:
            if i == "COPY" and not a.startswith("--from"):
                src = a.split()[0]
                if src != ".":
                    needed.append(src.rstrip("/"))
        for path in needed:
            self.assertTrue((REPO / path).exists(), f"COPY source {path} is missing")
            for pattern in ignore:
                self.assertFalse(fnmatch.fnmatch(path, pattern.rstrip("/")) or
                                 fnmatch.fnmatch(path.split("/")[0] + "/", pattern),
                                 f".dockerignore pattern {pattern} hides {path}")


if __name__ == "__main__":
    unittest.main()
