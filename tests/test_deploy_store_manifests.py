"""The store-backed deployment files (versions in a bucket, no shared disk) say what they mean.

deploy/k8s/store is a kustomize Component over deploy/k8s, deploy/container/compose.store.yaml an override of
compose.yaml. Checked without a cluster: every document parses, no shared ReadWriteMany claim is left, every
WELDSTREAM_* name is a flag of the command that reads it, the credentials examples hold placeholders only, the
servers are several and have a readiness probe. Where kubectl or kustomize is on PATH the Component is also
rendered and the output checked the same way.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from .test_deploy_env_files import flags

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"
K8S = DEPLOY / "k8s"
STORE = K8S / "store"
CONTAINER = DEPLOY / "container"
CREDENTIALS = {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}
PLACEHOLDER = re.compile(r"^REPLACE_WITH_[A-Z_]+$")
# The command each role's container runs.
ROLE_COMMAND = {"server": "serve", "learner": "learn"}
ENV_LINE = re.compile(r"^(#?)([A-Z][A-Z0-9_]*)=(.*)$")


def documents(path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def store_kustomization() -> dict:
    (doc,) = documents(STORE / "kustomization.yaml")
    return doc


def component_patches() -> list[dict]:
    """Every patch document of the Component, inline or from a file."""
    found = []
    for patch in store_kustomization()["patches"]:
        text = patch["patch"] if "patch" in patch else (STORE / patch["path"]).read_text()
        found += [doc for doc in yaml.safe_load_all(text) if doc is not None]
    return found


def patch_for(kind: str, name: str) -> dict:
    (found,) = [doc for doc in component_patches() if doc["kind"] == kind and doc["metadata"]["name"] == name]
    return found


def base_objects() -> list[dict]:
    base = documents(K8S / "kustomization.yaml")[0]
    return [doc for resource in base["resources"] for doc in documents(K8S / resource)]


def env_file(path: Path) -> list[tuple[bool, str, str]]:
    """(commented out, name, value) for every KEY=value line of an env file."""
    return [(m[1] == "#", m[2], m[3]) for line in path.read_text().splitlines() if (m := ENV_LINE.match(line))]


def assert_flags(names: set[str], *commands: str, where: str) -> None:
    """Every WELDSTREAM_* name in ``names`` is a flag of every command in ``commands``."""
    for command in commands:
        known = flags(command)[1]
        unknown = sorted(n for n in names if n.startswith("WELDSTREAM_") and n not in known)
        assert not unknown, f"{where}: `weldstream {command}` has no flag for {unknown}"


def by_name(items: list[dict], key: str = "name") -> dict[str, dict]:
    return {item[key]: item for item in items or []}


def patched_volumes(deployment: dict, patch: dict) -> dict[str, dict]:
    """The pod's volumes after a strategic-merge patch of them (merge by name; a null field is removed)."""
    volumes = {name: dict(v) for name, v in by_name(deployment["spec"]["template"]["spec"]["volumes"]).items()}
    for name, change in by_name(patch["spec"]["template"]["spec"].get("volumes")).items():
        merged = volumes.setdefault(name, {})
        for field, value in change.items():
            if value is None:
                merged.pop(field, None)
            else:
                merged[field] = value
    return volumes


# --- every file parses --------------------------------------------------------------------------------------

NEW_YAML = sorted(STORE.glob("*.yaml")) + [CONTAINER / "compose.store.yaml", K8S / "kustomization.yaml"]


@pytest.mark.parametrize("path", NEW_YAML, ids=lambda p: str(p.relative_to(DEPLOY)))
def test_every_yaml_document_parses(path):
    docs = documents(path)
    assert docs and all(isinstance(doc, dict) for doc in docs), f"{path} holds no YAML mapping"


def test_the_component_is_off_in_the_base_and_one_uncommented_line_turns_it_on():
    base = documents(K8S / "kustomization.yaml")[0]
    assert "components" not in base and "pvc.yaml" in base["resources"]
    assert re.search(r"^# components:\n#   - store$", (K8S / "kustomization.yaml").read_text(), re.M)
    store = store_kustomization()
    assert store["kind"] == "Component" and store["apiVersion"] == "kustomize.config.k8s.io/v1alpha1"
    for patch in component_patches():  # the inline patch is YAML too
        assert {"apiVersion", "kind", "metadata"} <= set(patch)


# --- no shared volume ---------------------------------------------------------------------------------------

def test_no_read_write_many_claim_remains_and_no_pod_mounts_the_shared_one():
    deleted = {(doc["kind"], doc["metadata"]["name"]) for doc in component_patches() if doc.get("$patch") == "delete"}
    objects = [doc for doc in base_objects() if (doc["kind"], doc["metadata"]["name"]) not in deleted]
    objects += [doc for resource in store_kustomization()["resources"] for doc in documents(STORE / resource)]
    claims = {doc["metadata"]["name"]: doc for doc in objects if doc["kind"] == "PersistentVolumeClaim"}
    shared = [name for name, claim in claims.items() if "ReadWriteMany" in claim["spec"]["accessModes"]]
    assert not shared, f"ReadWriteMany claims left with the store component: {shared}"
    assert ("PersistentVolumeClaim", "weldstream-models") in deleted

    mounted = {}
    for deployment in (doc for doc in objects if doc["kind"] == "Deployment"):
        volumes = patched_volumes(deployment, patch_for("Deployment", deployment["metadata"]["name"]))
        mounted[deployment["metadata"]["name"]] = volumes["models"]
        for volume in volumes.values():
            if "persistentVolumeClaim" in volume:
                assert volume["persistentVolumeClaim"]["claimName"] in claims, volume
    assert set(mounted["weldstream-server"]) == {"name", "emptyDir"}
    assert mounted["weldstream-learner"]["persistentVolumeClaim"]["claimName"] == "weldstream-learner-state"
    assert claims["weldstream-learner-state"]["spec"]["accessModes"] in (["ReadWriteOnce"], ["ReadWriteOncePod"])


def test_servers_are_several_ready_by_grpc_health_and_wait_for_no_shared_directory():
    patch = patch_for("Deployment", "weldstream-server")
    assert patch["spec"]["replicas"] >= 2
    (server,) = [d for d in base_objects() if (d["kind"], d["metadata"]["name"]) == ("Deployment", "weldstream-server")]
    container = by_name(server["spec"]["template"]["spec"]["containers"])["server"]
    assert "grpc" in container["readinessProbe"]
    assert "service" not in container["readinessProbe"]["grpc"], "readiness must not follow the bucket's health name"
    changed = by_name(patch["spec"]["template"]["spec"]["containers"])["server"]
    assert "readinessProbe" not in changed
    init = by_name(patch["spec"]["template"]["spec"]["initContainers"])
    assert init["wait-for-store"] == {"name": "wait-for-store", "$patch": "delete"}
    mounts = by_name(changed["volumeMounts"])
    assert mounts["models"]["mountPath"] == "/models" and mounts["models"]["readOnly"] is False


def test_compose_override_leaves_server_and_learner_no_volume_in_common():
    base = documents(CONTAINER / "compose.yaml")[0]["services"]
    override = documents(CONTAINER / "compose.store.yaml")[0]
    sources = {}
    for role in ROLE_COMMAND:
        # compose merges a service's volumes by container path
        mounts = {entry.split(":")[1]: entry.split(":")[0] for entry in base[role]["volumes"]}
        mounts.update({entry.split(":")[1]: entry.split(":")[0] for entry in override["services"][role]["volumes"]})
        sources[role] = set(mounts.values())
        assert mounts["/models"] != "models"
        assert override["services"][role]["env_file"] == ["store.env"]
    assert not sources["server"] & sources["learner"]
    assert set(sources["server"] | sources["learner"]) <= set(override["volumes"])
    assert override["services"]["seaweedfs"]["profiles"] == ["laptop"]  # the stand-in never runs by default


# --- settings are real flags --------------------------------------------------------------------------------

def test_the_store_setting_is_a_flag_of_every_command_that_reads_versions():
    assert_flags({"WELDSTREAM_STORE"}, "serve", "learn", "consolidate", "models", where="--store")


def test_every_setting_in_the_component_is_a_flag_of_its_command():
    (config,) = [g for g in store_kustomization()["configMapGenerator"] if g["name"] == "weldstream-config"]
    assert config["behavior"] == "merge"
    shared = {literal.split("=", 1)[0] for literal in config["literals"]}
    assert {"WELDSTREAM_STORE", "AWS_ENDPOINT_URL", "AWS_REGION"} <= shared
    assert not shared & CREDENTIALS, "keys belong in the Secret, not the ConfigMap"
    assert_flags(shared, "serve", "learn", where="store/kustomization.yaml configMapGenerator")
    for name, command in (("weldstream-server", "serve"), ("weldstream-learner", "learn")):
        for container in patch_for("Deployment", name)["spec"]["template"]["spec"]["containers"]:
            assert_flags({e["name"] for e in container.get("env", [])}, command, where=f"{name} patch")
            refs = [next(iter(ref.values()))["name"] for ref in container["envFrom"]]
            assert refs == ["weldstream-config", "weldstream-store-credentials"], refs


def test_every_setting_in_the_compose_override_and_its_env_file_is_a_flag_of_its_command():
    override = documents(CONTAINER / "compose.store.yaml")[0]["services"]
    for role, command in ROLE_COMMAND.items():
        assert_flags(set(override[role].get("environment", {})), command, where=f"compose.store.yaml {role}")
    names = {name for _, name, _ in env_file(CONTAINER / "store.env.example")}
    assert "WELDSTREAM_STORE" in names
    assert_flags(names, "serve", "learn", where="store.env.example")  # env_file of both


# --- no secrets in the repository ---------------------------------------------------------------------------

def test_the_secret_example_holds_only_the_key_pair_as_placeholders():
    lines = env_file(STORE / "store-credentials.env.example")
    assert {name for _, name, _ in lines} == CREDENTIALS and len(lines) == 2
    assert all(not commented and PLACEHOLDER.match(value) for commented, _, value in lines), lines
    (secret,) = store_kustomization()["secretGenerator"]
    assert secret["name"] == "weldstream-store-credentials" and secret["envs"] == ["store-credentials.env"]
    assert "store-credentials.env" in (STORE / ".gitignore").read_text().splitlines()


def test_every_key_in_an_env_example_is_a_placeholder():
    for path in (CONTAINER / "store.env.example", DEPLOY / "systemd" / "weldstream.env.example"):
        keys = {name: value for _, name, value in env_file(path) if name in CREDENTIALS}
        assert set(keys) == CREDENTIALS, f"{path.name} lacks {CREDENTIALS - set(keys)}"
        assert all(PLACEHOLDER.match(value) for value in keys.values()), f"{path.name}: {keys}"
    assert "store.env" in (CONTAINER / ".gitignore").read_text().splitlines()


# --- rendered, where kubectl or kustomize is installed ------------------------------------------------------

def render(root: Path) -> list[dict]:
    if shutil.which("kustomize"):
        command = ["kustomize", "build", str(root)]
    elif shutil.which("kubectl"):
        command = ["kubectl", "kustomize", str(root)]
    else:
        pytest.skip("neither kubectl nor kustomize on PATH")
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc is not None]


@pytest.fixture
def rendered(tmp_path) -> tuple[list[dict], list[dict]]:
    """(the base as it is, the base with the store Component enabled as deploy/k8s says), rendered."""
    copy = tmp_path / "k8s"
    shutil.copytree(K8S, copy)
    shutil.copy(copy / "store" / "store-credentials.env.example", copy / "store" / "store-credentials.env")
    plain = render(copy)
    text = (copy / "kustomization.yaml").read_text()
    enabled = text.replace("# components:\n#   - store\n", "components:\n  - store\n")
    assert enabled != text
    (copy / "kustomization.yaml").write_text(enabled)
    return plain, render(copy)


def test_rendered_component_shares_no_volume_and_names_only_real_flags(rendered):
    plain, objects = rendered
    assert any(d["kind"] == "PersistentVolumeClaim" and "ReadWriteMany" in d["spec"]["accessModes"] for d in plain)
    kinds = {(d["kind"], d["metadata"]["name"].rsplit("-", 1)[0] if d["kind"] in ("ConfigMap", "Secret")
              else d["metadata"]["name"]): d for d in objects}
    claims = [d for d in objects if d["kind"] == "PersistentVolumeClaim"]
    assert [c["metadata"]["name"] for c in claims] == ["weldstream-learner-state"]
    assert all("ReadWriteMany" not in c["spec"]["accessModes"] for c in claims)
    assert all(d["metadata"].get("namespace") == "weldstream" for d in objects if d["kind"] != "Namespace")

    config = kinds[("ConfigMap", "weldstream-config")]
    assert config["data"]["WELDSTREAM_STORE"].startswith("s3://")
    # Shared by server and learner: each name is read by one of them at least (the group id by the learner only).
    known = set(flags("serve")[1]) | set(flags("learn")[1])
    assert not [n for n in config["data"] if n.startswith("WELDSTREAM_") and n not in known], config["data"]
    secret = kinds[("Secret", "weldstream-store-credentials")]
    assert set(secret["data"]) == CREDENTIALS

    for name, command in (("weldstream-server", "serve"), ("weldstream-learner", "learn")):
        pod = kinds[("Deployment", name)]["spec"]["template"]["spec"]
        assert not pod.get("initContainers")
        (container,) = pod["containers"]
        assert container["args"] == [command]
        assert_flags({e["name"] for e in container["env"]}, command, where=f"rendered {name}")
        refs = {next(iter(ref.values()))["name"] for ref in container["envFrom"]}
        assert refs == {config["metadata"]["name"], secret["metadata"]["name"]}
        volumes = by_name(pod["volumes"])
        assert all(v.get("persistentVolumeClaim", {}).get("claimName") != "weldstream-models" for v in volumes.values())
        if name == "weldstream-server":
            assert kinds[("Deployment", name)]["spec"]["replicas"] >= 2 and "readinessProbe" in container
            assert set(volumes["models"]) == {"name", "emptyDir"}
        else:
            assert kinds[("Deployment", name)]["spec"]["strategy"]["type"] == "Recreate"
            assert volumes["models"]["persistentVolumeClaim"]["claimName"] == "weldstream-learner-state"
