"""The KubeRay manifests: every field of cluster/rayjob.yaml and cluster/kuberay-autoscaling.yaml
is one KubeRay's CRDs accept (the field set vendored in tests/data/kuberay-crd-fields.json,
tests/data/README.md), the RayJob's cluster is the RayCluster manifest's, its credentials
come from a Secret, and its entrypoint runs a config of this repository that fits the worker
groups. Reads YAML only: no Ray, no Kubernetes."""
from __future__ import annotations

import copy
import json
import pathlib
import re
import shlex

import pytest
import yaml

ROOT = pathlib.Path(__file__).resolve().parents[1]
RAYJOB = ROOT / "cluster" / "rayjob.yaml"
RAYCLUSTER = ROOT / "cluster" / "kuberay-autoscaling.yaml"
FIELDS = json.loads((ROOT / "tests" / "data" / "kuberay-crd-fields.json").read_text())
CREDENTIALS = ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION", "AWS_ENDPOINT_URL"]


def load(path: pathlib.Path) -> dict:
    return yaml.safe_load(path.read_text())


# --- the checker: a manifest against the vendored CRD field set ----------------------------

PYTHON_TYPES = {"object": dict, "map": dict, "array": list, "string": str, "boolean": bool,
                "integer": int, "number": (int, float), "int-or-string": (int, str)}


def violations(document: dict, fields: dict = FIELDS) -> list[str]:
    """Every key of ``document`` (a RayJob or a RayCluster) that its kind's CRD does not
    have, every value of the wrong type or outside an enum, and every required field
    missing, each as ``path: problem``."""
    kind = document.get("kind")
    if kind not in fields["kinds"]:
        return [f"kind: {kind!r} is not one of {sorted(fields['kinds'])}"]
    versions = " and ".join(fields["source"]["versions"])
    problems: list[str] = []

    def walk(value, table: dict, rel: str, shown: str) -> None:
        kind_of = table["fields"].get(rel)
        if kind_of is None:
            problems.append(f"{shown}: no such field in KubeRay's {kind} (v1, KubeRay {versions})")
            return
        if kind_of.startswith("@"):
            table, rel = fields["shared"][kind_of[1:]], ""
            kind_of = table["fields"][""]
        if kind_of == "any":
            return
        if kind_of.startswith("enum:"):
            allowed = kind_of[len("enum:"):].split("|")
            if value not in allowed:
                problems.append(f"{shown}: {value!r} is not one of {allowed}")
            return
        wanted = PYTHON_TYPES[kind_of]
        if not isinstance(value, wanted) or (isinstance(value, bool) and kind_of != "boolean"):
            problems.append(f"{shown}: {value!r} is not {'an' if kind_of[0] in 'aeio' else 'a'} {kind_of}")
            return
        if isinstance(value, dict):
            for name in table["required"].get(rel, []):
                if name not in value:
                    problems.append(f"{shown}: required field {name!r} missing")
            for key, inner in value.items():
                step = "*" if kind_of == "map" else key
                walk(inner, table, f"{rel}.{step}" if rel else step, f"{shown}.{key}" if shown else key)
        elif isinstance(value, list):
            for index, inner in enumerate(value):
                walk(inner, table, rel + "[]", f"{shown}[{index}]")

    walk(document, fields["kinds"][kind], "", "")
    return problems


def test_the_rayjob_sets_only_fields_of_kuberays_rayjob_crd():
    assert violations(load(RAYJOB)) == []


def test_the_raycluster_sets_only_fields_of_kuberays_raycluster_crd():
    assert violations(load(RAYCLUSTER)) == []


def workers(document: dict) -> list[dict]:
    spec = document["spec"].get("rayClusterSpec", document["spec"])
    return spec["workerGroupSpecs"]


@pytest.mark.parametrize("change, reported", [
    (lambda job: job["spec"].update(shutdownAfterJobFinished=True),
     "spec.shutdownAfterJobFinished: no such field in KubeRay's RayJob"),
    (lambda job: workers(job)[1].update(rayStartParms=workers(job)[1].pop("rayStartParams")),
     "spec.rayClusterSpec.workerGroupSpecs[1].rayStartParms: no such field"),
    (lambda job: workers(job)[2]["template"]["spec"]["containers"][0].update(resource={}),
     "spec.rayClusterSpec.workerGroupSpecs[2].template.spec.containers[0].resource: no such field"),
    (lambda job: workers(job)[0]["template"]["spec"]["containers"][0]["env"][0]["valueFrom"]
     ["secretKeyRef"].update(nme="rayagg-s3"),
     "containers[0].env[0].valueFrom.secretKeyRef.nme: no such field"),  # in all 4: one YAML anchor
    (lambda job: workers(job)[0]["rayStartParams"].update({"num-cpus": 8}),
     "spec.rayClusterSpec.workerGroupSpecs[0].rayStartParams.num-cpus: 8 is not a string"),
    (lambda job: workers(job)[0].update(replicas="0"),
     "spec.rayClusterSpec.workerGroupSpecs[0].replicas: '0' is not an integer"),
    (lambda job: job["spec"].update(shutdownAfterJobFinishes="yes"),
     "spec.shutdownAfterJobFinishes: 'yes' is not a boolean"),
    (lambda job: job["spec"]["rayClusterSpec"]["autoscalerOptions"].update(upscalingMode="Fast"),
     "spec.rayClusterSpec.autoscalerOptions.upscalingMode: 'Fast' is not one of"),
    (lambda job: workers(job)[0].pop("groupName"),
     "spec.rayClusterSpec.workerGroupSpecs[0]: required field 'groupName' missing"),
], ids=["top-level", "group", "container", "secret-ref", "param-type", "int-type", "bool-type", "enum",
        "required"])
def test_the_checker_reports_a_misspelt_or_mistyped_field(change, reported):
    job = copy.deepcopy(load(RAYJOB))
    change(job)
    found = violations(job)
    times = 4 if ".nme" in reported else 1  # the containers share one `env` list (a YAML anchor)
    assert len(found) == times and all(reported in problem for problem in found), found


def test_the_checker_knows_both_kinds_and_where_its_fields_come_from():
    assert violations({"kind": "RayService"}) == ["kind: 'RayService' is not one of ['RayCluster', 'RayJob']"]
    versions = FIELDS["source"]["versions"]
    assert len(versions) >= 1 and all(re.fullmatch(r"[0-9a-f]{40}", commit) for commit in versions.values())
    job = FIELDS["kinds"]["RayJob"]["fields"]
    assert {"spec.entrypoint", "spec.runtimeEnvYAML", "spec.shutdownAfterJobFinishes", "spec.backoffLimit",
            "spec.ttlSecondsAfterFinished", "spec.activeDeadlineSeconds", "spec.submissionMode"} <= set(job)
    assert job["spec.rayClusterSpec"] == FIELDS["kinds"]["RayCluster"]["fields"]["spec"] == "@rayClusterSpec"


# --- the RayJob against the RayCluster manifest ---------------------------------------------

def without_env(spec: dict) -> dict:
    spec = copy.deepcopy(spec)
    for group in [spec["headGroupSpec"], *spec["workerGroupSpecs"]]:
        for container in group["template"]["spec"]["containers"]:
            container.pop("env", None)
    return spec


def test_the_rayjobs_cluster_is_the_raycluster_manifests():
    """Same head, same tier worker groups (names, replicas, labels, rayStartParams, images,
    container resources), same autoscaler and auth settings: only the credentials differ."""
    job, cluster = load(RAYJOB)["spec"]["rayClusterSpec"], load(RAYCLUSTER)["spec"]
    assert [g["groupName"] for g in job["workerGroupSpecs"]] == ["cloud", "edge", "device"]
    for mine, theirs in zip(job["workerGroupSpecs"], cluster["workerGroupSpecs"]):
        assert (mine["groupName"], mine["labels"], mine["rayStartParams"]) == \
               (theirs["groupName"], theirs["labels"], theirs["rayStartParams"])
        assert mine["template"]["spec"]["containers"][0]["resources"] == \
               theirs["template"]["spec"]["containers"][0]["resources"]
    assert without_env(job) == without_env(cluster)


def test_the_comments_explaining_the_groups_are_the_raycluster_manifests():
    def group_comments(path):
        text = path.read_text()
        body = text[text.index("workerGroupSpecs:"):]
        return [line.strip() for line in body.splitlines() if line.strip().startswith("#")]

    assert group_comments(RAYJOB) == group_comments(RAYCLUSTER)


def containers(document: dict) -> list[dict]:
    spec = document["spec"]["rayClusterSpec"]
    return [c for group in [spec["headGroupSpec"], *spec["workerGroupSpecs"]]
            for c in group["template"]["spec"]["containers"]]


def test_every_pod_gets_the_bucket_credentials_from_a_secret():
    job = load(RAYJOB)
    for container in containers(job):
        env = {entry["name"]: entry for entry in container["env"]}
        assert sorted(env) == sorted(CREDENTIALS), container["name"]
        for name in CREDENTIALS:
            assert "value" not in env[name]
            assert env[name]["valueFrom"]["secretKeyRef"] == {
                "name": "rayagg-s3", "key": name, **({"optional": True} if name == "AWS_ENDPOINT_URL" else {})}
    runtime_env = yaml.safe_load(job["spec"]["runtimeEnvYAML"])
    assert not [name for name in runtime_env.get("env_vars", {}) if re.search("AWS|SECRET|TOKEN|KEY", name)]


def test_the_runtime_env_is_one_ray_accepts():
    runtime_env = yaml.safe_load(load(RAYJOB)["spec"]["runtimeEnvYAML"])
    assert set(runtime_env) <= {"working_dir", "env_vars", "pip", "py_modules"}
    assert re.fullmatch(r"(https|s3|gs)://\S+\.zip", runtime_env["working_dir"])  # a remote working_dir is a zip
    assert all(isinstance(v, str) for v in runtime_env["env_vars"].values())  # Ray takes strings only


def test_the_job_deletes_its_cluster_and_is_not_retried():
    spec = load(RAYJOB)["spec"]
    assert spec["shutdownAfterJobFinishes"] is True and spec["ttlSecondsAfterFinished"] > 0
    assert spec["backoffLimit"] == 0 and spec["submissionMode"] == "K8sJobMode"


# --- the entrypoint and its config --------------------------------------------------------

def entrypoint() -> list[str]:
    return shlex.split(load(RAYJOB)["spec"]["entrypoint"])


def option(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


def test_the_entrypoint_runs_a_config_of_this_repository_into_a_bucket():
    argv = entrypoint()
    assert argv[:4] == ["python", "-m", "rayagg", "run"]
    assert (ROOT / argv[4]).is_file(), argv[4]
    assert option(argv, "--address") == "auto"
    assert re.fullmatch(r"s3://[a-z0-9.-]+/\S+", option(argv, "--out"))


def test_the_entrypoint_is_one_line_that_the_documented_resume_replaces():
    """docs/cluster.md resumes with a `sed` that swaps the entrypoint line: it must match
    exactly one line and give `rayagg run --resume` on the same RUN_DIR."""
    docs = (ROOT / "docs" / "cluster.md").read_text()
    manifest = re.escape(RAYJOB.relative_to(ROOT).as_posix())
    pattern, replacement = re.search(r"sed 's\|(.+?)\|(.+?)\|' *\\?\s*" + manifest, docs).groups()
    text = RAYJOB.read_text()
    resumed, count = re.subn(pattern, replacement, text, flags=re.M)
    assert count == 1
    argv = shlex.split(yaml.safe_load(resumed)["spec"]["entrypoint"])
    assert argv[:4] == ["python", "-m", "rayagg", "run"]
    assert option(argv, "--resume") == option(entrypoint(), "--out") and option(argv, "--address") == "auto"
    assert "--out" not in argv and len(argv) == 8


def custom_resources(group: dict) -> dict:
    """rayStartParams' resources: KubeRay's form is JSON inside quotes ('"{\\"edge\\": 4}"')."""
    return json.loads(json.loads(group["rayStartParams"]["resources"]))


def test_the_run_config_needs_no_data_set_on_the_workers_and_fits_the_groups():
    """data.source: driver; each tier's hosts select one group by its label, request its
    custom resource, and fit its pods (a host: nodes_per_actor nodes, within one pod)."""
    config = yaml.safe_load((ROOT / entrypoint()[4]).read_text())
    assert config["data"]["source"] == "driver"
    assert config["runtime"]["autoscaling"] is True
    groups = workers(load(RAYJOB))
    for tier in config["tree"]["tiers"]:
        resources = tier["resources"]
        (group,) = [g for g in groups if g["labels"] == resources["labels"]]
        assert set(resources["custom"]) == set(custom_resources(group)), tier["name"]
        per_host = min(tier["count"], tier.get("nodes_per_actor", 1))
        cpus, custom = float(group["rayStartParams"]["num-cpus"]), custom_resources(group)
        assert per_host * resources["num_cpus"] <= cpus, tier["name"]  # one host fits one pod
        assert tier["count"] * resources["num_cpus"] <= group["maxReplicas"] * cpus, tier["name"]  # the tier fits
        for name, amount in resources["custom"].items():
            assert per_host * amount <= custom[name], (tier["name"], name)
            assert tier["count"] * amount <= group["maxReplicas"] * custom[name], (tier["name"], name)
        limits = group["template"]["spec"]["containers"][0]["resources"]["limits"]
        assert cpus <= float(limits["cpu"]), group["groupName"]  # Ray's CPUs are the pod's


def test_the_generator_keeps_common_fields_shares_repeated_subtrees_and_the_checker_reads_them():
    """tests/data/kuberay_crd_fields.py on a made-up CRD in two versions: a field only one
    version has is dropped, a subtree found twice is written once, and the checker follows it."""
    import importlib.util
    spec = importlib.util.spec_from_file_location("crd_fields", ROOT / "tests" / "data" / "kuberay_crd_fields.py")
    generator = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(generator)
    container = {"type": "object", "required": ["name"], "properties": {
        **{key: {"type": "string"} for key in ["name", "image", "a", "b", "c", "d", "e", "f"]},
        "env": {"type": "array", "items": {"type": "object", "properties": {"name": {"type": "string"}}}}}}

    def version(extra: dict) -> tuple[dict, dict]:
        schema = {"type": "object", "properties": {
            "kind": {"type": "string"}, "metadata": {"type": "object"}, "spec": {"type": "object", "properties": {
                "main": container, "sidecars": {"type": "array", "items": container},
                "params": {"type": "object", "additionalProperties": {"type": "string"}}, **extra}}}}
        fields, required = {}, {}
        generator.flatten(schema, "", fields, required)
        return {**fields, **generator.OBJECT_META}, required

    root = generator.Trie.build(*generator.common([version({}), version({"new": {"type": "integer"}})]))
    writer = generator.Writer({"Thing": root})
    fields = {"source": {"versions": {"old": "0" * 40}}, "kinds": {"Thing": writer.table(root, 1)}}
    writer.flush()
    fields["shared"] = writer.shared
    assert fields["kinds"]["Thing"]["fields"]["spec.main"] == "@main"
    assert fields["kinds"]["Thing"]["fields"]["spec.sidecars[]"] == "@main"
    assert "spec.new" not in fields["kinds"]["Thing"]["fields"]
    good = {"kind": "Thing", "metadata": {"name": "x"}, "spec": {
        "main": {"name": "m", "env": [{"name": "E"}]}, "sidecars": [{"name": "s"}], "params": {"k": "v"}}}
    assert violations(good, fields) == []
    bad = copy.deepcopy(good)
    bad["spec"]["sidecars"][0] = {"imag": "x"}
    bad["spec"]["new"] = 1
    bad["spec"]["params"]["k"] = 1
    assert violations(bad, fields) == [
        "spec.sidecars[0]: required field 'name' missing",
        "spec.sidecars[0].imag: no such field in KubeRay's Thing (v1, KubeRay old)",
        "spec.params.k: 1 is not a string",
        "spec.new: no such field in KubeRay's Thing (v1, KubeRay old)"]
