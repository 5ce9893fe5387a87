"""Paths and loaders shared by the tests in tests/deploy/."""

import os
import pathlib
import subprocess

import yaml

REPO = pathlib.Path(os.environ.get("STELLARIUM_SOURCE_DIR",
                                   pathlib.Path(__file__).resolve().parents[2]))
MANIFESTS = REPO / "manifests"
CHART = REPO / "charts" / "stellarium-csi"
TEMPLATES = CHART / "templates"
DOCS = REPO / "docs"


def manifest_files(include_examples=True):
    files = sorted(MANIFESTS.glob("*.yaml"))
    if include_examples:
        files += sorted((MANIFESTS / "examples").glob("*.yaml"))
    return files


def load_docs(path):
    """All non-empty YAML documents of a file; a parse error names the file."""
    with open(path) as f:
        try:
            return [d for d in yaml.safe_load_all(f) if d is not None]
        except yaml.YAMLError as e:
            raise AssertionError(f"{path}: not valid YAML: {e}") from e


def install_objects():
    """The objects `kubectl apply -k manifests/` creates (no examples, no kustomization)."""
    objs = []
    for path in manifest_files(include_examples=False):
        if path.name == "kustomization.yaml":
            continue
        for doc in load_docs(path):
            objs.append((path.name, doc))
    return objs


def daemonset_containers(ds):
    return {c["name"]: c for c in ds["spec"]["template"]["spec"]["containers"]}


def flag_name(arg):
    """'--csi-address=/csi/csi.sock' -> 'csi-address'; '-v=2' -> 'v'; None if not a flag."""
    if not arg.startswith("-"):
        return None
    return arg.lstrip("-").split("=", 1)[0]


def values():
    with open(CHART / "values.yaml") as f:
        return yaml.safe_load(f)


def stop_process(proc, grace=30):
    """SIGTERM, then SIGKILL if proc has not exited within `grace` seconds."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
