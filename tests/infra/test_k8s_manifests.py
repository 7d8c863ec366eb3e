"""The Kubernetes manifests of infra/k8s/, checked offline: no cluster, no kubectl needed.

Every kustomization is rendered by a small renderer of the kustomize subset the manifests use
(resources, namespace, labels, images with configurations, patches: JSON 6902 lists and
strategic-merge patches of maps); where kubectl is installed its `kubectl kustomize` must
render the same objects. Each rendered object is then validated: built-in kinds against the
Kubernetes schemas bundled in kubernetes-validate, custom resources against the operators'
CRD schemas committed under infra/k8s/schemas/ (README.md there names their sources), both
strictly (an unknown field is an error, as the API server's strict field validation makes it).
Then the manifests are checked against the code: every STREAMREC_* key is a setting and its
value parses, the addresses in the settings name the Services the manifests create, probes hit
real endpoints, Ray pods carry the token as README's Security section describes, the serving
config matches the serving settings, and every Secret and ConfigMap a pod reads exists.
Finally broken copies must fail, so these checks cannot pass by checking nothing.
"""

from __future__ import annotations

import ast
import copy
import importlib.metadata
import importlib.util
import json
import shutil
import subprocess
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import jsonschema
import kubernetes_validate
import pytest
import yaml

from infra.settings import Settings, flat_names

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "infra" / "k8s"
SCHEMAS = K8S / "schemas"
KUBERNETES_VERSION = "1.33"  # the oldest Kubernetes the manifests are meant for
OVERLAYS = ("small", "large")
PARTS = ("", "serving", "jobs")  # an overlay's platform, serving and one-off runs
CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition", "PersistentVolume"}
KUSTOMIZATION_KEYS = {"apiVersion", "kind", "resources", "namespace", "labels", "configurations", "images", "patches"}
NOT_RENDERED = {  # YAML under infra/k8s that no kustomization lists, and why
    "dagster/values.yaml": "Helm values of the Dagster chart",
    "secrets.example.yaml": "the Secrets to create by hand",
}

Doc = dict[str, Any]


# A renderer of the kustomize subset these manifests use ------------------------------------
class Kustomized:
    """Objects rendered from one kustomization, with the image fields its transformers know."""

    def __init__(self, docs: list[Doc], image_fields: list[dict[str, str]]) -> None:
        self.docs = docs
        self.image_fields = image_fields


def render(directory: Path) -> list[Doc]:
    """The objects `kubectl kustomize directory` prints (in resource order, not kind order)."""
    return _render(directory.resolve()).docs


def _render(directory: Path) -> Kustomized:
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
    unknown = set(kustomization) - KUSTOMIZATION_KEYS
    if unknown:
        raise NotImplementedError(f"{directory}: the test's renderer does not know {sorted(unknown)}")
    docs: list[Doc] = []
    image_fields: list[dict[str, str]] = []
    for entry in kustomization.get("resources", []):
        path = (directory / entry).resolve()
        if path.is_dir():
            sub = _render(path)
            docs += sub.docs
            image_fields += sub.image_fields
        else:
            docs += [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
    for entry in kustomization.get("configurations", []):
        image_fields += yaml.safe_load((directory / entry).read_text()).get("images", [])
    for patch in kustomization.get("patches", []):
        _apply_patch(directory, patch, docs)
    if "namespace" in kustomization:
        for doc in docs:
            _set_namespace(doc, kustomization["namespace"])
    for label in kustomization.get("labels", []):
        if label.get("includeSelectors") or label.get("includeTemplates"):
            raise NotImplementedError("labels with includeSelectors/includeTemplates")
        for doc in docs:
            doc["metadata"].setdefault("labels", {}).update(label["pairs"])
    for image in kustomization.get("images", []):
        for doc in docs:
            _set_image(doc, image, image_fields)
    return Kustomized(docs, image_fields)


def _set_namespace(doc: Doc, namespace: str) -> None:
    if doc["kind"] in CLUSTER_SCOPED:
        return
    doc["metadata"]["namespace"] = namespace
    if doc["kind"] in ("RoleBinding", "ClusterRoleBinding"):
        for subject in doc.get("subjects", []):
            if subject.get("kind") == "ServiceAccount" and subject.get("namespace", "default") == "default":
                subject["namespace"] = namespace


def _apply_patch(directory: Path, patch: Doc, docs: list[Doc]) -> None:
    if set(patch) - {"path", "patch", "target"} or set(patch.get("target", {})) - {"kind", "name"}:
        raise NotImplementedError(f"patch fields {patch}")
    body = yaml.safe_load((directory / patch["path"]).read_text() if "path" in patch else patch["patch"])
    if isinstance(body, list):  # JSON 6902
        target = patch["target"]
        matched = [doc for doc in docs if _matches(doc, target.get("kind"), target.get("name"))]
        if not matched:
            raise ValueError(f"{directory}: patch {patch} matches no object")
        for doc in matched:
            for operation in body:
                json_patch(doc, operation)
        return
    target = patch.get("target", {"kind": body["kind"], "name": body["metadata"]["name"]})
    matched = [doc for doc in docs if _matches(doc, target.get("kind"), target.get("name"))]
    if not matched:
        raise ValueError(f"{directory}: patch {patch} matches no object")
    for doc in matched:
        merged = strategic_merge(doc, {k: v for k, v in body.items() if k not in ("apiVersion", "kind")})
        doc.clear()
        doc.update(merged)


def _matches(doc: Doc, kind: str | None, name: str | None) -> bool:
    return (kind is None or doc["kind"] == kind) and (name is None or doc["metadata"]["name"] == name)


def strategic_merge(base: Any, patch: Any) -> Any:
    """A strategic-merge patch limited to maps (lists would need each kind's merge keys)."""
    if isinstance(patch, list):
        raise NotImplementedError("strategic-merge patches of lists: use a JSON 6902 patch")
    if not isinstance(patch, dict) or not isinstance(base, dict):
        return copy.deepcopy(patch)
    merged = dict(base)
    for key, value in patch.items():
        merged[key] = strategic_merge(base[key], value) if key in base else copy.deepcopy(value)
    return merged


def json_patch(doc: Doc, operation: Doc) -> None:
    """One RFC 6902 operation (add, replace, remove) on ``doc``, in place."""
    op, tokens = operation["op"], [t.replace("~1", "/").replace("~0", "~") for t in operation["path"].split("/")[1:]]
    parent: Any = doc
    for token in tokens[:-1]:
        parent = parent[int(token)] if isinstance(parent, list) else parent[token]
    last = tokens[-1]
    value = copy.deepcopy(operation.get("value"))
    if isinstance(parent, list):
        index = len(parent) if last == "-" else int(last)
        if op == "add":
            parent.insert(index, value)
        elif op == "replace":
            parent[index] = value
        elif op == "remove":
            del parent[index]
        else:
            raise NotImplementedError(op)
    elif op == "add":
        parent[last] = value
    elif op in ("replace", "remove"):
        if last not in parent:
            raise KeyError(f"{operation['path']}: nothing to {op}")
        if op == "replace":
            parent[last] = value
        else:
            del parent[last]
    else:
        raise NotImplementedError(op)


def _set_image(doc: Doc, image: Doc, image_fields: list[dict[str, str]]) -> None:
    def rewrite(current: str) -> str:
        name, tag = _split_image(current)
        if name != image["name"]:
            return current
        new_name, new_tag = image.get("newName", name), image.get("newTag", tag)
        return f"{new_name}:{new_tag}" if new_tag else new_name

    for holder in _image_holders(doc):
        holder["image"] = rewrite(holder["image"])
    for field in image_fields:  # configurations: images fieldSpecs, e.g. SparkApplication spec/image
        if field.get("kind", doc["kind"]) != doc["kind"]:
            continue
        *path, last = field["path"].split("/")
        node: Any = doc
        for key in path:
            node = node.get(key, {}) if isinstance(node, dict) else {}
        if isinstance(node, dict) and isinstance(node.get(last), str):
            node[last] = rewrite(node[last])


def _image_holders(node: Any) -> Iterator[Doc]:
    """Every item with an image in a `containers` or `initContainers` list, anywhere (kustomize's rule)."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("containers", "initContainers") and isinstance(value, list):
                yield from (item for item in value if isinstance(item, dict) and "image" in item)
            yield from _image_holders(value)
    elif isinstance(node, list):
        for item in node:
            yield from _image_holders(item)


def _split_image(image: str) -> tuple[str, str]:
    name, _, tag = image.rpartition(":") if ":" in image.rsplit("/", 1)[-1] else (image, "", "")
    return name, tag


def kustomizations() -> list[Path]:
    return sorted(path.parent for path in K8S.rglob("kustomization.yaml"))


@cache
def rendered(directory: str) -> tuple[Doc, ...]:
    """Rendered objects of ``infra/k8s/<directory>``, cached: copy before changing one (overlay_docs does)."""
    return tuple(render(K8S / directory))


def overlay_docs(overlay: str) -> list[Doc]:
    """Everything one overlay deploys: its platform, its serving and its one-off runs."""
    return copy.deepcopy([doc for part in PARTS for doc in rendered(f"overlays/{overlay}/{part}".rstrip("/"))])


def one(docs: list[Doc], kind: str, name: str | None = None) -> Doc:
    found = [doc for doc in docs if doc["kind"] == kind and (name is None or doc["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


# Validation -----------------------------------------------------------------------------
@cache
def crd_schema(api_version: str, kind: str) -> dict[str, Any] | None:
    group, _, version = api_version.rpartition("/")
    path = SCHEMAS / group / f"{kind.lower()}_{version}.json"
    return strict(json.loads(path.read_text())) if group and path.is_file() else None


def strict(schema: Any) -> Any:
    """``schema`` with unknown fields forbidden wherever it declares fields (see schemas/README.md)."""
    if isinstance(schema, dict):
        out = dict(schema)
        if "properties" in out:
            out["properties"] = {name: strict(sub) for name, sub in out["properties"].items()}
            if "additionalProperties" not in out and not out.get("x-kubernetes-preserve-unknown-fields"):
                out["additionalProperties"] = False
        if isinstance(out.get("items"), dict):
            out["items"] = strict(out["items"])
        if isinstance(out.get("additionalProperties"), dict):
            out["additionalProperties"] = strict(out["additionalProperties"])
        return out
    return schema


def validation_errors(doc: Doc) -> list[str]:
    """Why the API server (with the operators' CRDs installed) would refuse ``doc``; [] if it would not."""
    where = f"{doc.get('kind')}/{doc.get('metadata', {}).get('name')}"
    schema = crd_schema(doc.get("apiVersion", ""), doc.get("kind", ""))
    if schema is None:
        try:
            kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as error:
            return [f"{where}: {'/'.join(map(str, error.path))}: {error.message}"]
        except kubernetes_validate.SchemaNotFoundError:
            return [f"{where}: no schema for {doc.get('apiVersion')} {doc.get('kind')} (add its CRD under schemas/)"]
        return []
    errors = [
        f"{where}: {'/'.join(map(str, error.absolute_path))}: {error.message}"
        for error in jsonschema.Draft202012Validator(schema).iter_errors(doc)
    ]
    # A CRD declares metadata as a bare object: validate it as the ObjectMeta it is.
    meta = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": doc.get("metadata", {})}
    try:
        kubernetes_validate.validate(meta, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as error:
        errors.append(f"{where}: metadata/{'/'.join(map(str, error.path))}: {error.message}")
    return errors


# Consistency with the code --------------------------------------------------------------
def settings_data(docs: list[Doc]) -> dict[str, str]:
    return dict(one(docs, "ConfigMap", "streamrec-settings")["data"])


def settings_problems(data: dict[str, str]) -> list[str]:
    """STREAMREC_* keys that are no setting, and values the settings refuse."""
    fields = set(flat_names())
    problems = [f"{key}: not STREAMREC_<setting>" for key in data if not key.startswith("STREAMREC_")]
    problems += [
        f"{key}: no setting {key.removeprefix('STREAMREC_').lower()!r} in infra.settings.Settings"
        for key in data
        if key.startswith("STREAMREC_") and key.removeprefix("STREAMREC_").lower() not in fields
    ]
    if not problems:
        try:
            Settings.model_validate({key.removeprefix("STREAMREC_").lower(): value for key, value in data.items()})
        except ValueError as error:
            problems.append(f"the settings refuse these values: {error}")
    return problems


def pod_specs(doc: Doc) -> Iterator[tuple[str, Doc]]:
    """(where, pod spec) of every pod template in ``doc`` (Ray groups, Deployments, ...)."""
    kind, spec = doc["kind"], doc.get("spec", {})
    if kind in ("Deployment", "StatefulSet"):
        yield kind, spec["template"]["spec"]
    cluster = spec.get("rayClusterConfig", spec) if kind in ("RayCluster", "RayService") else None
    if cluster is not None:
        yield f"{kind} head", cluster["headGroupSpec"]["template"]["spec"]
        for group in cluster.get("workerGroupSpecs", []):
            yield f"{kind} group {group['groupName']}", group["template"]["spec"]
    if kind == "RayJob" and "submitterPodTemplate" in spec:
        yield "RayJob submitter", spec["submitterPodTemplate"]["spec"]


def ray_token_problems(docs: list[Doc], token_file: str) -> list[str]:
    """Ray clusters use token auth from Secret streamrec-ray-token, mounted where the settings read it."""
    directory, _, filename = token_file.rpartition("/")
    problems = []
    for doc in docs:
        if doc["kind"] not in ("RayCluster", "RayService"):
            continue
        cluster = doc["spec"].get("rayClusterConfig", doc["spec"])
        if cluster.get("authOptions") != {"mode": "token", "secretName": "streamrec-ray-token"}:
            problems.append(f"{doc['kind']} {doc['metadata']['name']}: authOptions {cluster.get('authOptions')}")
        if cluster.get("rayVersion") != importlib.metadata.version("ray"):
            problems.append(f"{doc['kind']}: rayVersion {cluster.get('rayVersion')} is not the installed Ray")
        for where, pod in pod_specs(doc):
            volumes = {v["name"]: v for v in pod.get("volumes", []) if v.get("secret", {}).get("secretName")}
            token = [
                v
                for v in volumes.values()
                if v["secret"]["secretName"] == "streamrec-ray-token"
                and {"key": "auth_token", "path": filename} in v["secret"].get("items", [])
            ]
            mounted = {
                mount["name"]
                for container in pod["containers"]
                for mount in container.get("volumeMounts", [])
                if mount["mountPath"] == directory
            }
            if not token or token[0]["name"] not in mounted:
                problems.append(f"{doc['metadata']['name']} {where}: no streamrec-ray-token mounted at {token_file}")
    return problems


def http_probes(container: Doc) -> dict[str, tuple[str, int]]:
    """{probe: (path, port number)} of the container's HTTP probes (named ports resolved)."""
    ports = {port.get("name"): port["containerPort"] for port in container.get("ports", [])}
    probes = {}
    for name in ("startupProbe", "readinessProbe", "livenessProbe"):
        get = container.get(name, {}).get("httpGet")
        if get:
            port = get["port"]
            probes[name] = (get["path"], ports[port] if isinstance(port, str) else port)
    return probes


def serve_config(docs: list[Doc]) -> Doc:
    return yaml.safe_load(one(docs, "RayService")["spec"]["serveConfigV2"])


def serve_config_problems(config: Doc, data: dict[str, str]) -> list[str]:
    """The serving config against the serving settings (replicas, shards, port)."""
    problems = []
    (app,) = config["applications"]
    deployments = {d["name"]: d for d in app.get("deployments", [])}
    replicas = deployments.get("Recommender", {}).get("num_replicas")
    if str(replicas) != data["STREAMREC_SERVE_REPLICAS"]:
        problems.append(f"Recommender num_replicas {replicas} != STREAMREC_SERVE_REPLICAS")
    shards = sorted(name for name in deployments if name.startswith("HistoryShard"))
    expected = sorted(f"HistoryShard{i}" for i in range(int(data["STREAMREC_SERVE_HISTORY_SHARDS"])))
    if shards != expected:
        problems.append(f"history shard deployments {shards} != {expected} (STREAMREC_SERVE_HISTORY_SHARDS)")
    if str(config["http_options"]["port"]) != data["STREAMREC_SERVE_PORT"]:
        problems.append("http_options.port != STREAMREC_SERVE_PORT")
    if app["import_path"].split(":")[0] != "serving.app" or app.get("route_prefix") != "/":
        problems.append(f"application {app['import_path']} at {app.get('route_prefix')}")
    return problems


def ingress_problems(docs: list[Doc], data: dict[str, str]) -> list[str]:
    """Every Ray container of the RayService runs the ingress of STREAMREC_SERVE_INGRESS (Ray Serve
    reads RAY_SERVE_ENABLE_HA_PROXY from the environment of the node's processes)."""
    from infra.settings import ServeSettings

    ingress = data.get("STREAMREC_SERVE_INGRESS", ServeSettings.model_fields["ingress"].default)
    wanted = "1" if ingress == "haproxy" else "0"
    problems = []
    for where, pod in pod_specs(one(docs, "RayService")):
        for container in pod["containers"]:
            env = {var["name"]: var.get("value") for var in container.get("env", [])}
            if env.get("RAY_SERVE_ENABLE_HA_PROXY", "0") != wanted:
                problems.append(f"{where} {container['name']}: RAY_SERVE_ENABLE_HA_PROXY is not {wanted} ({ingress})")
    return problems


def referenced(doc: Any, kind: str) -> Iterator[tuple[Any, Any]]:
    """(name, key or None) of every Secret (kind="secret") or ConfigMap ("configMap") ``doc`` reads."""
    if isinstance(doc, dict):
        for key, value in doc.items():
            if key == f"{kind}KeyRef":
                yield value["name"], value["key"]
            elif key == f"{kind}Ref" and isinstance(value, dict):
                yield value["name"], None
            elif key == kind and isinstance(value, dict) and ("secretName" in value or "name" in value):
                name = value.get("secretName", value.get("name"))
                items = value.get("items") or [{"key": None}]
                yield from ((name, item["key"]) for item in items)
            elif key == "authOptions" and kind == "secret" and "secretName" in value:
                yield value["secretName"], "auth_token"  # KubeRay reads this key of the token Secret
            yield from referenced(value, kind)
    elif isinstance(doc, list):
        for item in doc:
            yield from referenced(item, kind)


@cache
def example_secrets() -> dict[str, set[str]]:
    docs = yaml.safe_load_all((K8S / "secrets.example.yaml").read_text())
    return {doc["metadata"]["name"]: set(doc["stringData"]) for doc in docs}


def reference_problems(docs: list[Doc], extra: tuple[Any, ...] = ()) -> list[str]:
    """Secrets not in secrets.example.yaml (with their keys) and ConfigMaps the overlay lacks."""
    problems = []
    config_maps = {doc["metadata"]["name"]: doc for doc in docs if doc["kind"] == "ConfigMap"}
    for source in [*docs, *extra]:
        for name, key in referenced(source, "secret"):
            if name not in example_secrets() or (key is not None and key not in example_secrets()[name]):
                problems.append(f"Secret {name} key {key}: not in secrets.example.yaml")
        for name, key in referenced(source, "configMap"):
            if name not in config_maps or (key is not None and key not in config_maps[name]["data"]):
                problems.append(f"ConfigMap {name} key {key}: not deployed")
    return problems


def address_problems(docs: list[Doc], data: dict[str, str]) -> list[str]:
    """The settings' addresses name the Services (and ports) the manifests create."""
    services = {d["metadata"]["name"]: {p["port"] for p in d["spec"]["ports"]} for d in docs if d["kind"] == "Service"}
    kafka = one(docs, "Kafka")  # Strimzi's bootstrap Service has the listeners' ports
    services[f"{kafka['metadata']['name']}-kafka-bootstrap"] = {x["port"] for x in kafka["spec"]["kafka"]["listeners"]}
    for doc in docs:  # KubeRay's head Service has the head container's ports
        if doc["kind"] in ("RayCluster", "RayService"):
            cluster = doc["spec"].get("rayClusterConfig", doc["spec"])
            head = cluster["headGroupSpec"]["template"]["spec"]["containers"][0]
            services[f"{doc['metadata']['name']}-head-svc"] = {p["containerPort"] for p in head.get("ports", [])}
    serve = one(docs, "RayService")  # and its serve Service the Serve HTTP port
    services[f"{serve['metadata']['name']}-serve-svc"] = {int(serve_config(docs)["http_options"]["port"])}
    kafka_host, kafka_port = data["STREAMREC_KAFKA_BOOTSTRAP"].split(",")[0].rsplit(":", 1)
    mlflow = urlparse(data["STREAMREC_MLFLOW_TRACKING_URI"])
    ray = urlparse(data["STREAMREC_RAY_ADDRESS"])
    addresses = {
        "STREAMREC_KAFKA_BOOTSTRAP": (kafka_host, kafka_port),
        "STREAMREC_MLFLOW_TRACKING_URI": (mlflow.hostname, mlflow.port),
        "STREAMREC_RAY_ADDRESS": (ray.hostname, ray.port),
        "STREAMREC_SERVE_HOST": (data["STREAMREC_SERVE_HOST"], data["STREAMREC_SERVE_PORT"]),
    }
    return [
        f"{key}: no Service {host} with port {port} in the manifests"
        for key, (host, port) in addresses.items()
        if host not in services or port is None or int(port) not in services[host]
    ]


def dagster_pod(values: Doc) -> Doc:
    """The pod of the Dagster chart's user code deployment, as the chart makes it from the values."""
    (deployment,) = values["dagster-user-deployments"]["deployments"]
    container = {
        "name": "dagster",
        "image": f"{deployment['image']['repository']}:{deployment['image']['tag']}",
        "envFrom": [{"configMapRef": c} for c in deployment["envConfigMaps"]]
        + [{"secretRef": s} for s in deployment["envSecrets"]],
        "resources": deployment["resources"],
        "volumeMounts": deployment["volumeMounts"],
    }
    spec = {"securityContext": deployment["podSecurityContext"], "volumes": deployment["volumes"]}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": deployment["name"]},
        "spec": {**spec, "containers": [container]},
    }


# The tests ------------------------------------------------------------------------------
@pytest.mark.parametrize("directory", [str(path.relative_to(K8S)) for path in kustomizations()])
def test_every_kustomization_renders_to_valid_objects(directory: str) -> None:
    docs = list(rendered(directory))
    assert docs, f"{directory} renders nothing"
    problems = [problem for doc in docs for problem in validation_errors(doc)]
    assert not problems, "\n".join(problems)
    names = [(doc["kind"], doc["metadata"]["name"]) for doc in docs]
    assert len(names) == len(set(names)), f"duplicate objects in {directory}"
    assert all(doc["metadata"].get("namespace") == "streamrec" for doc in docs if doc["kind"] not in CLUSTER_SCOPED)


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")
@pytest.mark.parametrize("directory", [str(path.relative_to(K8S)) for path in kustomizations()])
def test_the_renderer_agrees_with_kubectl_kustomize(directory: str) -> None:
    result = subprocess.run(["kubectl", "kustomize", str(K8S / directory)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    theirs = {(d["kind"], d["metadata"]["name"]): d for d in yaml.safe_load_all(result.stdout) if d}
    ours = {(d["kind"], d["metadata"]["name"]): d for d in rendered(directory)}
    assert ours.keys() == theirs.keys()
    for key, doc in ours.items():
        assert doc == theirs[key], f"{directory}: {key} differs from kubectl kustomize"


def test_every_manifest_file_is_rendered_or_known() -> None:
    listed = set()
    for directory in kustomizations():
        kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
        entries = kustomization.get("resources", []) + kustomization.get("configurations", [])
        entries += [patch["path"] for patch in kustomization.get("patches", []) if "path" in patch]
        listed |= {(directory / entry).resolve() for entry in entries}
        listed.add((directory / "kustomization.yaml").resolve())
    files = {path.resolve() for path in K8S.rglob("*.yaml")}
    orphans = sorted(
        str(path.relative_to(K8S)) for path in files - listed if str(path.relative_to(K8S)) not in NOT_RENDERED
    )
    assert not orphans, f"YAML files no kustomization uses: {orphans}"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_settings_are_real_settings_and_parse(overlay: str) -> None:
    docs = overlay_docs(overlay)
    data = settings_data(docs)
    assert not settings_problems(data)
    assert data["STREAMREC_RAY_AUTH"] == "token", "README, Security: token authentication stays on"
    assert data["STREAMREC_LAKE_URI"].startswith("s3://") and data["STREAMREC_TRAIN_STORAGE"].startswith("s3://")
    base = render(K8S / "base")
    assert settings_data(base) != data, "the overlay sizes nothing"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_addresses_in_the_settings_name_the_services_deployed(overlay: str) -> None:
    docs = overlay_docs(overlay)
    assert not address_problems(docs, settings_data(docs))


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_topic_partitions_workers_and_shards_agree(overlay: str) -> None:
    docs = overlay_docs(overlay)
    data = settings_data(docs)
    topic = one(docs, "KafkaTopic")
    assert topic["metadata"]["name"] == data["STREAMREC_TOPIC"]
    assert topic["spec"]["partitions"] == int(data["STREAMREC_TOPIC_PARTITIONS"])
    shards = int(data["STREAMREC_SERVE_HISTORY_SHARDS"])
    assert topic["spec"]["partitions"] % shards == 0, "every history shard owns as many partitions"
    ingest = one(docs, "SparkApplication", "streamrec-ingest")["spec"]["executor"]
    assert ingest["instances"] * ingest["cores"] <= topic["spec"]["partitions"], "idle ingest cores"
    brokers = sum(
        p["spec"]["replicas"] for p in docs if p["kind"] == "KafkaNodePool" and "broker" in p["spec"]["roles"]
    )
    assert topic["spec"]["replicas"] <= brokers
    # Ray Train's workers fit the worker groups that can hold them (GPU groups when USE_GPU).
    cpus_per_worker = float(data["STREAMREC_TRAIN_CPUS_PER_WORKER"])
    use_gpu = data["STREAMREC_TRAIN_USE_GPU"] == "true"
    capacity = 0
    for group in one(docs, "RayCluster")["spec"]["workerGroupSpecs"]:
        limits = group["template"]["spec"]["containers"][0]["resources"]["limits"]
        if use_gpu != ("nvidia.com/gpu" in limits):
            continue
        per_pod = int(float(limits["cpu"]) // cpus_per_worker)
        if use_gpu:
            per_pod = min(per_pod, int(limits["nvidia.com/gpu"]))
        capacity += per_pod * group["maxReplicas"]
    assert capacity >= int(data["STREAMREC_TRAIN_WORKERS"]), "STREAMREC_TRAIN_WORKERS do not fit the Ray cluster"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_ray_clusters_use_the_token_secret(overlay: str) -> None:
    docs = overlay_docs(overlay)
    assert not ray_token_problems(docs, settings_data(docs)["STREAMREC_RAY_AUTH_TOKEN_FILE"])


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_secret_and_config_map_a_pod_reads_exists(overlay: str) -> None:
    docs = overlay_docs(overlay)
    values = yaml.safe_load((K8S / "dagster" / "values.yaml").read_text())
    assert not reference_problems(docs, (dagster_pod(values),))


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_probes_hit_real_endpoints(overlay: str) -> None:
    docs = overlay_docs(overlay)
    mlflow = one(docs, "Deployment", "streamrec-mlflow")["spec"]["template"]["spec"]["containers"][0]
    assert set(http_probes(mlflow).values()) == {("/health", 5000)}
    assert "--port=5000" in mlflow["args"]
    serve = one(docs, "RayService")
    for group in serve["spec"]["rayClusterConfig"]["workerGroupSpecs"]:
        worker = group["template"]["spec"]["containers"][0]
        assert http_probes(worker) == {"readinessProbe": ("/healthz", serve_config(docs)["http_options"]["port"])}
    assert mlflow_routes() >= {"/health"}
    assert serving_routes() >= {"/healthz", "/recommend", "/retrieve", "/metrics"}


def mlflow_routes() -> set[Any]:
    """Routes MLflow's tracking server registers (read from its source: importing it takes seconds)."""
    spec = importlib.util.find_spec("mlflow")
    assert spec is not None and spec.origin is not None
    source = (Path(spec.origin).parent / "server" / "__init__.py").read_text()
    return {
        node.args[0].args[0].value
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.Call)
        and getattr(node.func, "attr", "") == "route"
        and node.args
        and isinstance(node.args[0], ast.Call)
        and node.args[0].args
        and isinstance(node.args[0].args[0], ast.Constant)
    }


def serving_routes() -> set[Any]:
    """Paths of the serving app's FastAPI routes (``@api.get`` / ``@api.post`` in serving/app.py)."""
    tree = ast.parse((ROOT / "serving" / "app.py").read_text())
    return {
        node.args[0].value
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and isinstance(node.func.value, ast.Name)
        and node.func.value.id == "api"
        and node.func.attr in ("get", "post")
        and node.args
        and isinstance(node.args[0], ast.Constant)
    }


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # Ray's pydantic models, on import
@pytest.mark.parametrize("overlay", ("base", *OVERLAYS))
def test_serve_config_is_a_ray_serve_config_matching_the_settings(overlay: str) -> None:
    from ray.serve.schema import ServeDeploySchema

    if overlay == "base":
        docs = [*rendered("base"), *rendered("serving")]
    else:
        docs = overlay_docs(overlay)
    config = serve_config(docs)
    ServeDeploySchema.model_validate(config)
    assert not serve_config_problems(config, settings_data(docs))


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_serving_node_runs_the_ingress_of_the_settings(overlay: str) -> None:
    docs = overlay_docs(overlay)
    assert not ingress_problems(docs, settings_data(docs))


def test_the_serve_import_path_exists() -> None:
    module, _, attribute = serve_config(overlay_docs("small"))["applications"][0]["import_path"].partition(":")
    assert importlib.util.find_spec(module) is not None
    tree = ast.parse((ROOT / Path(*module.split("."))).with_suffix(".py").read_text())
    assert attribute in {node.name for node in tree.body if isinstance(node, ast.FunctionDef)}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_images_are_the_overlays_own_and_agree(overlay: str) -> None:
    images: dict[str, Doc] = {}
    for part in PARTS:
        kustomization = yaml.safe_load((K8S / "overlays" / overlay / part / "kustomization.yaml").read_text())
        for image in kustomization["images"]:
            assert images.setdefault(image["name"], image) == image, f"{overlay}/{part}: image {image['name']} differs"
    used = {holder["image"] for doc in overlay_docs(overlay) for holder in _image_holders(doc)}
    used |= {doc["spec"]["image"] for doc in overlay_docs(overlay) if doc["kind"] == "SparkApplication"}
    placeholders = {"streamrec", "streamrec-gpu", "streamrec-mlflow"}
    assert not {image for image in used if _split_image(image)[0] in placeholders}, "a placeholder image is left"
    assert ("streamrec-gpu" in images) == (overlay == "large")


def test_runs_and_spark_applications_fit_the_code() -> None:
    docs = [*rendered("overlays/small"), *rendered("overlays/small/jobs")]
    job = one(docs, "RayJob")
    assert job["spec"]["clusterSelector"] == {"ray.io/cluster": one(docs, "RayCluster")["metadata"]["name"]}
    assert job["spec"]["entrypoint"].startswith("streamrec train")
    for app in (doc for doc in docs if doc["kind"] == "SparkApplication"):
        spec = app["spec"]
        assert spec["sparkVersion"] == importlib.metadata.version("pyspark")
        main = spec["mainApplicationFile"].removeprefix("local:///opt/streamrec/")
        assert (ROOT / main).is_file(), f"{app['metadata']['name']}: no {main} in the repository"
        env = {e["name"]: e["value"] for e in spec["driver"]["env"]}
        assert env["STREAMREC_SPARK_MASTER"].startswith("k8s://")
        assert spec["driver"]["serviceAccount"] == one(docs, "ServiceAccount")["metadata"]["name"]


def test_dagster_values_run_the_workflows_with_the_settings() -> None:
    values = yaml.safe_load((K8S / "dagster" / "values.yaml").read_text())
    (deployment,) = values["dagster-user-deployments"]["deployments"]
    assert deployment["dagsterApiGrpcArgs"] == ["--module-name", "workflows.definitions"]
    assert {"name": "streamrec-settings"} in deployment["envConfigMaps"]
    assert deployment["includeConfigInLaunchedRuns"] == {"enabled": True}
    assert values["postgresql"]["enabled"] is False
    assert (
        values["postgresql"]["postgresqlHost"]
        == one(list(rendered("base")), "Service", "streamrec-postgres")["metadata"]["name"]
    )
    assert "postgresql-password" in example_secrets()[values["global"]["postgresqlSecretName"]]
    # The pod parts of the values are Kubernetes objects: validate them as a Pod.
    assert not validation_errors(dagster_pod(values))
    for section in (
        values["runLauncher"]["config"]["k8sRunLauncher"],
        values["dagsterWebserver"],
        values["dagsterDaemon"],
    ):
        container = {"name": "x", "image": "x", "resources": section["resources"]}
        assert not validation_errors(
            {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "x"}, "spec": {"containers": [container]}}
        )


def test_secrets_example_is_valid_and_in_no_kustomization() -> None:
    for doc in yaml.safe_load_all((K8S / "secrets.example.yaml").read_text()):
        assert not validation_errors(doc)
        assert all(value.startswith("CHANGE-ME") for value in doc["stringData"].values())


# Broken copies must fail ----------------------------------------------------------------
def test_a_broken_deployment_fails_validation() -> None:
    deployment = copy.deepcopy(one(list(rendered("overlays/small")), "Deployment", "streamrec-mlflow"))
    assert not validation_errors(deployment)
    deployment["spec"]["replicas"] = "two"
    assert any("replicas" in problem for problem in validation_errors(deployment))
    misspelt = copy.deepcopy(one(list(rendered("overlays/small")), "Deployment", "streamrec-mlflow"))
    misspelt["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = misspelt["spec"]["template"]["spec"][
        "containers"
    ][0].pop("readinessProbe")
    assert validation_errors(misspelt)


def test_broken_custom_resources_fail_validation() -> None:
    docs = list(rendered("overlays/large"))
    cluster = copy.deepcopy(one(docs, "RayCluster"))
    cluster["spec"]["workerGroupSpecs"][1]["replicas"] = "two"
    assert any("workerGroupSpecs/1/replicas" in problem for problem in validation_errors(cluster))
    typo = copy.deepcopy(one(docs, "RayCluster"))
    typo["spec"]["workerGroupSpec"] = typo["spec"].pop("workerGroupSpecs")
    assert validation_errors(typo)
    topic = copy.deepcopy(one(docs, "KafkaTopic"))
    topic["spec"]["partitions"] = 0
    assert validation_errors(topic)
    topic = copy.deepcopy(one(docs, "KafkaTopic"))
    topic["metadata"]["labels"]["strimzi.io/cluster"] = 1
    assert validation_errors(topic), "metadata is validated too"
    app = copy.deepcopy(one(docs, "SparkApplication"))
    app["spec"]["type"] = "Go"
    assert validation_errors(app)
    unknown = {"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"}}
    assert validation_errors(unknown)


def test_broken_settings_and_wiring_fail_the_checks() -> None:
    docs = overlay_docs("small")
    data = settings_data(docs)
    assert settings_problems({**data, "STREAMREC_NOT_A_SETTING": "1"})
    assert settings_problems({**data, "STREAMREC_TOPIC_PARTITIONS": "eight"})
    assert settings_problems({**data, "KAFKA_BOOTSTRAP": "x:9092"})
    assert address_problems(docs, {**data, "STREAMREC_MLFLOW_TRACKING_URI": "http://mlflow:5000"})
    assert serve_config_problems(serve_config(docs), {**data, "STREAMREC_SERVE_HISTORY_SHARDS": "3"})
    assert serve_config_problems(serve_config(docs), {**data, "STREAMREC_SERVE_REPLICAS": "5"})
    assert ingress_problems(docs, {**data, "STREAMREC_SERVE_INGRESS": "python"})
    assert ray_token_problems(docs, "/somewhere/else/auth_token")
    unmounted = copy.deepcopy(docs)
    one(unmounted, "RayCluster")["spec"]["workerGroupSpecs"][0]["template"]["spec"]["volumes"].pop(0)
    assert ray_token_problems(unmounted, data["STREAMREC_RAY_AUTH_TOKEN_FILE"])
    missing = [doc for doc in docs if doc["metadata"]["name"] != "streamrec-object-store"]
    assert reference_problems(missing)
    assert reference_problems(docs, ({"env": [{"valueFrom": {"secretKeyRef": {"name": "nope", "key": "k"}}}]},))


def test_the_renderer_applies_patches_as_kustomize_does() -> None:
    doc: Doc = {"kind": "X", "metadata": {"name": "x"}, "spec": {"list": [1, 2], "map": {"a": 1}}}
    json_patch(doc, {"op": "add", "path": "/spec/list/-", "value": 3})
    json_patch(doc, {"op": "replace", "path": "/spec/map/a", "value": 2})
    json_patch(doc, {"op": "add", "path": "/spec/new", "value": {"b": 1}})
    assert doc["spec"] == {"list": [1, 2, 3], "map": {"a": 2}, "new": {"b": 1}}
    with pytest.raises(KeyError):
        json_patch(doc, {"op": "replace", "path": "/spec/absent", "value": 1})
    assert strategic_merge({"a": {"b": 1, "c": 2}}, {"a": {"c": 3}}) == {"a": {"b": 1, "c": 3}}
    with pytest.raises(NotImplementedError):
        strategic_merge({"a": [1]}, {"a": [2]})
    doc = {"kind": "Deployment", "spec": {"template": {"spec": {"containers": [{"image": "streamrec:latest"}]}}}}
    _set_image(doc, {"name": "streamrec", "newName": "r/s", "newTag": "1"}, [])
    assert doc["spec"]["template"]["spec"]["containers"][0]["image"] == "r/s:1"
    app: Doc = {"kind": "SparkApplication", "spec": {"image": "streamrec"}}
    _set_image(app, {"name": "streamrec", "newTag": "2"}, [{"path": "spec/image", "kind": "SparkApplication"}])
    assert app["spec"]["image"] == "streamrec:2"
    assert _split_image("registry:5000/a/b:tag") == ("registry:5000/a/b", "tag")
    assert _split_image("registry:5000/a/b") == ("registry:5000/a/b", "")
