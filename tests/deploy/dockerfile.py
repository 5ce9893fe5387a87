"""Reads the Dockerfile as text (no Docker engine runs here): its instructions per stage,
the package lists its stages install and the binaries its build stage stages. The image
tests take these from the Dockerfile itself, so what they test is what it builds."""

import re

from common import REPO

DOCKERFILE = REPO / "Dockerfile"


def instructions(text):
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    out, current = [], ""
    for line in text.splitlines():
        if line.lstrip().startswith("#") or (not current and not line.strip()):
            continue
        current += line.rstrip("\\").strip() + " " if line.endswith("\\") else line.strip()
        if not line.endswith("\\"):
            word, _, rest = current.partition(" ")
            out.append((word.upper(), rest.strip()))
            current = ""
    return out


def stages(text=None):
    """{stage name: {"from": image, "ins": [(INSTRUCTION, arguments), ...]}} in order."""
    if text is None:
        text = DOCKERFILE.read_text()
    result, name = {}, None
    for ins, args in instructions(text):
        if ins == "FROM":
            m = re.fullmatch(r"(\S+) AS (\S+)", args)
            if not m:
                raise AssertionError(f"Dockerfile: FROM without a stage name: {args}")
            name = m.group(2)
            result[name] = {"from": m.group(1), "ins": []}
        elif name:
            result[name]["ins"].append((ins, args))
    return result


def runs(stage):
    return " ".join(a for i, a in stages()[stage]["ins"] if i == "RUN")


def installed_lists(stage):
    """The scripts/deps list names a stage installs (`install-deps.sh --only NAME`)."""
    names = []
    for group in re.findall(r"install-deps\.sh((?:\s+--only\s+[\w-]+)+)", runs(stage)):
        names += re.findall(r"--only\s+([\w-]+)", group)
    return names


def staged_binaries():
    """The binaries the build stage stages (`stage-runtime.sh /build /out NAME...`)."""
    m = re.search(r"scripts/stage-runtime\.sh\s+/build\s+/out((?:\s+[\w.-]+)+)", runs("build"))
    if not m:
        raise AssertionError("Dockerfile: the build stage does not run "
                             "scripts/stage-runtime.sh /build /out BINARY...")
    return m.group(1).split()


def smoke_commands():
    """{binary: flag} of the runtime stage's `NAME --version` / `NAME --help` commands."""
    found = {}
    for ins, args in stages()["runtime"]["ins"]:
        if ins == "RUN":
            for command in args.split("&&"):
                m = re.match(r"\s*([\w.-]+) (--version|--help)\b", command)
                if m:
                    found[m.group(1)] = m.group(2)
    return found
