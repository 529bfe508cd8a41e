"""cluster/: the AWS cluster-launcher config, the KubeRay manifests, the image and the runbook.

No cloud, Docker engine or Kubernetes here, so each piece is checked as far as this machine
allows: the AWS config against Ray's own cluster-config schema and the same preparation
`ray up` runs; the KubeRay manifests against a schema of the CRD fields they use and through
Ray's own RayCluster-to-autoscaler translation; every entrypoint and runbook command through
the jobs' real argument parsers; the Dockerfile against what the entrypoints import. Remote
submission runs for real against a Ray head the test starts and stops.
"""

from __future__ import annotations

import ast
import copy
import fnmatch
import json
import os
import re
import shlex
import shutil
import subprocess
import time
from pathlib import Path

import jsonschema
import pytest
import yaml

from tests.conftest import REPO, load_job

CLUSTER = REPO / "cluster"
AWS_CONFIG = CLUSTER / "aws.yaml"
KUBERAY = CLUSTER / "kuberay"
DOCKERFILE = CLUSTER / "Dockerfile"
RUNBOOK = CLUSTER / "README.md"
CREDENTIAL_NAMES = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")


# ---- shared readers ------------------------------------------------------------------------------

def pinned(package: str) -> str:
    """The version pyproject.toml pins for a dependency (`name[extras]==X`)."""
    text = (REPO / "pyproject.toml").read_text()
    match = re.search(rf'"{re.escape(package)}(?:\[[^\]]*\])?==([^"]+)"', text)
    assert match, f"pyproject.toml does not pin {package}"
    return match.group(1)


RAY_VERSION = pinned("ray")
TORCH_VERSION = pinned("torch")


def yaml_files() -> list[Path]:
    return sorted(path for pattern in ("**/*.yaml", "**/*.yml") for path in CLUSTER.glob(pattern))


def documents(path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def kuberay_documents(kind: str) -> list[tuple[Path, dict]]:
    return [(path, doc) for path in sorted(KUBERAY.glob("*.yaml")) for doc in documents(path)
            if doc.get("kind") == kind]


def cluster_specs() -> list[tuple[str, dict]]:
    """(label, RayClusterSpec) of the RayCluster and of every RayJob's own cluster."""
    specs = [(f"{path.name}:{doc['metadata']['name']}", doc["spec"]) for path, doc in kuberay_documents("RayCluster")]
    specs += [(f"{path.name}:{doc['metadata']['name']}", doc["spec"]["rayClusterSpec"])
              for path, doc in kuberay_documents("RayJob")]
    return specs


def ray_containers(spec: dict) -> list[dict]:
    groups = [spec["headGroupSpec"], *spec.get("workerGroupSpecs", [])]
    return [group["template"]["spec"]["containers"][0] for group in groups]


def worker_group(spec: dict, needs_gpu: bool) -> dict:
    groups = [group for group in spec["workerGroupSpecs"] if gpus_of(group) > 0] if needs_gpu else \
        [group for group in spec["workerGroupSpecs"] if gpus_of(group) == 0]
    assert len(groups) == 1, f"expected one {'GPU' if needs_gpu else 'CPU'} worker group"
    return groups[0]


def gpus_of(group: dict) -> int:
    limits = group["template"]["spec"]["containers"][0].get("resources", {}).get("limits", {})
    return int(limits.get("nvidia.com/gpu", 0))


def parse_entrypoint(words: list[str]):
    """`python jobs/NAME.py ARGS...` through that job's own parser; returns (name, args)."""
    assert words[0] in ("python", "python3"), words
    match = re.fullmatch(r"jobs/(\w+)\.py", words[1])
    assert match, f"not a job script: {words[1]}"
    assert (REPO / words[1]).is_file(), f"{words[1]} does not exist"
    name = match.group(1)
    try:
        return name, load_job(name).parse_args(words[2:])
    except SystemExit as exit_:  # argparse: the message is on stderr
        raise AssertionError(f"{shlex.join(words)} does not parse (exit {exit_.code})") from None


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    instructions, pending = [], ""
    for line in DOCKERFILE.read_text().splitlines():
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if stripped.startswith("#"):
            continue
        pending += " " + stripped.rstrip("\\").strip()
        if not stripped.endswith("\\"):
            keyword, _, rest = pending.strip().partition(" ")
            instructions.append((keyword.upper(), rest.strip()))
            pending = ""
    return instructions


def dockerfile_copies() -> tuple[str, list[tuple[str, str]]]:
    """The final WORKDIR and each COPY's (source, absolute destination), sources relative to
    the build context (the repository root)."""
    workdir, copies = "/", []
    for keyword, rest in dockerfile_instructions():
        if keyword == "WORKDIR":
            workdir = os.path.normpath(os.path.join(workdir, rest))
        elif keyword == "COPY":
            words = [word for word in shlex.split(rest) if not word.startswith("--")]
            *sources, destination = words
            target = os.path.normpath(os.path.join(workdir, destination))
            for source in sources:
                source = source.rstrip("/")
                if destination.endswith("/") and len(sources) == 1 and (REPO / source).is_dir():
                    copies.append((source, target))
                elif destination.endswith("/"):
                    copies.append((source, os.path.join(target, os.path.basename(source))))
                else:
                    copies.append((source, target))
    return workdir, copies


def image_tree(root: Path) -> Path:
    """The image's WORKDIR as the Dockerfile's COPY instructions lay it out, under root."""
    workdir, copies = dockerfile_copies()
    for source, destination in copies:
        target = root / os.path.relpath(destination, workdir)
        if (REPO / source).is_dir():
            shutil.copytree(REPO / source, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / source, target)
    return root


def runbook_commands() -> list[list[str]]:
    """Every `python jobs/NAME.py ...` in the runbook's code blocks, as words."""
    blocks = re.findall(r"```[a-z]*\n(.*?)```", RUNBOOK.read_text(), flags=re.S)
    commands = []
    for block in blocks:
        text = re.sub(r"\\\n\s*", " ", block)
        for line in text.splitlines():
            line = line.split(" #", 1)[0]
            try:
                words = shlex.split(line)
            except ValueError:
                continue
            for start, word in enumerate(words):
                if word in ("python", "python3") and start + 1 < len(words) and words[start + 1].startswith("jobs/"):
                    end = next((i for i in range(start, len(words)) if words[i] in ("&&", "||", ";", "|")), len(words))
                    commands.append(words[start:end])
    return commands


# ---- every YAML ----------------------------------------------------------------------------------

def test_every_yaml_parses():
    files = yaml_files()
    assert AWS_CONFIG in files and len(list(KUBERAY.glob("*.yaml"))) >= 3
    for path in files:
        docs = documents(path)
        assert docs, f"{path} is empty"
        assert all(isinstance(doc, dict) for doc in docs), f"{path}: every document must be a mapping"


def test_no_credentials_in_cluster_files():
    for path in [*yaml_files(), DOCKERFILE]:
        text = path.read_text()
        assert not re.search(r"\bA(KIA|SIA)[A-Z0-9]{16}\b", text), f"{path} holds an access key id"
        for name in CREDENTIAL_NAMES:
            assert name not in text, f"{path} sets {name}: S3 access must come from a role"


# ---- cluster/aws.yaml ----------------------------------------------------------------------------

def aws_config() -> dict:
    return yaml.safe_load(AWS_CONFIG.read_text())


def test_aws_config_validates_against_rays_schema():
    import ray.autoscaler
    from ray.autoscaler._private.util import prepare_config, validate_config

    schema_path = Path(ray.autoscaler.__file__).parent / "ray-schema.json"
    config = aws_config()
    jsonschema.validate(config, json.loads(schema_path.read_text()))  # the file as written
    # ...and as `ray up` sees it: merged with Ray's AWS defaults, then validated again.
    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    assert prepared["provider"]["type"] == "aws"


def test_aws_node_types_for_heterogeneous_autoscaling():
    config = aws_config()
    types = config["available_node_types"]
    head = types[config["head_node_type"]]
    workers = {name: node for name, node in types.items() if name != config["head_node_type"]}
    gpu = [node for node in workers.values() if node["resources"].get("GPU", 0) > 0]
    cpu = [node for node in workers.values() if node["resources"].get("GPU", 0) == 0]
    assert len(gpu) == 1 and len(cpu) == 1, "one GPU and one CPU worker type"
    assert head["resources"].get("GPU", 0) == 0 and head["resources"].get("CPU") == 0, \
        "the head runs drivers, not tasks"
    assert "InstanceMarketOptions" not in head["node_config"], "the head is on-demand"
    for node in workers.values():
        assert node["min_workers"] == 0 and node["max_workers"] >= 1, "workers scale from zero"
        assert node["resources"].get("CPU", 0) >= 1
        assert node["node_config"]["InstanceMarketOptions"]["MarketType"] == "spot"
    assert gpu[0]["node_config"]["InstanceType"].startswith(("g", "p"))
    assert not cpu[0]["node_config"]["InstanceType"].startswith(("g", "p"))
    assert config["max_workers"] >= max(node["max_workers"] for node in workers.values())
    assert 0 < config["idle_timeout_minutes"] <= 30
    assert config["provider"]["cache_stopped_nodes"] is False


def test_aws_s3_access_through_instance_profiles():
    for name, node in aws_config()["available_node_types"].items():
        arn = node["node_config"]["IamInstanceProfile"]["Arn"]
        assert re.fullmatch(r"arn:aws:iam::\d{12}:instance-profile/[\w+=,.@-]+", arn), (name, arn)


def test_aws_image_pinned_and_project_installed():
    config = aws_config()
    image = config["docker"]["image"]
    match = re.fullmatch(r"rayproject/ray:(\d+\.\d+\.\d+)-py3\d+-(gpu|cu\d+)", image)
    assert match, f"not a pinned Ray GPU image: {image}"
    assert match.group(1) == RAY_VERSION, f"{image} is not the pinned Ray {RAY_VERSION}"
    assert "head_image" not in config["docker"] and "worker_image" not in config["docker"]
    # Each node installs torch (the pinned release) before the project; only GPU nodes the CUDA build.
    setups = {"head": config["head_setup_commands"],
              **{name: node.get("worker_setup_commands", []) for name, node in config["available_node_types"].items()
                 if name != config["head_node_type"]}}
    assert not config["setup_commands"]
    for name, commands in setups.items():
        setup = " && ".join(commands)
        assert f"torch=={TORCH_VERSION}" in setup and setup.index("torch==") < setup.index("~/pix2pix"), name
        cpu_wheel = "download.pytorch.org/whl/cpu" in setup
        assert cpu_wheel == ("GPU" not in config["available_node_types"][name].get("resources", {})), name
    # The repository reaches every node (without its git-ignored files: no virtualenv).
    assert config["file_mounts"]["~/pix2pix"] == "."
    assert ".gitignore" in config["rsync_filter"]
    assert ".venv/" in (REPO / ".gitignore").read_text().splitlines()


def test_aws_token_auth_and_job_directory():
    config = aws_config()
    options = " ".join(config["docker"]["run_options"])
    assert "RAY_AUTH_MODE=token" in options
    token_path = re.search(r"RAY_AUTH_TOKEN_PATH=(\S+)", options).group(1)
    mounted = [remote.replace("~", "/home/ray", 1) for remote in config["file_mounts"]]
    assert any(token_path.startswith(remote.rstrip("/") + "/") for remote in mounted), \
        "the token file must reach every node through file_mounts"
    for commands in (config["head_start_ray_commands"], config["worker_start_ray_commands"]):
        start = next(command for command in commands if "ray start" in command)
        # A job without --working-dir runs where Ray started: jobs/ must resolve there.
        assert start.index("cd ~/pix2pix") < start.index("ray start")


# ---- cluster/kuberay/ ----------------------------------------------------------------------------

QUANTITY = {"anyOf": [{"type": "integer", "minimum": 0},
                      {"type": "string", "pattern": r"^[0-9]+(\.[0-9]+)?(m|[KMGTPE]i?)?$"}]}
RESOURCES = {"type": "object", "additionalProperties": False, "properties": {
    "requests": {"type": "object", "additionalProperties": QUANTITY},
    "limits": {"type": "object", "additionalProperties": QUANTITY}}}
PULL_POLICY = {"enum": ["Always", "IfNotPresent", "Never"]}
NAME = {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", "maxLength": 63}
ENV = {"type": "array", "items": {"type": "object", "required": ["name"], "additionalProperties": False,
                                  "properties": {"name": {"type": "string"}, "value": {"type": "string"},
                                                 "valueFrom": {"type": "object"}}}}
CONTAINER = {
    "type": "object", "required": ["name", "image"], "additionalProperties": False,
    "properties": {
        "name": NAME, "image": {"type": "string", "minLength": 1}, "imagePullPolicy": PULL_POLICY,
        "workingDir": {"type": "string", "pattern": "^/"}, "env": ENV, "resources": RESOURCES,
        "command": {"type": "array", "items": {"type": "string"}},
        "args": {"type": "array", "items": {"type": "string"}},
        "ports": {"type": "array", "items": {
            "type": "object", "required": ["containerPort"], "additionalProperties": False,
            "properties": {"containerPort": {"type": "integer", "minimum": 1, "maximum": 65535},
                           "name": {"type": "string", "maxLength": 15}, "protocol": {"enum": ["TCP", "UDP"]}}}},
        "volumeMounts": {"type": "array", "items": {
            "type": "object", "required": ["name", "mountPath"],
            "properties": {"name": {"type": "string"}, "mountPath": {"type": "string"}}}},
        "lifecycle": {"type": "object"}, "securityContext": {"type": "object"},
    },
}
POD_TEMPLATE = {
    "type": "object", "required": ["spec"], "additionalProperties": False,
    "properties": {
        "metadata": {"type": "object"},
        "spec": {
            "type": "object", "required": ["containers"], "additionalProperties": False,
            "properties": {
                "containers": {"type": "array", "minItems": 1, "items": CONTAINER},
                "serviceAccountName": NAME,
                "nodeSelector": {"type": "object", "additionalProperties": {"type": "string"}},
                "tolerations": {"type": "array", "items": {
                    "type": "object", "additionalProperties": False,
                    "properties": {"key": {"type": "string"}, "operator": {"enum": ["Exists", "Equal"]},
                                   "value": {"type": "string"},
                                   "effect": {"enum": ["NoSchedule", "PreferNoSchedule", "NoExecute"]}}}},
                "volumes": {"type": "array", "items": {"type": "object", "required": ["name"]}},
                "affinity": {"type": "object"}, "imagePullSecrets": {"type": "array"},
            },
        },
    },
}
RAY_START_PARAMS = {"type": "object", "additionalProperties": {"type": "string"}}  # the CRD: strings only
HEAD_GROUP = {
    "type": "object", "required": ["template"], "additionalProperties": False,
    "properties": {"rayStartParams": RAY_START_PARAMS, "template": POD_TEMPLATE,
                   "serviceType": {"enum": ["ClusterIP", "NodePort", "LoadBalancer"]},
                   "enableIngress": {"type": "boolean"}},
}
WORKER_GROUP = {
    "type": "object", "required": ["groupName", "minReplicas", "maxReplicas", "template"],
    "additionalProperties": False,
    "properties": {"groupName": NAME, "replicas": {"type": "integer", "minimum": 0},
                   "minReplicas": {"type": "integer", "minimum": 0}, "maxReplicas": {"type": "integer", "minimum": 1},
                   "numOfHosts": {"type": "integer", "minimum": 1}, "rayStartParams": RAY_START_PARAMS,
                   "template": POD_TEMPLATE, "suspend": {"type": "boolean"}},
}
CLUSTER_SPEC = {
    "type": "object", "required": ["rayVersion", "headGroupSpec", "workerGroupSpecs"], "additionalProperties": False,
    "properties": {
        "rayVersion": {"type": "string", "pattern": r"^\d+\.\d+\.\d+$"},
        "enableInTreeAutoscaling": {"type": "boolean"},
        "autoscalerOptions": {
            "type": "object", "additionalProperties": False,
            "properties": {"upscalingMode": {"enum": ["Default", "Aggressive", "Conservative"]},
                           "idleTimeoutSeconds": {"type": "integer", "minimum": 0},
                           "image": {"type": "string"}, "imagePullPolicy": PULL_POLICY, "resources": RESOURCES,
                           "env": ENV, "envFrom": {"type": "array"}, "securityContext": {"type": "object"},
                           "volumeMounts": {"type": "array"}, "version": {"enum": ["v1", "v2"]}}},
        "authOptions": {"type": "object", "additionalProperties": False,
                        "properties": {"mode": {"enum": ["disabled", "token"]}}},
        "headGroupSpec": HEAD_GROUP,
        "workerGroupSpecs": {"type": "array", "minItems": 1, "items": WORKER_GROUP},
        "suspend": {"type": "boolean"},
    },
}
METADATA = {"type": "object", "required": ["name"], "additionalProperties": False,
            "properties": {"name": NAME, "namespace": NAME, "labels": {"type": "object"},
                           "annotations": {"type": "object", "additionalProperties": {"type": "string"}}}}
SCHEMAS = {
    "RayCluster": {
        "type": "object", "required": ["apiVersion", "kind", "metadata", "spec"], "additionalProperties": False,
        "properties": {"apiVersion": {"const": "ray.io/v1"}, "kind": {"const": "RayCluster"},
                       "metadata": METADATA, "spec": CLUSTER_SPEC},
    },
    "RayJob": {
        "type": "object", "required": ["apiVersion", "kind", "metadata", "spec"], "additionalProperties": False,
        "properties": {
            "apiVersion": {"const": "ray.io/v1"}, "kind": {"const": "RayJob"}, "metadata": METADATA,
            "spec": {
                "type": "object", "required": ["entrypoint", "rayClusterSpec"], "additionalProperties": False,
                "properties": {
                    "entrypoint": {"type": "string", "minLength": 1},
                    "runtimeEnvYAML": {"type": "string"},
                    "submissionMode": {"enum": ["K8sJobMode", "HTTPMode", "InteractiveMode", "SidecarMode"]},
                    "shutdownAfterJobFinishes": {"type": "boolean"},
                    "ttlSecondsAfterFinished": {"type": "integer", "minimum": 0},
                    "activeDeadlineSeconds": {"type": "integer", "minimum": 1},
                    "backoffLimit": {"type": "integer", "minimum": 0},
                    "entrypointNumCpus": {"type": "number"}, "entrypointNumGpus": {"type": "number"},
                    "submitterPodTemplate": POD_TEMPLATE, "suspend": {"type": "boolean"},
                    "rayClusterSpec": CLUSTER_SPEC,
                },
            },
        },
    },
    "ServiceAccount": {
        "type": "object", "required": ["apiVersion", "kind", "metadata"],
        "properties": {"apiVersion": {"const": "v1"}, "metadata": METADATA},
    },
    "Namespace": {
        "type": "object", "required": ["apiVersion", "kind", "metadata"],
        "properties": {"apiVersion": {"const": "v1"}, "metadata": METADATA},
    },
}


def test_kuberay_manifests_match_the_crd_fields():
    kinds = []
    for path in sorted(KUBERAY.glob("*.yaml")):
        for doc in documents(path):
            assert doc.get("kind") in SCHEMAS, f"{path}: unexpected kind {doc.get('kind')}"
            jsonschema.validate(doc, SCHEMAS[doc["kind"]])
            kinds.append(doc["kind"])
    assert kinds.count("RayCluster") == 1 and kinds.count("RayJob") == 2 and "ServiceAccount" in kinds


def test_schema_catches_a_misspelt_field():
    _, job = kuberay_documents("RayJob")[0]
    broken = copy.deepcopy(job)
    broken["spec"]["rayClusterSpec"]["enableIntreeAutoscaling"] = broken["spec"]["rayClusterSpec"].pop(
        "enableInTreeAutoscaling")
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, SCHEMAS["RayJob"])
    broken = copy.deepcopy(job)
    broken["spec"]["rayClusterSpec"]["headGroupSpec"]["rayStartParams"]["num-cpus"] = 0  # must be a string
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, SCHEMAS["RayJob"])


def test_kuberay_autoscaling_as_rays_autoscaler_reads_it():
    """Ray's own RayCluster-to-autoscaler translation (what the in-tree autoscaler runs), which
    also validates the result against Ray's cluster-config schema."""
    from ray.autoscaler._private.kuberay.autoscaling_config import _derive_autoscaling_config_from_ray_cr

    for label, spec in cluster_specs():
        assert spec["enableInTreeAutoscaling"] is True, label
        assert spec["autoscalerOptions"]["idleTimeoutSeconds"] > 0, label
        config = _derive_autoscaling_config_from_ray_cr(
            {"metadata": {"name": "pix2pix", "namespace": "pix2pix"}, "spec": spec})
        types = config["available_node_types"]
        assert types["headgroup"]["resources"]["CPU"] == 0, f"{label}: the head runs no tasks"
        gpu, cpu = worker_group(spec, needs_gpu=True), worker_group(spec, needs_gpu=False)
        assert types[gpu["groupName"]]["resources"]["GPU"] == 1, label
        assert "GPU" not in types[cpu["groupName"]]["resources"], label
        for group in (gpu, cpu):
            node_type = types[group["groupName"]]
            assert node_type["min_workers"] == 0 and node_type["max_workers"] >= 1, label
            assert node_type["resources"]["CPU"] >= 1, label
            assert group["minReplicas"] <= group.get("replicas", 0) <= group["maxReplicas"], label


def test_kuberay_pods_heterogeneous_and_consistent():
    workdir, _ = dockerfile_copies()
    accounts = {(doc["metadata"]["namespace"], doc["metadata"]["name"]): doc
                for _, doc in kuberay_documents("ServiceAccount")}
    namespaces = {doc["metadata"]["name"] for _, doc in kuberay_documents("Namespace")}
    images = set()
    for path, doc in [*kuberay_documents("RayCluster"), *kuberay_documents("RayJob")]:
        spec = doc["spec"] if doc["kind"] == "RayCluster" else doc["spec"]["rayClusterSpec"]
        label = f"{path.name}:{doc['metadata']['name']}"
        namespace = doc["metadata"]["namespace"]
        assert namespace in namespaces, label
        assert spec["rayVersion"] == RAY_VERSION, f"{label}: rayVersion is not the pinned Ray"
        assert spec["authOptions"]["mode"] == "token", label
        assert spec["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0", label
        gpu = worker_group(spec, needs_gpu=True)
        resources = gpu["template"]["spec"]["containers"][0]["resources"]
        assert resources["requests"]["nvidia.com/gpu"] == resources["limits"]["nvidia.com/gpu"], label
        assert any(toleration["key"] == "nvidia.com/gpu" for toleration in gpu["template"]["spec"]["tolerations"])
        groups = [spec["headGroupSpec"], *spec["workerGroupSpecs"]]
        for group in groups:
            pod = group["template"]["spec"]
            # S3 through the service account's role: it exists, it has a role, no keys in env.
            account = accounts[(namespace, pod["serviceAccountName"])]
            annotations = account["metadata"].get("annotations", {})
            assert re.fullmatch(r"arn:aws:iam::\d{12}:role/[\w+=,.@-]+",
                                annotations.get("eks.amazonaws.com/role-arn", "")) or \
                "iam.gke.io/gcp-service-account" in annotations, f"{label}: no workload identity"
        capacity = [group["template"]["spec"]["nodeSelector"].get("karpenter.sh/capacity-type") for group in groups]
        assert capacity[0] == "on-demand" and set(capacity[1:]) == {"spot"}, label
        for container in ray_containers(spec):
            assert container["workingDir"] == workdir, f"{label}: jobs/ resolves in the image's WORKDIR"
            assert not {var["name"] for var in container.get("env", [])} & set(CREDENTIAL_NAMES), label
            images.add(container["image"])
    assert len(images) == 1, f"one image for every Ray container: {images}"


def test_rayjob_entrypoints_parse_with_the_jobs_parsers():
    seen = set()
    for path, doc in kuberay_documents("RayJob"):
        spec = doc["spec"]
        name, args = parse_entrypoint(shlex.split(spec["entrypoint"]))
        seen.add(name)
        # The job's cluster starts without GPU pods: auto-detection would pick CPUs.
        assert args.gpu is True, f"{path.name}: pass --gpu"
        gpu = worker_group(spec["rayClusterSpec"], needs_gpu=True)
        if name == "train":
            assert args.data.startswith("s3://") and args.storage.startswith("s3://") and args.name
            assert args.num_workers <= gpu["maxReplicas"] * gpus_of(gpu), "one GPU per DDP worker"
        elif name == "translate":
            assert all(uri.startswith("s3://") for uri in (args.input, args.output, args.checkpoint))
            assert args.bbox and args.zoom is not None
            # the GPU actor pool is asked for up front; the autoscaler adds the pods for it
            assert args.gpu and 1 <= args.max_actors <= gpu["maxReplicas"] * gpus_of(gpu)
        if "runtimeEnvYAML" in spec:
            assert isinstance(yaml.safe_load(spec["runtimeEnvYAML"]), dict)
        assert spec["shutdownAfterJobFinishes"] is True
    assert seen == {"train", "translate"}


def test_a_negative_bbox_needs_the_equals_sign():
    """Why the manifests write --bbox=W,S,E,N: a value starting with '-' reads as an option."""
    words = ["python", "jobs/translate.py", "--input", "s3://b/sat", "--output", "s3://b/map",
             "--checkpoint", "s3://b/run", "--zoom", "17"]
    with pytest.raises(AssertionError, match="does not parse"):
        parse_entrypoint([*words, "--bbox", "-35.02,-8.16,-34.86,-7.93"])
    _, args = parse_entrypoint([*words, "--bbox=-35.02,-8.16,-34.86,-7.93"])
    assert args.bbox == (-35.02, -8.16, -34.86, -7.93)


# ---- cluster/Dockerfile and .dockerignore ---------------------------------------------------------

def test_dockerfile_base_image_is_the_pinned_ray():
    bases = [rest for keyword, rest in dockerfile_instructions() if keyword == "FROM"]
    assert len(bases) == 1
    match = re.fullmatch(r"rayproject/ray:(\d+\.\d+\.\d+)-py3\d+-(gpu|cu\d+)", bases[0])
    assert match, f"not a Ray GPU image: {bases[0]}"
    assert match.group(1) == RAY_VERSION, f"{bases[0]} is not the pinned Ray {RAY_VERSION}"
    runs = [rest for keyword, rest in dockerfile_instructions() if keyword == "RUN"]
    torch = next(i for i, run in enumerate(runs) if f"torch=={TORCH_VERSION}" in run)
    project = next(i for i, run in enumerate(runs) if re.search(r"pip install (\S+ )*\.(\s|$)", run))
    assert torch < project, "torch first, so the pin resolves to the CUDA wheel"


def local_imports(script: Path) -> set[str]:
    """Top-level names a job script imports that live in the repository (packages or modules)."""
    names = set()
    for node in ast.walk(ast.parse(script.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
        elif isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
    return {name for name in names if (REPO / name).is_dir() or (REPO / f"{name}.py").is_file()}


def test_dockerfile_copies_what_the_entrypoints_need():
    workdir, copies = dockerfile_copies()
    in_image = {os.path.relpath(destination, workdir) for _, destination in copies}
    assert {"pyproject.toml", "pix2pix", "jobs"} <= in_image
    # pip install . builds the package: pyproject.toml and the readme it names come first.
    readme = re.search(r'readme\s*=\s*"([^"]+)"', (REPO / "pyproject.toml").read_text()).group(1)
    assert readme in in_image
    scripts = {shlex.split(doc["spec"]["entrypoint"])[1] for _, doc in kuberay_documents("RayJob")}
    scripts |= {words[1] for words in runbook_commands()}
    for script in scripts:
        assert os.path.dirname(script) in in_image or script in in_image, f"{script} is not in the image"
        for name in local_imports(REPO / script):
            assert name in in_image or f"{name}.py" in in_image, f"{script} imports {name}, not in the image"


def dockerignore_excludes(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parents decides."""
    parts = path.split("/")
    candidates = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
    excluded = False
    for pattern in patterns:
        negated = pattern.startswith("!")
        pattern = pattern.lstrip("!").strip("/")
        if any(fnmatch.fnmatchcase(candidate, pattern) for candidate in candidates) or \
                (pattern.startswith("**/") and any(fnmatch.fnmatchcase(c.split("/")[-1], pattern[3:])
                                                   for c in candidates)):
            excluded = not negated
    return excluded


def test_dockerignore_keeps_the_copied_files_and_drops_the_rest():
    ignore = REPO / ".dockerignore"
    if not ignore.exists():
        pytest.skip("no .dockerignore")
    patterns = [line.strip() for line in ignore.read_text().splitlines()
                if line.strip() and not line.strip().startswith("#")]
    _, copies = dockerfile_copies()
    for source, _ in copies:
        files = [source] if (REPO / source).is_file() else [
            str(path.relative_to(REPO)) for path in (REPO / source).rglob("*")
            if path.is_file() and "__pycache__" not in path.parts]
        assert files, f"{source} is empty"
        for file in files:
            assert not dockerignore_excludes(file, patterns), f".dockerignore drops {file}, which COPY needs"
    for dropped in (".venv/bin/python", ".git/HEAD", "tests/test_cluster.py", "pix2pix/__pycache__/cli.pyc"):
        assert dockerignore_excludes(dropped, patterns), f".dockerignore keeps {dropped}"


# ---- the runbook ---------------------------------------------------------------------------------

def test_runbook_commands_parse_with_the_jobs_parsers():
    commands = runbook_commands()
    names = set()
    for words in commands:
        name, args = parse_entrypoint(words)
        names.add(name)
        if name in ("train", "translate"):
            # An autoscaling cluster may have no GPU node when the job starts: say which.
            assert args.gpu is not None, f"{shlex.join(words)}: pass --gpu (or --cpu)"
    assert {"prepare", "train", "translate"} <= names


def test_the_cost_table_follows_from_the_tiles_the_planner_would_translate():
    """Every row of the runbook's cost table: its tile count is what the --bbox planner selects,
    and its price that count of PUT requests at the stated price per 1,000."""
    from pix2pix.tiles.plan import bbox_tile_range

    text = RUNBOOK.read_text()
    price = float(re.search(r"\*\*\$(\d+\.\d+) per 1,000 PUT\*\*", text).group(1))
    runbook_bbox = re.search(r"python jobs/translate\.py[^`]*?--bbox=(\S+)", text, re.S).group(1)
    rows = re.findall(r"^\| ([^|]+) \| (\d+) \| ([\d,]+) \| \$([\d.]+) \|$", text, re.M)
    assert len(rows) == 3, rows
    for area, zoom, tiles, dollars in rows:
        given = re.search(r"`(-?[\d.]+(?:,-?[\d.]+){3})`", area)
        bbox = tuple(float(v) for v in (given.group(1) if given else runbook_bbox).split(","))
        x0, x1, y0, y1 = bbox_tile_range(bbox, int(zoom))
        count = (x1 - x0 + 1) * (y1 - y0 + 1)
        assert int(tiles.replace(",", "")) == count, (area, zoom, count)
        assert float(dollars) == round(count * price / 1000, 2), (area, zoom)


# ---- placement: GPU asks where the work is GPU work, CPUs elsewhere -------------------------------

def fake_cluster(monkeypatch, resources: dict):
    import ray

    monkeypatch.setattr(ray, "cluster_resources", lambda: dict(resources))


def test_training_asks_for_gpus_before_any_gpu_node_exists(monkeypatch):
    from pix2pix.distributed import train

    fake_cluster(monkeypatch, {"CPU": 0.0})  # a head with num-cpus 0, workers at zero
    plan = train.plan_train_resources(4, True, None, None, nodes=[])
    assert plan.use_gpu and plan.num_workers == 4 and plan.cpus_per_worker == 1.0
    assert train.plan_train_resources(None, True, None, None, nodes=[]).num_workers == 1  # GPU nodes still to come


def test_one_worker_per_gpu_by_default(monkeypatch):
    from pix2pix.distributed import train

    fake_cluster(monkeypatch, {"CPU": 64.0, "GPU": 8.0})
    plan = train.plan_train_resources(None, None, None, None, nodes=[{"CPU": 64.0, "GPU": 8.0}])
    assert plan.use_gpu and plan.num_workers == 8 and plan.threads == 1
    assert train.plan_train_resources(2, None, None, None, nodes=[{"CPU": 64.0, "GPU": 8.0}]).num_workers == 2


def test_gpu_workers_stay_on_one_node_by_default(monkeypatch):
    """DDP's gradient all-reduce between nodes costs ~10x a step: the default is the GPUs of the
    node with the most; more is --num-workers."""
    from pix2pix.distributed import train

    fake_cluster(monkeypatch, {"CPU": 96.0, "GPU": 12.0})
    nodes = [{"CPU": 32.0, "GPU": 4.0}, {"CPU": 64.0, "GPU": 8.0}, {"CPU": 0.0}]
    assert train.plan_train_resources(None, None, None, None, nodes=nodes).num_workers == 8
    assert train.plan_train_resources(12, None, None, None, nodes=nodes).num_workers == 12


def test_gpu_workers_reserve_their_share_of_the_nodes_cpus_and_decode_with_it(monkeypatch):
    from pix2pix.distributed import train

    fake_cluster(monkeypatch, {"CPU": 72.0, "GPU": 9.0})
    # 64 CPUs for 8 GPUs: 7 each (one CPU of the node left to Ray), 6 decode threads beside the step
    plan = train.plan_train_resources(None, None, None, None, nodes=[{"CPU": 64.0, "GPU": 8.0}])
    assert (plan.cpus_per_worker, plan.threads, plan.decode_workers) == (7.0, 1, 6)
    # a worker fits on the GPU node with the fewest CPUs per GPU; CPU-only nodes and the head do not count
    nodes = [{"CPU": 64.0, "GPU": 8.0}, {"CPU": 4.0, "GPU": 1.0}, {"CPU": 96.0}, {"CPU": 0.0}]
    assert train.plan_train_resources(None, True, None, None, nodes=nodes).cpus_per_worker == 3.0
    assert train.plan_train_resources(None, True, None, None, nodes=[{"CPU": 2.0, "GPU": 2.0}]).cpus_per_worker == 1.0
    plan = train.plan_train_resources(None, True, 4.0, None, nodes=[{"CPU": 64.0, "GPU": 8.0}])
    assert (plan.cpus_per_worker, plan.decode_workers) == (4.0, 3)  # --cpus-per-worker wins
    assert train.plan_train_resources(None, True, 4.0, 4, nodes=[]).decode_workers == 1  # at least one


def test_cpu_workers_share_the_nodes_and_fit_them(monkeypatch):
    from pix2pix.distributed import train

    fake_cluster(monkeypatch, {"CPU": 2.0})  # CPU-only: auto-detection trains on CPUs
    plan = train.plan_train_resources(1, None, None, None, nodes=[{"CPU": 2.0}])
    assert not plan.use_gpu and (plan.cpus_per_worker, plan.threads) == (2.0, 2)  # no CPU kept for data tasks
    assert plan.decode_workers == 1  # the torch threads take the CPUs: one decode thread, as before
    assert train.plan_train_resources(3, None, None, None, nodes=[{"CPU": 2.0}]).cpus_per_worker == 0.66
    # 4 workers on 3 nodes of 8: two per node at most, so each fits with 4 CPUs
    plan = train.plan_train_resources(4, None, None, None, nodes=[{"CPU": 8.0}] * 3 + [{"CPU": 0.0}])
    assert (plan.cpus_per_worker, plan.threads) == (4.0, 4)
    assert train.plan_train_resources(2, None, None, None, nodes=[]).cpus_per_worker == 1.0  # nodes still to come
    assert train.plan_train_resources(2, False, 0.5, 3, nodes=[{"CPU": 2.0}]) == train.TrainResources(2, False, 0.5, 3)


def test_translate_places_generators_on_gpus_and_runs_on_cpus_alone(monkeypatch):
    from pix2pix.distributed.translate import TranslateOptions, plan_translate_resources

    options = TranslateOptions(input="s3://b/sat", output="s3://b/map", checkpoint="s3://b/run")
    fake_cluster(monkeypatch, {"CPU": 44.0, "GPU": 2.0})  # two GPU nodes and a CPU node
    plan = plan_translate_resources(options)
    assert plan.device == "cuda" and plan.max_actors == 2 and plan.actor_cpus == 1.0
    assert plan.read_actors > 1 and plan.write_actors > 1  # read/write actors (CPU only) on the remaining CPUs
    # The spare CPUs are shared by measured CPU per tile: warping from rasters costs ~15x a tile's read.
    assert plan.read_actors < plan.write_actors
    from_rasters = plan_translate_resources(options, rasters=True)
    assert from_rasters.read_actors > 5 * from_rasters.write_actors and from_rasters.write_actors >= 4
    fake_cluster(monkeypatch, {"CPU": 4.0})  # CPU-only cluster: everything still runs
    plan = plan_translate_resources(options)
    assert plan.device == "cpu" and plan.max_actors >= 1


def test_translate_gpu_on_an_autoscaling_cluster_with_no_gpu_node_yet(monkeypatch):
    from pix2pix.distributed.translate import TranslateOptions, plan_translate_resources

    fake_cluster(monkeypatch, {"CPU": 0.0})
    plan = plan_translate_resources(TranslateOptions(input="s3://b/sat", output="s3://b/map", checkpoint="s3://b/run",
                                           gpu=True, max_actors=4))
    assert plan.device == "cuda" and plan.max_actors == 4  # CPU nodes get asked for too:
    assert plan.write_actors == 8 and plan.read_actors >= 6  # two write actors per GPU and the reads for them


def launches_for(node_types: dict, head_type: str, bundle: dict) -> tuple[dict, list]:
    """What Ray's autoscaler would launch, from these node types, for one pending ``bundle``:
    its own bin-packing with its default scorer (what `ray up` and KubeRay clusters run)."""
    from functools import partial

    from ray.autoscaler._private.node_provider_availability_tracker import NodeAvailabilitySummary
    from ray.autoscaler._private.resource_demand_scheduler import _default_utilization_scorer, get_nodes_for

    scorer = partial(_default_utilization_scorer, node_availability_summary=NodeAvailabilitySummary({}))
    launched, residual = get_nodes_for(copy.deepcopy(node_types), {}, head_type, 10, [bundle], scorer)
    return dict(launched), residual


def autoscaler_node_types() -> list[tuple[str, dict, str]]:
    """(label, node types, head type) of cluster/aws.yaml and of every KubeRay cluster, the latter
    through Ray's own RayCluster translation."""
    from ray.autoscaler._private.kuberay.autoscaling_config import _derive_autoscaling_config_from_ray_cr

    config = aws_config()
    found = [("aws.yaml", config["available_node_types"], config["head_node_type"])]
    for label, spec in cluster_specs():
        derived = _derive_autoscaling_config_from_ray_cr({"metadata": {"name": "pix2pix", "namespace": "pix2pix"},
                                                          "spec": spec})
        found.append((label, derived["available_node_types"], derived["head_node_type"]))
    return found


def test_every_job_request_launches_the_node_type_meant_for_it(monkeypatch):
    """The bundles the jobs ask for, fed to the autoscaler's own bin-packing with each config's
    node types at full size: GPU work launches the gpu type only, CPU work the CPU type only
    (a GPU node must never be bought for decoding), and a worker bigger than every type stays
    unfulfilled (the jobs then say so: tests/test_autoscaling.py)."""
    from pix2pix.distributed import train
    from pix2pix.distributed.translate import IO_CPUS, TranslateOptions, plan_translate_resources

    fake_cluster(monkeypatch, {"CPU": 0.0})  # the head alone, every worker type at 0 nodes
    options = TranslateOptions(input="s3://b/sat", output="s3://b/map", checkpoint="s3://b/run", gpu=True)
    generator = plan_translate_resources(options)
    for label, types, head in autoscaler_node_types():
        workers = {name: spec for name, spec in types.items() if name != head}
        [gpu_type] = [name for name, spec in workers.items() if spec["resources"].get("GPU")]
        [cpu_type] = [name for name, spec in workers.items() if not spec["resources"].get("GPU")]
        node_cpus = workers[cpu_type]["resources"]["CPU"]
        gpu_asks = [train.worker_bundle(train.plan_train_resources(None, True, None, None, nodes=[])),
                    # after the GPU node came up: its GPU's share of its CPUs
                    train.worker_bundle(train.plan_train_resources(None, True, None, None,
                                                                   nodes=[workers[gpu_type]["resources"]])),
                    {"CPU": generator.actor_cpus, "GPU": 1.0}]
        cpu_asks = [train.worker_bundle(train.plan_train_resources(None, False, None, None, nodes=[])),  # before nodes
                    # after nodes:
                    train.worker_bundle(train.plan_train_resources(None, False, None, None,
                                                                   nodes=[{"CPU": node_cpus}])),
                    {"CPU": IO_CPUS}]
        for bundle in gpu_asks:
            assert launches_for(types, head, bundle) == ({gpu_type: 1}, []), (label, bundle)
        for bundle in cpu_asks:
            assert launches_for(types, head, bundle) == ({cpu_type: 1}, []), (label, bundle)
        too_big = {"CPU": max(spec["resources"].get("CPU", 0) for spec in workers.values()) + 1}
        assert launches_for(types, head, too_big) == ({}, [too_big]), label


# ---- remote submission against a real head --------------------------------------------------------

def submit_job(client_env: dict[str, str], *arguments: str, timeout: int = 240) -> subprocess.CompletedProcess:
    """`ray job submit ARGUMENTS` from 'a laptop' (a separate process, RAY_ADDRESS set) and wait.
    A head that has just started may not have its job agent yet, or may drop the submission's
    connection before answering (seen once on a loaded 2-core machine): a submission that was
    never accepted is retried."""
    from tests.ray_head import VENV_BIN

    deadline = time.monotonic() + 120
    while True:
        completed = subprocess.run([str(VENV_BIN / "ray"), "job", "submit", *arguments], env=client_env,
                                   capture_output=True, text=True, timeout=timeout)
        not_accepted = "No available agent" in completed.stderr or (
            "RemoteDisconnected" in completed.stderr and "submitted successfully" not in completed.stdout)
        if not not_accepted or time.monotonic() > deadline:
            return completed
        time.sleep(2)


def last_json_line(text: str) -> dict:
    for line in reversed(text.splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                return json.loads(line)
            except ValueError:
                continue
    raise AssertionError(f"no JSON summary in the job's logs:\n{text[-3000:]}")


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_remote_submission_by_working_dir_and_from_the_image_layout(tmp_path, monkeypatch):
    """Both ways jobs/ reaches a cluster, against a real head (own ports and temp dir):
    1. from a laptop: `RAY_ADDRESS=... ray job submit --working-dir . --runtime-env-json ...`;
    2. from the image: no working_dir; Ray started in the image's WORKDIR (laid out here by the
       Dockerfile's COPY lines), where the manifests' `python jobs/...` entrypoints resolve."""
    from tests.ray_head import ray_head

    image = image_tree(tmp_path / "image")
    demo_root = tmp_path / "demo"
    monkeypatch.chdir(image)  # the head (and so every job without a working_dir) starts here
    with ray_head() as (address, client_env):
        monkeypatch.chdir(REPO)
        assert client_env["RAY_ADDRESS"] == address and client_env["RAY_AUTH_MODE"] == "token"

        runtime_env = {"env_vars": {"PIX2PIX_DEMO_ROOT": str(demo_root)}, "excludes": ["tests/", "bench/"]}
        laptop = submit_job(client_env, "--working-dir", ".", "--runtime-env-json", json.dumps(runtime_env),
                            "--", "python", "jobs/prepare.py", "--demo-pairs", "6")
        logs = laptop.stdout + laptop.stderr
        assert laptop.returncode == 0 and "succeeded" in logs, logs[-4000:]
        assert "_ray_pkg_" in logs, "the working directory was not uploaded"
        summary = last_json_line(laptop.stdout)
        assert sum(summary["pairs"].values()) == 6, summary
        # The env var from --runtime-env-json reached the job: the demo went where it says.
        assert list((demo_root / "data" / "train").glob("*.parquet"))

        # The lightest of the manifests' scripts: it imports pix2pix from the image's layout.
        from_image = submit_job(client_env, "--", "python", "jobs/translate.py", "--help")
        logs = from_image.stdout + from_image.stderr
        assert from_image.returncode == 0 and "succeeded" in logs, logs[-4000:]
        assert "--bbox" in from_image.stdout and "_ray_pkg_" not in logs
