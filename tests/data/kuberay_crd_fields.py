"""Writes tests/data/kuberay-crd-fields.json: the fields KubeRay's RayJob and RayCluster
CRDs accept, for tests/test_cluster_manifests.py to check cluster/rayjob.yaml and
cluster/kuberay-autoscaling.yaml against without a Kubernetes API server.

    git clone https://github.com/ray-project/kuberay /tmp/kuberay
    .venv/bin/python tests/data/kuberay_crd_fields.py /tmp/kuberay v1.6.2 v1.7.0 \\
        > tests/data/kuberay-crd-fields.json

It reads ray-operator/config/crd/bases/ray.io_{rayjobs,rayclusters}.yaml at each tag
given (with `git show`, so the clone's checkout does not matter) and keeps, per kind, the
field paths of the ``v1`` schema's openAPIV3Schema that every tag has with the same type:
a manifest that passes works on each of those KubeRay versions. A path is dotted, with
``[]`` for a list's items and ``*`` for a map's values
(``spec.workerGroupSpecs[].rayStartParams.*``); its value is the type the API server
checks (``object``, ``map``, ``array``, ``string``, ``integer``, ``number``,
``boolean``, ``int-or-string``, ``any``), with ``enum:A|B`` for enumerated strings.

The pod template and container schemas repeat many times in one CRD (head, workers,
submitter; containers, init containers), so a subtree that occurs more often than the
one around it is written once under ``shared`` and referenced as ``@name``: the file
stays around 100 KB instead of the CRDs' 2 MB.
"""
from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from collections import Counter

import yaml

CRDS = {"RayJob": "ray-operator/config/crd/bases/ray.io_rayjobs.yaml",
        "RayCluster": "ray-operator/config/crd/bases/ray.io_rayclusters.yaml"}
MIN_SHARED = 8  # a repeated subtree with fewer fields is written out in place

# The root `metadata` is an ObjectMeta, which the API server checks itself (the CRD says
# only `type: object`); these are the fields a manifest sets.
OBJECT_META = {"metadata.name": "string", "metadata.namespace": "string", "metadata.generateName": "string",
               "metadata.labels": "map", "metadata.labels.*": "string",
               "metadata.annotations": "map", "metadata.annotations.*": "string"}


def type_of(schema: dict) -> str:
    if schema.get("x-kubernetes-int-or-string"):
        return "int-or-string"
    if schema.get("x-kubernetes-preserve-unknown-fields"):
        return "any"
    kind = schema.get("type", "any")
    if kind == "object" and "properties" not in schema and isinstance(schema.get("additionalProperties"), dict):
        kind = "map"
    if "enum" in schema:
        kind = "enum:" + "|".join(str(value) for value in schema["enum"])
    return kind


def flatten(schema: dict, path: str, fields: dict, required: dict) -> None:
    """Every field below ``schema`` as path -> type, and each object's required fields."""
    fields[path] = type_of(schema)
    if schema.get("required"):
        required[path] = sorted(schema["required"])
    for key, inner in schema.get("properties", {}).items():
        flatten(inner, f"{path}.{key}" if path else key, fields, required)
    if isinstance(schema.get("additionalProperties"), dict):
        flatten(schema["additionalProperties"], f"{path}.*", fields, required)
    if "items" in schema:
        flatten(schema["items"], f"{path}[]", fields, required)


def crd_fields(repo: str, tag: str, file: str) -> tuple[dict, dict]:
    crd = yaml.safe_load(subprocess.run(["git", "-C", repo, "show", f"{tag}:{file}"], check=True,
                                        capture_output=True, text=True).stdout)
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    schema = version["schema"]["openAPIV3Schema"]
    schema = {**schema, "properties": {k: v for k, v in schema["properties"].items() if k != "status"}}
    fields, required = {}, {}
    flatten(schema, "", fields, required)  # without `status`: the operator writes it, never a manifest
    if not fields.get("metadata.name"):
        fields.update(OBJECT_META)
    return fields, required


def common(per_tag: list[tuple[dict, dict]]) -> tuple[dict, dict]:
    """The fields every tag has with the same type; the required fields any tag requires."""
    fields = dict(per_tag[0][0])
    for other, _ in per_tag[1:]:
        fields = {path: kind for path, kind in fields.items() if other.get(path) == kind}
    required = {}
    for _, needs in per_tag:
        for path, names in needs.items():
            if path in fields:
                required[path] = sorted(set(required.get(path, [])) | set(names))
    return fields, required


class Trie:
    """The flat field paths as a tree, to find repeated subtrees."""

    def __init__(self, kind: str, needs: list):
        self.kind, self.needs, self.children, self.signature, self.size = kind, needs, {}, "", 0

    @staticmethod
    def build(fields: dict, required: dict) -> "Trie":
        root = Trie(fields[""], required.get("", []))
        for path in sorted(fields, key=lambda p: (len(split(p)), p)):
            if path:
                *parent, last = split(path)
                node = root
                for step in parent:
                    node = node.children[step]
                node.children[last] = Trie(fields[path], required.get(path, []))
        root.sign()
        return root

    def sign(self) -> None:
        for child in self.children.values():
            child.sign()
        text = json.dumps([self.kind, self.needs, sorted((k, c.signature) for k, c in self.children.items())])
        self.signature = hashlib.sha256(text.encode()).hexdigest()
        self.size = sum(1 + c.size for c in self.children.values())

    def walk(self, label: str = ""):
        """Every node below this one with the name it goes by (a list's items: its name + [])."""
        yield self, label
        for step, child in self.children.items():
            yield from child.walk(label + "[]" if step == "[]" else step)


def split(path: str) -> list[str]:
    """``a.b[].*`` -> ``['a', 'b', '[]', '*']``."""
    steps = []
    for part in path.split("."):
        name, _, rest = part.partition("[]")
        steps.append(name)
        steps += ["[]"] * (1 + rest.count("[]")) if _ else []
    return [step for step in steps if step != ""] if path else []


def join(path: str, step: str) -> str:
    if step == "[]":
        return path + "[]"
    return f"{path}.{step}" if path else step


class Writer:
    def __init__(self, roots: dict):
        self.counts = Counter(node.signature for root in roots.values() for node, _ in root.walk())
        # A shared subtree is named after the field it is most often found under ("template").
        self.labels: dict[str, Counter] = {}
        for root in roots.values():
            for node, label in root.walk():
                self.labels.setdefault(node.signature, Counter())[label] += 1
        self.names, self.shared, self.pending = {}, {}, []

    def table(self, node: Trie, times: int) -> dict:
        """``node``'s fields; a subtree found more often than ``times`` becomes a reference."""
        fields, required = {"": node.kind}, {}
        if node.needs:
            required[""] = node.needs

        def visit(inner: Trie, path: str) -> None:
            for step, child in inner.children.items():
                here = join(path, step)
                if self.counts[child.signature] > times and child.size >= MIN_SHARED:
                    fields[here] = "@" + self.name(child)
                    continue
                fields[here] = child.kind
                if child.needs:
                    required[here] = child.needs
                visit(child, here)

        visit(node, "")
        return {"fields": fields, "required": required}

    def name(self, node: Trie) -> str:
        if node.signature not in self.names:
            step = min(self.labels[node.signature].items(), key=lambda item: (-item[1], item[0]))[0]
            name, n = step, 1
            while name in self.shared or name in {p[0] for p in self.pending}:
                n += 1
                name = f"{step}{n}"
            self.names[node.signature] = name
            self.pending.append((name, node))
        return self.names[node.signature]

    def flush(self) -> None:
        while self.pending:
            name, node = self.pending.pop(0)
            self.shared[name] = self.table(node, self.counts[node.signature])


def main(repo: str, tags: list[str]) -> None:
    commits = {tag: subprocess.run(["git", "-C", repo, "rev-parse", f"{tag}^{{commit}}"], check=True,
                                   capture_output=True, text=True).stdout.strip() for tag in tags}
    roots = {kind: Trie.build(*common([crd_fields(repo, tag, file) for tag in tags]))
             for kind, file in CRDS.items()}
    writer = Writer(roots)
    kinds = {kind: writer.table(root, 1) for kind, root in roots.items()}
    writer.flush()
    json.dump({"about": "Field paths of KubeRay's RayJob and RayCluster CRDs (ray.io/v1) that every "
                        "listed version accepts; written by tests/data/kuberay_crd_fields.py "
                        "(tests/data/README.md).",
               "source": {"repository": "https://github.com/ray-project/kuberay", "files": CRDS,
                          "versions": commits},
               "kinds": kinds, "shared": dict(sorted(writer.shared.items()))},
              sys.stdout, indent=0, sort_keys=False)
    sys.stdout.write("\n")


if __name__ == "__main__":
    if len(sys.argv) < 3:
        sys.exit(f"usage: {sys.argv[0]} KUBERAY_CLONE TAG [TAG ...]")
    main(sys.argv[1], sys.argv[2:])
