"""Every manifest against the real Kubernetes OpenAPI schemas; the Prometheus Operator kinds against its CRD models."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import jsonschema
import pytest
import yaml
from cloudcoil.models.prometheus_operator import v1 as promop
from helpers import ROOT, SHARED

K8S = ROOT / "k8s"
KUBE_VERSION = "1.33"
CRD_KINDS = {"ServiceMonitor", "PrometheusRule"}


def render_kustomize(path: Path = K8S) -> list[dict]:
    out = subprocess.run(["kubectl", "kustomize", str(path)], capture_output=True, text=True, check=True).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def validate_builtin(docs: list[dict], tmp_path: Path) -> None:
    """kubernetes-validate --strict: unknown fields and wrong types fail; a missing schema is a failure too."""
    f = tmp_path / "docs.yaml"
    f.write_text(yaml.safe_dump_all(docs))
    proc = subprocess.run(["kubernetes-validate", "--strict", "-k", KUBE_VERSION, str(f)], capture_output=True,
                          text=True)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0 and "Couldn't find schema" not in output, output
    assert output.count("passed for resource") == len(docs), output


def validate_crd(doc: dict) -> None:
    """Typed models of the Prometheus Operator CRDs; the round trip catches unknown fields the models let through."""
    obj = getattr(promop, doc["kind"]).model_validate(doc)
    assert obj.model_dump(mode="json", by_alias=True, exclude_unset=True) == doc, f"unknown fields in {doc['kind']}"


def test_kustomization_renders_and_validates(tmp_path):
    docs = render_kustomize()
    kinds = sorted(d["kind"] for d in docs)
    assert {"Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget", "NetworkPolicy",
            "ServiceMonitor", "PrometheusRule", "ConfigMap", "PersistentVolumeClaim", "Namespace"} <= set(kinds)
    assert "Job" not in kinds, "kubectl apply -k brings up everything but the training Job"
    validate_builtin([d for d in docs if d["kind"] not in CRD_KINDS], tmp_path)
    for d in docs:
        if d["kind"] in CRD_KINDS:
            validate_crd(d)


def _key(doc: dict) -> tuple[str, str]:
    return doc["kind"], doc["metadata"]["name"]


def _serve_pod(docs: list[dict]) -> dict:
    return next(d for d in docs if d["kind"] == "Deployment")["spec"]["template"]["spec"]


def test_gpu_variant_renders_validates_and_differs_only_in_the_deployment(tmp_path):
    cpu, gpu = render_kustomize(), render_kustomize(K8S / "gpu")
    validate_builtin([d for d in gpu if d["kind"] not in CRD_KINDS], tmp_path)
    for d in gpu:
        if d["kind"] in CRD_KINDS:
            validate_crd(d)
    assert sorted(map(_key, cpu)) == sorted(map(_key, gpu))
    assert [_key(c) for c, g in zip(sorted(cpu, key=_key), sorted(gpu, key=_key)) if c != g] == [
        ("Deployment", "imgcls-serve")]
    cpu_pod, gpu_pod = _serve_pod(cpu), _serve_pod(gpu)
    (c,), (g,) = cpu_pod["containers"], gpu_pod["containers"]
    assert c["image"].endswith("-cpu") and g["image"].endswith("-gpu")
    assert "nvidia.com/gpu" not in str(c["resources"]) and "tolerations" not in cpu_pod
    assert g["resources"]["requests"]["nvidia.com/gpu"] == g["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in gpu_pod["tolerations"]
    # device: cuda, so a pod whose GPU cannot be used never becomes ready (serving.runtime raises; tests/serving)
    env = {e["name"]: e.get("value") for e in g["env"]}
    assert env["SERVING_DEVICE"] == "cuda"
    from serving.settings import Settings
    assert Settings(device=env["SERVING_DEVICE"]).device == "cuda"
    assert g["readinessProbe"] == c["readinessProbe"] and g["securityContext"] == c["securityContext"]


def test_train_job_validates_and_carries_a_valid_config(tmp_path):
    docs = [d for d in yaml.safe_load_all((K8S / "train-job.yaml").read_text()) if d]
    validate_builtin(docs, tmp_path)
    config_map = next(d for d in docs if d["kind"] == "ConfigMap")
    job = next(d for d in docs if d["kind"] == "Job")
    from training.config import load_config
    (tmp_path / "job.yaml").write_text(config_map["data"]["job.yaml"])
    cfg = load_config(tmp_path / "job.yaml", environ={})
    assert cfg.model.backbone == "resnet50" and str(cfg.data.path).startswith("/data")
    (trainer,) = job["spec"]["template"]["spec"]["containers"]
    assert trainer["resources"]["limits"]["nvidia.com/gpu"] == 1 and "imgcls-train" in trainer["image"]
    spec = job["spec"]
    pod = spec["template"]["spec"]
    container = pod["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    rules = spec["podFailurePolicy"]["rules"]
    assert any(r["action"] == "Ignore" and 75 in r.get("onExitCodes", {}).get("values", []) for r in rules)
    from training.publish import EXIT_NOT_PUBLISHED  # the gate's refusal must fail the Job, not be retried
    assert any(r["action"] == "FailJob" and {2, EXIT_NOT_PUBLISHED} <= set(r.get("onExitCodes", {}).get("values", []))
               for r in rules)
    assert any(r["action"] == "Ignore" and r.get("onPodConditions") for r in rules)
    sc = container["securityContext"]
    assert sc["readOnlyRootFilesystem"] and not sc["allowPrivilegeEscalation"] and sc["capabilities"]["drop"] == ["ALL"]
    assert pod["securityContext"]["runAsNonRoot"]
    assert {"activeDeadlineSeconds", "ttlSecondsAfterFinished", "backoffLimit"} <= set(spec)
    claims = {v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"] if "persistentVolumeClaim" in v}
    assert claims == {"imgcls-data", "imgcls-artifacts"}
    assert any("emptyDir" in v and v["name"] == "scratch" for v in pod["volumes"])


@pytest.mark.parametrize("path", ["batch-job.yaml", "gpu/batch-job.yaml"])
def test_batch_job_validates_and_its_shards_are_its_indexes(path, tmp_path):
    from serving.batch import EXIT_USAGE, parser
    (job,) = [d for d in yaml.safe_load_all((K8S / path).read_text()) if d]
    validate_builtin([job], tmp_path)
    spec = job["spec"]
    assert spec["completionMode"] == "Indexed" and spec["completions"] == spec["parallelism"]
    assert spec["backoffLimitPerIndex"] >= 1 and "backoffLimit" not in spec
    (container,) = spec["template"]["spec"]["containers"]
    assert container["command"][-2:] == ["-m", "serving.batch"] and "imgcls-serve" in container["image"]
    args = parser().parse_args(container["args"])  # the arguments the CLI takes, as written
    assert args.shards == spec["completions"] and args.shard is None  # the completion index picks the shard
    rules = spec["podFailurePolicy"]["rules"]
    assert any(r["action"] == "FailIndex" and r["onExitCodes"]["values"] == [EXIT_USAGE] for r in rules), \
        "a job that cannot run as asked must not be retried"
    assert any(r["action"] == "Ignore" and r.get("onPodConditions") for r in rules)
    sc = container["securityContext"]
    assert sc["readOnlyRootFilesystem"] and not sc["allowPrivilegeEscalation"]
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    assert mounts["/data"]["readOnly"] and str(args.input).startswith("/data")
    assert str(args.output).startswith("/artifacts") and not mounts["/artifacts"].get("readOnly")
    gpu = "nvidia.com/gpu" in container["resources"]["limits"]
    assert gpu == path.startswith("gpu/") and container["image"].endswith("-gpu" if gpu else "-cpu")


def test_serving_config_is_valid_settings():
    from serving.settings import Settings
    Settings(**yaml.safe_load((K8S / "serving" / "config.yaml").read_text()))


def test_deployment_probes_match_the_service():
    dep = yaml.safe_load((K8S / "serving" / "deployment.yaml").read_text())
    c = dep["spec"]["template"]["spec"]["containers"][0]
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz" and c["livenessProbe"]["httpGet"]["path"] == "/livez"
    artifacts = next(v for v in dep["spec"]["template"]["spec"]["volumes"] if v["name"] == "artifacts")
    assert artifacts["persistentVolumeClaim"]["readOnly"]
    # onnxruntime's threads follow the container's CPU request (the node's core count would oversubscribe it)
    threads = next(e for e in c["env"] if e["name"] == "SERVING_INTRA_OP_THREADS")["valueFrom"]["resourceFieldRef"]
    assert threads["containerName"] == c["name"] and threads["resource"] == "requests.cpu"
    assert "cpu" in c["resources"]["requests"]


@pytest.mark.parametrize("mutate", [
    lambda d: d["spec"]["template"]["spec"]["containers"][0].update(imagePullPolicy=3),
    lambda d: d["spec"]["template"]["spec"]["containers"][0].update(readinesProbe={}),
])
def test_validator_really_rejects_mistakes(tmp_path, mutate):
    dep = yaml.safe_load((K8S / "serving" / "deployment.yaml").read_text())
    mutate(dep)
    with pytest.raises(AssertionError):
        validate_builtin([dep], tmp_path)


def test_crd_validation_really_rejects_unknown_fields():
    sm = yaml.safe_load((K8S / "monitoring" / "servicemonitor.yaml").read_text())
    sm["spec"]["endpoints"][0]["intervall"] = "5s"  # a typo the model itself would let through
    with pytest.raises(AssertionError):
        validate_crd(sm)


# ---- distributed training: Kubeflow PyTorchJob and the Indexed Job + headless Service variant -------------------
def validate_pytorchjob(doc: dict) -> None:
    """The Training Operator's own OpenAPI models (kubeflow-training); the round trip catches unknown fields."""
    from kubeflow.training import ApiClient

    class Response:  # what ApiClient.deserialize reads
        data = json.dumps(doc)

    client = ApiClient()
    job = client.deserialize(Response, "KubeflowOrgV1PyTorchJob")
    assert client.sanitize_for_serialization(job) == doc, "unknown or mistyped fields in the PyTorchJob"


def pod_templates_as_builtin(templates: list[dict]) -> list[dict]:
    """Pod templates checked against the real schema as PodTemplate objects (strict, like every other manifest)."""
    return [{"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": f"t{i}", "namespace": "imgcls"},
             "template": t} for i, t in enumerate(templates)]


def train_command(container: dict) -> list[str]:
    """The trainer's own argument parser accepts what the pod runs after `torchrun --module training`."""
    cmd = container["command"]
    assert cmd[:5] == ["dumb-init", "--", "torchrun", "--module", "training"], cmd
    from training.__main__ import _parser
    args = _parser().parse_args(cmd[5:])
    assert args.command == "train" and str(args.config) == "/config/job.yaml"
    return cmd


def test_pytorchjob_validates(tmp_path):
    doc = yaml.safe_load((K8S / "distributed" / "pytorchjob.yaml").read_text())
    validate_pytorchjob(doc)
    spec = doc["spec"]
    replicas = spec["pytorchReplicaSpecs"]
    validate_builtin(pod_templates_as_builtin([r["template"] for r in replicas.values()]), tmp_path)
    assert set(replicas) == {"Master", "Worker"} and all(r["restartPolicy"] == "OnFailure" for r in replicas.values())
    nodes = sum(r["replicas"] for r in replicas.values())
    assert spec["elasticPolicy"]["rdzvBackend"] == "c10d" and spec["elasticPolicy"]["maxRestarts"] >= 1
    assert spec["elasticPolicy"]["minReplicas"] == spec["elasticPolicy"]["maxReplicas"] == nodes
    for r in replicas.values():
        container = r["template"]["spec"]["containers"][0]
        assert container["name"] == "pytorch", "the operator injects its PET_* variables into the 'pytorch' container"
        assert str(container["resources"]["limits"]["nvidia.com/gpu"]) == spec["nprocPerNode"]
        train_command(container)


def test_indexed_job_and_headless_service_validate(tmp_path):
    docs = [d for d in yaml.safe_load_all((K8S / "distributed" / "indexed-job.yaml").read_text()) if d]
    validate_builtin(docs, tmp_path)
    service = next(d for d in docs if d["kind"] == "Service")
    job = next(d for d in docs if d["kind"] == "Job")
    spec, pod = job["spec"], job["spec"]["template"]["spec"]
    assert spec["completionMode"] == "Indexed" and spec["completions"] == spec["parallelism"]
    assert service["spec"]["clusterIP"] == "None" and pod["subdomain"] == service["metadata"]["name"]
    assert service["spec"]["selector"] == {"batch.kubernetes.io/job-name": job["metadata"]["name"]}
    container = pod["containers"][0]
    env = {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}
    assert int(env["PET_NNODES"]) == spec["completions"]
    assert int(env["PET_NPROC_PER_NODE"]) == container["resources"]["limits"]["nvidia.com/gpu"]
    assert env["PET_RDZV_ENDPOINT"] == f"{job['metadata']['name']}-0.{service['metadata']['name']}:29500"
    assert "job-completion-index" in env["PET_NODE_RANK"]["fieldRef"]["fieldPath"]
    train_command(container)


def test_pytorchjob_validation_really_rejects_mistakes():
    doc = yaml.safe_load((K8S / "distributed" / "pytorchjob.yaml").read_text())
    doc["spec"]["elasticPolicy"]["rdzvBackendd"] = "c10d"
    with pytest.raises(AssertionError):
        validate_pytorchjob(doc)


# ---- KServe InferenceService (the Open Inference Protocol deployment) -------------------------------------------
KSERVE_CRD = SHARED / "schemas" / "kserve-inferenceservices-crd.yaml"
KSERVE_ONLY = {"minReplicas", "maxReplicas", "scaleMetric", "scaleTarget", "timeout", "containerConcurrency",
               "canaryTrafficPercent", "logger", "batcher", "autoScaling", "deploymentStrategy", "labels",
               "annotations", "storageUris", "workerSpec"}


def closed(schema):
    """The CRD schema with additionalProperties: false wherever an object lists its properties (the published CRD
    lets any unknown field through, so a typo would validate)."""
    if isinstance(schema, dict):
        schema = {k: closed(v) for k, v in schema.items()}
        if "properties" in schema and "additionalProperties" not in schema \
                and not schema.get("x-kubernetes-preserve-unknown-fields"):
            schema["additionalProperties"] = False
    elif isinstance(schema, list):
        schema = [closed(v) for v in schema]
    return schema


def validate_inferenceservice(doc: dict) -> None:
    crd = yaml.safe_load(KSERVE_CRD.read_text())
    version = next(v for v in crd["spec"]["versions"] if doc["apiVersion"].endswith("/" + v["name"]))
    assert doc["apiVersion"].split("/")[0] == crd["spec"]["group"] and doc["kind"] == crd["spec"]["names"]["kind"]
    jsonschema.validate(doc, closed(version["schema"]["openAPIV3Schema"]))


def inferenceservice() -> dict:
    return yaml.safe_load((K8S / "kserve" / "inferenceservice.yaml").read_text())


def test_inferenceservice_validates_against_kserve_crd(tmp_path):
    doc = inferenceservice()
    validate_inferenceservice(doc)
    predictor = doc["spec"]["predictor"]
    # the pod half of the predictor is a PodSpec: checked against the real Kubernetes schema too
    pod = {k: v for k, v in predictor.items() if k not in KSERVE_ONLY}
    validate_builtin(pod_templates_as_builtin([{"metadata": {"labels": {"app": "x"}}, "spec": pod}]), tmp_path)
    (container,) = predictor["containers"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["PROTOCOL"] == "v2" and env["SERVING_V2_MODEL_NAME"] == doc["metadata"]["name"]
    port = container["ports"][0]["containerPort"]
    assert container["args"][-2:] == ["--port", str(port)]
    for probe, path in (("readinessProbe", "/v2/health/ready"), ("livenessProbe", "/v2/health/live")):
        assert container[probe]["httpGet"] == {"path": path, "port": port}
    # the same settings and security as the Deployment
    from serving.settings import Settings
    Settings(**{k.removeprefix("SERVING_").lower(): v for k, v in env.items()
                if k.startswith("SERVING_") and v is not None})
    dep = yaml.safe_load((K8S / "serving" / "deployment.yaml").read_text())["spec"]["template"]["spec"]
    assert predictor["securityContext"] == dep["securityContext"]
    assert container["securityContext"] == dep["containers"][0]["securityContext"]


@pytest.mark.parametrize("mutate", [
    lambda d: d["spec"]["predictor"].update(minReplica=2),  # a typo the published CRD would let through
    lambda d: d["spec"]["predictor"]["containers"][0].update(imagePullPolicy=3),
    lambda d: d["spec"]["predictor"].update(scaleMetric="gpu"),
])
def test_inferenceservice_validation_really_rejects_mistakes(mutate):
    doc = inferenceservice()
    mutate(doc)
    with pytest.raises(jsonschema.ValidationError):
        validate_inferenceservice(doc)
