"""scripts/demo.sh end to end, as the README runs it: the real driver, its fd holder and
client over a unix socket, a real ext4 image, loop devices and mounts.

The demo's output goes to one file for stdout and stderr (`demo.sh >log 2>&1`); the
tests read the figures it prints, check them against each other, and check that nothing
of the demo is left mounted, attached or running afterwards, also when it is interrupted
(SIGINT to its process group, as Ctrl-C in a terminal sends) or refuses bad input.

Environment (set by CMake): STELLARIUM_SOURCE_DIR, the binaries' paths
STELLARIUM_CSI_BIN, STELLARIUM_CSI_CLIENT_BIN, STELLARIUM_FD_HOLDER_BIN, and
DEMO_TEST_CLONES / DEMO_TEST_IMAGE_MIB for the full run (the README's sizes unless set).
"""

import glob
import os
import pathlib
import re
import shutil
import signal
import subprocess
import tempfile
import time
import unittest

SOURCE = pathlib.Path(os.environ.get("STELLARIUM_SOURCE_DIR", pathlib.Path(__file__).parents[2]))
DEMO = SOURCE / "scripts" / "demo.sh"
BINARIES = ("STELLARIUM_CSI_BIN", "STELLARIUM_CSI_CLIENT_BIN", "STELLARIUM_FD_HOLDER_BIN")


def mount_points():
    with open("/proc/self/mountinfo") as f:
        return [line.split()[4] for line in f]


def loop_backing_files():
    files = []
    for path in glob.glob("/sys/block/loop*/loop/backing_file"):
        try:
            files.append(pathlib.Path(path).read_text().strip())
        except OSError:  # detached meanwhile
            pass
    return files


def processes_mentioning(text):
    found = []
    for cmdline in glob.glob("/proc/[0-9]*/cmdline"):
        try:
            args = pathlib.Path(cmdline).read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in args:
            found.append(args)
    return found


def number(pattern, text):
    m = re.search(pattern, text, re.M)
    if not m:
        raise AssertionError(f"no line matching {pattern!r} in the demo's output:\n{text}")
    return int(m.group(1))


class DemoTest(unittest.TestCase):
    def setUp(self):
        if os.geteuid() != 0:
            self.skipTest("the demo needs root (loop devices, mounts)")
        if not os.path.exists("/dev/fuse"):
            self.skipTest("the demo needs /dev/fuse")
        missing = [b for b in BINARIES if not os.path.isfile(os.environ.get(b, ""))]
        if missing:
            self.skipTest(f"not built in this build tree: {', '.join(missing)}")
        self.parent = tempfile.mkdtemp(prefix="demo-test-")
        self.addCleanup(shutil.rmtree, self.parent, ignore_errors=True)
        self.log_path = os.path.join(self.parent, "demo.log")

    def start(self, **env):
        """Starts the demo with stdout and stderr on one file, in a process group of its own
        with SIGINT at its default (as from a terminal)."""
        full_env = dict(os.environ, DEMO_WORK_DIR=self.parent, **env)
        self.log = open(self.log_path, "w")
        self.addCleanup(self.log.close)
        return subprocess.Popen(
            ["bash", str(DEMO)], stdout=self.log, stderr=subprocess.STDOUT, env=full_env,
            start_new_session=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))

    def output(self):
        return pathlib.Path(self.log_path).read_text()

    def assert_nothing_left(self, text):
        work = re.search(r"^work directory: (\S+)$", text, re.M)
        self.assertIsNotNone(work, text)
        work = work.group(1)
        self.assertTrue(work.startswith(self.parent + "/"), work)
        self.assertEqual([m for m in mount_points() if m.startswith(work + "/")], [],
                         "mounts left under the demo's work directory")
        self.assertEqual([f for f in loop_backing_files() if f.startswith(work + "/")], [],
                         "loop devices left on the demo's files")
        self.assertEqual(processes_mentioning(work), [], "processes of the demo still run")
        self.assertFalse(os.path.exists(work), f"{work} was not removed")

    def test_full_run_prints_the_figures_and_leaves_nothing(self):
        clones = int(os.environ.get("DEMO_TEST_CLONES", "100"))
        image_mib = int(os.environ.get("DEMO_TEST_IMAGE_MIB", "1024"))
        proc = self.start(DEMO_CLONES=str(clones), DEMO_IMAGE_MIB=str(image_mib))
        rc = proc.wait(timeout=1200)
        text = self.output()
        self.assertEqual(rc, 0, text)

        # Every step's output is in the file, in order: nothing truncated it (the old demo's
        # `tee /dev/stderr` reopened the log and cut everything before the stage step).
        headers = re.findall(r"^== (.*?)  \[", text, re.M)
        self.assertEqual(len(headers), 9, text)
        self.assertTrue(text.startswith("Stellarium demo: "), text[:200])
        for first, then in (("an ext4 image", "start stellarium-fd-holder"),
                            ("CreateVolume from the image", "a second version"),
                            ("NodeStageVolume", "NodePublishVolume"),
                            ("NodePublishVolume", "stop the driver")):
            self.assertLess(text.index("== " + first), text.index("== " + then))

        # The import summary adds up: every block is zero, a duplicate or a new chunk.
        raw = number(r"^  raw size +(\d+)", text)
        self.assertEqual(raw, image_mib << 20)
        blocks = number(r"^  blocks +(\d+)", text)
        zero = number(r"^  zero blocks +(\d+)", text)
        dup = number(r"^  duplicate blocks +(\d+)", text)
        new = number(r"^  new chunks +(\d+)", text)
        self.assertEqual(blocks, raw // 4096)
        self.assertEqual(zero + dup + new, blocks, "zero + duplicate + new blocks != blocks")
        # A quarter of the image is left free by the demo; real files repeat blocks.
        self.assertGreaterEqual(zero, blocks // 5, "the image's free space is not zero blocks")
        self.assertGreater(dup, 0, "no duplicate blocks in a tree of real files")
        stored = number(r"^  store on disk +(\d+)", text)
        self.assertLess(stored, raw, "the store is larger than the image")
        self.assertRegex(text, rf"dedup: {dup} duplicate blocks and {zero} zero blocks of {blocks}")
        # The second version of the image stores only what changed.
        v2_new = number(r"^golden-v2: .* raw, (\d+) new chunks", text)
        self.assertGreater(v2_new, 0)
        self.assertLess(v2_new, blocks // 1000, "the second version was not deduplicated")

        self.assertRegex(text, rf"(?m)^{clones} clones created in \d+\.\d s ")
        self.assertRegex(text, rf"(?m)^{clones} clones staged in \d+\.\d s ")
        self.assertRegex(text, rf"(?m)^on this node now: {clones} loop devices .*, {clones} ext4 mounts$")
        m = re.search(r"(?m)^store on disk: ([\d.]+) MiB before the clones, ([\d.]+) MiB with "
                      rf"{clones} clones staged: grew by (-?\d+) KiB \((\d+) new chunks\)$", text)
        self.assertIsNotNone(m, text)
        before, after = float(m.group(1)), float(m.group(2))
        growth_kib, clone_chunks = int(m.group(3)), int(m.group(4))
        self.assertAlmostEqual(after - before, growth_kib / 1024, delta=0.11)
        # Clones are pointers: staging mounts ext4, which writes a block or so per clone;
        # nothing near a copy.
        self.assertLess(growth_kib, clones * 1024, "the clones grew the store by >= 1 MiB each")
        self.assertLess(clone_chunks, clones * 16)
        self.assertLess(number(r"^golden-v2: .* store grew by (\d+) KiB", text), 1024)

        self.assertIn("  Hello from a Stellarium volume\n", text)
        self.assertIn("read back: identical to the original\n", text)
        self.assertIn(f"{clones} clones unstaged in ", text)
        self.assertIn("no volumes left\n", text)
        self.assertIn("nothing of the demo is mounted or attached\n", text)
        self.assertRegex(text, r"\ndemo: OK in \d+\.\d s\n$")
        self.assert_nothing_left(text)

    def test_ctrl_c_while_staging_undoes_everything(self):
        proc = self.start(DEMO_CLONES="20", DEMO_IMAGE_MIB="128")
        deadline = time.monotonic() + 600
        while "10/20 staged" not in self.output():
            self.assertIsNone(proc.poll(), self.output())
            self.assertLess(time.monotonic(), deadline, self.output())
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C sends to the foreground group
        rc = proc.wait(timeout=300)
        text = self.output()
        self.assertEqual(rc, 130, text)
        self.assertIn("demo: interrupted\n", text)
        self.assertIn("undoing what was staged and published", text)
        self.assertNotIn("demo: OK", text)
        self.assert_nothing_left(text)

    def test_bad_input_is_refused_before_anything_is_made(self):
        for env, message in (({"DEMO_CLONES": "0"}, "DEMO_CLONES='0': a number from 1"),
                             ({"DEMO_IMAGE_MIB": "16"}, "DEMO_IMAGE_MIB='16': a number of MiB from 64"),
                             ({"STELLARIUM_CSI_BIN": "/nonexistent/stellarium-csi"},
                              "/nonexistent/stellarium-csi is not an executable")):
            proc = self.start(**env)
            self.assertEqual(proc.wait(timeout=60), 1, self.output())
            self.assertIn(message, self.output())
            self.assertEqual(os.listdir(self.parent), ["demo.log"], "the demo made files")


if __name__ == "__main__":
    unittest.main()
