"""Alert rules through promtool; a real Prometheus scraping the real service; the dashboard type-checked."""
from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import yaml
from helpers import ROOT

from contract.card import load_card
from serving.launch import Server, free_port

MON = ROOT / "k8s" / "monitoring"


def rule_groups() -> dict:
    return yaml.safe_load((MON / "prometheusrule.yaml").read_text())["spec"]


def dashboard_exprs() -> list[str]:
    dash = json.loads((MON / "dashboard.json").read_text())
    return [t["expr"] for p in dash["panels"] for t in p["targets"]]


def test_promtool_check_and_unit_test_rules(tmp_path):
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(rule_groups()))
    shutil.copy(MON / "alerts_test.yaml", tmp_path / "alerts_test.yaml")
    check = subprocess.run(["promtool", "check", "rules", "rules.yaml"], cwd=tmp_path, capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    test = subprocess.run(["promtool", "test", "rules", "alerts_test.yaml"], cwd=tmp_path, capture_output=True,
                          text=True)
    assert test.returncode == 0, test.stdout + test.stderr
    alerts = {r["alert"] for g in rule_groups()["groups"] for r in g["rules"] if "alert" in r}
    tested = {t["alertname"] for case in yaml.safe_load((MON / "alerts_test.yaml").read_text())["tests"]
              for t in case["alert_rule_test"] if t["exp_alerts"]}
    assert alerts == tested, f"alerts without a firing test: {alerts - tested}"


def test_dashboard_type_checks_against_grafana_schema(tmp_path):
    cache = ROOT / ".cache" / "grafana-schema"
    if not (cache / "node_modules" / "@grafana" / "schema").is_dir():
        subprocess.run(["npm", "install", "--silent", "--no-audit", "--no-fund", "--prefix", str(cache),
                        "@grafana/schema@13.2.3", "typescript@7.0.2"], check=True, capture_output=True)
    src = cache / "dashboard_check.ts"
    src.write_text('import type { Dashboard } from "@grafana/schema";\nexport const d: Dashboard = '
                   + (MON / "dashboard.json").read_text() + ";\n")
    proc = subprocess.run([str(cache / "node_modules" / ".bin" / "tsc"), "--noEmit", "--strict", "--module", "nodenext",
                           "--moduleResolution", "nodenext", str(src)], capture_output=True, text=True, cwd=cache)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def scraped(artifact, data_dir, tmp_path_factory):
    """The real service, scraped every second by a real Prometheus that also evaluates the recording rules."""
    tmp = tmp_path_factory.mktemp("prom")
    srv = Server({"SERVING_MODEL_DIR": str(artifact)}, tmp / "serve.log")
    prom = None
    try:
        assert srv.wait_ready(), (tmp / "serve.log").read_text()[-2000:]
        rules = rule_groups()
        for g in rules["groups"]:
            g["interval"] = "1s"
        (tmp / "rules.yaml").write_text(yaml.safe_dump(rules))
        port = free_port()
        (tmp / "prometheus.yml").write_text(yaml.safe_dump({
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(tmp / "rules.yaml")],
            "scrape_configs": [{"job_name": "imgcls-serve", "static_configs": [
                {"targets": [srv.url.removeprefix("http://")]}]}]}))
        prom = subprocess.Popen(["prometheus", f"--config.file={tmp / 'prometheus.yml'}",
                                 f"--web.listen-address=127.0.0.1:{port}", f"--storage.tsdb.path={tmp / 'tsdb'}"],
                                stdout=open(tmp / "prom.log", "w"), stderr=subprocess.STDOUT)
        photos = sorted((data_dir / "val" / "ants").iterdir())[:6] + sorted((data_dir / "val" / "bees").iterdir())[:6]

        def client(i: int) -> None:
            p = photos[i % len(photos)]
            resp = httpx.post(srv.url + "/predict", files={"image": p.open("rb")}, timeout=60)
            assert resp.status_code == 200, resp.text
            r = resp.json()
            httpx.post(srv.url + "/feedback", json={"predicted": r["label"], "actual": p.parent.name})
            httpx.post(srv.url + "/predict", files={"image": ("x.jpg", b"junk", "image/jpeg")})
            blob = base64.b64encode(p.read_bytes()).decode()
            v2 = httpx.post(f"{srv.url}/v2/models/{load_card(artifact).name}/infer", timeout=60, json={
                "inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "data": [blob]}]})
            assert v2.status_code == 200, v2.text

        deadline = time.time() + 12  # traffic over several scrapes, so rate() has points to work with
        with ThreadPoolExecutor(8) as pool:
            while time.time() < deadline:
                list(pool.map(client, range(16)))
        time.sleep(3)
        yield f"http://127.0.0.1:{port}"
    finally:
        if prom is not None:
            prom.terminate()
            prom.wait(20)
        srv.stop()


def query(prom: str, expr: str) -> list:
    r = httpx.get(prom + "/api/v1/query", params={"query": expr}, timeout=20).json()
    assert r["status"] == "success", (expr, r)
    return r["data"]["result"]


@pytest.mark.slow
@pytest.mark.parametrize("expr", dashboard_exprs() + [r["expr"] for g in rule_groups()["groups"] for r in g["rules"]
                                                       if "record" in r])
def test_every_panel_and_recording_rule_returns_data(scraped, expr):
    result = query(scraped, expr)
    assert result, f"no data for {expr}"


@pytest.mark.slow
def test_request_panels_include_the_open_inference_protocol(scraped):
    rate = next(e for e in dashboard_exprs() if e.startswith("sum by (endpoint) (rate(bentoml_service_request_total"))
    endpoints = {r["metric"]["endpoint"] for r in query(scraped, rate)}
    assert "/predict" in endpoints and any(re.fullmatch(r"/v2/models/.+/infer", e) for e in endpoints), endpoints


@pytest.mark.slow
def test_recorded_series_and_alerts_evaluate(scraped):
    for g in rule_groups()["groups"]:
        for r in g["rules"]:
            if "record" in r:
                assert query(scraped, r["record"]), r["record"]
            else:
                query(scraped, r["expr"])  # valid PromQL against live data (quiet alerts return nothing)
    assert float(query(scraped, "imgcls:offline_accuracy")[0]["value"][1]) > 0
    assert not query(scraped, "absent(imgcls_model_info)"), "the no-model alert would fire on a healthy service"
