"""The container image's runtime, run the way a node runs it, without a Docker engine.

A minimal Debian 12 (`debootstrap --variant=minbase bookworm`, from the Debian mirror that
this machine's apt sources name) gets what the Dockerfile's runtime stage gives
debian:bookworm-slim: the package lists the runtime stage names, installed by the same
script (scripts/install-deps.sh --only runtime), then the binaries the build stage names,
built from this tree and stripped by the same script (scripts/stage-runtime.sh). Inside
it (chroot in a private mount namespace, tests/deploy/image_run.sh):
  - every binary starts, every library it links resolves to a package of the list, and
    every library package of the list is linked by some binary;
  - every program the driver and the CLI run is on PATH;
  - the CLI builds a volume from a directory tree, snapshots, clones and exports it, as the
    image's default user and with a read-only root file system;
  - an HTTPS image source is trusted through the system trust store (ca-certificates);
  - the driver and the fd holder run with the node DaemonSet's command, args, mounts and
    securityContext (manifests/daemonset.yaml) and stage, publish, unstage and restage a
    volume: blkid, mkfs.ext4, mount and umount from the image.

The debootstrapped root with the runtime packages is cached in the build directory, keyed
by everything that goes into it (package list, install script, mirror, architecture,
debootstrap version), so a rerun only copies it; a fresh build directory (CI) builds it.
"""

import fcntl
import hashlib
import http.server
import os
import pathlib
import re
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import unittest
import urllib.request

from common import REPO, daemonset_containers, install_objects, stop_process
from dockerfile import installed_lists, smoke_commands, staged_binaries

IMAGE_RUN = pathlib.Path(__file__).resolve().parent / "image_run.sh"
INSTALL_DEPS = REPO / "scripts" / "install-deps.sh"
STAGE = REPO / "scripts" / "stage-runtime.sh"
SUITES = ("bookworm", "bookworm-updates", "bookworm-security")
# The image's default user (Dockerfile USER) and the variables naming each binary's build.
IMAGE_USER = "65532:65532"
BINARY_VARS = {"stellarium": "STELLARIUM_BIN", "stellarium-csi": "STELLARIUM_CSI_BIN",
               "stellarium-fd-holder": "STELLARIUM_FD_HOLDER_BIN",
               "stellarium-csi-client": "STELLARIUM_CSI_CLIENT_BIN"}
# Bump when the way the cached root is made changes.
CACHE_FORMAT = "1"
IMAGE_PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def log(msg):
    print(f"test_runtime_image: {msg}", file=sys.stderr, flush=True)


def debian_sources():
    """(uri, suite) of every enabled `deb` entry of this machine's apt sources for the
    suites the Debian 12 image uses, with the component main."""
    found = []
    apt = pathlib.Path("/etc/apt")
    lists = [apt / "sources.list"] + sorted((apt / "sources.list.d").glob("*.list"))
    for path in lists:
        if not path.is_file():
            continue
        for line in path.read_text().splitlines():
            line = re.sub(r"\[[^]]*\]", " ", line.split("#", 1)[0]).split()
            if len(line) >= 4 and line[0] == "deb" and line[2] in SUITES and "main" in line[3:]:
                found.append((line[1], line[2]))
    for path in sorted((apt / "sources.list.d").glob("*.sources")):
        for stanza in re.split(r"\n\s*\n", path.read_text()):
            fields, key = {}, None
            for line in stanza.splitlines():
                if line.startswith("#"):
                    continue
                if line[:1].isspace() and key:
                    fields[key] += " " + line.strip()
                elif ":" in line:
                    key, _, value = line.partition(":")
                    key = key.strip().lower()
                    fields[key] = value.strip()
            if ("deb" not in fields.get("types", "").split()
                    or fields.get("enabled", "yes").lower() == "no"
                    or "main" not in fields.get("components", "").split()):
                continue
            for uri in fields.get("uris", "").split():
                for suite in fields.get("suites", "").split():
                    if suite in SUITES:
                        found.append((uri, suite))
    return found


def runtime_packages():
    args = ["bash", str(INSTALL_DEPS), "--print"]
    for name in installed_lists("runtime"):
        args += ["--only", name]
    r = subprocess.run(args, capture_output=True, text=True, timeout=60, check=True)
    return r.stdout.split()


def unshare(root, cmd, ro=True, rw=(), tmpfs=("/tmp",), dev=False, user=None):
    """The argv that runs `cmd` in `root` as image_run.sh describes."""
    argv = ["unshare", "--mount", "--propagation", "private", "sh", str(IMAGE_RUN), str(root)]
    if ro:
        argv.append("--ro")
    for src, dst in rw:
        argv += ["--rw", f"{src}:{dst}"]
    for dst in tmpfs:
        argv += ["--tmpfs", dst]
    if dev:
        argv.append("--dev")
    if user:
        argv += ["--user", user]
    return argv + ["--", *cmd]


def run(argv, timeout=300, **kw):
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, **kw)


class RootCache:
    """The debootstrapped Debian 12 with the runtime packages, built once per key."""

    def __init__(self, base):
        self.base = base
        self.arch = run(["dpkg", "--print-architecture"], check=True).stdout.strip()
        self.sources = debian_sources()
        self.packages = runtime_packages()

    def key(self):
        h = hashlib.sha256()
        version = run(["dpkg-query", "-W", "-f", "${Version}", "debootstrap"]).stdout
        for part in (CACHE_FORMAT, self.arch, version, repr(self.sources), repr(self.packages),
                     INSTALL_DEPS.read_text(), IMAGE_RUN.read_text()):
            h.update(part.encode() + b"\0")
        return h.hexdigest()[:16]

    def mirror(self):
        for uri, suite in self.sources:
            if suite == "bookworm":
                return uri
        return None

    def get(self):
        """The cached root's path, building it first if needed."""
        self.base.mkdir(parents=True, exist_ok=True)
        final = self.base / f"bookworm-{self.arch}-{self.key()}"
        with open(self.base / ".lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if (final / "READY").is_file():
                log(f"reusing the cached root {final} ({(final / 'READY').read_text().strip()})")
                return final / "root"
            for stale in self.base.glob("bookworm-*"):
                shutil.rmtree(stale, ignore_errors=True)
            building = self.base / f".building-{os.getpid()}"
            shutil.rmtree(building, ignore_errors=True)
            building.mkdir()
            start = time.monotonic()
            try:
                self.build(building)
            except BaseException:
                shutil.rmtree(building, ignore_errors=True)
                raise
            took = time.monotonic() - start
            building.rename(final)
            (final / "READY").write_text(f"built in {took:.0f} s\n")
            log(f"built the root in {took:.0f} s: {final}")
            return final / "root"

    def build(self, dir_):
        root = dir_ / "root"
        r = run(["debootstrap", "--variant=minbase", f"--arch={self.arch}", "bookworm",
                 str(root), self.mirror()], timeout=1800)
        (dir_ / "debootstrap.log").write_text(r.stdout + r.stderr)
        if r.returncode != 0:
            raise AssertionError(f"debootstrap failed ({self.mirror()}):\n{r.stderr[-3000:]}")
        # The apt sources of debian:bookworm-slim, on this machine's mirrors.
        lines = [f"deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] {uri} {suite} main"
                 for uri, suite in self.sources]
        (root / "etc/apt/sources.list").write_text("\n".join(lines) + "\n")
        # The runtime stage's RUN: the scripts directory mounted at the same place.
        r = run(unshare(root, ["/tmp/stellarium-scripts/install-deps.sh",
                               *[a for n in installed_lists("runtime") for a in ("--only", n)]],
                        ro=False, tmpfs=(), rw=[(REPO / "scripts", "/tmp/stellarium-scripts")]),
                timeout=1800)
        (dir_ / "install-deps.log").write_text(r.stdout + r.stderr)
        if r.returncode != 0:
            raise AssertionError(f"install-deps.sh --only runtime in the root failed:\n"
                                 f"{(r.stdout + r.stderr)[-3000:]}")
        shutil.rmtree(root / "tmp/stellarium-scripts")
        for leftover in ("var/lib/apt/lists", "var/cache/apt/archives"):
            for p in (root / leftover).glob("*"):
                if p.is_file():
                    p.unlink()


class ImageTestBase(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        missing = [t for t in ("debootstrap", "unshare", "chroot", "nsenter") if not shutil.which(t)]
        if os.geteuid() != 0 or missing:
            raise unittest.SkipTest(
                "debootstrap cannot run here: " + ("not root" if os.geteuid() != 0 else
                                                  f"{', '.join(missing)} not found") +
                " (scripts/deps/test.txt installs debootstrap; the test needs root)")
        cls.binaries = {}
        for name in staged_binaries():
            path = os.environ.get(BINARY_VARS.get(name, ""), "")
            if not path:
                raise unittest.SkipTest(f"{name} is not a target of this build tree")
            if not pathlib.Path(path).is_file():
                raise AssertionError(f"{name} is not built ({path}); build it first")
            cls.binaries[name] = pathlib.Path(path)
        cache = RootCache(pathlib.Path(os.environ.get("STELLARIUM_BINARY_DIR") or REPO / "build")
                          / "deploy-rootfs")
        if cache.mirror() is None:
            raise AssertionError("no `deb ... bookworm ... main` entry in /etc/apt/sources.list(.d)"
                                 ": no mirror to debootstrap from")
        cls.packages = set(cache.packages)
        cached = cache.get()
        cls.tmp = pathlib.Path(tempfile.mkdtemp(prefix="stellarium-image-"))
        cls.addClassCleanup(shutil.rmtree, cls.tmp, True)
        cls.root = cls.tmp / "root"
        start = time.monotonic()
        subprocess.run(["cp", "-a", "--reflink=auto", str(cached), str(cls.root)], check=True)
        # The build stage: a build tree with the binaries, staged stripped into /out;
        # then COPY --from=build /out/ /.
        build = cls.tmp / "build"
        for name, path in cls.binaries.items():
            (build / name).mkdir(parents=True)
            shutil.copy2(path, build / name / name)
        r = run(["bash", str(STAGE), str(build), str(cls.tmp / "out"), *cls.binaries])
        if r.returncode != 0:
            raise AssertionError(f"stage-runtime.sh: {r.stderr}")
        subprocess.run(["cp", "-a", f"{cls.tmp / 'out'}/.", str(cls.root)], check=True)
        shutil.rmtree(build)
        log(f"root ready in {time.monotonic() - start:.1f} s "
            f"({run(['du', '-sh', str(cls.root)]).stdout.split()[0]})")

    def image(self, *cmd, user=IMAGE_USER, ro=True, rw=(), timeout=300, input=None):
        """Runs cmd in the image as `docker run --read-only --tmpfs /tmp` would."""
        return run(unshare(self.root, list(cmd), ro=ro, rw=rw, user=user), timeout=timeout,
                   input=input)

    def ok(self, *cmd, **kw):
        r = self.image(*cmd, **kw)
        self.assertEqual(r.returncode, 0, f"{' '.join(cmd)} in the image failed:\n"
                                          f"{r.stdout[-2000:]}{r.stderr[-3000:]}")
        return r


class RuntimeImageTest(ImageTestBase):
    def test_every_binary_starts(self):
        # As the runtime stage's RUN starts them: --version where a binary has it.
        started = smoke_commands()
        self.assertEqual(sorted(started), sorted(self.binaries))
        for name, flag in started.items():
            r = self.ok(name, flag)
            if flag == "--version":
                self.assertRegex(r.stdout, rf"^{name} \d+\.\d+\.\d+", name)

    def test_every_linked_library_comes_from_a_listed_package(self):
        used = set()
        for name in self.binaries:
            # What the binary links (DT_NEEDED, read on the host: the image has no binutils)
            # and where the image's loader finds it (ldd in the image).
            dynamic = run(["readelf", "-d", str(self.root / "usr/local/bin" / name)], check=True)
            needed = re.findall(r"\(NEEDED\)\s+Shared library: \[([^]]+)\]", dynamic.stdout)
            self.assertTrue(needed, f"{name} links no library: {dynamic.stdout}")
            r = self.ok("ldd", f"/usr/local/bin/{name}", user=None)
            self.assertNotIn("not found", r.stdout, f"{name} in the image:\n{r.stdout}")
            paths = dict(re.findall(r"^\s*(\S+) => (/\S+)", r.stdout, re.M))
            paths.update({os.path.basename(p): p for p in re.findall(r"^\s*(/\S+) \(", r.stdout, re.M)})
            for soname in needed:
                self.assertIn(soname, paths, f"{name}: ldd in the image does not resolve {soname}")
                owners = self.ok("dpkg", "-S", f"*/{os.path.basename(paths[soname])}",
                                 user=None).stdout
                pkgs = {line.split(":")[0] for line in owners.splitlines() if ": " in line}
                listed = pkgs & self.packages
                self.assertTrue(listed, f"{name} links {soname} from {sorted(pkgs)}, which "
                                        f"scripts/deps/runtime.txt does not name")
                used |= listed
        self.assertGreater(len(used), 10, "the binaries link a dozen Debian libraries")
        libs = {p for p in self.packages if p.startswith("lib") or p == "zlib1g"}
        self.assertEqual(sorted(libs - used), [],
                         "library packages in scripts/deps/runtime.txt that no binary links")

    def test_programs_the_driver_and_cli_run_are_on_path(self):
        programs = set()
        for path in list((REPO / "csi").rglob("*.cc")) + list((REPO / "core").rglob("*.cc")) + \
                list((REPO / "builder").rglob("*.cc")):
            if path.name.endswith("_test.cc"):
                continue
            text = path.read_text()
            # RunProgram({"prog", ...}) and RunProgram(v) with v = {"prog", ...} earlier.
            programs |= set(re.findall(r'RunProgram(?:Ok)?\(\{"([\w.+-]+)"', text))
            for var in set(re.findall(r"RunProgram(?:Ok)?\((\w+)", text)):
                programs |= set(re.findall(rf'\b{var}\s*=\s*\{{"([\w.+-]+)"', text))
        # The scan must keep finding the programs it found when it was written.
        self.assertLessEqual({"mount", "umount", "blkid", "mkfs.ext4", "resize2fs"}, programs)
        # libfuse3 runs fusermount3 when it cannot mount /dev/fuse itself.
        programs.add("fusermount3")
        for program in sorted(programs):
            r = self.image("sh", "-c", 'command -v "$1"', "sh", program)
            self.assertEqual(r.returncode, 0, f"{program} is not on PATH in the image "
                                              f"(scripts/deps/runtime.txt)")

    def test_cli_builds_snapshots_clones_and_exports_as_the_image_user(self):
        data = self.tmp / "cli"
        tree = data / "tree"
        (tree / "etc").mkdir(parents=True)
        files = {"etc/hostname": b"stellarium\n", "blob.bin": os.urandom(3 << 20) * 2,
                 "etc/zeros": bytes(1 << 20)}
        for rel, content in files.items():
            (tree / rel).write_bytes(content)
        subprocess.run(["chown", "-R", IMAGE_USER, str(data)], check=True)
        rw = [(data, "/data")]
        store = ["--store", "/data/store"]
        r = self.ok("stellarium", "build", *store, "--from-dir", "/data/tree", "--name", "base",
                    rw=rw)
        self.ok("stellarium", "snapshot", *store, "--volume", "base", "--name", "golden", rw=rw)
        self.ok("stellarium", "clone", *store, "--from-snapshot", "golden", "--name", "vm-1",
                rw=rw)
        self.ok("stellarium", "export", *store, "--volume", "base", "-o", "/data/base.img", rw=rw)
        self.ok("stellarium", "export", *store, "--volume", "vm-1", "-o", "/data/vm-1.img", rw=rw)
        listing = self.ok("stellarium", "list", *store, rw=rw).stdout
        for name in ("base", "golden", "vm-1"):
            self.assertIn(name, listing)
        self.ok("stellarium", "fsck", *store, rw=rw)
        base = (data / "base.img").read_bytes()
        self.assertEqual(hashlib.sha256(base).digest(),
                         hashlib.sha256((data / "vm-1.img").read_bytes()).digest(),
                         "the clone exports other bytes than its source")
        # The exported image is the tree: read it back with the host's e2fsprogs.
        for rel, content in files.items():
            got = subprocess.run(["debugfs", "-R", f"cat /{rel}", str(data / "base.img")],
                                 capture_output=True, timeout=60)
            self.assertEqual(got.returncode, 0, got.stderr)
            self.assertTrue(got.stdout == content, f"{rel} differs in the exported image")

    def test_https_sources_trust_the_system_store(self):
        # libcurl's CA bundle on Debian, made by ca-certificates' update-ca-certificates.
        bundle = self.root / "etc/ssl/certs/ca-certificates.crt"
        self.assertTrue(bundle.is_file() and bundle.stat().st_size > 10000,
                        "the image has no system CA bundle /etc/ssl/certs/ca-certificates.crt: "
                        "HTTPS image sources fail (ca-certificates in scripts/deps/runtime.txt)")
        work = self.tmp / "https"
        work.mkdir()
        image = work / "disk.img"
        image.write_bytes(os.urandom(1 << 20) + bytes(1 << 20) + os.urandom(1 << 20))
        ca_key, ca_crt = work / "ca.key", work / "ca.crt"
        key, csr, crt = work / "srv.key", work / "srv.csr", work / "srv.crt"
        ext = work / "san.ext"
        ext.write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
        for argv in (
                ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                 "-subj", "/CN=stellarium test CA", "-keyout", ca_key, "-out", ca_crt],
                ["openssl", "req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=localhost",
                 "-keyout", key, "-out", csr],
                ["openssl", "x509", "-req", "-in", csr, "-CA", ca_crt, "-CAkey", ca_key,
                 "-CAcreateserial", "-days", "1", "-extfile", ext, "-out", crt]):
            subprocess.run([str(a) for a in argv], check=True, capture_output=True, timeout=60)
        url = self.serve_https(work, crt, key) + "/disk.img"
        subprocess.run(["chown", "-R", IMAGE_USER, str(work)], check=True)
        rw = [(work, "/data")]
        build = ["stellarium", "build", "--store", "/data/store", "--from-url", url]
        # Not trusted yet: the image refuses the server, naming the certificate problem.
        r = self.image(*build, "--name", "untrusted", rw=rw)
        self.assertNotEqual(r.returncode, 0, "an unknown CA was trusted")
        self.assertRegex(r.stdout + r.stderr, r"(?i)certificate|SSL")
        # An admin adds a CA as on any Debian system (a derived image's RUN): the CLI then
        # trusts it with no --ca-bundle.
        shutil.copy(ca_crt, self.root / "usr/local/share/ca-certificates/stellarium-test.crt")
        r = self.image("update-ca-certificates", user=None, ro=False)
        self.assertEqual(r.returncode, 0, "update-ca-certificates failed in the image (is "
                                          f"ca-certificates in scripts/deps/runtime.txt?): {r.stderr}")
        self.ok(*build, "--name", "trusted", rw=rw)
        self.ok("stellarium", "export", "--store", "/data/store", "--volume", "trusted", "-o",
                "/data/trusted.img", rw=rw)
        self.assertEqual((work / "trusted.img").read_bytes(), image.read_bytes())

    def serve_https(self, directory, crt, key):
        handler = lambda *a, **kw: http.server.SimpleHTTPRequestHandler(
            *a, directory=str(directory), **kw)
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(str(crt), str(key))
        server.socket = ctx.wrap_socket(server.socket, server_side=True)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        self.addCleanup(server.server_close)
        self.addCleanup(server.shutdown)
        return f"https://localhost:{server.server_address[1]}"

    def test_driver_serves_volumes_with_the_daemonset_spec(self):
        if not (os.path.exists("/dev/fuse") and os.path.exists("/dev/loop-control")):
            self.skipTest("/dev/fuse or /dev/loop-control is missing: volumes cannot be staged here")
        (ds,) = [d for _, d in install_objects() if d["kind"] == "DaemonSet"]
        pod = NodePod(self, ds["spec"]["template"]["spec"], self.tmp / "node")
        for init in pod.spec.get("initContainers", []):
            r = run(pod.argv(init), timeout=60)
            self.assertEqual(r.returncode, 0, f"init container {init['name']}: {r.stderr}")
        containers = daemonset_containers(ds)
        metrics_port = free_port()
        driver = pod.start(containers["stellarium-csi"], {
            "--node-id": "worker-1", "--metrics-address": f"127.0.0.1:{metrics_port}"})
        sock = pod.host_path_of(containers["stellarium-csi"], "/csi") / "csi.sock"
        pod.wait_for(driver, sock.exists, f"the driver's socket {sock}")
        holder = pod.start(containers["fd-holder"], {})
        holder_sock = next(a.split("=", 1)[1] for a in containers["fd-holder"]["args"]
                           if a.startswith("--socket="))
        pod.wait_for(holder, (pod.host / holder_sock.lstrip("/")).exists, holder_sock)

        def client(*args):
            r = pod.enter(driver, "stellarium-csi-client", "--endpoint", "unix:///csi/csi.sock",
                          "--timeout", "60", *args)
            self.assertEqual(r.returncode, 0, f"client {args}: {r.stderr}\n{pod.logs(driver)}")
            return dict(line.split("=", 1) for line in r.stdout.splitlines() if "=" in line)

        client("probe")
        vol = client("create-volume", "--name", "pvc-image", "--size", "64M")["volume_id"]
        drv = next(a.split("=", 1)[1] for a in containers["stellarium-csi"]["args"]
                   if a.startswith("--driver-name="))
        staging = f"/var/lib/kubelet/plugins/kubernetes.io/csi/{drv}/0123abcd/globalmount"
        target = "/var/lib/kubelet/pods/5f0e-uid/volumes/kubernetes.io~csi/pvc-image/mount"
        for path in (staging, target):  # the kubelet makes the parents
            (pod.host / os.path.dirname(path).lstrip("/")).mkdir(parents=True, exist_ok=True)

        def up():
            client("stage", "--id", vol, "--staging-path", staging)
            client("publish", "--id", vol, "--staging-path", staging, "--target", target)

        def down():
            client("unpublish", "--id", vol, "--target", target)
            client("unstage", "--id", vol, "--staging-path", staging)

        def clean_up():
            if driver.poll() is None:  # a failed step left the volume staged: undo it
                for args in (("unpublish", "--id", vol, "--target", target),
                             ("unstage", "--id", vol, "--staging-path", staging)):
                    pod.enter(driver, "stellarium-csi-client", "--endpoint",
                              "unix:///csi/csi.sock", *args)
        self.addCleanup(clean_up)
        # First stage: blkid finds nothing, mkfs.ext4 formats, mount mounts; publish binds.
        up()
        payload = os.urandom(256 << 10).hex()
        r = pod.enter(driver, "tee", f"{target}/hello.txt", input=payload)
        self.assertEqual(r.returncode, 0, r.stderr)
        down()
        # Second stage: the file system is found again and the data is there.
        up()
        r = pod.enter(driver, "cat", f"{target}/hello.txt")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertTrue(r.stdout == payload, "the file written before unstage differs")
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as m:
            self.assertIn("stellarium", m.read().decode())
        down()
        client("delete-volume", "--id", vol)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class NodePod:
    """Containers of a pod spec run in the image: each in its own mount namespace with the
    pod's volumes (hostPath: a directory under `host`; emptyDir: a directory shared by the
    pod's containers), its securityContext's user and read-only root, and its command."""

    def __init__(self, test, spec, host):
        self.test, self.spec, self.host = test, spec, host
        self.volumes = {v["name"]: v for v in spec["volumes"]}
        self.procs = []

    def host_path_of(self, container, mount_path):
        (m,) = [m for m in container["volumeMounts"] if m["mountPath"] == mount_path]
        return self.source(self.volumes[m["name"]])

    def source(self, volume):
        if "hostPath" in volume:
            src = self.host / volume["hostPath"]["path"].lstrip("/")
            src.mkdir(parents=True, exist_ok=True)
        elif "emptyDir" in volume:
            src = self.host.parent / "emptydir" / volume["name"]
            src.mkdir(parents=True, exist_ok=True)
            src.chmod(0o1777)
        else:
            raise AssertionError(f"volume {volume['name']}: only hostPath and emptyDir are run")
        return src

    def argv(self, container, overrides=None):
        rw, dev = [], False
        for m in container.get("volumeMounts", []):
            volume = self.volumes[m["name"]]
            if volume.get("hostPath", {}).get("path") == "/dev":
                self.test.assertEqual(m["mountPath"], "/dev")
                dev = True
            else:
                rw.append((self.source(volume), m["mountPath"]))
        sc = container.get("securityContext", {})
        user = IMAGE_USER
        if "runAsUser" in sc:
            user = f"{sc['runAsUser']}:{sc.get('runAsGroup', sc['runAsUser'])}"
        args = []
        for a in container.get("args", []):
            flag = a.split("=", 1)[0]
            args.append(f"{flag}={overrides[flag]}" if overrides and flag in overrides else a)
        cmd = container.get("command", ["/usr/local/bin/stellarium-csi"]) + args
        return unshare(self.test.root, cmd, ro=sc.get("readOnlyRootFilesystem", False), rw=rw,
                       tmpfs=(), dev=dev, user=user)

    def start(self, container, overrides):
        log_path = self.host.parent / f"{container['name']}.log"
        out = open(log_path, "w")
        proc = subprocess.Popen(self.argv(container, overrides), stdout=out,
                                stderr=subprocess.STDOUT)
        proc.log_path = log_path
        out.close()

        self.test.addCleanup(stop_process, proc)
        return proc

    def wait_for(self, proc, ready, what):
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None and not ready():
            time.sleep(0.1)
        self.test.assertTrue(ready(), f"no {what}:\n{self.logs(proc)}")
        self.test.assertIsNone(proc.poll(), self.logs(proc))

    @staticmethod
    def logs(proc):
        return pathlib.Path(proc.log_path).read_text()[-4000:]

    def enter(self, proc, *cmd, input=None):
        """Runs cmd in a running container's mount namespace and root, as kubectl exec."""
        argv = ["nsenter", f"--target={proc.pid}", "--mount", "--root", "--wd", "--",
                "env", "-i", IMAGE_PATH, *cmd]
        return run(argv, timeout=120, input=input)


if __name__ == "__main__":
    unittest.main()
