"""The KubeRay manifests in cluster/kuberay: every ray.io/v1 document validates against KubeRay's own
CRD schema (vendored in tests/fixtures/kuberay_crds, with unknown fields rejected as the API server's
strict field validation does), the kustomizations point at files that exist, the image is named once,
the RayCluster and the RayService do not clash, and the RayService gets its secrets and its Redis."""

from __future__ import annotations

import copy
import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml
from jsonschema import Draft7Validator

REPO = Path(__file__).resolve().parents[2]
KUBERAY = REPO / "cluster" / "kuberay"
CRDS = REPO / "tests" / "fixtures" / "kuberay_crds"
PLACEHOLDER_IMAGE = "recsys"         # what every Ray container names; image/kustomization.yaml maps it
SECRET = "recsys-secrets"
# Third-party images the stack runs besides ours (kustomize leaves them alone).
OTHER_IMAGES = {"redis:7-alpine"}


def manifest_files() -> list[Path]:
    return sorted(p for p in KUBERAY.rglob("*.yaml") if p.name != "kustomization.yaml")


def documents() -> list[tuple[Path, dict[str, Any]]]:
    return [(path, doc) for path in manifest_files()
            for doc in yaml.safe_load_all(path.read_text()) if doc]


def ray_documents() -> list[tuple[Path, dict[str, Any]]]:
    return [(path, doc) for path, doc in documents() if doc.get("apiVersion") == "ray.io/v1"]


def the(kind: str) -> dict[str, Any]:
    [doc] = [doc for _, doc in documents() if doc["kind"] == kind]
    return doc


def containers(node: Any) -> Iterator[dict[str, Any]]:
    """Every entry of a containers / initContainers list at any depth: where kustomize's image
    transformer looks, whatever the kind."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("containers", "initContainers") and isinstance(value, list):
                yield from value
            else:
                yield from containers(value)
    elif isinstance(node, list):
        for item in node:
            yield from containers(item)


def _as_kubernetes_validates(node: Any) -> Any:
    """A CRD's structural schema -> a JSON schema that rejects what the API server rejects.

    x-kubernetes-int-or-string: an integer or a string (the generated CRDs spell the anyOf out
    already; this covers one that does not). Objects with `properties` and neither
    additionalProperties nor x-kubernetes-preserve-unknown-fields get additionalProperties: false:
    the API server prunes unknown fields of a structural schema, and kubectl (>= 1.27, strict field
    validation by default) refuses them with "unknown field". x-kubernetes-validations (CEL) are
    not evaluated here."""
    if isinstance(node, list):
        return [_as_kubernetes_validates(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {key: _as_kubernetes_validates(value) for key, value in node.items()}
    if out.get("x-kubernetes-int-or-string") and "anyOf" not in out:
        out.pop("type", None)
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if ("properties" in out and "additionalProperties" not in out
            and not out.get("x-kubernetes-preserve-unknown-fields")):
        out["additionalProperties"] = False
    return out


@cache
def validator(kind: str) -> Draft7Validator:
    vendored = json.loads((CRDS / f"{kind}.json").read_text())
    assert vendored["_source"]["version"] == "ray.io/v1"
    schema = _as_kubernetes_validates(vendored["openAPIV3Schema"])
    Draft7Validator.check_schema(schema)
    return Draft7Validator(schema)


def schema_errors(doc: dict[str, Any]) -> list[str]:
    return [f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}"
            for e in validator(doc["kind"]).iter_errors(doc)]


def test_the_vendored_crds_name_their_source() -> None:
    for kind in ("RayCluster", "RayJob", "RayService"):
        source = json.loads((CRDS / f"{kind}.json").read_text())["_source"]
        assert source["repo"] == "ray-project/kuberay" and re.fullmatch(r"[0-9a-f]{40}", source["commit"])
        assert source["path"].endswith(f"ray.io_{kind.lower()}s.yaml")


def test_there_is_one_of_each_kuberay_kind() -> None:
    kinds = sorted(doc["kind"] for _, doc in ray_documents())
    assert kinds == ["RayCluster", "RayJob", "RayService"]


@pytest.mark.parametrize("path,doc", ray_documents(), ids=lambda v: v.name if isinstance(v, Path) else v["kind"])
def test_kuberay_manifests_validate_against_the_crd_schemas(path: Path, doc: dict[str, Any]) -> None:
    errors = schema_errors(doc)
    print("\n".join(errors))
    assert not errors, f"{path.relative_to(REPO)}: {len(errors)} schema errors (printed above)"


@pytest.mark.parametrize("kind,path,value", [
    ("RayService", ["spec", "rayClusterConfig", "headGroupSpec", "rayStartParam"], {}),        # typo'd field
    ("RayService", ["spec", "rayClusterConfig", "workerGroupSpecs", 0, "maxReplica"], 8),      # typo'd field
    ("RayService", ["spec", "rayClusterConfig", "workerGroupSpecs", 0, "replicas"], "one"),    # wrong type
    ("RayCluster", ["spec", "headGroupSpec", "template", "spec", "containers", 0, "imag"], "x"),
    ("RayCluster", ["spec", "headGroupSpec", "template", "spec", "containers", 0, "resources", "limits", "cpu"],
     "four"),                                                                                 # not a quantity
    ("RayJob", ["spec", "shutdownAfterJobFinish"], True),
    ("RayJob", ["spec", "rayClusterSpec", "workerGroupSpecs", 0, "rayStartParams"], ["x"]),   # wrong type
])
def test_a_broken_manifest_fails_validation(kind: str, path: list[Any], value: Any) -> None:
    doc = copy.deepcopy(the(kind))
    node = doc
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    assert schema_errors(doc), f"{kind}: setting {'/'.join(map(str, path))} = {value!r} went unnoticed"


def test_a_manifest_missing_a_required_field_fails_validation() -> None:
    doc = copy.deepcopy(the("RayCluster"))
    del doc["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["name"]
    assert schema_errors(doc)


def kustomizations() -> list[Path]:
    return sorted(KUBERAY.rglob("kustomization.yaml"))


def test_every_kustomization_names_files_that_exist() -> None:
    for kfile in kustomizations():
        k = yaml.safe_load(kfile.read_text())
        for entry in [*k.get("resources", []), *k.get("components", [])]:
            assert (kfile.parent / entry).exists(), f"{kfile.relative_to(REPO)}: {entry} does not exist"
        for generator in k.get("secretGenerator", []):
            for env_file in generator.get("envs", []):
                # secrets.env itself is git-ignored: the example must be there to copy
                assert (kfile.parent / f"{env_file}.example").is_file(), f"{kfile.relative_to(REPO)}: {env_file}"


def test_every_manifest_belongs_to_a_kustomization() -> None:
    listed = {(kfile.parent / entry).resolve() for kfile in kustomizations()
              for entry in yaml.safe_load(kfile.read_text()).get("resources", [])}
    assert set(manifest_files()) - listed == set(), "manifests no kustomization applies"


def test_the_image_is_named_once() -> None:
    component = yaml.safe_load((KUBERAY / "image" / "kustomization.yaml").read_text())
    assert component["kind"] == "Component"
    [image] = component["images"]
    assert image["name"] == PLACEHOLDER_IMAGE and image["newName"] and image["newTag"]
    for path, doc in documents():
        for container in containers(doc):
            if doc["apiVersion"] == "ray.io/v1":
                assert container["image"] == PLACEHOLDER_IMAGE, f"{path.name}: {container['name']}"
            else:
                assert container["image"] in OTHER_IMAGES, f"{path.name}: {container['name']}"
    # every kustomization that applies a Ray manifest pulls the Component in
    for kfile in kustomizations():
        k = yaml.safe_load(kfile.read_text())
        ray_files = [r for r in k.get("resources", [])
                     if any(d and d.get("apiVersion") == "ray.io/v1"
                            for d in yaml.safe_load_all((kfile.parent / r).read_text()))]
        if ray_files:
            assert any((kfile.parent / c).resolve() == (KUBERAY / "image").resolve()
                       for c in k.get("components", [])), kfile.relative_to(REPO)


def test_the_raycluster_and_the_rayservice_do_not_share_a_head_service() -> None:
    """KubeRay names a cluster's head Service <name>-head-svc."""
    assert the("RayCluster")["metadata"]["name"] != the("RayService")["metadata"]["name"]


def _env(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in container.get("env", [])}


def test_the_rayservice_takes_its_secrets_from_the_generated_secret() -> None:
    k = yaml.safe_load((KUBERAY / "kustomization.yaml").read_text())
    assert [g["name"] for g in k["secretGenerator"]] == [SECRET]
    # kustomize would not rewrite a hashed name inside the RayService's pod templates
    assert k["generatorOptions"]["disableNameSuffixHash"] is True
    [env_file] = k["secretGenerator"][0]["envs"]
    example = (KUBERAY / f"{env_file}.example").read_text().splitlines()
    keys = {line.split("=", 1)[0] for line in example if line.strip() and not line.startswith("#")}
    assert keys == {"api-key", "redis-password"}
    assert f"cluster/kuberay/{env_file}" in (REPO / ".gitignore").read_text().splitlines()

    service_containers = list(containers(the("RayService")))
    assert len(service_containers) == 3   # head, cpu and gpu workers
    for container in service_containers:
        env = _env(container)
        for name, key in (("RECSYS_API_KEY", "api-key"), ("REDIS_PASSWORD", "redis-password")):
            assert env[name]["valueFrom"]["secretKeyRef"] == {"name": SECRET, "key": key}, container["name"]
        names = [e["name"] for e in container["env"]]
        # $(REDIS_PASSWORD) is only expanded when it is defined earlier in the list
        assert names.index("REDIS_PASSWORD") < names.index("RECSYS_REDIS_URL"), container["name"]
        assert "$(REDIS_PASSWORD)" in env["RECSYS_REDIS_URL"]["value"]
    [redis] = containers(the("Deployment"))
    assert _env(redis)["REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"] == {"name": SECRET, "key": "redis-password"}
    assert "$(REDIS_PASSWORD)" in redis["args"]


def test_redis_is_where_the_rayservice_looks_for_it() -> None:
    urls = {_env(c)["RECSYS_REDIS_URL"]["value"] for c in containers(the("RayService"))}
    [url] = urls
    host, port = re.fullmatch(r"redis://:\$\(REDIS_PASSWORD\)@([a-z0-9-]+):(\d+)/\d+", url).groups()
    service, deployment = the("Service"), the("Deployment")
    assert service["metadata"]["name"] == host
    assert int(port) in [p["port"] for p in service["spec"]["ports"]]
    assert service["spec"]["selector"].items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
    # its data: a ReadWriteOnce claim, so the old pod must stop before the new one mounts it
    volumes = deployment["spec"]["template"]["spec"]["volumes"]
    [claim_name] = [v["persistentVolumeClaim"]["claimName"] for v in volumes if "persistentVolumeClaim" in v]
    [claim] = [d for _, d in documents() if d["kind"] == "PersistentVolumeClaim"
               and d["metadata"]["name"] == claim_name]
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert deployment["spec"]["strategy"]["type"] == "Recreate"
    [redis] = containers(deployment)
    assert redis["args"][redis["args"].index("--appendonly") + 1] == "yes"
    assert "readinessProbe" in redis


def _kustomize() -> list[str] | None:
    if shutil.which("kustomize"):
        return ["kustomize", "build"]
    if shutil.which("kubectl"):
        return ["kubectl", "kustomize"]
    return None


@pytest.mark.skipif(_kustomize() is None, reason="neither kustomize nor kubectl on PATH")
@pytest.mark.parametrize("target", [".", "train"])
def test_kustomize_puts_the_image_in_every_ray_container(tmp_path: Path, target: str) -> None:
    """The real build: kustomize's image transformer reaches the CRDs' pod templates."""
    work = tmp_path / "kuberay"
    shutil.copytree(KUBERAY, work)
    (work / "secrets.env").write_text((work / "secrets.env.example").read_text())
    built = subprocess.run([*_kustomize(), str(work / target)], capture_output=True, text=True, timeout=120,
                           check=True).stdout
    image = yaml.safe_load((KUBERAY / "image" / "kustomization.yaml").read_text())["images"][0]
    docs = [d for d in yaml.safe_load_all(built) if d]
    ray_docs = [d for d in docs if d["apiVersion"] == "ray.io/v1"]
    assert ray_docs
    for doc in ray_docs:
        for container in containers(doc):
            assert container["image"] == f"{image['newName']}:{image['newTag']}", (doc["kind"], container["name"])
    if target == ".":
        assert [d["metadata"]["name"] for d in docs if d["kind"] == "Secret"] == [SECRET]
