"""k8s/tune/katib-experiment.yaml: the Experiment against Katib's own API models (kubeflow-katib-api; the round trip
catches unknown and mistyped fields), its trial Job against the real Kubernetes schema with the parameters filled
in, its command through the trainer's own parser and config (at both ends of every range), and its search space the
same settings as `python -m training tune`'s."""
from __future__ import annotations

import copy
import json
import re

import pytest
import yaml
from kubeflow_katib_api.models import V1beta1Experiment
from test_manifests import K8S, validate_builtin

from training import tune_space
from training.__main__ import _parser
from training.config import load_config

EXPERIMENT = K8S / "tune" / "katib-experiment.yaml"


def experiment() -> dict:
    return yaml.safe_load(EXPERIMENT.read_text())


def validate_experiment(doc: dict) -> None:
    parsed = V1beta1Experiment.from_dict(doc)
    assert json.loads(parsed.to_json()) == doc, "unknown or mistyped fields in the Experiment"


def filled(doc: dict, end: str) -> dict:
    """The trial Job as Katib would create it, each parameter at the `end` (min or max; a list's first or last)."""
    spec = doc["spec"]
    values = {}
    for p in spec["parameters"]:
        space = p["feasibleSpace"]
        values[p["name"]] = space["list"][0 if end == "min" else -1] if "list" in space else space[end]
    by_trial_name = {t["name"]: values.get(t["reference"], "trial-1") for t in spec["trialTemplate"]["trialParameters"]}
    text = json.dumps(spec["trialTemplate"]["trialSpec"])
    text = re.sub(r"\$\{trialParameters\.(\w+)\}", lambda m: by_trial_name[m.group(1)], text)
    job = json.loads(text)
    job["metadata"] = {"name": "trial-1", "namespace": "imgcls"}
    return job


def test_the_experiment_validates_against_katibs_models():
    validate_experiment(experiment())


def test_katib_validation_really_rejects_mistakes():
    doc = experiment()
    doc["spec"]["objective"]["objectiveMetricNmae"] = "val_acc"
    with pytest.raises(AssertionError):
        validate_experiment(doc)
    doc = experiment()
    doc["spec"]["maxTrialCount"] = "24"
    with pytest.raises(Exception):
        validate_experiment(doc)


@pytest.mark.parametrize("end", ["min", "max"])
def test_the_trial_job_validates_and_its_command_makes_a_valid_config(end, tmp_path):
    doc = experiment()
    job = filled(doc, end)
    validate_builtin([job], tmp_path)
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert container["name"] == doc["spec"]["trialTemplate"]["primaryContainerName"]
    args = _parser().parse_args(container["args"])
    assert args.command == "trial" and "${" not in json.dumps(job)
    cfg = load_config(None, args.overrides, environ={})  # every parameter lands in a valid config
    assert str(cfg.output_dir) == "/artifacts/runs/tune/trial-1"
    assert cfg.early_stop.metric == doc["spec"]["objective"]["objectiveMetricName"]


def test_the_search_space_is_the_local_searchs():
    doc = experiment()
    job = filled(doc, "min")
    sets = dict(a.split("=", 1) for a in job["spec"]["template"]["spec"]["containers"][0]["args"] if "=" in a)
    cfg = load_config(None, [], environ={})
    local = set(tune_space.head_defaults(cfg)) | set(tune_space.finetune_defaults(cfg))
    assert local <= set(sets), f"not searched in the cluster: {local - set(sets)}"
    unfreeze = next(p for p in doc["spec"]["parameters"] if p["name"] == "unfreeze")["feasibleSpace"]["list"]
    assert unfreeze == tune_space.unfreeze_choices(cfg), "the stages the cluster may unfreeze are the local search's"
    sizes = next(p for p in doc["spec"]["parameters"] if p["name"] == "image_size")["feasibleSpace"]["list"]
    assert [int(s) for s in sizes] == tune_space.size_choices(cfg), "the cluster's image sizes are the local search's"
    assert "data.image_size" in sets
    trial = copy.deepcopy(doc["spec"]["trialTemplate"]["trialSpec"]["spec"])
    rules = {r["action"]: r for r in trial["podFailurePolicy"]["rules"]}
    assert rules["FailJob"]["onExitCodes"]["values"] == [2] and trial["backoffLimit"] >= 1
