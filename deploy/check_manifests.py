"""Checks deploy/kubernetes; run by deploy/validate, which installs the tools.

usage: check_manifests.py --kubernetes VERSION [--kubernetes VERSION ...]
                          --config-source FILE  KUSTOMIZATION_DIR|FILE ...

kustomize itself is not installable from the registries this project uses, so
this renders the subset of kustomize the manifests use (resources, labels,
images, strategic-merge patches from files, JSON patches) and refuses any
other kustomization field rather than skip it. Then:
  1. every object against the Kubernetes OpenAPI schemas of each VERSION with
     kubernetes-validate, strict: an unknown or misspelt field is an error;
  2. what schemas cannot see: probes, security context, resources, ports,
     selectors, Secret keys and that every KIOPS_* variable exists in the
     server's configuration (FILE, crates/kiops-identity/src/config.rs).
Exits non-zero on any error.
"""

import argparse
import copy
import os
import re
import sys

import kubernetes_validate
import yaml
from kubernetes_validate.utils import SchemaNotFoundError, VersionNotSupportedError

NAME_LABEL = ("app.kubernetes.io/name", "kiops-identity")
KUSTOMIZATION_FIELDS = {"apiVersion", "kind", "resources", "labels", "images", "patches"}
# Strategic-merge keys of the lists the patches touch (Kubernetes' own
# patchMergeKey values); other lists are replaced, as in kustomize.
MERGE_KEYS = {"containers": "name", "initContainers": "name", "env": "name",
              "volumeMounts": "mountPath", "volumes": "name", "ports": "containerPort"}
FILE_SETTINGS = ("KIOPS_SIGNING_KEY_FILE", "KIOPS_TLS_CERT_FILE", "KIOPS_TLS_KEY_FILE",
                 "KIOPS_TLS_CLIENT_CA_FILE")
# Kubernetes resource quantities (the schemas accept any string).
QUANTITY = re.compile(r"^(\d+(\.\d+)?|\.\d+)([eE][+-]?\d+|[KMGTPE]i|[mkMGTPE])?$")
REQUIRED_CONFIG = ("KIOPS_ISSUER", "KIOPS_AUDIENCE", "KIOPS_PUBLIC_URL", "KIOPS_LOG_FORMAT",
                   "KIOPS_DB_MAX_CONNECTIONS", "KIOPS_MAIL_FROM", "RUST_LOG")


class Fail(Exception):
    pass


class StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys (kubectl rejects them too)."""


def _mapping(loader, node, deep=False):
    seen = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise Fail(f"duplicate key {key!r} at line {key_node.start_mark.line + 1}")
        seen.add(key)
    return yaml.SafeLoader.construct_mapping(loader, node, deep)


StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping)


def load_all(path, objects=True):
    try:
        with open(path) as f:
            docs = [d for d in yaml.load_all(f, Loader=StrictLoader) if d is not None]
    except (Fail, yaml.YAMLError) as e:
        raise Fail(f"{path}: {e}")
    for d in docs:
        if not isinstance(d, dict) or not d.get("kind") or \
                (objects and not d.get("metadata", {}).get("name")):
            raise Fail(f"{path}: every document needs kind and metadata.name")
    return docs


# --- the kustomize subset ---------------------------------------------------

def strategic_merge(base, patch):
    for key, value in patch.items():
        if key.startswith("$"):
            raise Fail(f"patch directive {key} is not supported here")
        if value is None:
            base.pop(key, None)
        elif isinstance(value, dict) and isinstance(base.get(key), dict):
            strategic_merge(base[key], value)
        elif isinstance(value, list) and key in MERGE_KEYS and isinstance(base.get(key), list):
            by = MERGE_KEYS[key]
            for item in value:
                match = next((b for b in base[key] if b.get(by) == item.get(by)), None)
                if match is None:
                    base[key].append(copy.deepcopy(item))
                else:
                    strategic_merge(match, item)
        else:
            base[key] = copy.deepcopy(value)


def json_patch(doc, ops):
    for op in ops:
        *parents, last = [p.replace("~1", "/").replace("~0", "~")
                          for p in op["path"].split("/")[1:]]
        node = doc
        for p in parents:
            node = node[int(p)] if isinstance(node, list) else node[p]
        key = int(last) if isinstance(node, list) else last
        if op["op"] == "replace" or (op["op"] == "add" and isinstance(node, dict)):
            node[key] = op["value"]
        elif op["op"] == "add":
            node.insert(key, op["value"])
        elif op["op"] == "remove":
            del node[key]
        else:
            raise Fail(f"JSON patch op {op['op']} is not supported here")


def put_labels(node, path, labels, create):
    *parents, last = path.split("/")
    for p in parents:
        if p not in node:
            if not create:
                return
            node[p] = {}
        node = node[p]
    if last not in node and not create:
        return
    node.setdefault(last, {}).update(labels)


def add_labels(doc, labels, selectors):
    """kustomize's `labels` on the kinds used here (its commonLabels field specs)."""
    put_labels(doc, "metadata/labels", labels, True)
    if not selectors:
        return
    kind = doc["kind"]
    if kind == "Service":
        put_labels(doc, "spec/selector", labels, True)
    if kind == "Deployment":
        put_labels(doc, "spec/selector/matchLabels", labels, True)
        for c in doc["spec"].get("template", {}).get("spec", {}).get("topologySpreadConstraints", []):
            put_labels(c, "labelSelector/matchLabels", labels, False)
    if kind in ("Deployment", "Job"):
        put_labels(doc, "spec/template/metadata/labels", labels, True)
    if kind in ("Job", "PodDisruptionBudget"):
        put_labels(doc, "spec/selector/matchLabels", labels, False)


def render(directory):
    kpath = os.path.join(directory, "kustomization.yaml")
    k = load_all(kpath, objects=False)[0]
    unknown = set(k) - KUSTOMIZATION_FIELDS
    if unknown:
        raise Fail(f"{kpath}: {', '.join(sorted(unknown))}: not understood by deploy/check_manifests.py")
    docs, listed = [], set()
    for res in k.get("resources", []):
        path = os.path.normpath(os.path.join(directory, res))
        if os.path.isdir(path):
            docs.extend(render(path))
        elif os.path.isfile(path):
            listed.add(os.path.basename(path))
            docs.extend(load_all(path))
        else:
            raise Fail(f"{kpath}: resource {res} does not exist")
    patch_files = {p["path"] for p in k.get("patches", []) if "path" in p}
    for name in patch_files:
        if not os.path.isfile(os.path.join(directory, name)):
            raise Fail(f"{kpath}: patch {name} does not exist")
    for name in sorted(os.listdir(directory)):
        if name.endswith((".yaml", ".yml")) and name != "kustomization.yaml" \
                and name not in listed and name not in patch_files:
            raise Fail(f"{directory}/{name} is not listed in kustomization.yaml")
    for entry in k.get("labels", []):
        if set(entry) - {"pairs", "includeSelectors"}:
            raise Fail(f"{kpath}: labels: only pairs and includeSelectors are understood")
        for d in docs:
            add_labels(d, entry["pairs"], entry.get("includeSelectors", False))
    for img in k.get("images", []):
        for d in docs:
            for c in pod_spec(d).get("containers", []):
                if re.split(r"[:@]", c["image"])[0] == img["name"]:
                    c["image"] = img.get("newName", img["name"]) + (
                        f"@{img['digest']}" if "digest" in img else f":{img.get('newTag', 'latest')}")
    for p in k.get("patches", []):
        if "path" in p:
            patches = load_all(os.path.join(directory, p["path"]))
            for patch in patches:
                strategic_merge(one_target(docs, patch["kind"], patch["metadata"]["name"], p), patch)
        else:
            t = p["target"]
            try:
                json_patch(one_target(docs, t["kind"], t["name"], p), yaml.safe_load(p["patch"]))
            except (KeyError, IndexError, ValueError) as e:
                raise Fail(f"{kpath}: JSON patch on {t['kind']}/{t['name']}: no such path ({e})")
    return docs


def one_target(docs, kind, name, patch):
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    if len(found) != 1:
        raise Fail(f"patch {patch}: no single {kind}/{name} to patch")
    return found[0]


# --- structure checks -------------------------------------------------------

def pod_spec(doc):
    return doc.get("spec", {}).get("template", {}).get("spec", {})


def subset(selector, labels):
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def known_settings(config_source):
    try:
        with open(config_source) as f:
            names = set(re.findall(r'env\s*=\s*"([A-Z0-9_]+)"', f.read()))
    except OSError as e:
        raise Fail(f"cannot read the server's settings: {e}")
    if "DATABASE_URL" not in names:
        raise Fail(f"{config_source}: no env = \"...\" settings found (file moved?)")
    return names | {"RUST_LOG"}


def check(docs, secrets, settings):
    """Returns a list of problems in one rendered kustomization."""
    errors = []
    err = errors.append
    by_kind = {}
    for d in docs:
        by_kind.setdefault(d["kind"], []).append(d)
        where = f"{d['kind']}/{d['metadata']['name']}"
        if d["metadata"].get("labels", {}).get(NAME_LABEL[0]) != NAME_LABEL[1]:
            err(f"{where}: missing label {NAME_LABEL[0]}: {NAME_LABEL[1]}")
        if "namespace" in d["metadata"]:
            err(f"{where}: leave the namespace to `kubectl -n` or an overlay")
    for kind in ("Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget",
                 "Job", "ConfigMap", "ServiceAccount"):
        if len(by_kind.get(kind, [])) != 1:
            err(f"expected exactly one {kind}, found {len(by_kind.get(kind, []))}")
    if errors:
        return errors
    deploy, svc, hpa, pdb, job, cm, sa = (by_kind[k][0] for k in (
        "Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget", "Job",
        "ConfigMap", "ServiceAccount"))
    name = deploy["metadata"]["name"]
    pod = pod_spec(deploy)
    pod_labels = deploy["spec"]["template"]["metadata"].get("labels", {})
    job_labels = job["spec"]["template"].get("metadata", {}).get("labels", {})
    c = pod["containers"][0]
    ports = {p["name"]: p["containerPort"] for p in c.get("ports", [])}
    env = {e["name"]: e for e in c.get("env", [])}

    # Pod and container hardening.
    for obj in (deploy, job):
        where = f"{obj['kind']}/{obj['metadata']['name']}"
        spec = pod_spec(obj)
        psc = spec.get("securityContext", {})
        if spec.get("automountServiceAccountToken") is not False:
            err(f"{where}: automountServiceAccountToken must be false")
        for ctr in spec["containers"]:
            csc = ctr.get("securityContext", {})
            merged = {**psc, **csc}
            if merged.get("runAsNonRoot") is not True or merged.get("runAsUser") != 65532:
                err(f"{where}: must run as non-root user 65532")
            if merged.get("seccompProfile", {}).get("type") != "RuntimeDefault":
                err(f"{where}: seccompProfile must be RuntimeDefault")
            if csc.get("allowPrivilegeEscalation") is not False:
                err(f"{where}: allowPrivilegeEscalation must be false")
            if csc.get("readOnlyRootFilesystem") is not True:
                err(f"{where}: root filesystem must be read-only")
            if "ALL" not in csc.get("capabilities", {}).get("drop", []):
                err(f"{where}: capabilities must drop ALL")
            res = ctr.get("resources", {})
            for kind_, values in res.items():
                for resource, q in values.items():
                    if not QUANTITY.match(str(q)):
                        err(f"{where}: resources.{kind_}.{resource}: {q!r} is not a quantity")
            if not {"cpu", "memory"} <= set(res.get("requests", {})):
                err(f"{where}: needs cpu and memory requests")
            if "memory" not in res.get("limits", {}):
                err(f"{where}: needs a memory limit")
            if ctr.get("image") != c.get("image"):
                err(f"{where}: image {ctr.get('image')} differs from the Deployment's")

    # Probes: gRPC health in plaintext; HTTP when gRPC speaks TLS (kubelet's
    # gRPC probes cannot do TLS).
    tls = "KIOPS_TLS_CERT_FILE" in env
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        p = c.get(probe)
        if not p:
            err(f"Deployment: container needs a {probe}")
            continue
        handlers = [h for h in ("grpc", "httpGet", "tcpSocket", "exec") if h in p]
        if len(handlers) != 1:
            err(f"Deployment: {probe} must have exactly one handler, has {handlers}")
            continue
        if tls and "grpc" in p:
            err(f"Deployment: {probe} is gRPC but the gRPC port speaks TLS")
        if not tls and probe != "startupProbe" and "grpc" not in p:
            err(f"Deployment: {probe} must be a native gRPC probe")
        if "grpc" in p and p["grpc"].get("port") != ports.get("grpc"):
            err(f"Deployment: {probe} does not probe the grpc port")
        if "httpGet" in p and p["httpGet"].get("port") not in ("http", ports.get("http")):
            err(f"Deployment: {probe} does not probe the http port")
    if not tls:
        if c.get("livenessProbe", {}).get("grpc", {}).get("service") != "liveness":
            err("Deployment: livenessProbe must ask the health service 'liveness' "
                "(service '' turns NOT_SERVING in a database outage)")
        if c.get("readinessProbe", {}).get("grpc", {}).get("service", "") != "":
            err("Deployment: readinessProbe must ask the overall health service ''")
    else:
        if c["readinessProbe"].get("httpGet", {}).get("path") != "/readyz":
            err("Deployment: with TLS, readiness must be /readyz on the http port")

    # Shutdown: preStop sleep + in-flight grace must fit the grace period.
    grace = int(env.get("KIOPS_SHUTDOWN_GRACE", {}).get("value", 30))
    sleep = c.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
    if pod.get("terminationGracePeriodSeconds", 30) <= grace + sleep:
        err(f"Deployment: terminationGracePeriodSeconds must exceed preStop sleep ({sleep}) "
            f"+ KIOPS_SHUTDOWN_GRACE ({grace})")

    # Settings: every variable exists in the server; Secret refs exist.
    if len(env) != len(c.get("env", [])):
        err("Deployment: duplicate env entries")
    for var in list(env) + list(cm.get("data", {})):
        if (var.startswith("KIOPS_") or var == "DATABASE_URL") and var not in settings:
            err(f"{var}: not a setting of the server (config.rs)")
    for var in REQUIRED_CONFIG:
        if var not in cm.get("data", {}):
            err(f"ConfigMap: missing {var}")
    if [r.get("configMapRef", {}).get("name") for r in c.get("envFrom", [])] != [cm["metadata"]["name"]]:
        err("Deployment: envFrom must be the ConfigMap")
    for var in ("DATABASE_URL", "KIOPS_SMTP_URL"):
        ref = env.get(var, {}).get("valueFrom", {}).get("secretKeyRef")
        if not ref:
            err(f"Deployment: {var} must come from a Secret")
        elif ref["key"] not in secrets.get(ref["name"], {}):
            err(f"Deployment: {var}: Secret {ref['name']} key {ref['key']} is not in secret.example.yaml")
    job_db = {e["name"]: e for e in pod_spec(job)["containers"][0].get("env", [])}.get("DATABASE_URL")
    if job_db != env.get("DATABASE_URL"):
        err("Job: DATABASE_URL must come from the same Secret key as the Deployment's")
    if pod_spec(job)["containers"][0].get("args") != ["migrate"]:
        err("Job: must run `kiops-identity migrate`")
    if pod_spec(job).get("restartPolicy") != "Never":
        err("Job: restartPolicy must be Never (backoffLimit counts retries)")

    # Files the server reads must be on a Secret volume (and be a key of it).
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    mounts = {m["mountPath"].rstrip("/"): m for m in c.get("volumeMounts", [])}
    for var in FILE_SETTINGS:
        if var not in env:
            continue
        path = env[var].get("value", "")
        directory, filename = os.path.dirname(path), os.path.basename(path)
        mount = mounts.get(directory)
        vol = volumes.get(mount["name"]) if mount else None
        if not vol or "secret" not in vol:
            err(f"Deployment: {var}={path} is not on a mounted Secret volume")
            continue
        secret = vol["secret"]["secretName"]
        keys = [i["path"] for i in vol["secret"].get("items", [])] or secrets.get(secret)
        if keys is not None and filename not in keys:
            err(f"Deployment: {var}: {filename} is not a key of Secret {secret}")
        if vol["secret"].get("defaultMode", 0o644) & 0o040 == 0 and pod.get("securityContext", {}).get("fsGroup") is None:
            err(f"Deployment: volume {mount['name']} is unreadable by user 65532 (no fsGroup)")
    if pod.get("serviceAccountName") != sa["metadata"]["name"] or sa.get("automountServiceAccountToken") is not False:
        err("ServiceAccount: the Deployment must use it, without a token")

    # Metrics annotations.
    ann = deploy["spec"]["template"]["metadata"].get("annotations", {})
    if ann.get("prometheus.io/scrape") != "true" or ann.get("prometheus.io/port") != str(ports.get("http")) \
            or ann.get("prometheus.io/path") != "/metrics":
        err("Deployment: prometheus.io annotations must point at http /metrics")

    # Selectors and references.
    if deploy["spec"].get("replicas") is not None:
        err("Deployment: leave spec.replicas to the HPA (apply would reset the scale)")
    if not subset(deploy["spec"]["selector"].get("matchLabels"), pod_labels):
        err("Deployment: selector does not match its pod template")
    if not subset(svc["spec"].get("selector"), pod_labels):
        err("Service: selector does not match the server pods")
    if subset(svc["spec"].get("selector"), job_labels):
        err("Service: selector also matches the migration Job's pods")
    svc_ports = {p["name"]: p for p in svc["spec"]["ports"]}
    if set(svc_ports) != set(ports):
        err(f"Service: ports {sorted(svc_ports)} differ from container ports {sorted(ports)}")
    for p in svc["spec"]["ports"]:
        target = p.get("targetPort", p["port"])
        number = ports.get(target) if isinstance(target, str) else target
        if number not in ports.values() or number != p["port"] or number != ports.get(p["name"]):
            err(f"Service: port {p['name']} ({p['port']} -> {target}) does not match container port {p['name']}")
    ref = hpa["spec"]["scaleTargetRef"]
    if (ref.get("apiVersion"), ref.get("kind"), ref.get("name")) != ("apps/v1", "Deployment", name):
        err("HPA: scaleTargetRef is not the Deployment")
    if hpa["spec"].get("minReplicas", 1) < 2:
        err("HPA: minReplicas must be at least 2")
    if not subset(pdb["spec"]["selector"].get("matchLabels"), pod_labels):
        err("PDB: selector does not match the server pods")
    if not isinstance(pdb["spec"].get("minAvailable"), int) or \
            pdb["spec"]["minAvailable"] >= hpa["spec"].get("minReplicas", 1):
        err("PDB: minAvailable must be below the HPA's minReplicas, or drains block")
    for tsc in pod.get("topologySpreadConstraints", []):
        if not subset(tsc.get("labelSelector", {}).get("matchLabels"), pod_labels) or \
                NAME_LABEL[0] not in tsc["labelSelector"]["matchLabels"]:
            err("Deployment: topologySpreadConstraints selector must name these pods")
    return errors


EXAMPLE_LABEL = ("app.kubernetes.io/name", "kiops-example-device")


def flag(args, name):
    """The value of `--name=value` in a container's args, or None."""
    return next((a.split("=", 1)[1] for a in args if a.startswith(f"--{name}=")), None)


def check_example(docs, secrets, settings):
    """The downstream example (deploy/kubernetes/examples/device): a service
    on a service account's key file, and the Job that bootstraps it."""
    errors = []
    err = errors.append
    by_kind = {}
    for d in docs:
        by_kind.setdefault(d["kind"], []).append(d)
        if d["metadata"].get("labels", {}).get(EXAMPLE_LABEL[0]) != EXAMPLE_LABEL[1]:
            err(f"{d['kind']}/{d['metadata']['name']}: missing label {EXAMPLE_LABEL[0]}: {EXAMPLE_LABEL[1]}")
    for kind in ("Deployment", "Job", "Role", "RoleBinding", "ServiceAccount"):
        if len(by_kind.get(kind, [])) != 1:
            err(f"expected exactly one {kind}, found {len(by_kind.get(kind, []))}")
    if errors:
        return errors
    deploy, job, role, binding, sa = (by_kind[k][0] for k in (
        "Deployment", "Job", "Role", "RoleBinding", "ServiceAccount"))
    for obj in (deploy, job):
        where = f"{obj['kind']}/{obj['metadata']['name']}"
        spec = pod_spec(obj)
        psc = spec.get("securityContext", {})
        for ctr in spec.get("initContainers", []) + spec["containers"]:
            csc = ctr.get("securityContext", {})
            merged = {**psc, **csc}
            if merged.get("runAsNonRoot") is not True or merged.get("runAsUser") != 65532:
                err(f"{where}: {ctr['name']} must run as non-root user 65532")
            if merged.get("seccompProfile", {}).get("type") != "RuntimeDefault":
                err(f"{where}: {ctr['name']}: seccompProfile must be RuntimeDefault")
            if csc.get("allowPrivilegeEscalation") is not False or \
                    csc.get("readOnlyRootFilesystem") is not True or \
                    "ALL" not in csc.get("capabilities", {}).get("drop", []):
                err(f"{where}: {ctr['name']}: no privilege escalation, read-only root, drop ALL")
            res = ctr.get("resources", {})
            if not {"cpu", "memory"} <= set(res.get("requests", {})) or \
                    "memory" not in res.get("limits", {}):
                err(f"{where}: {ctr['name']} needs cpu and memory requests and a memory limit")
            for e in ctr.get("env", []):
                if (e["name"].startswith("KIOPS_") or e["name"] == "DATABASE_URL") \
                        and e["name"] not in settings:
                    err(f"{where}: {e['name']}: not a setting of the server (config.rs)")

    # The service: the key file from a read-only Secret volume, owner-read.
    pod = pod_spec(deploy)
    if pod.get("automountServiceAccountToken") is not False:
        err("Deployment: automountServiceAccountToken must be false (it needs no Kubernetes API)")
    c = pod["containers"][0]
    key_file = flag(c.get("args", []), "service-account-key-file")
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    mount = next((m for m in c.get("volumeMounts", [])
                  if key_file and os.path.dirname(key_file) == m["mountPath"].rstrip("/")), None)
    vol = volumes.get(mount["name"]) if mount else None
    if not key_file or not vol or "secret" not in vol:
        err("Deployment: --service-account-key-file must be on a mounted Secret volume")
        return errors
    secret = vol["secret"]
    if not mount.get("readOnly"):
        err("Deployment: the key volume must be mounted readOnly")
    if secret.get("defaultMode") != 0o400:
        err("Deployment: the key file must be mode 0400")
    if pod.get("securityContext", {}).get("fsGroup") is None:
        err("Deployment: without fsGroup user 65532 cannot read the 0400 key file")
    keys = [i["path"] for i in secret.get("items", [])]
    if os.path.basename(key_file) not in keys:
        err(f"Deployment: {os.path.basename(key_file)} is not an item of the key Secret")

    # The bootstrap Job: the CLI writes the key in memory, kubectl stores it
    # in the Secret the Deployment mounts.
    jpod = pod_spec(job)
    if jpod.get("restartPolicy") != "Never":
        err("Job: restartPolicy must be Never")
    init = jpod.get("initContainers", [])
    if len(init) != 1 or init[0].get("args", [])[:2] != ["service-accounts", "create"]:
        err("Job: its init container must run `kiops-identity service-accounts create`")
        return errors
    cli = init[0]["args"]
    for name in ("name", "owner", "scopes", "key-out"):
        if not flag(cli, name):
            err(f"Job: service-accounts create needs --{name}")
    jvolumes = {v["name"]: v for v in jpod.get("volumes", [])}
    key_out = flag(cli, "key-out") or ""
    out_mount = next((m for m in init[0].get("volumeMounts", [])
                      if os.path.dirname(key_out) == m["mountPath"].rstrip("/")), None)
    if not out_mount or jvolumes.get(out_mount["name"], {}).get("emptyDir", {}).get("medium") != "Memory":
        err("Job: --key-out must be on a memory-backed emptyDir")
    db = {e["name"]: e for e in init[0].get("env", [])}.get("DATABASE_URL", {})
    ref = db.get("valueFrom", {}).get("secretKeyRef")
    if not ref or ref["key"] not in secrets.get(ref["name"], {}):
        err("Job: DATABASE_URL must come from a key of the kiops-identity Secret")
    store = jpod["containers"][0].get("args", [])
    if store[:3] != ["create", "secret", "generic"] or len(store) < 4 \
            or store[3] != secret.get("secretName") \
            or f"--from-file={keys[0] if keys else ''}={key_out}" not in store:
        err("Job: must store --key-out as the Secret and key the Deployment mounts")
    if jpod.get("serviceAccountName") != sa["metadata"]["name"] \
            or binding["subjects"][0].get("name") != sa["metadata"]["name"] \
            or binding["roleRef"].get("name") != role["metadata"]["name"]:
        err("Job: its ServiceAccount must be bound to its Role")
    if role.get("rules") != [{"apiGroups": [""], "resources": ["secrets"], "verbs": ["create"]}]:
        err("Role: the bootstrap may create Secrets and nothing else")
    return errors


def check_secrets(docs):
    errors = []
    for d in docs:
        data = d.get("stringData", {})
        if d["kind"] != "Secret" or not data:
            errors.append(f"{d['kind']}/{d['metadata']['name']}: expected Secrets with stringData")
    url = {d["metadata"]["name"]: d.get("stringData", {}) for d in docs}.get("kiops-identity", {}).get("database-url", "")
    if not url.startswith(("postgres://", "postgresql://")):
        errors.append("secret.example.yaml: database-url must be PostgreSQL (replicas share it; SQLite cannot)")
    return errors


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--kubernetes", action="append", required=True)
    ap.add_argument("--config-source", required=True)
    ap.add_argument("--secrets", required=True, help="the example Secrets file")
    ap.add_argument("--example", action="append", default=[],
                    help="a downstream example kustomization (check_example)")
    ap.add_argument("dirs", nargs="+")
    args = ap.parse_args()
    problems = []
    total = 0
    try:
        settings = known_settings(args.config_source)
        secret_docs = load_all(args.secrets)
        secrets = {d["metadata"]["name"]: {**d.get("data", {}), **d.get("stringData", {})}
                   for d in secret_docs}
        problems += [f"{args.secrets}: {e}" for e in check_secrets(secret_docs)]
        sets = [(args.secrets, secret_docs)] + [(d, render(d)) for d in args.dirs + args.example]
    except Fail as e:
        print(f"deploy: {e}", file=sys.stderr)
        return 1
    for where, docs in sets:
        for d in docs:
            total += 1
            for version in args.kubernetes:
                try:
                    kubernetes_validate.validate(d, version, strict=True)
                except kubernetes_validate.ValidationError as e:
                    path = ".".join(str(p) for p in e.path) or "(top)"
                    problems.append(f"{where}: {d['kind']}/{d['metadata']['name']}: "
                                    f"Kubernetes {version}: {e.message} at {path}")
                except (SchemaNotFoundError, VersionNotSupportedError) as e:
                    problems.append(f"{where}: {d['kind']}: {e}")
        if where != args.secrets:
            checker = check_example if where in args.example else check
            try:
                problems += [f"{where}: {e}" for e in checker(docs, secrets, settings)]
            except (KeyError, IndexError, TypeError, AttributeError) as e:
                problems.append(f"{where}: structure check stopped: missing or malformed {e}")
    for p in problems:
        print(f"deploy: {p}", file=sys.stderr)
    versions = " and ".join(args.kubernetes)
    if problems:
        print(f"deploy: {len(problems)} problem(s) in {total} manifests", file=sys.stderr)
        return 1
    print(f"deploy: {total} manifests valid against Kubernetes {versions} "
          f"(strict schemas, structure checks)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
