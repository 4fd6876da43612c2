"""Every manifest under infra/k8s, checked offline: core kinds against Kubernetes' strict OpenAPI schemas
(kubernetes-validate), KubeRay kinds against the vendored KubeRay schema, the Airflow chart values against the vendored
chart schema and the RayService's Serve config against Ray Serve's own schema. An unknown field fails everywhere: an
object schema that declares properties admits no others unless it says so (a free-form map declares none)."""

from __future__ import annotations

import copy
import importlib
import inspect
import json
from collections.abc import Iterator
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from referencing import Registry, Resource

from omnicart.settings import Settings

ROOT = Path(__file__).resolve().parents[3]
K8S = ROOT / "infra" / "k8s"
SCHEMAS = K8S / "schemas"
KUBERNETES_VERSION = "1.33"
KUBERAY_KINDS = ("RayCluster", "RayJob", "RayService")
NOT_RESOURCES = ("kustomization.yaml",)  # a kustomize config, checked by test_kustomization_*
# The production profile's variables that omnicart/settings.py does not define yet (docs/deploy.md lists them).
PRODUCTION_PROFILE_PENDING = frozenset({"OMNICART_PROFILE", "OMNICART_POSTGRES_URL", "OMNICART_REDIS_URL"})


# --- the strict checker ---------------------------------------------------------------------------------------------
def closed(schema: Any) -> Any:
    """A copy of ``schema`` where every object schema that declares ``properties`` and says nothing about others
    admits no others. Free-form maps (no ``properties``, or ``additionalProperties`` given) and
    ``x-kubernetes-preserve-unknown-fields`` stay open. CRD and chart schemas rarely close their objects themselves."""
    if isinstance(schema, list):
        return [closed(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out = {key: closed(value) for key, value in schema.items()}
    open_ended = (
        "additionalProperties" in schema
        or "patternProperties" in schema
        or "unevaluatedProperties" in schema
        or schema.get("x-kubernetes-preserve-unknown-fields") is True
    )
    if isinstance(schema.get("properties"), dict) and not open_ended:
        out["additionalProperties"] = False
    return out


@cache
def kubernetes_definitions() -> dict:
    """kubernetes-validate's strict definitions for KUBERNETES_VERSION; the vendored schemas' $refs point here."""
    root = resources.files(kubernetes_validate) / "kubernetes-json-schema" / f"v{KUBERNETES_VERSION}.0-local-strict"
    return json.loads((root / "_definitions.json").read_text())


def vendored(name: str) -> dict:
    return json.loads((SCHEMAS / name).read_text())


@cache
def registry() -> Registry:
    """The three schema documents, closed, by their $id."""
    documents = [kubernetes_definitions(), vendored("kuberay/ray.io_v1.json"), vendored("airflow/values.schema.json")]
    return Registry().with_resources((doc["$id"], Resource.from_contents(closed(doc))) for doc in documents)


def _errors(validator: jsonschema.protocols.Validator, instance: Any) -> list[str]:
    return sorted(
        f"{'.'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}" for e in validator.iter_errors(instance)
    )


def kuberay_errors(doc: dict) -> list[str]:
    schema = {"$ref": f"{vendored('kuberay/ray.io_v1.json')['$id']}#/$defs/{doc['kind']}"}
    errors = _errors(jsonschema.Draft202012Validator(schema, registry=registry()), doc)
    if doc["kind"] == "RayService" and "serveConfigV2" in doc.get("spec", {}):
        config = yaml.safe_load(doc["spec"]["serveConfigV2"])
        errors += [f"spec.serveConfigV2: {e}" for e in serve_config_errors(config)]
    return errors


@cache
def serve_schema() -> dict:
    from ray.serve.schema import ServeDeploySchema  # what `serve deploy` and KubeRay's dashboard call accept

    return closed(ServeDeploySchema.model_json_schema())


def serve_config_errors(config: Any) -> list[str]:
    return _errors(jsonschema.Draft202012Validator(serve_schema()), config)


def core_errors(doc: dict) -> list[str]:
    try:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as error:
        return [f"{'.'.join(map(str, error.absolute_path)) or '<root>'}: {error.message}"]
    return []


def manifest_errors(doc: dict) -> list[str]:
    if doc.get("apiVersion") == "ray.io/v1" and doc.get("kind") in KUBERAY_KINDS:
        return kuberay_errors(doc)
    return core_errors(doc)


def airflow_values_errors(values: Any) -> list[str]:
    schema = {"$ref": vendored("airflow/values.schema.json")["$id"]}
    return _errors(jsonschema.Draft7Validator(schema, registry=registry()), values)


# --- the files -------------------------------------------------------------------------------------------------------
def manifest_files() -> list[Path]:
    """Every Kubernetes manifest of the profile (the Airflow values and the schemas are not manifests)."""
    files = sorted(K8S.glob("*.yaml")) + sorted((K8S / "jobs").glob("*.yaml"))
    return [f for f in files if f.name not in NOT_RESOURCES]


def documents(path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def all_documents() -> Iterator[tuple[Path, dict]]:
    for path in manifest_files():
        for doc in documents(path):
            yield path, doc


def airflow_values() -> dict:
    return yaml.safe_load((K8S / "airflow" / "values.yaml").read_text())


def kustomization() -> dict:
    return yaml.safe_load((K8S / "kustomization.yaml").read_text())


def one(kind: str, name: str | None = None) -> dict:
    found = [d for _, d in all_documents() if d["kind"] == kind and (name is None or d["metadata"].get("name") == name)]
    assert len(found) == 1, (kind, name, len(found))
    return found[0]


def containers(doc: dict) -> Iterator[dict]:
    """Every container of every pod template inside ``doc`` (Deployments, StatefulSets, Ray head and worker groups)."""
    if isinstance(doc, dict):
        for key, value in doc.items():
            if key in ("containers", "initContainers") and isinstance(value, list):
                yield from value
            else:
                yield from containers(value)
    elif isinstance(doc, list):
        for item in doc:
            yield from containers(item)


# --- every file validates ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("path", manifest_files(), ids=lambda p: str(p.relative_to(K8S)))
def test_manifest_validates_strictly(path: Path) -> None:
    docs = documents(path)
    assert docs, f"{path} holds no manifest"
    for doc in docs:
        assert manifest_errors(doc) == [], f"{path.name}: {doc['kind']}/{doc['metadata'].get('name')}"


def test_airflow_values_validate_against_the_chart_schema() -> None:
    values = airflow_values()
    assert airflow_values_errors(values) == []
    assert values["executor"] in ("KubernetesExecutor", "CeleryExecutor")
    assert values["postgresql"]["enabled"] is False and values["data"]["metadataSecretName"]


def test_every_kind_has_a_checker() -> None:
    """No manifest slips through as an unknown kind: kubernetes-validate knows it or it is one of KubeRay's."""
    kinds = {(d["apiVersion"], d["kind"]) for _, d in all_documents()}
    assert {("ray.io/v1", k) for k in KUBERAY_KINDS} <= kinds
    for api_version, kind in kinds - {("ray.io/v1", k) for k in KUBERAY_KINDS}:
        doc = {"apiVersion": api_version, "kind": kind, "metadata": {"name": "x"}}
        try:
            kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError:
            pass  # a schema exists (the stub is merely incomplete)
        except kubernetes_validate.SchemaNotFoundError:
            pytest.fail(f"no schema for {api_version} {kind}")


# --- a misspelled field fails -----------------------------------------------------------------------------------------
def rename_key(doc: Any, path: tuple, new: str) -> Any:
    """A copy of ``doc`` with the key at ``path`` (keys and list indices) renamed to ``new``, order kept."""
    doc = copy.deepcopy(doc)
    parent = doc
    for step in path[:-1]:
        parent = parent[step]
    old = path[-1]
    assert old in parent, f"{old!r} is not at {path}"
    items = [(new if k == old else k, v) for k, v in parent.items()]
    parent.clear()
    parent.update(items)
    return doc


SERVE_PODS = ("spec", "rayClusterConfig", "workerGroupSpecs", 0, "template", "spec", "containers", 0)
MISSPELLED_MANIFESTS = [
    # core kinds (kubernetes-validate, strict)
    ("mlflow.yaml", "Deployment", ("spec", "template", "spec", "containers", 0, "resources"), "resource"),
    ("redis.yaml", "StatefulSet", ("spec", "volumeClaimTemplates", 0, "spec", "accessModes"), "accesModes"),
    ("ingress.yaml", "Ingress", ("spec", "ingressClassName"), "ingressClass"),
    # KubeRay's own fields
    ("rayservice.yaml", "RayService", ("spec", "rayClusterConfig", "headGroupSpec", "rayStartParams"), "rayStartParam"),
    ("raycluster-train.yaml", "RayCluster", ("spec", "enableInTreeAutoscaling"), "enableInTreeAutoScaling"),
    ("jobs/train.yaml", "RayJob", ("spec", "shutdownAfterJobFinishes"), "shutdownAfterJobFinished"),
    # a core type inside a KubeRay kind (the pod template, by $ref to the Kubernetes definitions)
    ("rayservice.yaml", "RayService", (*SERVE_PODS, "envFrom"), "envfrom"),
    ("raycluster-train.yaml", "RayCluster", ("spec", "workerGroupSpecs", 0, "template", "spec", "volumes"), "volume"),
]


@pytest.mark.parametrize(("file", "kind", "path", "typo"), MISSPELLED_MANIFESTS, ids=lambda v: str(v))
def test_misspelled_manifest_field_fails(file: str, kind: str, path: tuple, typo: str) -> None:
    doc = next(d for d in documents(K8S / file) if d["kind"] == kind)
    assert manifest_errors(doc) == []  # the real file passes ...
    errors = manifest_errors(rename_key(doc, path, typo))
    assert errors and any(typo in e for e in errors), errors  # ... the misspelled one fails, naming the field


@pytest.mark.parametrize(
    ("path", "typo"),
    [
        (("executor",), "executer"),
        (("dags", "gitSync", "subPath"), "subpath"),
        (("data", "metadataSecretName"), "metadataSecret"),
        (("workers", "resources"), "resource"),
        (("secret", 0, "secretKey"), "key"),
    ],
    ids=lambda v: str(v),
)
def test_misspelled_airflow_value_fails(path: tuple, typo: str) -> None:
    errors = airflow_values_errors(rename_key(airflow_values(), path, typo))
    assert errors and any(typo in e for e in errors), errors


@pytest.mark.parametrize(
    ("path", "typo"),
    [
        (("applications", 0, "deployments", 0, "num_replicas"), "num_replica"),
        (("applications", 0, "import_path"), "importPath"),
        (("http_options", "port"), "prot"),
    ],
    ids=lambda v: str(v),
)
def test_misspelled_serve_config_field_fails(path: tuple, typo: str) -> None:
    config = yaml.safe_load(one("RayService")["spec"]["serveConfigV2"])
    assert serve_config_errors(config) == []
    errors = serve_config_errors(rename_key(config, path, typo))
    assert errors and any(typo in e for e in errors), errors


def test_wrong_types_fail() -> None:
    """Not only names: a Ray start parameter must be a string, a replica count an integer."""
    service = one("RayService")
    bad = copy.deepcopy(service)
    bad["spec"]["rayClusterConfig"]["headGroupSpec"]["rayStartParams"]["num-cpus"] = 0
    assert any("num-cpus" in e for e in manifest_errors(bad))
    bad = copy.deepcopy(service)
    bad["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["replicas"] = "two"
    assert any("replicas" in e for e in manifest_errors(bad))


def test_closed_leaves_free_form_maps_open() -> None:
    schema = closed({"type": "object", "properties": {"labels": {"type": "object"}, "env": {"type": "string"}}})
    validator = jsonschema.Draft202012Validator(schema)
    assert validator.is_valid({"labels": {"any": "key"}, "env": "x"})
    assert not validator.is_valid({"labels": {}, "envv": "x"})


# --- a kustomize build, on paper --------------------------------------------------------------------------------------
def test_kustomization_lists_existing_resources_once() -> None:
    config = kustomization()
    assert set(config) <= {"apiVersion", "kind", "namespace", "resources", "labels", "images"}, set(config)
    assert (config["apiVersion"], config["kind"]) == ("kustomize.config.k8s.io/v1beta1", "Kustomization")
    listed = config["resources"]
    assert len(listed) == len(set(listed))
    for name in listed:
        assert (K8S / name).is_file(), name
        assert documents(K8S / name), name
    # every top-level manifest but the secrets template (never applied by -k: it would overwrite real secrets) is listed
    top_level = {p.name for p in manifest_files() if p.parent == K8S}
    assert top_level - set(listed) == {"secrets.template.yaml"}


def test_built_resources_are_unique_and_in_the_namespace() -> None:
    config = kustomization()
    seen: set[tuple[str, str]] = set()
    for name in config["resources"]:
        for doc in documents(K8S / name):
            key = (doc["kind"], doc["metadata"]["name"])
            assert key not in seen, key
            seen.add(key)
            if doc["kind"] != "Namespace":
                assert doc["metadata"].get("namespace", config["namespace"]) == config["namespace"], key
    assert ("Namespace", config["namespace"]) in seen


def test_references_resolve() -> None:
    """Every ConfigMap, Secret (and key), volume claim and backend Service a manifest names is defined in the profile
    (the Serve and Ray head Services are KubeRay's, named after their RayService and RayCluster)."""
    docs = [d for _, d in all_documents()]
    config_maps = {d["metadata"]["name"]: d.get("data", {}) for d in docs if d["kind"] == "ConfigMap"}
    secrets = {d["metadata"]["name"]: d.get("stringData", {}) for d in docs if d["kind"] == "Secret"}
    claims = {d["metadata"]["name"] for d in docs if d["kind"] == "PersistentVolumeClaim"}
    services = {d["metadata"]["name"] for d in docs if d["kind"] == "Service"}
    services |= {f"{d['metadata']['name']}-serve-svc" for d in docs if d["kind"] == "RayService"}

    def walk(node: Any) -> Iterator[tuple[str, Any]]:
        if isinstance(node, dict):
            for key, value in node.items():
                yield key, value
                yield from walk(value)
        elif isinstance(node, list):
            for item in node:
                yield from walk(item)

    for doc in docs:
        for key, value in walk(doc):
            if key == "configMapRef":
                assert value["name"] in config_maps, value
            elif key == "secretRef":
                assert value["name"] in secrets, value
            elif key == "secretKeyRef":
                assert value["key"] in secrets.get(value["name"], {}), value
            elif key == "persistentVolumeClaim":
                assert value["claimName"] in claims, value
            elif key == "service" and isinstance(value, dict) and "port" in value:
                assert value["name"] in services, value
    values = airflow_values()
    for item in values["secret"]:
        assert item["secretKey"] in secrets.get(item["secretName"], {}), item
    chart_secrets = {
        values["data"]["metadataSecretName"]: "connection",
        values["fernetKeySecretName"]: "fernet-key",
        values["apiSecretKeySecretName"]: "api-secret-key",
        values["jwtSecretName"]: "jwt-secret",
    }
    for name, key in chart_secrets.items():
        assert key in secrets.get(name, {}), (name, key)
    assert values["dags"]["gitSync"]["credentialsSecret"] in secrets
    for volume in values["workers"]["extraVolumes"]:
        assert volume["persistentVolumeClaim"]["claimName"] in claims


def test_ray_address_names_the_training_cluster() -> None:
    """Airflow's tasks and the pods join the RayCluster defined here, on Ray Client's port."""
    cluster = one("RayCluster")["metadata"]
    expected = f"ray://{cluster['name']}-head-svc.{cluster['namespace']}.svc.cluster.local:10001"
    assert one("ConfigMap", "omnicart-env")["data"]["OMNICART_RAY_ADDRESS"] == expected
    airflow_env = {e["name"]: e["value"] for e in airflow_values()["env"]}
    assert airflow_env["OMNICART_RAY_ADDRESS"] == expected


def test_environment_names_are_settings() -> None:
    """A misspelled OMNICART_* variable would be ignored silently: each one is a Settings field or one of the
    production profile's variables still pending in omnicart/settings.py."""
    known = {f"OMNICART_{name.upper()}" for name in Settings.model_fields} | PRODUCTION_PROFILE_PENDING
    names = set(one("ConfigMap", "omnicart-env")["data"])
    names |= {e["name"] for e in airflow_values()["env"]} | {s["envName"] for s in airflow_values()["secret"]}
    names |= set(one("Secret", "omnicart-secrets")["stringData"])
    for _, doc in all_documents():
        for container in containers(doc):
            names |= {e["name"] for e in container.get("env", [])}
    unknown = {n for n in names if n.startswith("OMNICART_")} - known
    assert unknown == set()
    assert {"OMNICART_PROFILE", "OMNICART_RAY_ADDRESS", "OMNICART_API_KEY", "OMNICART_PSEUDONYM_KEY"} <= names


def test_every_container_is_sized() -> None:
    """Requests for CPU and memory on every container (the scheduler places pods by them), limits not below them."""

    def quantity(value: str | int | float) -> float:
        text = str(value)
        units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "m": 1e-3}
        for suffix, factor in units.items():
            if text.endswith(suffix):
                return float(text[: -len(suffix)]) * factor
        return float(text)

    for path, doc in all_documents():
        for container in containers(doc):
            resources_ = container.get("resources", {})
            requests = resources_.get("requests", {})
            assert {"cpu", "memory"} <= set(requests), (path.name, container["name"])
            for name, limit in resources_.get("limits", {}).items():
                if name in requests:
                    assert quantity(limit) >= quantity(requests[name]), (path.name, container["name"], name)
    for component in ("workers", "scheduler"):
        assert {"cpu", "memory"} <= set(airflow_values()[component]["resources"]["requests"]), component


def test_serve_import_path_is_an_application_builder() -> None:
    """KubeRay hands serveConfigV2 to Serve, which imports import_path: a built app or a one-argument builder."""
    config = yaml.safe_load(one("RayService")["spec"]["serveConfigV2"])
    module_name, _, attribute = config["applications"][0]["import_path"].partition(":")
    builder = getattr(importlib.import_module(module_name), attribute)
    assert callable(builder) and len(inspect.signature(builder).parameters) == 1
