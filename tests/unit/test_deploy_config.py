"""Static checks of the deployment configuration: compose.yaml, the Dockerfiles and infra/.

They catch the mistakes that otherwise show up only at `docker compose up` or `kubectl apply`:
an environment variable no settings class reads, a missing Dockerfile or manifest, a
`depends_on` on a service that does not exist, a gRPC Deployment without a gRPC readiness probe.
"""

from __future__ import annotations

import importlib
import inspect
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import AliasChoices
from pydantic_settings import BaseSettings

REPO = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO / "compose.yaml"
DOCKERFILE = REPO / "Dockerfile"
K8S_BASE = REPO / "infra" / "k8s" / "base"
PROMETHEUS_FILE = REPO / "infra" / "prometheus" / "prometheus.yml"
OTEL_FILE = REPO / "infra" / "otel" / "collector.yaml"

# Environment variables a Flywheel container may receive: its settings and the standard AWS ones.
ALLOWED_ENV_PREFIXES = ("FLYWHEEL_", "AWS_")
# services/<folder> -> its settings class, where the class name does not follow
# `<CamelCase folder>Settings` or should be pinned explicitly.
SETTINGS_CLASSES = {"registry": "flywheel.registry.config:RegistrySettings"}
# Metrics ports from DESIGN.md, by DNS name (services/ folder with `_` -> `-`).
METRICS_PORTS = {
    "inference": 8002, "registry": 9101, "featurestore": 9102, "trainer": 9103, "finetuner": 9104,
    "embedder": 9105, "retriever": 9106, "evaluator": 9107, "monitor": 9108, "guard": 9109, "review": 9110,
}


# ---------------------------------------------------------------- helpers

def load_compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE_FILE.read_text())


def compose_services() -> dict[str, dict[str, Any]]:
    return load_compose()["services"]


def build_dockerfile(service: dict[str, Any]) -> Path | None:
    """The Dockerfile a compose service is built from (absolute), or None for an image-only service."""
    build = service.get("build")
    if build is None:
        return None
    if isinstance(build, str):
        build = {"context": build}
    context = (REPO / build.get("context", ".")).resolve()
    return (context / build.get("dockerfile", "Dockerfile")).resolve()


def flywheel_service_folder(service: dict[str, Any]) -> str | None:
    """`<name>` when the service's image is the one Dockerfile built with `SERVICE: <name>`, else None."""
    dockerfile = build_dockerfile(service)
    if dockerfile != DOCKERFILE:
        return None
    return str((service["build"].get("args") or {}).get("SERVICE") or "") or None


def flywheel_services() -> dict[str, str]:
    """Compose service name -> services/ folder, for every Flywheel service in compose.yaml."""
    found = {name: flywheel_service_folder(svc) for name, svc in compose_services().items()}
    return {name: folder for name, folder in found.items() if folder is not None}


def env_keys(service: dict[str, Any]) -> list[str]:
    """Environment variable names of a compose service (`environment` as a mapping or a list)."""
    env = service.get("environment") or {}
    if isinstance(env, dict):
        return list(env)
    return [item.split("=", 1)[0] for item in env]


def settings_env_names(settings_cls: type[BaseSettings]) -> set[str]:
    """Every environment variable name a pydantic-settings class reads, upper-cased."""
    prefix = settings_cls.model_config.get("env_prefix", "")
    names: set[str] = set()
    for field_name, field in settings_cls.model_fields.items():
        alias = field.validation_alias or field.alias
        if isinstance(alias, AliasChoices):
            names.update(choice.upper() for choice in alias.choices if isinstance(choice, str))
        elif isinstance(alias, str):
            names.add(alias.upper())
        else:
            names.add(f"{prefix}{field_name}".upper())
    return names


def settings_class(folder: str) -> type[BaseSettings]:
    """The settings class of services/<folder>: pinned in SETTINGS_CLASSES, else the one
    BaseSettings subclass defined in `flywheel.<folder>.config`."""
    if folder in SETTINGS_CLASSES:
        module_name, class_name = SETTINGS_CLASSES[folder].split(":")
        return getattr(importlib.import_module(module_name), class_name)
    module = importlib.import_module(f"flywheel.{folder}.config")
    classes = [
        obj for obj in vars(module).values()
        if inspect.isclass(obj) and issubclass(obj, BaseSettings) and obj.__module__ == module.__name__
    ]
    assert len(classes) == 1, f"flywheel.{folder}.config should define exactly one settings class, found {classes}"
    return classes[0]


def depends_on_targets(service: dict[str, Any]) -> list[str]:
    deps = service.get("depends_on") or []
    return list(deps) if isinstance(deps, (list, dict)) else []


def kustomization() -> dict[str, Any]:
    return yaml.safe_load((K8S_BASE / "kustomization.yaml").read_text())


def k8s_documents() -> list[dict[str, Any]]:
    """Every Kubernetes object in the files listed under `resources:` of the base."""
    docs: list[dict[str, Any]] = []
    for resource in kustomization().get("resources", []):
        path = K8S_BASE / resource
        if path.is_file():
            docs.extend(doc for doc in yaml.safe_load_all(path.read_text()) if doc)
    return docs


def of_kind(kind: str) -> list[dict[str, Any]]:
    return [doc for doc in k8s_documents() if doc.get("kind") == kind]


def grpc_ports(container: dict[str, Any]) -> list[int]:
    return [p["containerPort"] for p in container.get("ports", []) if "grpc" in p.get("name", "")]


def docker_compose_available() -> bool:
    if shutil.which("docker") is None:
        return False
    result = subprocess.run(["docker", "compose", "version"], capture_output=True, text=True, timeout=30)
    return result.returncode == 0


# ---------------------------------------------------------------- compose.yaml

def test_compose_parses_and_has_the_infrastructure() -> None:
    services = compose_services()
    for name in ("kafka", "postgres", "minio", "registry"):
        assert name in services, f"compose.yaml has no `{name}` service"
    assert "x-flywheel-env" in load_compose(), "shared settings anchor `x-flywheel-env` is missing"


def test_compose_has_flywheel_services() -> None:
    assert "registry" in flywheel_services()


@pytest.mark.parametrize("name", sorted(flywheel_services()))
def test_flywheel_service_env_is_only_flywheel_or_aws(name: str) -> None:
    keys = env_keys(compose_services()[name])
    stray = [key for key in keys if not key.startswith(ALLOWED_ENV_PREFIXES)]
    assert not stray, f"{name}: environment keys other than FLYWHEEL_*/AWS_*: {stray}"


def test_shared_env_anchor_is_read_by_service_settings() -> None:
    """Every key of `x-flywheel-env` is a setting of the base class all services share."""
    from flywheel.common.settings import ServiceSettings

    known = settings_env_names(ServiceSettings)
    unknown = sorted(set(load_compose()["x-flywheel-env"]) - known)
    assert not unknown, f"x-flywheel-env keys no ServiceSettings field reads: {unknown}; known: {sorted(known)}"


@pytest.mark.parametrize("name", sorted(flywheel_services()))
def test_flywheel_service_env_keys_are_real_settings(name: str) -> None:
    folder = flywheel_services()[name]
    known = settings_env_names(settings_class(folder))
    flywheel_keys = [key for key in env_keys(compose_services()[name]) if key.startswith("FLYWHEEL_")]
    unknown = sorted(set(flywheel_keys) - known)
    assert not unknown, f"{name}: FLYWHEEL_* keys its settings class does not read: {unknown}; known: {sorted(known)}"


def test_registry_settings_env_names() -> None:
    """The registry-specific names compose relies on exist on RegistrySettings."""
    from flywheel.registry.config import RegistrySettings

    known = settings_env_names(RegistrySettings)
    for key in ("FLYWHEEL_REGISTRY_GRPC_HOST", "FLYWHEEL_REGISTRY_ARTIFACT_STORE", "FLYWHEEL_DATABASE_URL"):
        assert key in known, f"RegistrySettings reads no {key}; known: {sorted(known)}"


def test_settings_env_names_reads_prefix_and_aliases() -> None:
    """The name derivation the checks above rely on, on a throwaway class."""
    from pydantic import Field
    from pydantic_settings import SettingsConfigDict

    class Example(BaseSettings):
        model_config = SettingsConfigDict(env_prefix="FLYWHEEL_EXAMPLE_")
        grpc_port: int = 1
        shared: str = Field("", validation_alias=AliasChoices("FLYWHEEL_SHARED", "flywheel_shared"))

    assert settings_env_names(Example) == {"FLYWHEEL_EXAMPLE_GRPC_PORT", "FLYWHEEL_SHARED"}


def test_depends_on_targets_exist() -> None:
    services = compose_services()
    for name, service in services.items():
        for target in depends_on_targets(service):
            assert target in services, f"{name} depends on `{target}`, which compose.yaml does not define"


def test_depends_on_waits_for_health_of_services_with_a_healthcheck() -> None:
    services = compose_services()
    for name in flywheel_services():
        deps = services[name].get("depends_on") or {}
        assert isinstance(deps, dict), f"{name}: depends_on should use `condition: service_healthy`"
        for target, spec in deps.items():
            if "healthcheck" in services[target]:
                assert spec.get("condition") == "service_healthy", f"{name} -> {target}: not service_healthy"


def test_referenced_dockerfiles_exist() -> None:
    for name, service in compose_services().items():
        dockerfile = build_dockerfile(service)
        if dockerfile is not None:
            assert dockerfile.is_file(), f"{name}: Dockerfile {dockerfile} does not exist"


@pytest.mark.parametrize("name", sorted(flywheel_services()))
def test_flywheel_service_has_a_healthcheck(name: str) -> None:
    assert "healthcheck" in compose_services()[name], f"{name}: no healthcheck (use the grpc.health.v1 one-liner)"


def test_bind_mounted_files_exist() -> None:
    for name, service in compose_services().items():
        for volume in service.get("volumes", []):
            source = volume.split(":", 1)[0] if isinstance(volume, str) else volume.get("source", "")
            if source.startswith((".", "/")):
                assert (REPO / source).exists(), f"{name}: mounted {source} does not exist"


@pytest.mark.skipif(not docker_compose_available(), reason="`docker compose version` fails: no compose plugin here")
def test_docker_compose_config_is_valid() -> None:
    result = subprocess.run(
        ["docker", "compose", "-f", str(COMPOSE_FILE), "config", "-q"],
        cwd=REPO, capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stderr


# ---------------------------------------------------------------- the Dockerfile

def service_folders() -> list[str]:
    return sorted(p.parent.name for p in (REPO / "services").glob("*/pyproject.toml"))


def test_one_parameterised_dockerfile() -> None:
    assert not list((REPO / "services").glob("*/Dockerfile")), "one Dockerfile at the root, built with SERVICE=<name>"
    text = DOCKERFILE.read_text()
    assert "python:3.11-slim" in text
    users = re.findall(r"^USER\s+(\S+)", text, re.M)
    assert users and users[-1].split(":")[0] not in ("root", "0"), "the image must end as a non-root USER"
    assert 'exec python -m \\"flywheel.${FLYWHEEL_SERVICE}\\"' in text
    assert not re.search(r"pip install[^\n]*\s-e\s", text), "install non-editable"
    # Torch only from the CPU index and only when the service's dependencies ask for it.
    assert re.search(r'if python tools/image_requirements.py "\$\{SERVICE\}" --needs-torch; then\s*\\?\s*'
                     r'pip install --index-url "\$\{TORCH_INDEX_URL\}"', text)


@pytest.mark.parametrize("folder", service_folders())
def test_image_installs_what_the_pyprojects_say(folder: str) -> None:
    """tools/image_requirements.py (what the Dockerfile installs) follows the service's dependencies: its
    libs from the repo, torch only where they ask for it (the monitor and the registry stay torch-free)."""
    import tools.image_requirements as image

    local, third_party = image.resolve(folder)
    assert local[0] == REPO / "libs" and local[-1] == REPO / "services" / folder
    assert not any(r.startswith("flywheel") for r in third_party)
    text = (REPO / "services" / folder / "pyproject.toml").read_text()
    needs_torch = "torch" in re.sub(r"#.*", "", text) or "flywheel-predictive[scoring]" in text
    assert (image.main([folder, "--needs-torch"]) == 0) == needs_torch
    if "flywheel-predictive" in text:
        assert REPO / "libs" / "predictive" in local


def test_compose_builds_every_service_from_the_one_dockerfile() -> None:
    assert sorted(flywheel_services().values()) == service_folders()


def test_dockerignore_keeps_local_state_out() -> None:
    lines = {line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()}
    for pattern in (".git", "bench/results"):
        assert pattern in lines
    for name in (".venv", ".flywheel", "__pycache__"):
        assert any(line.endswith(name) for line in lines), f".dockerignore does not exclude {name}"


# ---------------------------------------------------------------- Kubernetes (kustomize base)

def test_kustomization_resources_exist_and_parse() -> None:
    resources = kustomization().get("resources", [])
    assert resources, "kustomization.yaml lists no resources"
    for resource in resources:
        path = K8S_BASE / resource
        assert path.is_file(), f"kustomization.yaml lists {resource}, which does not exist"
        docs = [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
        assert docs, f"{resource} holds no objects"
        for doc in docs:
            assert {"apiVersion", "kind", "metadata"} <= set(doc), f"{resource}: not a Kubernetes object"


def test_every_deployment_has_grpc_probes() -> None:
    deployments = of_kind("Deployment")
    assert deployments, "no Deployment in the base"
    for deployment in deployments:
        name = deployment["metadata"]["name"]
        for container in deployment["spec"]["template"]["spec"]["containers"]:
            for port in grpc_ports(container):
                readiness = container.get("readinessProbe", {}).get("grpc", {})
                assert readiness.get("port") == port, f"{name}: no gRPC readiness probe on {port}"
                liveness = container.get("livenessProbe", {})
                assert liveness.get("grpc", {}).get("port") == port, f"{name}: no gRPC liveness probe on {port}"


def test_deployments_without_grpc_have_http_probes() -> None:
    """A service without gRPC (the review app) is probed over HTTP: ready on /readyz, alive on /healthz."""
    for deployment in of_kind("Deployment"):
        name = deployment["metadata"]["name"]
        for container in deployment["spec"]["template"]["spec"]["containers"]:
            if grpc_ports(container):
                continue
            assert container.get("readinessProbe", {}).get("httpGet", {}).get("path") == "/readyz", name
            assert container.get("startupProbe", {}).get("httpGet", {}).get("path") == "/readyz", name
            assert container.get("livenessProbe", {}).get("httpGet", {}).get("path") == "/healthz", name


def test_deployments_read_shared_config_and_secret() -> None:
    for deployment in of_kind("Deployment"):
        name = deployment["metadata"]["name"]
        for container in deployment["spec"]["template"]["spec"]["containers"]:
            sources = container.get("envFrom", [])
            assert {"configMapRef": {"name": "flywheel-config"}} in sources, f"{name}: no flywheel-config"
            secret = [s["secretRef"] for s in sources if "secretRef" in s]
            assert secret == [{"name": "flywheel-secrets", "optional": True}], f"{name}: secretRef {secret}"
            stray = [e["name"] for e in container.get("env", []) if not e["name"].startswith(ALLOWED_ENV_PREFIXES)]
            assert not stray, f"{name}: env other than FLYWHEEL_*/AWS_*: {stray}"
            assert container.get("resources", {}).get("requests"), f"{name}: no resource requests"
            assert container.get("resources", {}).get("limits"), f"{name}: no resource limits"


def test_deployment_env_keys_are_real_settings() -> None:
    configmaps = {cm["metadata"]["name"]: cm.get("data", {}) for cm in of_kind("ConfigMap")}
    from flywheel.common.settings import ServiceSettings

    unknown = sorted(set(configmaps["flywheel-config"]) - settings_env_names(ServiceSettings))
    assert not unknown, f"flywheel-config keys no ServiceSettings field reads: {unknown}"
    for deployment in of_kind("Deployment"):
        folder = deployment["metadata"]["name"].replace("-", "_")
        known = settings_env_names(settings_class(folder))
        for container in deployment["spec"]["template"]["spec"]["containers"]:
            keys = {e["name"] for e in container.get("env", []) if e["name"].startswith("FLYWHEEL_")}
            assert not keys - known, f"{folder}: env its settings class does not read: {sorted(keys - known)}"


def test_prometheus_annotations_match_metrics_port() -> None:
    for deployment in of_kind("Deployment"):
        name = deployment["metadata"]["name"]
        template = deployment["spec"]["template"]
        annotations = template["metadata"].get("annotations", {})
        assert annotations.get("prometheus.io/scrape") == "true", f"{name}: not annotated for scraping"
        ports = {p.get("name"): p["containerPort"] for c in template["spec"]["containers"] for p in c.get("ports", [])}
        assert int(annotations["prometheus.io/port"]) == ports.get("metrics"), f"{name}: annotation != metrics port"
        if name in METRICS_PORTS:
            assert ports.get("metrics") == METRICS_PORTS[name], f"{name}: metrics port differs from DESIGN.md"


def test_services_select_deployments_and_expose_their_ports() -> None:
    deployments = {d["metadata"]["name"]: d for d in of_kind("Deployment")}
    for service in of_kind("Service"):
        name = service["metadata"]["name"]
        assert name in deployments, f"Service {name} has no Deployment of the same name"
        labels = deployments[name]["spec"]["template"]["metadata"]["labels"]
        selector = service["spec"]["selector"]
        assert selector.items() <= labels.items(), f"Service {name} selects no pod of its Deployment"
        container_ports = {
            p.get("name") for c in deployments[name]["spec"]["template"]["spec"]["containers"] for p in c["ports"]
        }
        for port in service["spec"]["ports"]:
            assert port.get("targetPort") in container_ports or isinstance(port.get("targetPort"), int)
    for name in deployments:
        assert any(s["metadata"]["name"] == name for s in of_kind("Service")), f"Deployment {name} has no Service"


def test_hpas_target_existing_deployments_without_fixed_replicas() -> None:
    deployments = {d["metadata"]["name"]: d for d in of_kind("Deployment")}
    hpa_targets = {h["spec"]["scaleTargetRef"]["name"] for h in of_kind("HorizontalPodAutoscaler")}
    for target in hpa_targets:
        assert target in deployments, f"HPA targets missing Deployment {target}"
        assert "replicas" not in deployments[target]["spec"], f"{target}: `replicas` fights the HPA"
    # A singleton (fixed `replicas: 1`, Recreate) needs no HPA; every other Deployment has one.
    scaled = {n for n, d in deployments.items() if d["spec"].get("replicas") != 1}
    assert scaled <= hpa_targets, f"Deployments without an HPA: {sorted(scaled - hpa_targets)}"


def image_name(reference: str) -> str:
    """`registry:5000/flywheel/x:tag@sha256:...` -> `registry:5000/flywheel/x`."""
    reference = reference.split("@", 1)[0]
    head, _, last = reference.rpartition("/")
    return f"{head}/{last.split(':', 1)[0]}" if head else last.split(":", 1)[0]


def test_deployment_images_are_listed_in_kustomization() -> None:
    listed = {image["name"] for image in kustomization().get("images", [])}
    for deployment in of_kind("Deployment"):
        for container in deployment["spec"]["template"]["spec"]["containers"]:
            image = image_name(container["image"])
            name = deployment["metadata"]["name"]
            assert image in listed, f"{name}: image {image} is not under `images:` in kustomization.yaml"


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl not installed")
def test_kustomize_builds() -> None:
    result = subprocess.run(
        ["kubectl", "kustomize", str(K8S_BASE)], capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stderr
    kinds = {doc["kind"] for doc in yaml.safe_load_all(result.stdout) if doc}
    assert {"Namespace", "ConfigMap", "Deployment", "Service", "HorizontalPodAutoscaler"} <= kinds


# ---------------------------------------------------------------- Prometheus and OpenTelemetry

def test_prometheus_scrapes_every_service_metrics_port() -> None:
    config = yaml.safe_load(PROMETHEUS_FILE.read_text())
    targets = {
        target
        for job in config["scrape_configs"]
        for static in job.get("static_configs", [])
        for target in static.get("targets", [])
    }
    for name, port in METRICS_PORTS.items():
        assert f"{name}:{port}" in targets, f"prometheus.yml does not scrape {name}:{port}"


def test_otel_collector_pipeline_is_complete() -> None:
    config = yaml.safe_load(OTEL_FILE.read_text())
    assert config["receivers"]["otlp"]["protocols"]["grpc"]["endpoint"].endswith(":4317")
    for pipeline in config["service"]["pipelines"].values():
        for section in ("receivers", "processors", "exporters"):
            for component in pipeline.get(section, []):
                assert component in config.get(section, {}), f"pipeline uses undefined {section[:-1]} {component}"
    exporters = config["service"]["pipelines"]["traces"]["exporters"]
    assert "debug" in exporters and any(e.split("/")[0] == "otlp" for e in exporters)


# ---------------------------------------------------------------- tokens (every door takes one)

def test_every_deployment_presents_its_own_token_and_the_job_registers_them() -> None:
    deployments = of_kind("Deployment")
    for deployment in deployments:
        name = deployment["metadata"]["name"]
        [container] = deployment["spec"]["template"]["spec"]["containers"]
        [token] = [e for e in container.get("env", []) if e["name"] == "FLYWHEEL_TOKEN"]
        assert token["valueFrom"]["secretKeyRef"] == {"name": "flywheel-tokens", "key": name}, name
    [job] = of_kind("Job")
    volumes = job["spec"]["template"]["spec"]["volumes"]
    assert {"name": "tokens", "secret": {"secretName": "flywheel-tokens"}} in volumes
    script = job["spec"]["template"]["spec"]["containers"][0]["args"][0]
    assert "flywheel auth create-token" in script and "--from-stdin" in script


def test_production_inference_takes_no_anonymous_predictions() -> None:
    [inference] = [d for d in of_kind("Deployment") if d["metadata"]["name"] == "inference"]
    env = {e["name"]: e.get("value") for e in inference["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["FLYWHEEL_INFERENCE_ALLOW_ANONYMOUS_PREDICT"] == "false"
    assert compose_services()["inference"]["environment"]["FLYWHEEL_INFERENCE_ALLOW_ANONYMOUS_PREDICT"] == "false"


def test_compose_services_present_tokens_the_tokens_job_registers() -> None:
    services = compose_services()
    script = "\n".join(services["tokens"]["command"])
    for name in flywheel_services():
        env = services[name]["environment"]
        assert env["FLYWHEEL_TOKEN"].startswith(f"${{FLYWHEEL_{name.upper()}_TOKEN:-"), name
        assert f"TOKEN_{name.upper()}" in services["tokens"]["environment"], name
        assert name in script, f"the tokens service does not register {name}"
        assert services[name]["depends_on"]["tokens"] == {"condition": "service_completed_successfully"}
