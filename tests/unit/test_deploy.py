"""Deployment files, checked without a container engine or a cluster: the Dockerfile lints clean (hadolint), the
compose files validate against the Compose Specification's schema, the Kubernetes manifests render with kustomize
and validate against Kubernetes' schemas, and every QCAT_* name, flag, topic and port in them matches the code."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import typer.main
import yaml

from qcat.cli import app
from qcat.schemas.taxonomy import Taxonomy
from qcat.schemas.topics import Topics
from qcat.worker.settings import WorkerSettings

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S_VERSION = "1.33.0"
SETTINGS = set(WorkerSettings.model_fields)
OTHER_ENV = {"HF_HUB_OFFLINE", "HF_HOME"}


def tool(name: str) -> str:
    """A command-line tool installed into this virtualenv by the dev extra (or on PATH)."""
    local = Path(sys.executable).parent / name
    found = str(local) if local.exists() else shutil.which(name)
    assert found, f"{name} is missing: pip install -e '.[dev]'"
    return found


def check_env(names: dict[str, Any], where: str) -> None:
    for name in names:
        assert name in OTHER_ENV or name.removeprefix("QCAT_").lower() in SETTINGS, f"{where}: unknown setting {name}"


def test_dockerfile_lints_clean_and_ships_the_packages() -> None:
    result = subprocess.run([tool("hadolint"), str(ROOT / "Dockerfile")], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    dockerfile = (ROOT / "Dockerfile").read_text()
    packages = ["schemas", "qcat", "worker", "training"]
    for package in packages:
        assert f"COPY {package} ./{package}" in dockerfile
        assert f"!{package}/" in (ROOT / ".dockerignore").read_text()
    for package in ("schemas", "worker", "training"):  # installed as qcat.<package>, through a link
        assert (ROOT / "qcat" / package).resolve() == ROOT / package
    assert "USER 10001" in dockerfile
    assert 'ENTRYPOINT ["qcat"]' in dockerfile
    assert "HEALTHCHECK" in dockerfile
    assert "/healthz" in dockerfile


def test_compose_files_follow_the_compose_spec_and_the_code() -> None:
    files = [DEPLOY / "compose.yaml", DEPLOY / "compose.local-model.yaml"]
    command = [tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", *map(str, files)]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr

    compose = yaml.safe_load(files[0].read_text())
    services = compose["services"]
    worker = services["worker"]["environment"]
    check_env(worker, "compose worker")
    assert worker["QCAT_BROKERS"].split(":")[0] in services
    topics = Topics.build(worker["QCAT_TOPIC_PREFIX"], Taxonomy.from_names(["A", "B"]))
    script = services["topics"]["command"][0]
    partitions = worker["QCAT_PARTITIONS"]
    assert f"create {topics.incoming} {partitions}" in script
    assert f"create {topics.corrections} {partitions}" in script
    assert f"create {topics.adapters} 1" in script
    assert services["producer"]["command"][0] in typer.main.get_command(app).commands  # type: ignore[attr-defined]
    prometheus = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())
    assert prometheus["scrape_configs"][0]["static_configs"][0]["targets"] == ["worker:6066"]
    assert "6066:6066" in services["worker"]["ports"]


def rendered(overlay: str) -> list[dict[str, Any]]:
    if shutil.which("kubectl") is None:
        pytest.skip("kubectl (with its built-in kustomize) is not installed")
    out = subprocess.run(
        ["kubectl", "kustomize", str(DEPLOY / "k8s" / "overlays" / overlay)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


def base_documents() -> list[dict[str, Any]]:
    return [
        doc for path in sorted((DEPLOY / "k8s" / "base").glob("*.yaml")) for doc in yaml.safe_load_all(path.read_text())
    ]


def flags(command: str) -> set[str]:
    click_command = typer.main.get_command(app).commands[command]  # type: ignore[attr-defined]
    return {option for param in click_command.params for option in param.opts}


def check_manifests(docs: list[dict[str, Any]]) -> None:
    by_kind: dict[str, dict[str, Any]] = {}
    for doc in docs:
        if doc["kind"] == "Kustomization":
            continue
        by_kind[doc["kind"]] = doc
        if doc["apiVersion"].split("/")[0] in {"keda.sh", "monitoring.coreos.com"}:
            continue  # CRDs: checked below against the code instead
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    config = by_kind["ConfigMap"]["data"]
    check_env(config, "ConfigMap")
    deployment = by_kind["Deployment"]
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["args"] == ["worker"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert pod["terminationGracePeriodSeconds"] >= 30
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    check_env({e["name"]: e for e in container["env"]}, "Deployment")
    scaled = by_kind["ScaledObject"]["spec"]
    trigger = scaled["triggers"][0]["metadata"]
    assert scaled["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    assert scaled["maxReplicaCount"] == int(config["QCAT_PARTITIONS"])  # more replicas than partitions idle
    assert trigger["consumerGroup"] == config["QCAT_APP_ID"]
    assert trigger["bootstrapServers"] == config["QCAT_BROKERS"]
    topics = Topics.build(config["QCAT_TOPIC_PREFIX"], Taxonomy.from_names(["A", "B"]))
    assert trigger["topic"] == topics.incoming
    monitor = by_kind["ServiceMonitor"]["spec"]
    service = by_kind["Service"]
    assert monitor["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert monitor["endpoints"][0]["port"] in {port["name"] for port in service["spec"]["ports"]}
    job_spec = by_kind["CronJob"]["spec"]["jobTemplate"]["spec"]
    (rule,) = job_spec["podFailurePolicy"]["rules"]  # exit 3, "not better", ends the Job: no retraining loop
    assert (rule["action"], rule["onExitCodes"]["values"], job_spec["backoffLimit"]) == ("FailJob", [3], 0)
    job = job_spec["template"]["spec"]["containers"][0]
    assert job["args"][0] == "retrain"
    assert {arg.split("=")[0] for arg in job["args"][1:]} <= flags("retrain")


def test_kubernetes_base_validates_and_matches_the_code() -> None:
    check_manifests(base_documents())


@pytest.mark.parametrize("overlay", ["cpu", "gpu"])
def test_kustomize_overlays_render_and_validate(overlay: str) -> None:
    docs = rendered(overlay)
    check_manifests(docs)
    pod = next(doc for doc in docs if doc["kind"] == "Deployment")["spec"]["template"]["spec"]
    config = next(doc for doc in docs if doc["kind"] == "ConfigMap")["data"]
    assert config["QCAT_DEVICE"] == ("cuda" if overlay == "gpu" else "cpu")
    assert pod["containers"][0]["image"].endswith(":cuda" if overlay == "gpu" else ":cpu")
    if overlay == "gpu":
        assert pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 1


def test_the_validator_rejects_a_broken_manifest() -> None:
    """The schema check is real: a misspelt field fails it."""
    deployment = next(doc for doc in base_documents() if doc["kind"] == "Deployment")
    deployment["spec"]["template"]["spec"]["containers"][0]["imagePullPolicyy"] = "Always"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, K8S_VERSION, strict=True)


def test_the_wheel_installs_everything_under_qcat(tmp_path: Path) -> None:
    """The wheel holds qcat.schemas, qcat.worker and qcat.training (with their data files) and no top-level schemas,
    worker or training package that could clash with another distribution; every one of its modules imports, from
    the wheel alone (a module written against the repository's layout, `from worker...`, would fail here)."""
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(ROOT),
        ],
        check=True,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("qcat-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    tops = {name.split("/")[0] for name in names if not name.split("/")[0].endswith(".dist-info")}
    assert tops == {"qcat"}
    for needed in ("qcat/worker/app.py", "qcat/training/run.py", "qcat/schemas/json/QuestionEvent.schema.json"):
        assert needed in names
    assert "qcat/assets/trec6.json" in names
    site = str(tmp_path / "site")
    zipfile.ZipFile(wheel).extractall(site)
    probe = f"""
import importlib, pkgutil, sys
sys.path[:0] = [{site!r}]
import qcat
names = [m.name for m in pkgutil.walk_packages(qcat.__path__, "qcat.") if m.name != "qcat.__main__"]
for name in names:
    importlib.import_module(name)
elsewhere = [n for n, m in sys.modules.items() if n.split(".")[0] in ("qcat", "schemas", "worker", "training")
             and not (getattr(m, "__file__", None) or "").startswith({site!r})]
print(len(names), elsewhere)
"""
    done = subprocess.run(
        [sys.executable, "-I", "-c", probe], capture_output=True, text=True, check=False, cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr
    count, elsewhere = done.stdout.strip().split(" ", 1)
    assert int(count) > 60
    assert elsewhere == "[]"
