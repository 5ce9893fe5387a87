"""Reads Helm templates as YAML without rendering them.

There is no helm binary here, and a home-made renderer would test itself rather than
the chart. Instead every `{{ ... }}` action is neutralized into a placeholder that
YAML can parse, and the placeholder remembers the action's text:

  - a line holding only control actions (if/else/end/range/with/define, variables,
    fail, comments) is dropped, so both branches of a conditional stay visible;
  - a line holding only a block action (`toYaml X | nindent N`, `include ... | nindent N`)
    becomes the mapping entry `__HELM_BLOCK_k__: 0` at indent N;
  - any other action inside a line becomes the scalar text `__HELM_k__`.

Comparisons then treat a placeholder as "the value this action produces": when the
action is a plain `.Values.a.b` reference (or `toYaml .Values.a.b`), the value comes
from values.yaml; anything else (include, printf, loop variables) matches anything.
"""

import re

ACTION_RE = re.compile(r"\{\{-?(.*?)-?\}\}", re.S)
COMMENT_RE = re.compile(r"\{\{-?\s*/\*.*?\*/\s*-?\}\}", re.S)
ONLY_ACTIONS_RE = re.compile(r"^\s*(\{\{.*?\}\}\s*)+$")
NINDENT_RE = re.compile(r"\|\s*n?indent\s+(\d+)")
PLACEHOLDER_RE = re.compile(r"__HELM_(BLOCK_)?(\d+)__")
VALUES_PATH_RE = re.compile(r"\$?\.Values((?:\.[A-Za-z_][A-Za-z0-9_]*)+)")
# `.Values.a.b`, optionally piped through quote: the whole action is one value.
SIMPLE_VALUE_RE = re.compile(r"^\s*\$?\.Values((?:\.[A-Za-z_][A-Za-z0-9_]*)+)\s*(\|\s*quote\s*)?$")
TOYAML_VALUE_RE = re.compile(
    r"^\s*toYaml\s+\$?\.Values((?:\.[A-Za-z_][A-Za-z0-9_]*)+)\s*\|\s*n?indent\s+\d+\s*$")


class Neutralized:
    """A template's text with every action replaced, and the table of actions."""

    def __init__(self, text, actions):
        self.text = text
        self.actions = actions  # index -> action body (without the braces)

    def action(self, token):
        m = PLACEHOLDER_RE.fullmatch(token)
        return self.actions[int(m.group(2))] if m else None


def neutralize(template_text):
    text = COMMENT_RE.sub("", template_text)
    actions = []
    out = []
    for line in text.split("\n"):
        if ONLY_ACTIONS_RE.match(line):
            bodies = [m.group(1).strip() for m in ACTION_RE.finditer(line)]
            blocks = [b for b in bodies if NINDENT_RE.search(b)]
            if blocks:
                if len(bodies) != 1:
                    raise ValueError(f"a block action shares its line with other actions: {line!r}")
                indent = int(NINDENT_RE.search(blocks[0]).group(1))
                actions.append(blocks[0])
                out.append(" " * indent + f"__HELM_BLOCK_{len(actions) - 1}__: 0")
            # control flow, variables, fail, whitespace trimming: no output line
            continue

        def replace(m):
            actions.append(m.group(1).strip())
            return f"__HELM_{len(actions) - 1}__"

        out.append(ACTION_RE.sub(replace, line))
    return Neutralized("\n".join(out), actions)


def values_paths(template_text):
    """Every `.Values.a.b` path the text refers to, as 'a.b'."""
    return {m.group(1)[1:] for m in VALUES_PATH_RE.finditer(template_text)}


def lookup(values, dotted):
    """values['a']['b'] for 'a.b'; raises KeyError naming the missing part."""
    node = values
    walked = []
    for part in dotted.split("."):
        walked.append(part)
        if not isinstance(node, dict) or part not in node:
            raise KeyError(".".join(walked))
        node = node[part]
    return node


class Comparer:
    """Compares a neutralized chart object with the matching manifests/ object."""

    def __init__(self, neutralized, values):
        self.n = neutralized
        self.values = values
        self.errors = []

    def _value_of(self, body):
        m = SIMPLE_VALUE_RE.match(body)
        if not m:
            return False, None
        return True, lookup(self.values, m.group(1)[1:])

    def _block_value(self, body):
        m = TOYAML_VALUE_RE.match(body)
        if not m:
            return False, None
        return True, lookup(self.values, m.group(1)[1:])

    def _scalar_pattern(self, text):
        pattern = ""
        pos = 0
        for m in PLACEHOLDER_RE.finditer(text):
            pattern += re.escape(text[pos:m.start()])
            known, value = self._value_of(self.n.actions[int(m.group(2))])
            if known:
                pattern += re.escape(_scalar_text(value))
            else:
                pattern += ".*?"
            pos = m.end()
        return pattern + re.escape(text[pos:])

    def matches_scalar(self, chart, manifest):
        if isinstance(chart, str) and PLACEHOLDER_RE.search(chart):
            return re.fullmatch(self._scalar_pattern(chart), _scalar_text(manifest)) is not None
        return chart == manifest

    def compare(self, chart, manifest, where):
        if isinstance(chart, dict):
            if self._single_block(chart):
                # `toYaml X | nindent N` alone: X may be a mapping, a list or a scalar.
                (key,) = chart
                body = self.n.action(key)
                known, value = self._block_value(body)
                if known and value != manifest:
                    self.errors.append(
                        f"{where}: values.yaml gives {value!r} ({body}), manifests/ has {manifest!r}")
                return
            if not isinstance(manifest, dict):
                self.errors.append(f"{where}: chart has a mapping, manifests/ has {manifest!r}")
                return
            blocks = [k for k in chart if isinstance(k, str) and k.startswith("__HELM_BLOCK_")]
            literal = {k: v for k, v in chart.items() if k not in blocks}
            if blocks:
                body = self.n.action(blocks[0])
                known, value = self._block_value(body)
                if known and not literal and len(blocks) == 1:
                    if value != manifest:
                        self.errors.append(
                            f"{where}: values.yaml gives {value!r} ({body}), manifests/ has {manifest!r}")
                    return
                for k, v in literal.items():
                    if k not in manifest:
                        self.errors.append(f"{where}.{k}: in the chart, missing in manifests/")
                    else:
                        self.compare(v, manifest[k], f"{where}.{k}")
                return
            for k in sorted(set(literal) | set(manifest), key=str):
                if k not in literal:
                    self.errors.append(f"{where}.{k}: in manifests/, missing in the chart")
                elif k not in manifest:
                    if not self._empty_block(literal[k]):
                        self.errors.append(f"{where}.{k}: in the chart, missing in manifests/")
                else:
                    self.compare(literal[k], manifest[k], f"{where}.{k}")
        elif isinstance(chart, list):
            if not isinstance(manifest, list) or len(chart) != len(manifest):
                self.errors.append(f"{where}: chart list {chart!r} != manifests/ {manifest!r}")
                return
            for i, (c, m) in enumerate(zip(chart, manifest)):
                self.compare(c, m, f"{where}[{i}]")
        else:
            if not self.matches_scalar(chart, manifest):
                self.errors.append(f"{where}: chart {chart!r} does not produce manifests/ {manifest!r}")

    @staticmethod
    def _single_block(node):
        if isinstance(node, dict) and len(node) == 1:
            (k,) = node
            return isinstance(k, str) and k.startswith("__HELM_BLOCK_")
        return False

    def _empty_block(self, node):
        """A chart-only key whose value is `toYaml` of an empty values entry renders empty."""
        if self._single_block(node):
            (k,) = node
            known, value = self._block_value(self.n.action(k))
            return known and value in ([], {}, None, "")
        return False


def _scalar_text(value):
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)
