#!/usr/bin/env python3
"""Validates the Kubernetes manifests under csi/deploy without a cluster.

There is no API server here, so the manifests are made correct by construction and checked by
this test: every YAML document parses; kinds are known; required fields are present per kind;
references between objects resolve (volumes, ServiceAccounts, RBAC roles, StorageClasses,
PVCs, VolumeSnapshots, kustomization resources and patches); StorageClass, VolumeSnapshotClass
and VolumeAttributesClass parameters are the ones shaled accepts, with well-formed values; every
sidecar's service account is granted what that sidecar documents it needs; access modes match
the class. Cross-checks against the C++ sources: the driver name, topology key and every
parameter key appear in the driver sources (csi/*.cc, *.h), every flag the manifests pass to shaled appears in
`shaled --help`, and shaled started with the node DaemonSet's exact arguments (host paths moved
to a temp dir) serves the CSI socket and stops cleanly. With kubectl on PATH, each kustomization is also rendered (`kubectl
kustomize`) and the rendered objects are validated the same way.

The negative self-tests feed deliberately broken documents to the same checks and require each
breakage to be reported, so a check that silently stopped working fails the test.

Usage: validate_manifests.py --repo SOURCE_DIR --shaled PATH_TO_SHALED
"""

import argparse
import copy
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import unittest

try:
    import yaml
except ImportError:  # scripts/deps installs python3-yaml; without it there is nothing to parse
    print("SKIP: PyYAML is missing (Debian package python3-yaml, installed by scripts/deps)")
    sys.exit(77)

ARGS = None  # set in main()

DRIVER = "csi.shale.io"
TOPOLOGY_KEY = "topology.csi.shale.io/node"
SOCKET_HOST_DIR = "/var/lib/kubelet/plugins/csi.shale.io"
REGISTRATION_DIR = "/var/lib/kubelet/plugins_registry"

QOS_KEYS = ["iops", "readIops", "writeIops", "bps", "readBps", "writeBps", "burstIops",
            "burstSeconds", "weight", "reservationIops"]
SC_KEYS = ["pool", "fsType", "readOnlyClone", "replicas", "replicaNodeSelector"] + QOS_KEYS
# One requirement of a replica node selector (cluster/node_selector.h): KEY=VALUE, KEY==VALUE,
# KEY!=VALUE, KEY or !KEY.
SELECTOR_KEY = r"[A-Za-z0-9][A-Za-z0-9._/-]{0,127}"
SELECTOR_TERM = re.compile(rf"\s*(!?{SELECTOR_KEY}|{SELECTOR_KEY}\s*(==|!=|=)[^,]*)\s*")
# Keys the external-provisioner consumes itself (never passed to the driver) that we use.
SC_SIDECAR_KEYS = ["csi.storage.k8s.io/fstype"]

# QoS bounds from docs/qos.md (qos/settings.cc).
MAX_IOPS = 10 ** 8
MAX_BPS = 2 ** 40
MAX_BURST_SECONDS = 86400

# (apiVersion, kind) -> namespaced?
KINDS = {
    ("v1", "Namespace"): False,
    ("v1", "ServiceAccount"): True,
    ("v1", "PersistentVolumeClaim"): True,
    ("storage.k8s.io/v1", "CSIDriver"): False,
    ("storage.k8s.io/v1", "StorageClass"): False,
    ("storage.k8s.io/v1beta1", "VolumeAttributesClass"): False,
    ("storage.k8s.io/v1", "VolumeAttributesClass"): False,
    ("rbac.authorization.k8s.io/v1", "ClusterRole"): False,
    ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding"): False,
    ("rbac.authorization.k8s.io/v1", "Role"): True,
    ("rbac.authorization.k8s.io/v1", "RoleBinding"): True,
    ("apps/v1", "DaemonSet"): True,
    ("apps/v1", "Deployment"): True,
    ("apps/v1", "StatefulSet"): True,
    ("batch/v1", "Job"): True,
    ("snapshot.storage.k8s.io/v1", "VolumeSnapshotClass"): False,
    ("snapshot.storage.k8s.io/v1", "VolumeSnapshot"): True,
    ("v1", "Service"): True,
    ("v1", "ConfigMap"): True,
    ("monitoring.coreos.com/v1", "ServiceMonitor"): True,
    ("monitoring.coreos.com/v1", "PrometheusRule"): True,
    ("cert-manager.io/v1", "Issuer"): True,
    ("cert-manager.io/v1", "Certificate"): True,
    ("groupsnapshot.storage.k8s.io/v1beta1", "VolumeGroupSnapshotClass"): False,
    ("cbt.storage.k8s.io/v1alpha1", "SnapshotMetadataService"): False,
}
WORKLOADS = ("DaemonSet", "Deployment", "StatefulSet", "Job")

# Sidecar image -> accepted major version (the flags used here are those of these releases).
SIDECAR_IMAGES = {
    "registry.k8s.io/sig-storage/csi-provisioner": "v5.",
    "registry.k8s.io/sig-storage/csi-snapshotter": "v8.",
    "registry.k8s.io/sig-storage/csi-resizer": "v1.",
    "registry.k8s.io/sig-storage/csi-node-driver-registrar": "v2.",
    "registry.k8s.io/sig-storage/livenessprobe": "v2.",
    "registry.k8s.io/sig-storage/csi-snapshot-metadata": "v0.",
}

DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
SHALE_LABEL_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,127}$")
ENV_REF = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)")


class Doc:
    """One YAML document and where it came from."""

    def __init__(self, path, index, obj):
        self.path = path
        self.index = index
        self.obj = obj

    @property
    def kind(self):
        return self.obj.get("kind") if isinstance(self.obj, dict) else None

    @property
    def name(self):
        meta = self.obj.get("metadata") if isinstance(self.obj, dict) else None
        return meta.get("name") if isinstance(meta, dict) else None

    @property
    def namespace(self):
        meta = self.obj.get("metadata") if isinstance(self.obj, dict) else None
        return meta.get("namespace") if isinstance(meta, dict) else None

    def where(self):
        return f"{self.path}#{self.index}: {self.kind}/{self.name}"


def load_yaml_text(path, text):
    """Parses every document of a file; returns (docs, errors)."""
    docs, errors = [], []
    try:
        for i, obj in enumerate(yaml.safe_load_all(text)):
            if obj is None:
                continue
            docs.append(Doc(path, i, obj))
    except yaml.YAMLError as e:
        errors.append(f"{path}: YAML does not parse: {e}")
    return docs, errors


def rel(path):
    return os.path.relpath(path, ARGS.repo) if ARGS else path


# ----------------------------------------------------------------------------------------------
# Small helpers


def get(obj, *path, default=None):
    for p in path:
        if isinstance(obj, dict) and p in obj:
            obj = obj[p]
        elif isinstance(obj, list) and isinstance(p, int) and 0 <= p < len(obj):
            obj = obj[p]
        else:
            return default
    return obj


def parse_quantity(q):
    """Kubernetes quantity -> bytes (the subset manifests use), or None."""
    if isinstance(q, int):
        return q
    if not isinstance(q, str):
        return None
    m = re.fullmatch(r"(\d+)(Ki|Mi|Gi|Ti|Pi|k|M|G|T|P)?", q)
    if not m:
        return None
    mult = {None: 1, "Ki": 2 ** 10, "Mi": 2 ** 20, "Gi": 2 ** 30, "Ti": 2 ** 40, "Pi": 2 ** 50,
            "k": 10 ** 3, "M": 10 ** 6, "G": 10 ** 9, "T": 10 ** 12, "P": 10 ** 15}[m.group(2)]
    return int(m.group(1)) * mult


def arg_flags(args):
    """{'--flag': value or None} of a container's argument list (--flag=value or --flag)."""
    out = {}
    for a in args or []:
        if not isinstance(a, str) or not a.startswith("-"):
            continue
        flag, _, value = a.partition("=")
        flag = "--" + flag.lstrip("-")
        out[flag] = value if "=" in a else None
    return out


def flag_on(flags, name):
    """A boolean flag given as --name, --name=true or --name= (not --name=false)."""
    return name in flags and flags[name] in (None, "", "true")


def image_repo(image):
    return image.rsplit(":", 1)[0] if ":" in image.split("/")[-1] else image


def pod_spec(doc):
    return get(doc.obj, "spec", "template", "spec")


# ----------------------------------------------------------------------------------------------
# Checks on single documents


def check_common(doc):
    errs = []
    o = doc.obj
    if not isinstance(o, dict):
        return [f"{doc.path}#{doc.index}: document is not a mapping"]
    key = (o.get("apiVersion"), o.get("kind"))
    if key not in KINDS:
        return [f"{doc.where()}: unknown apiVersion/kind {key[0]}/{key[1]}"]
    name = doc.name
    if not isinstance(name, str) or not name:
        errs.append(f"{doc.where()}: metadata.name is missing")
    elif not DNS_SUBDOMAIN.match(name) or len(name) > 253:
        errs.append(f"{doc.where()}: metadata.name '{name}' is not a DNS subdomain")
    if KINDS[key]:
        if not doc.namespace:
            errs.append(f"{doc.where()}: namespaced kind without metadata.namespace "
                        "(kubectl apply -f would put it in whatever namespace is current)")
    elif doc.namespace:
        errs.append(f"{doc.where()}: cluster-scoped kind with metadata.namespace")
    return errs


def check_qos(where, params):
    """QoS keys present in params: integers in range, consistent (qos::QosSettings::Validate)."""
    errs = []
    v = {}
    for k in QOS_KEYS:
        if k not in params:
            continue
        s = params[k]
        if not isinstance(s, str) or not re.fullmatch(r"\d+", s):
            errs.append(f"{where}: parameter {k}={s!r} must be a quoted non-negative integer")
            continue
        v[k] = int(s)
    for k in ("iops", "readIops", "writeIops", "burstIops", "reservationIops"):
        if v.get(k, 0) > MAX_IOPS:
            errs.append(f"{where}: {k}={v[k]} is above {MAX_IOPS}")
    for k in ("bps", "readBps", "writeBps"):
        if v.get(k, 0) > MAX_BPS:
            errs.append(f"{where}: {k}={v[k]} is above {MAX_BPS}")
    if v.get("burstSeconds", 0) > MAX_BURST_SECONDS:
        errs.append(f"{where}: burstSeconds={v['burstSeconds']} is above {MAX_BURST_SECONDS}")
    if v.get("burstIops", 0):
        if not v.get("iops", 0):
            errs.append(f"{where}: burstIops needs iops, the base rate it bursts above")
        elif v["burstIops"] < v["iops"]:
            errs.append(f"{where}: burstIops ({v['burstIops']}) is below iops ({v['iops']})")
    if v.get("burstSeconds", 0) and not v.get("burstIops", 0):
        errs.append(f"{where}: burstSeconds without a burst rate (burstIops)")
    if "weight" in v and not 1 <= v["weight"] <= 10000:
        errs.append(f"{where}: weight={v['weight']} is outside 1..10000")
    if v.get("reservationIops", 0) and v.get("iops", 0) and v["reservationIops"] > v["iops"]:
        errs.append(f"{where}: reservationIops ({v['reservationIops']}) is above iops "
                    f"({v['iops']})")
    return errs


def check_csidriver(doc):
    errs = []
    s = doc.obj.get("spec")
    if not isinstance(s, dict):
        return [f"{doc.where()}: spec is missing"]
    if doc.name != DRIVER:
        errs.append(f"{doc.where()}: CSIDriver name must be {DRIVER}")
    if s.get("attachRequired") is not False:
        errs.append(f"{doc.where()}: attachRequired must be false (shaled attaches in "
                    "NodeStageVolume; there is no ControllerPublishVolume)")
    for b in ("podInfoOnMount", "storageCapacity"):
        if b in s and not isinstance(s[b], bool):
            errs.append(f"{doc.where()}: {b} must be a boolean")
    if s.get("fsGroupPolicy") not in ("None", "File", "ReadWriteOnceWithFSType"):
        errs.append(f"{doc.where()}: fsGroupPolicy {s.get('fsGroupPolicy')!r} is not a policy")
    modes = s.get("volumeLifecycleModes")
    if not isinstance(modes, list) or not modes:
        errs.append(f"{doc.where()}: volumeLifecycleModes is missing")
    elif "Ephemeral" in modes or set(modes) - {"Persistent"}:
        errs.append(f"{doc.where()}: volumeLifecycleModes {modes}: shaled serves Persistent "
                    "volumes only (generic ephemeral volumes are PVCs)")
    if s.get("storageCapacity") is not True:
        errs.append(f"{doc.where()}: storageCapacity must be true: node-local volumes rely on "
                    "CSIStorageCapacity for pod placement")
    return errs


def check_storageclass(doc):
    errs = []
    o = doc.obj
    w = doc.where()
    if o.get("provisioner") != DRIVER:
        errs.append(f"{w}: provisioner must be {DRIVER}, not {o.get('provisioner')!r}")
    params = o.get("parameters") or {}
    if not isinstance(params, dict):
        return errs + [f"{w}: parameters must be a mapping"]
    for k, val in params.items():
        if k not in SC_KEYS and k not in SC_SIDECAR_KEYS:
            errs.append(f"{w}: unknown parameter {k!r} (shaled accepts {', '.join(SC_KEYS)}, "
                        f"and {', '.join(SC_SIDECAR_KEYS)})")
        if not isinstance(val, str):
            errs.append(f"{w}: parameter {k} must be a string (quote it), got {val!r}")
    fs_keys = [k for k in ("fsType", "csi.storage.k8s.io/fstype") if k in params]
    if len(fs_keys) > 1:
        errs.append(f"{w}: both fsType and csi.storage.k8s.io/fstype are set")
    for k in fs_keys:
        if params[k] not in ("ext4", "xfs"):
            errs.append(f"{w}: {k}={params[k]!r} is not ext4 or xfs")
    if "readOnlyClone" in params and params["readOnlyClone"] not in ("true", "false"):
        errs.append(f"{w}: readOnlyClone must be \"true\" or \"false\"")
    replicas = params.get("replicas", "1")
    if not re.fullmatch(r"[1-9]", str(replicas)):
        errs.append(f"{w}: replicas must be \"1\" to \"9\", not {replicas!r}")
    selector = params.get("replicaNodeSelector")
    if selector is not None:
        if replicas == "1":
            errs.append(f"{w}: replicaNodeSelector needs replicas of 2 or more")
        bad = [t for t in str(selector).split(",") if not SELECTOR_TERM.fullmatch(t)]
        if bad:
            errs.append(f"{w}: replicaNodeSelector requirement {bad[0]!r} is not KEY=VALUE, "
                        "KEY!=VALUE, KEY or !KEY")
    if "pool" in params and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}",
                                             str(params["pool"])):
        errs.append(f"{w}: pool {params['pool']!r} is not a valid pool name")
    errs += check_qos(w, params)
    if o.get("reclaimPolicy", "Delete") not in ("Delete", "Retain"):
        errs.append(f"{w}: reclaimPolicy {o.get('reclaimPolicy')!r}")
    if o.get("volumeBindingMode") != "WaitForFirstConsumer":
        errs.append(f"{w}: volumeBindingMode must be WaitForFirstConsumer: volumes are "
                    "node-local and must be created where their first pod runs")
    if "allowVolumeExpansion" in o and not isinstance(o["allowVolumeExpansion"], bool):
        errs.append(f"{w}: allowVolumeExpansion must be a boolean")
    if params.get("readOnlyClone") == "true" and o.get("allowVolumeExpansion"):
        errs.append(f"{w}: a read-only clone class cannot allow expansion")
    return errs


def check_snapshotclass(doc):
    errs = []
    o = doc.obj
    w = doc.where()
    if o.get("driver") != DRIVER:
        errs.append(f"{w}: driver must be {DRIVER}")
    if o.get("deletionPolicy") not in ("Delete", "Retain"):
        errs.append(f"{w}: deletionPolicy must be Delete or Retain")
    params = o.get("parameters") or {}
    if len(params) > 64:
        errs.append(f"{w}: more than 64 parameters (they become snapshot labels)")
    for k, val in params.items():
        if k.startswith("csi.storage.k8s.io/"):
            errs.append(f"{w}: {k} is reserved for the snapshotter's secrets; Shale uses none")
        elif not SHALE_LABEL_KEY.match(k):
            errs.append(f"{w}: parameter {k!r} is not a valid Shale label key "
                        "(letters, digits, . _ - /, starting alphanumeric, <= 128 bytes)")
        if not isinstance(val, str) or len(val) > 1024:
            errs.append(f"{w}: parameter {k} must be a string of at most 1024 bytes")
    return errs


def check_group_snapshotclass(doc):
    """A VolumeGroupSnapshotClass: like a VolumeSnapshotClass (parameters become labels)."""
    return check_snapshotclass(doc)


def check_snapshot_metadata_service(doc):
    """The SnapshotMetadataService is named after the driver and says where the sidecar is."""
    errs = []
    w = doc.where()
    spec = doc.obj.get("spec") or {}
    if doc.name != DRIVER:
        errs.append(f"{w}: must be named after the driver ({DRIVER})")
    for field in ("address", "audience", "caCert"):
        if not isinstance(spec.get(field), str) or not spec.get(field):
            errs.append(f"{w}: spec.{field} is missing")
    if not re.fullmatch(r"[a-z0-9.-]+:\d+", str(spec.get("address", ""))):
        errs.append(f"{w}: spec.address must be HOST:PORT")
    return errs


def check_vac(doc):
    errs = []
    o = doc.obj
    w = doc.where()
    if o.get("driverName") != DRIVER:
        errs.append(f"{w}: driverName must be {DRIVER}")
    params = o.get("parameters") or {}
    if not params:
        errs.append(f"{w}: parameters are empty")
    unknown = [k for k in params if k not in QOS_KEYS]
    if unknown:
        errs.append(f"{w}: {unknown} are not QoS keys (mutable parameters are "
                    f"{', '.join(QOS_KEYS)})")
    missing = [k for k in QOS_KEYS if k not in params]
    if missing:
        errs.append(f"{w}: sets no value for {missing}: a modification applies the class onto "
                    "the volume's current settings, so every key must be set")
    errs += check_qos(w, params)
    return errs


def check_rbac_rules(doc):
    errs = []
    rules = doc.obj.get("rules")
    if not isinstance(rules, list) or not rules:
        return [f"{doc.where()}: rules are empty"]
    for i, r in enumerate(rules):
        for f in ("apiGroups", "resources", "verbs"):
            if not isinstance(r.get(f), list) or not r.get(f):
                errs.append(f"{doc.where()}: rule {i} has no {f}")
    return errs


def check_container(doc, c, volumes, strict):
    """One container of a workload; strict = a Shale deployment manifest (not an example)."""
    errs = []
    w = f"{doc.where()}: container {c.get('name')!r}"
    if not c.get("name"):
        errs.append(f"{doc.where()}: a container has no name")
    image = c.get("image")
    if not isinstance(image, str) or not image:
        errs.append(f"{w}: image is missing")
        image = ""
    if strict:
        if not c.get("args"):
            errs.append(f"{w}: args are missing")
        if image.endswith(":latest") or ":" not in image.split("/")[-1]:
            errs.append(f"{w}: image {image!r} must have a pinned tag")
    repo = image_repo(image)
    if repo in SIDECAR_IMAGES:
        tag = image.rsplit(":", 1)[-1]
        if not tag.startswith(SIDECAR_IMAGES[repo]):
            errs.append(f"{w}: {repo} {tag}: the flags here are those of "
                        f"{SIDECAR_IMAGES[repo]}x")
    env_names = {e.get("name") for e in c.get("env") or []}
    for a in (c.get("command") or []) + (c.get("args") or []):
        for ref in ENV_REF.findall(str(a)):
            if ref not in env_names:
                errs.append(f"{w}: argument {a!r} refers to $({ref}), which env does not set")
    mount_paths = set()
    for m in c.get("volumeMounts") or []:
        if m.get("name") not in volumes:
            errs.append(f"{w}: volumeMount {m.get('name')!r} refers to no volume of the pod")
        if m.get("mountPath") in mount_paths:
            errs.append(f"{w}: two volumeMounts at {m.get('mountPath')}")
        mount_paths.add(m.get("mountPath"))
        if m.get("mountPropagation") == "Bidirectional" and \
                get(c, "securityContext", "privileged") is not True:
            errs.append(f"{w}: Bidirectional mount propagation needs a privileged container")
    port_names = {p.get("name") for p in c.get("ports") or [] if p.get("name")}
    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
        port = get(c, probe, "httpGet", "port")
        if isinstance(port, str) and port not in port_names:
            errs.append(f"{w}: {probe} uses port {port!r}, which the container does not name")
    return errs


def sidecar_kind(image):
    repo = image_repo(image or "")
    return repo.rsplit("/", 1)[-1] if repo in SIDECAR_IMAGES else None


def check_workload(doc, strict):
    errs = []
    w = doc.where()
    spec = pod_spec(doc)
    if not isinstance(spec, dict):
        return [f"{w}: spec.template.spec is missing"]
    if doc.kind in ("DaemonSet", "Deployment", "StatefulSet"):
        sel = get(doc.obj, "spec", "selector", "matchLabels") or {}
        labels = get(doc.obj, "spec", "template", "metadata", "labels") or {}
        if not sel:
            errs.append(f"{w}: spec.selector.matchLabels is missing")
        for k, v in sel.items():
            if labels.get(k) != v:
                errs.append(f"{w}: selector {k}={v} does not match the pod template's labels")
    containers = spec.get("containers")
    if not isinstance(containers, list) or not containers:
        return errs + [f"{w}: no containers"]
    volumes = {}
    for v in spec.get("volumes") or []:
        if v.get("name") in volumes:
            errs.append(f"{w}: two volumes named {v.get('name')!r}")
        volumes[v.get("name")] = v
    # A StatefulSet's claim templates are volumes of its pods too.
    for t in get(doc.obj, "spec", "volumeClaimTemplates", default=[]) or []:
        name = get(t, "metadata", "name")
        if name in volumes:
            errs.append(f"{w}: two volumes named {name!r}")
        volumes[name] = {"persistentVolumeClaim": {"claimName": name}}
    names = [c.get("name") for c in containers + (spec.get("initContainers") or [])]
    if len(names) != len(set(names)):
        errs.append(f"{w}: container names are not unique: {names}")
    for c in containers:
        errs += check_container(doc, c, volumes, strict)
    for c in spec.get("initContainers") or []:
        errs += check_container(doc, c, volumes, strict=False)
    mounted = {m.get("name") for c in containers + (spec.get("initContainers") or [])
               for m in c.get("volumeMounts") or []}
    for v in volumes:
        if v not in mounted:
            errs.append(f"{w}: volume {v!r} is mounted by no container")
    errs += check_csi_pod(doc, spec, volumes)
    return errs


def check_csi_pod(doc, spec, volumes):
    """The wiring between shaled, the sidecars and kubelet in a Shale pod."""
    errs = []
    w = doc.where()
    containers = spec.get("containers") or []
    socket_users = [c for c in containers
                    if c.get("name") == "shaled" or sidecar_kind(c.get("image"))]
    if not socket_users:
        return errs

    def mount_of(c, path):
        for m in c.get("volumeMounts") or []:
            if m.get("mountPath") == path:
                return m
        return None

    for c in socket_users:
        cw = f"{w}: container {c.get('name')!r}"
        m = mount_of(c, "/csi")
        if m is None:
            errs.append(f"{cw}: does not mount the CSI socket directory at /csi")
            continue
        host = get(volumes.get(m.get("name"), {}), "hostPath", "path")
        if host != SOCKET_HOST_DIR:
            errs.append(f"{cw}: /csi is {host!r}, not the host directory {SOCKET_HOST_DIR} "
                        "that kubelet and the other pods use")
        flags = arg_flags(c.get("args"))
        if c.get("name") == "shaled":
            if flags.get("--csi-endpoint") != "unix:///csi/csi.sock":
                errs.append(f"{cw}: --csi-endpoint must be unix:///csi/csi.sock")
            if flags.get("--node-id") != "$(KUBE_NODE_NAME)":
                errs.append(f"{cw}: --node-id must be $(KUBE_NODE_NAME) (the topology value)")
            if get(c, "securityContext", "privileged") is not True:
                errs.append(f"{cw}: shaled must be privileged (nbd, loop, FUSE, mount)")
            kubelet = mount_of(c, "/var/lib/kubelet")
            if kubelet is None or kubelet.get("mountPropagation") != "Bidirectional":
                errs.append(f"{cw}: /var/lib/kubelet must be mounted with Bidirectional "
                            "propagation (staging and publish mounts)")
            if mount_of(c, "/dev") is None:
                errs.append(f"{cw}: /dev is not mounted (nbd, loop and fuse devices)")
            if "--data-dir" not in flags or mount_of(c, flags["--data-dir"] or "") is None:
                errs.append(f"{cw}: --data-dir must be a mounted host directory")
            if flags.get("--nbd-socket") == "none":
                errs.append(f"{cw}: --nbd-socket none: the node service attaches volumes "
                            "through the NBD UNIX socket")
            continue
        if flags.get("--csi-address") != "/csi/csi.sock":
            errs.append(f"{cw}: --csi-address must be /csi/csi.sock")
        kind = sidecar_kind(c.get("image"))
        env = {e.get("name") for e in c.get("env") or []}
        if kind == "csi-node-driver-registrar":
            if flags.get("--kubelet-registration-path") != SOCKET_HOST_DIR + "/csi.sock":
                errs.append(f"{cw}: --kubelet-registration-path must be "
                            f"{SOCKET_HOST_DIR}/csi.sock")
            reg = mount_of(c, "/registration")
            if reg is None or get(volumes.get(reg.get("name"), {}), "hostPath",
                                  "path") != REGISTRATION_DIR:
                errs.append(f"{cw}: must mount {REGISTRATION_DIR} at /registration")
        if kind == "csi-provisioner":
            if "Topology=true" not in (flags.get("--feature-gates") or ""):
                errs.append(f"{cw}: needs --feature-gates=Topology=true (node-local volumes)")
            if not flag_on(flags, "--extra-create-metadata"):
                errs.append(f"{cw}: needs --extra-create-metadata (provenance labels)")
            if flag_on(flags, "--enable-capacity") and not {"NAMESPACE", "POD_NAME"} <= env:
                errs.append(f"{cw}: --enable-capacity needs NAMESPACE and POD_NAME in env")
        if kind == "csi-snapshotter" and not flag_on(flags, "--extra-create-metadata"):
            errs.append(f"{cw}: needs --extra-create-metadata (provenance labels)")
        if kind in ("csi-provisioner", "csi-snapshotter"):
            node_mode = flag_on(flags, "--node-deployment")
            if node_mode and "NODE_NAME" not in env:
                errs.append(f"{cw}: --node-deployment needs NODE_NAME in env")
            if node_mode and flag_on(flags, "--leader-election"):
                errs.append(f"{cw}: leader election cannot be on with --node-deployment")
            if node_mode and doc.kind != "DaemonSet":
                errs.append(f"{cw}: --node-deployment belongs in the node DaemonSet")
        if doc.kind == "Deployment" and kind in ("csi-provisioner", "csi-snapshotter",
                                                 "csi-resizer"):
            if not flag_on(flags, "--leader-election"):
                errs.append(f"{cw}: a controller Deployment's sidecar needs --leader-election")
        if doc.kind == "DaemonSet" and kind == "csi-resizer" and not flag_on(
                flags, "--leader-election"):
            errs.append(f"{cw}: a resizer on every node needs --leader-election (it has no "
                        "node-deployment mode: each would act on every PVC)")
    return errs


def check_pvc(doc):
    errs = []
    s = doc.obj.get("spec") or {}
    w = doc.where()
    if not s.get("storageClassName"):
        errs.append(f"{w}: storageClassName is missing")
    if not s.get("accessModes"):
        errs.append(f"{w}: accessModes are missing")
    if parse_quantity(get(s, "resources", "requests", "storage")) is None:
        errs.append(f"{w}: resources.requests.storage is missing or not a quantity")
    return errs


# ----------------------------------------------------------------------------------------------
# Checks across documents


def index(docs):
    by = {}
    for d in docs:
        by.setdefault((d.kind, d.namespace, d.name), d)
    return by


def check_references(docs):
    errs = []
    by = index(docs)
    classes = {d.name: d for d in docs if d.kind == "StorageClass"}

    def exists(kind, ns, name):
        return (kind, ns, name) in by

    for d in docs:
        w = d.where()
        if d.kind in ("RoleBinding", "ClusterRoleBinding"):
            ref = d.obj.get("roleRef") or {}
            rns = d.namespace if ref.get("kind") == "Role" else None
            if ref.get("kind") not in ("Role", "ClusterRole") or \
                    not exists(ref.get("kind"), rns, ref.get("name")):
                errs.append(f"{w}: roleRef {ref.get('kind')}/{ref.get('name')} does not exist")
            subjects = d.obj.get("subjects") or []
            if not subjects:
                errs.append(f"{w}: no subjects")
            for s in subjects:
                if s.get("kind") == "ServiceAccount" and \
                        not exists("ServiceAccount", s.get("namespace"), s.get("name")):
                    errs.append(f"{w}: subject ServiceAccount {s.get('namespace')}/"
                                f"{s.get('name')} does not exist")
        if d.kind in WORKLOADS:
            spec = pod_spec(d) or {}
            sa = spec.get("serviceAccountName")
            if sa and not exists("ServiceAccount", d.namespace, sa):
                errs.append(f"{w}: serviceAccountName {sa!r} is no ServiceAccount in "
                            f"{d.namespace}")
            for v in spec.get("volumes") or []:
                claim = get(v, "persistentVolumeClaim", "claimName")
                if claim:
                    pvc = by.get(("PersistentVolumeClaim", d.namespace, claim))
                    if pvc is None:
                        errs.append(f"{w}: volume {v.get('name')!r} uses PVC {claim!r}, which "
                                    "does not exist")
                    elif "ReadOnlyMany" in (get(pvc.obj, "spec", "accessModes") or []):
                        if get(v, "persistentVolumeClaim", "readOnly") is not True:
                            errs.append(f"{w}: ReadOnlyMany PVC {claim!r} must be used with "
                                        "readOnly: true")
                tmpl = get(v, "ephemeral", "volumeClaimTemplate", "spec")
                if tmpl is not None:
                    fake = Doc(d.path, d.index, {"kind": "PersistentVolumeClaim",
                                                 "metadata": {"name": f"{d.name}-{v.get('name')}",
                                                              "namespace": d.namespace},
                                                 "spec": tmpl})
                    errs += check_pvc(fake)
                    errs += check_access_modes(fake, classes, by)
        if d.kind == "PersistentVolumeClaim":
            errs += check_access_modes(d, classes, by)
        if d.kind == "VolumeSnapshot":
            src = get(d.obj, "spec", "source", "persistentVolumeClaimName")
            if not src or not exists("PersistentVolumeClaim", d.namespace, src):
                errs.append(f"{w}: source PVC {src!r} does not exist")
            cls = get(d.obj, "spec", "volumeSnapshotClassName")
            if cls and not exists("VolumeSnapshotClass", None, cls):
                errs.append(f"{w}: VolumeSnapshotClass {cls!r} does not exist")
    return errs


def check_access_modes(pvc, classes, by):
    errs = []
    s = pvc.obj.get("spec") or {}
    w = pvc.where()
    cls_name = s.get("storageClassName")
    cls = classes.get(cls_name)
    if cls is None:
        return [f"{w}: StorageClass {cls_name!r} does not exist"]
    modes = s.get("accessModes") or []
    read_only_class = (cls.obj.get("parameters") or {}).get("readOnlyClone") == "true"
    src = s.get("dataSource") or {}
    if read_only_class:
        if modes != ["ReadOnlyMany"]:
            errs.append(f"{w}: class {cls_name} makes read-only clones: accessModes must be "
                        f"[ReadOnlyMany], not {modes}")
        if src.get("kind") != "VolumeSnapshot" or \
                src.get("apiGroup") != "snapshot.storage.k8s.io":
            errs.append(f"{w}: class {cls_name} needs a VolumeSnapshot dataSource")
    else:
        bad = [m for m in modes if m not in ("ReadWriteOnce", "ReadWriteOncePod")]
        if bad:
            errs.append(f"{w}: class {cls_name} serves ReadWriteOnce/ReadWriteOncePod, not {bad}")
    if src:
        if src.get("kind") == "VolumeSnapshot":
            snap = by.get(("VolumeSnapshot", pvc.namespace, src.get("name")))
            if snap is None:
                errs.append(f"{w}: dataSource VolumeSnapshot {src.get('name')!r} does not exist")
            else:
                source_pvc = by.get(("PersistentVolumeClaim", pvc.namespace,
                                     get(snap.obj, "spec", "source",
                                         "persistentVolumeClaimName")))
                want = parse_quantity(get(source_pvc.obj if source_pvc else {}, "spec",
                                          "resources", "requests", "storage"))
                have = parse_quantity(get(s, "resources", "requests", "storage"))
                if want and have is not None and have < want:
                    errs.append(f"{w}: requests {have} bytes, less than the snapshot's source "
                                f"({want})")
        elif src.get("kind") == "PersistentVolumeClaim":
            if not by.get(("PersistentVolumeClaim", pvc.namespace, src.get("name"))):
                errs.append(f"{w}: dataSource PVC {src.get('name')!r} does not exist")
        else:
            errs.append(f"{w}: dataSource kind {src.get('kind')!r} is not supported")
    return errs


# What each sidecar documents it needs: (apiGroup, resource, verb, namespaced-ok).
SIDECAR_NEEDS = {
    "csi-provisioner": [
        ("", "persistentvolumes", v) for v in ("get", "list", "watch", "create", "delete")] + [
        ("", "persistentvolumeclaims", v) for v in ("get", "list", "watch", "update")] + [
        ("storage.k8s.io", "storageclasses", v) for v in ("get", "list", "watch")] + [
        ("", "events", v) for v in ("create", "patch")] + [
        ("snapshot.storage.k8s.io", "volumesnapshots", v) for v in ("get", "list")] + [
        ("snapshot.storage.k8s.io", "volumesnapshotcontents", v) for v in ("get", "list")] + [
        ("storage.k8s.io", "csinodes", v) for v in ("get", "list", "watch")] + [
        ("", "nodes", v) for v in ("get", "list", "watch")],
    "csi-snapshotter": [
        ("snapshot.storage.k8s.io", "volumesnapshotclasses", v)
        for v in ("get", "list", "watch")] + [
        ("snapshot.storage.k8s.io", "volumesnapshotcontents", v)
        for v in ("get", "list", "watch", "update", "patch")] + [
        ("snapshot.storage.k8s.io", "volumesnapshotcontents/status", v)
        for v in ("update", "patch")] + [
        ("", "events", v) for v in ("create", "patch")],
    "csi-snapshot-metadata": [
        ("authentication.k8s.io", "tokenreviews", "create"),
        ("authorization.k8s.io", "subjectaccessreviews", "create")] + [
        ("snapshot.storage.k8s.io", r, v) for r in ("volumesnapshots", "volumesnapshotcontents")
        for v in ("get", "list")] + [
        ("cbt.storage.k8s.io", "snapshotmetadataservices", v) for v in ("get", "list")],
    "csi-resizer": [
        ("", "persistentvolumes", v) for v in ("get", "list", "watch", "patch")] + [
        ("", "persistentvolumeclaims", v) for v in ("get", "list", "watch")] + [
        ("", "persistentvolumeclaims/status", "patch")] + [
        ("", "events", v) for v in ("create", "patch")],
}
LEASE_NEEDS = [("coordination.k8s.io", "leases", v) for v in ("get", "create", "update")]
CAPACITY_NEEDS = [("storage.k8s.io", "csistoragecapacities", v)
                  for v in ("get", "list", "watch", "create", "update", "delete")] + [
    ("", "pods", "get")]
# The csi-snapshotter with --feature-gates=CSIVolumeGroupSnapshot=true (docs/csi.md).
GROUP_SNAPSHOT_NEEDS = [
    ("groupsnapshot.storage.k8s.io", "volumegroupsnapshotclasses", v)
    for v in ("get", "list", "watch")] + [
    ("groupsnapshot.storage.k8s.io", "volumegroupsnapshotcontents", v)
    for v in ("get", "list", "watch", "update", "patch")] + [
    ("groupsnapshot.storage.k8s.io", "volumegroupsnapshotcontents/status", v)
    for v in ("update", "patch")]
VAC_NEEDS = [("storage.k8s.io", "volumeattributesclasses", v) for v in ("get", "list", "watch")]


def granted(docs, sa_ns, sa_name, pod_ns):
    """Set of (group, resource, verb, scope) the ServiceAccount gets; scope None = cluster."""
    by = index(docs)
    out = set()
    for d in docs:
        if d.kind not in ("RoleBinding", "ClusterRoleBinding"):
            continue
        if not any(s.get("kind") == "ServiceAccount" and s.get("name") == sa_name and
                   s.get("namespace") == sa_ns for s in d.obj.get("subjects") or []):
            continue
        ref = d.obj.get("roleRef") or {}
        role = by.get((ref.get("kind"), d.namespace if ref.get("kind") == "Role" else None,
                       ref.get("name")))
        if role is None:
            continue
        scope = d.namespace if d.kind == "RoleBinding" else None
        for r in role.obj.get("rules") or []:
            for g in r.get("apiGroups") or []:
                for res in r.get("resources") or []:
                    for v in r.get("verbs") or []:
                        out.add((g, res, v, scope))
    return out


def check_sidecar_rbac(docs):
    errs = []
    for d in docs:
        if d.kind not in WORKLOADS:
            continue
        spec = pod_spec(d) or {}
        sa = spec.get("serviceAccountName") or "default"
        perms = granted(docs, d.namespace, sa, d.namespace)

        def has(g, res, v, namespaced):
            for (pg, pres, pv, scope) in perms:
                if pg in (g, "*") and pres in (res, "*") and pv in (v, "*") and \
                        (scope is None or (namespaced and scope == d.namespace)):
                    return True
            return False

        for c in spec.get("containers") or []:
            kind = sidecar_kind(c.get("image"))
            if kind not in SIDECAR_NEEDS:
                continue
            flags = arg_flags(c.get("args"))
            needs = [(g, r, v, False) for (g, r, v) in SIDECAR_NEEDS[kind]]
            if flag_on(flags, "--leader-election"):
                needs += [(g, r, v, True) for (g, r, v) in LEASE_NEEDS]
            if kind == "csi-provisioner" and flag_on(flags, "--enable-capacity"):
                needs += [(g, r, v, True) for (g, r, v) in CAPACITY_NEEDS]
            if "VolumeAttributesClass=true" in (flags.get("--feature-gates") or ""):
                needs += [(g, r, v, False) for (g, r, v) in VAC_NEEDS]
            if "CSIVolumeGroupSnapshot=true" in (flags.get("--feature-gates") or ""):
                needs += [(g, r, v, False) for (g, r, v) in GROUP_SNAPSHOT_NEEDS]
            missing = sorted({f"{g or 'core'}/{r}:{v}" for (g, r, v, ns) in needs
                              if not has(g, r, v, ns)})
            if missing:
                errs.append(f"{d.where()}: container {c.get('name')!r} ({kind}) runs as "
                            f"ServiceAccount {sa!r}, which lacks {', '.join(missing)}")
    return errs


def validate(docs, strict_paths=lambda path: True):
    """Every check on a set of documents that belong together; returns error strings."""
    errs = []
    for d in docs:
        e = check_common(d)
        errs += e
        if e:
            continue
        if d.kind == "CSIDriver":
            errs += check_csidriver(d)
        elif d.kind == "StorageClass":
            errs += check_storageclass(d)
        elif d.kind == "VolumeSnapshotClass":
            errs += check_snapshotclass(d)
        elif d.kind == "VolumeAttributesClass":
            errs += check_vac(d)
        elif d.kind == "VolumeGroupSnapshotClass":
            errs += check_group_snapshotclass(d)
        elif d.kind == "SnapshotMetadataService":
            errs += check_snapshot_metadata_service(d)
        elif d.kind in ("Role", "ClusterRole"):
            errs += check_rbac_rules(d)
        elif d.kind in WORKLOADS:
            errs += check_workload(d, strict_paths(d.path))
        elif d.kind == "PersistentVolumeClaim":
            errs += check_pvc(d)
    if any(check_common(d) for d in docs):
        return errs
    errs += check_references(docs)
    errs += check_sidecar_rbac(docs)
    errs += check_controller_colocation(docs)
    return errs


def uses_csi_socket(doc):
    return any(get(v, "hostPath", "path") == SOCKET_HOST_DIR
               for v in (pod_spec(doc) or {}).get("volumes") or [])


def check_controller_colocation(docs):
    """A Deployment on the CSI socket's host directory talks to the shaled of ITS node: it must
    be scheduled only where the node DaemonSet runs (same nodeSelector, and pod affinity to a
    shaled pod on the same host)."""
    errs = []
    daemonsets = [d for d in docs if d.kind == "DaemonSet" and uses_csi_socket(d)]
    for d in docs:
        if d.kind != "Deployment" or not uses_csi_socket(d):
            continue
        if not daemonsets:
            errs.append(f"{d.where()}: uses the CSI socket but no node DaemonSet serves it")
            continue
        spec = pod_spec(d) or {}
        for ds in daemonsets:
            want = (pod_spec(ds) or {}).get("nodeSelector") or {}
            have = spec.get("nodeSelector") or {}
            if any(have.get(k) != v for k, v in want.items()):
                errs.append(f"{d.where()}: nodeSelector {have} does not include the node "
                            f"DaemonSet's {want}: it could run where no shaled is")
            labels = get(ds.obj, "spec", "template", "metadata", "labels") or {}
            terms = get(spec, "affinity", "podAffinity",
                        "requiredDuringSchedulingIgnoredDuringExecution") or []
            if not any(t.get("topologyKey") == "kubernetes.io/hostname" and
                       (get(t, "labelSelector", "matchLabels") or {}) and
                       all(labels.get(k) == v for k, v in
                           get(t, "labelSelector", "matchLabels").items())
                       for t in terms):
                errs.append(f"{d.where()}: needs a required podAffinity (topologyKey "
                            f"kubernetes.io/hostname) to the pods of {ds.where()}")
    return errs


# ----------------------------------------------------------------------------------------------
# Kustomizations


def kustomization_refs(path, obj):
    """(resources, patch files) a kustomization names; errors for missing ones."""
    errs = []
    base = os.path.dirname(path)
    resources, patches = [], []
    for r in obj.get("resources") or []:
        p = os.path.normpath(os.path.join(base, r))
        if os.path.isdir(p):
            if not any(os.path.exists(os.path.join(p, k)) for k in
                       ("kustomization.yaml", "kustomization.yml", "Kustomization")):
                errs.append(f"{rel(path)}: resource {r} is a directory without kustomization")
        elif not os.path.isfile(p):
            errs.append(f"{rel(path)}: resource {r} does not exist")
        resources.append(p)
    for pt in obj.get("patches") or []:
        if "path" in pt:
            p = os.path.normpath(os.path.join(base, pt["path"]))
            if not os.path.isfile(p):
                errs.append(f"{rel(path)}: patch {pt['path']} does not exist")
            patches.append(p)
        elif "patch" not in pt:
            errs.append(f"{rel(path)}: a patch has neither path nor patch")
    if obj.get("kind") != "Kustomization":
        errs.append(f"{rel(path)}: kind must be Kustomization")
    return resources, patches, errs


# ----------------------------------------------------------------------------------------------
# Cross-checks with the C++ sources and the shaled binary


def driver_source_text(repo):
    d = os.path.join(repo, "csi")
    if not os.path.isdir(d):
        return None
    text = []
    for root, _, files in os.walk(d):
        for f in files:
            if f.endswith((".cc", ".h")):
                with open(os.path.join(root, f), encoding="utf-8", errors="replace") as fh:
                    text.append(fh.read())
    return "\n".join(text)


def check_against_sources(docs, source_text):
    errs = []
    for literal in (DRIVER, TOPOLOGY_KEY):
        if f'"{literal}"' not in source_text:
            errs.append(f"the driver sources (csi/) do not contain \"{literal}\", which the manifests use")
    keys = set()
    for d in docs:
        if d.kind == "StorageClass":
            keys |= {k for k in (d.obj.get("parameters") or {}) if k not in SC_SIDECAR_KEYS}
        if d.kind == "VolumeAttributesClass":
            keys |= set(d.obj.get("parameters") or {})
    for k in sorted(keys):
        if f'"{k}"' not in source_text:
            errs.append(f"{k}: parameter used in the manifests, not found as \"{k}\" in "
                        "the driver sources (csi/)")
    return errs


def shaled_flags_in_help(help_text):
    return set(re.findall(r"(--[a-z0-9][a-z0-9-]*)", help_text))


def check_shaled_flags(docs, help_text):
    errs = []
    known = shaled_flags_in_help(help_text)
    for d in docs:
        if d.kind not in WORKLOADS:
            continue
        for c in (pod_spec(d) or {}).get("containers") or []:
            if c.get("name") != "shaled" and (c.get("command") or [""])[0] != "shaled":
                continue
            for flag in arg_flags(c.get("args")):
                if flag not in known:
                    errs.append(f"{d.where()}: shaled has no flag {flag} (see shaled --help)")
    return errs


# ----------------------------------------------------------------------------------------------
# Cluster mode (csi/deploy/cluster): shaled's replica traffic over mutual TLS


def merge_by(dst, src, key):
    for item in src:
        for i, have in enumerate(dst):
            if have.get(key) == item.get(key):
                dst[i] = {**have, **item}
                break
        else:
            dst.append(copy.deepcopy(item))


def strategic_merge_workload(obj, patch):
    """`obj` with a strategic-merge patch applied the way kustomize merges the parts of a pod
    the overlays touch: containers by name, their env by name, ports by containerPort,
    volumeMounts by mountPath, and volumes by name."""
    out = copy.deepcopy(obj)
    spec = get(out, "spec", "template", "spec")
    pspec = get(patch, "spec", "template", "spec") or {}
    for pc in pspec.get("containers") or []:
        c = next((c for c in spec["containers"] if c.get("name") == pc.get("name")), None)
        if c is None:
            spec["containers"].append(copy.deepcopy(pc))
            continue
        for field, key in (("env", "name"), ("ports", "containerPort"),
                           ("volumeMounts", "mountPath")):
            if pc.get(field):
                merge_by(c.setdefault(field, []), pc[field], key)
    if pspec.get("volumes"):
        merge_by(spec.setdefault("volumes", []), pspec["volumes"], "name")
    return out


def apply_json_patch(obj, ops):
    """RFC 6902 add/replace, as kustomize applies an inline patch."""
    out = copy.deepcopy(obj)
    for op in ops:
        parts = [p.replace("~1", "/").replace("~0", "~")
                 for p in op["path"].lstrip("/").split("/")]
        cur = out
        for p in parts[:-1]:
            cur = cur[int(p)] if isinstance(cur, list) else cur[p]
        last = parts[-1]
        if op["op"] == "add" and isinstance(cur, list):
            cur.insert(len(cur) if last == "-" else int(last), op["value"])
        elif op["op"] in ("add", "replace"):
            cur[int(last) if isinstance(cur, list) else last] = op["value"]
        else:
            raise ValueError(f"JSON patch op {op['op']!r} is not supported here")
    return out


def patched_node(t, sub):
    """The node DaemonSet of base/ with the DaemonSet patches of kustomization `sub` applied."""
    kdir = os.path.join(deploy_dir(), sub)
    kust = t.kustomizations[os.path.join(kdir, "kustomization.yaml")]
    ds = [d for d in t.docs_under("base") if d.kind == "DaemonSet" and d.name == "shale-node"][0]
    obj = ds.obj
    for p in kust.get("patches") or []:
        if p.get("path"):
            with open(os.path.join(kdir, p["path"]), encoding="utf-8") as fh:
                patch = yaml.safe_load(fh)
            if patch.get("kind") == "DaemonSet" and get(patch, "metadata", "name") == ds.name:
                obj = strategic_merge_workload(obj, patch)
        elif get(p, "target", "kind") == "DaemonSet" and p.get("patch"):
            obj = apply_json_patch(obj, yaml.safe_load(p["patch"]))
    return Doc(os.path.join("csi", "deploy", sub, "kustomization.yaml"), 0, obj)


def check_cluster_tls(ds, docs):
    """shaled in `ds` runs in cluster mode with --cluster-tls-dir, the directory is a mounted
    kubernetes.io/tls Secret readable by its owner only, and a cert-manager Certificate among
    `docs` writes that Secret for TLS clients and servers."""
    errs = []
    w = ds.where()
    spec = pod_spec(ds) or {}
    shaled = [c for c in spec.get("containers") or [] if c.get("name") == "shaled"]
    if not shaled:
        return [f"{w}: no shaled container"]
    c = shaled[0]
    flags = {}
    for a in c.get("args") or []:
        if isinstance(a, str) and a.startswith("--") and "=" in a:
            k, v = a.split("=", 1)
            flags[k] = v
    for need in ("--cluster-store", "--node-name", "--replica-listen", "--cluster-secret-file"):
        if need not in flags:
            errs.append(f"{w}: shaled has no {need}=... (cluster mode)")
    tls_dir = flags.get("--cluster-tls-dir")
    if not tls_dir:
        return errs + [f"{w}: shaled has no --cluster-tls-dir=DIR: replica traffic would be "
                       "plain TCP"]
    volumes = {v.get("name"): v for v in spec.get("volumes") or []}
    mounts = [m for m in c.get("volumeMounts") or []
              if os.path.normpath(m.get("mountPath") or "") == os.path.normpath(tls_dir)]
    if not mounts:
        return errs + [f"{w}: nothing is mounted at --cluster-tls-dir {tls_dir}"]
    v = volumes.get(mounts[0].get("name")) or {}
    secret = get(v, "secret", "secretName")
    if not secret:
        return errs + [f"{w}: the volume at {tls_dir} is not a Secret"]
    mode = get(v, "secret", "defaultMode")
    if not isinstance(mode, int) or mode & 0o077:
        errs.append(f"{w}: Secret {secret} at {tls_dir} needs defaultMode 0400 or 0600 "
                    f"(shaled refuses a tls.key others may read), not {mode!r}")
    if get(v, "secret", "items"):
        errs.append(f"{w}: Secret {secret} must be mounted whole (ca.crt, tls.crt, tls.key)")
    certs = [d for d in docs if d.kind == "Certificate" and d.namespace == ds.namespace and
             get(d.obj, "spec", "secretName") == secret]
    if not certs:
        return errs + [f"{w}: no cert-manager Certificate writes Secret {secret}"]
    cert = certs[0]
    usages = set(get(cert.obj, "spec", "usages") or [])
    for u in ("server auth", "client auth"):
        if u not in usages:
            errs.append(f"{cert.where()}: usages lack {u!r} (every node serves and dials)")
    issuer = get(cert.obj, "spec", "issuerRef", "name")
    if not any(d.kind == "Issuer" and d.name == issuer and d.namespace == ds.namespace and
               get(d.obj, "spec", "ca", "secretName") for d in docs):
        errs.append(f"{cert.where()}: issuerRef {issuer!r} is no CA Issuer of its namespace")
    return errs


# ----------------------------------------------------------------------------------------------
# The tests


def deploy_dir():
    return os.path.join(ARGS.repo, "csi", "deploy")


def yaml_files(root):
    out = []
    for dirpath, _, files in os.walk(root):
        for f in files:
            if f.endswith((".yaml", ".yml")):
                out.append(os.path.join(dirpath, f))
    return sorted(out)


def is_example(path):
    return os.sep + "examples" + os.sep in path


class Tree:
    """Everything under csi/deploy, parsed once."""

    def __init__(self):
        self.errors = []
        self.kustomizations = {}  # path -> obj
        self.objects = []  # Docs that are Kubernetes objects (not patches)
        self.patches = set()
        self.resources = set()
        files = yaml_files(deploy_dir())
        parsed = {}
        for f in files:
            with open(f, encoding="utf-8") as fh:
                docs, errs = load_yaml_text(rel(f), fh.read())
            self.errors += errs
            parsed[f] = docs
            if os.path.basename(f) in ("kustomization.yaml", "kustomization.yml"):
                for d in docs:
                    self.kustomizations[f] = d.obj
        for path, obj in self.kustomizations.items():
            resources, patches, errs = kustomization_refs(path, obj)
            self.errors += errs
            self.resources |= set(resources)
            self.patches |= set(patches)
        for f, docs in parsed.items():
            if f in self.kustomizations or f in self.patches:
                continue
            self.objects += docs
        self.files = files

    def docs_under(self, sub):
        root = os.path.join(deploy_dir(), sub) + os.sep
        return [d for d in self.objects if os.path.join(ARGS.repo, d.path).startswith(root)]


TREE = None


def tree():
    global TREE
    if TREE is None:
        TREE = Tree()
    return TREE


def fmt(errs):
    return "\n  " + "\n  ".join(errs) if errs else ""


class ManifestTest(unittest.TestCase):
    def test_every_file_parses_and_kustomizations_resolve(self):
        t = tree()
        self.assertGreater(len(t.files), 10, "csi/deploy holds too few manifests")
        self.assertEqual([], t.errors, fmt(t.errors))

    def test_every_manifest_is_used_by_a_kustomization(self):
        t = tree()
        unused = [rel(f) for f in t.files
                  if not is_example(f) and f not in t.kustomizations and
                  f not in t.patches and f not in t.resources]
        self.assertEqual([], unused, "not listed in any kustomization.yaml")

    def test_deployment_objects(self):
        # The default model: base + controller, validated together.
        t = tree()
        docs = t.docs_under("base") + t.docs_under("controller")
        errs = validate(docs)
        self.assertEqual([], errs, fmt(errs))
        kinds = {(d.kind, d.name) for d in docs}
        for want in [("CSIDriver", DRIVER), ("DaemonSet", "shale-node"),
                     ("Deployment", "shale-controller"), ("StorageClass", "shale-data"),
                     ("StorageClass", "shale-scratch"), ("StorageClass", "shale-readonly-clone"),
                     ("VolumeSnapshotClass", "shale-snapshots")]:
            self.assertIn(want, kinds)

    def test_overlays(self):
        t = tree()
        base = t.docs_under("base") + t.docs_under("controller")
        dist = t.docs_under("base") + t.docs_under("distributed")
        errs = validate(dist)
        self.assertEqual([], errs, fmt(errs))
        vac = base + t.docs_under("volume-attributes-classes")
        errs = validate(vac)
        self.assertEqual([], errs, fmt(errs))
        names = {d.name for d in vac if d.kind == "VolumeAttributesClass"}
        self.assertEqual({"shale-fast", "shale-capped"}, names)

    def test_cluster_overlay_runs_replica_traffic_over_mutual_tls(self):
        t = tree()
        ds = patched_node(t, "cluster")
        cluster_docs = t.docs_under("cluster")
        docs = [d for d in t.docs_under("base") + t.docs_under("distributed")
                if d.kind != "DaemonSet"] + cluster_docs + [ds]
        errs = validate(docs) + check_cluster_tls(ds, cluster_docs)
        self.assertEqual([], errs, fmt(errs))
        if ARGS.shaled and os.access(ARGS.shaled, os.X_OK):
            r = subprocess.run([ARGS.shaled, "--help"], capture_output=True, text=True,
                               timeout=30)
            errs = check_shaled_flags([ds], r.stdout)
            self.assertEqual([], errs, fmt(errs))

    def test_notebook_example(self):
        t = tree()
        docs = t.docs_under("base") + t.docs_under(os.path.join("examples", "notebook"))
        errs = validate(docs, strict_paths=lambda p: not is_example(p))
        self.assertEqual([], errs, fmt(errs))
        ex = t.docs_under(os.path.join("examples", "notebook"))
        kinds = sorted(d.kind for d in ex)
        for k in ("Job", "VolumeSnapshot", "Deployment"):
            self.assertIn(k, kinds)
        rox = [d for d in ex if d.kind == "PersistentVolumeClaim" and
               get(d.obj, "spec", "accessModes") == ["ReadOnlyMany"]]
        self.assertEqual(1, len(rox), "the example needs one ReadOnlyMany clone")
        readers = [d for d in ex if d.kind == "Deployment" and
                   (get(d.obj, "spec", "replicas") or 1) >= 2]
        self.assertTrue(readers, "several pods must mount the clone at once")
        spec = pod_spec(readers[0])
        self.assertTrue(any(get(v, "ephemeral", "volumeClaimTemplate") for v in
                            spec.get("volumes") or []),
                        "the notebook pods need a generic ephemeral scratch volume")

    def test_parameter_keys_exist_in_driver_sources(self):
        text = driver_source_text(ARGS.repo)
        if text is None:
            self.fail("csi/ (the driver sources) not found: cannot cross-check parameter keys")
        errs = check_against_sources(tree().objects, text)
        self.assertEqual([], errs, fmt(errs))

    def test_shaled_flags_exist(self):
        self.assertTrue(ARGS.shaled and os.access(ARGS.shaled, os.X_OK),
                        f"shaled binary not found at {ARGS.shaled!r} (build it first)")
        r = subprocess.run([ARGS.shaled, "--help"], capture_output=True, text=True, timeout=30)
        self.assertEqual(0, r.returncode, r.stderr)
        self.assertIn("--data-dir", r.stdout)
        errs = check_shaled_flags(tree().objects, r.stdout)
        self.assertEqual([], errs, fmt(errs))

    def test_daemonset_command_line_starts_shaled(self):
        # The node DaemonSet's exact shaled arguments, with the host paths moved to a temp dir
        # and $(VARS) expanded the way kubelet does: shaled must start and serve the CSI socket.
        self.assertTrue(ARGS.shaled and os.access(ARGS.shaled, os.X_OK),
                        f"shaled binary not found at {ARGS.shaled!r} (build it first)")
        ds = [d for d in tree().objects if d.kind == "DaemonSet" and d.name == "shale-node"]
        self.assertEqual(1, len(ds))
        c = [c for c in pod_spec(ds[0])["containers"] if c["name"] == "shaled"][0]
        with tempfile.TemporaryDirectory(prefix="shale-deploy-") as tmp:
            values = {e["name"]: e.get("value", "node-1") for e in c.get("env") or []}
            args = []
            for a in c["args"]:
                a = ENV_REF.sub(lambda m: values[m.group(1)], a)
                a = a.replace("unix:///csi/csi.sock", f"unix://{tmp}/csi.sock")
                if a.startswith("--metrics-listen="):
                    a = "--metrics-listen=127.0.0.1:0"
                args.append(a.replace("/var/lib/shale", f"{tmp}/data"))
            # The DaemonSet's arguments as they are (its metrics port made free above: tests run
            # in parallel): no NBD TCP listener (shaled's default; the CSI node attaches through
            # the UNIX socket).
            cmd = [ARGS.shaled] + args + ["--default-pool-size=64M"]
            log_path = f"{tmp}/shaled.log"
            with open(log_path, "w") as log:
                proc = subprocess.Popen(cmd, stdout=log, stderr=log)

            def log_tail():
                with open(log_path, errors="replace") as f:
                    return f.read()[-4000:]

            try:
                deadline = time.monotonic() + 60
                while time.monotonic() < deadline and proc.poll() is None and \
                        not os.path.exists(f"{tmp}/csi.sock"):
                    time.sleep(0.05)
                if proc.poll() is not None:
                    self.fail(f"shaled exited ({proc.returncode}): {' '.join(cmd)}\n{log_tail()}")
                self.assertTrue(os.path.exists(f"{tmp}/csi.sock"),
                                f"no CSI socket after 60 s: {' '.join(cmd)}\n{log_tail()}")
            finally:
                if proc.poll() is None:
                    proc.terminate()
                try:
                    rc = proc.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    rc = proc.wait()
            self.assertEqual(0, rc, "shaled did not stop cleanly on SIGTERM")

    def test_kustomize_renders_and_rendered_objects_validate(self):
        kubectl = shutil.which("kubectl")
        if kubectl is None:
            self.skipTest("kubectl is not on PATH: the kustomizations were checked by file "
                          "references only")
        roots = ["", "distributed", "volume-attributes-classes", "cluster", "data-protection"]
        rendered = {}
        for sub in roots:
            d = os.path.join(deploy_dir(), sub)
            r = subprocess.run([kubectl, "kustomize", d], capture_output=True, text=True,
                               timeout=120)
            self.assertEqual(0, r.returncode, f"kubectl kustomize {rel(d)}: {r.stderr}")
            docs, errs = load_yaml_text(f"kustomize({sub or '.'})", r.stdout)
            self.assertEqual([], errs)
            errs = validate(docs)
            self.assertEqual([], errs, fmt(errs))
            rendered[sub] = docs
        dist = rendered["distributed"]
        self.assertFalse([d for d in dist if d.kind == "Deployment"],
                         "the distributed model has no controller Deployment")
        ds = [d for d in dist if d.kind == "DaemonSet"][0]
        sidecars = {c["name"]: arg_flags(c.get("args")) for c in pod_spec(ds)["containers"]}
        self.assertIn("--node-deployment", sidecars.get("csi-provisioner", {}))
        self.assertIn("--node-deployment", sidecars.get("csi-snapshotter", {}))
        self.assertTrue(all(d.obj.get("allowVolumeExpansion") is False for d in dist
                            if d.kind == "StorageClass"),
                        "no resizer in the distributed model: expansion must be off")
        # data-protection: group snapshots on in the snapshotter, the metadata sidecar on the
        # CSI socket, the class and the SnapshotMetadataService of this driver.
        prot = rendered["data-protection"]
        ctl = [d for d in prot if d.kind == "Deployment"][0]
        sidecars = {c["name"]: arg_flags(c.get("args")) for c in pod_spec(ctl)["containers"]}
        self.assertIn("CSIVolumeGroupSnapshot=true",
                      sidecars.get("csi-snapshotter", {}).get("--feature-gates") or "")
        self.assertEqual("/csi/csi.sock",
                         sidecars.get("csi-snapshot-metadata", {}).get("--csi-address"))
        self.assertTrue([d for d in prot if d.kind == "VolumeGroupSnapshotClass"])
        self.assertEqual([DRIVER], [d.name for d in prot if d.kind == "SnapshotMetadataService"])
        cluster = rendered["cluster"]
        cluster_ds = [d for d in cluster if d.kind == "DaemonSet"][0]
        errs = check_cluster_tls(cluster_ds, cluster)
        self.assertEqual([], errs, fmt(errs))
        # Replicated volumes grow through any node: one resizer (leader election) per node,
        # waiting while a PVC is in use (offline growth), with the resizer's RBAC bound.
        sidecars = {c["name"]: arg_flags(c.get("args")) for c in pod_spec(cluster_ds)["containers"]}
        resizer = sidecars.get("csi-resizer", {})
        self.assertTrue(flag_on(resizer, "--leader-election"), resizer)
        self.assertTrue(flag_on(resizer, "--handle-volume-inuse-error"), resizer)
        replicated = [d for d in cluster if d.kind == "StorageClass" and d.name == "shale-replicated"]
        self.assertEqual(True, replicated[0].obj.get("allowVolumeExpansion"))
        bound = {(d.obj.get("roleRef") or {}).get("name") for d in cluster
                 if d.kind in ("ClusterRoleBinding", "RoleBinding")
                 and any(s.get("name") == "shale-node" for s in d.obj.get("subjects") or [])}
        self.assertLessEqual({"shale-resizer", "shale-resizer-cfg"}, bound)
        # The notebook example runs unchanged on the cluster overlay: its objects validate
        # together with the rendered cluster model (its classes, CSIDriver, snapshot class).
        example = tree().docs_under(os.path.join("examples", "notebook"))
        errs = validate(cluster + example, strict_paths=lambda p: not is_example(p))
        self.assertEqual([], errs, fmt(errs))
        vac = rendered["volume-attributes-classes"]
        ctrl = [d for d in vac if d.kind == "Deployment"][0]
        gates = {c["name"]: arg_flags(c.get("args")).get("--feature-gates") or ""
                 for c in pod_spec(ctrl)["containers"]}
        self.assertIn("VolumeAttributesClass=true", gates["csi-provisioner"])
        self.assertIn("Topology=true", gates["csi-provisioner"])
        self.assertIn("VolumeAttributesClass=true", gates["csi-resizer"])


# ----------------------------------------------------------------------------------------------
# Negative self-tests: every check above must report a broken document.


GOOD = """
apiVersion: v1
kind: Namespace
metadata: {name: ns}
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: sa, namespace: ns}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: r}
rules:
  - apiGroups: ["*"]
    resources: ["*"]
    verbs: ["*"]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: rb}
subjects: [{kind: ServiceAccount, name: sa, namespace: ns}]
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: r}
---
apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata: {name: data}
provisioner: csi.shale.io
parameters: {csi.storage.k8s.io/fstype: ext4, iops: "100", burstIops: "200"}
volumeBindingMode: WaitForFirstConsumer
---
apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata: {name: ro}
provisioner: csi.shale.io
parameters: {readOnlyClone: "true"}
volumeBindingMode: WaitForFirstConsumer
---
apiVersion: snapshot.storage.k8s.io/v1
kind: VolumeSnapshotClass
metadata: {name: snaps}
driver: csi.shale.io
deletionPolicy: Delete
---
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: src, namespace: ns}
spec:
  storageClassName: data
  accessModes: [ReadWriteOnce]
  resources: {requests: {storage: 1Gi}}
---
apiVersion: snapshot.storage.k8s.io/v1
kind: VolumeSnapshot
metadata: {name: snap, namespace: ns}
spec:
  volumeSnapshotClassName: snaps
  source: {persistentVolumeClaimName: src}
---
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: clone, namespace: ns}
spec:
  storageClassName: ro
  accessModes: [ReadOnlyMany]
  dataSource: {apiGroup: snapshot.storage.k8s.io, kind: VolumeSnapshot, name: snap}
  resources: {requests: {storage: 1Gi}}
---
apiVersion: apps/v1
kind: DaemonSet
metadata: {name: node, namespace: ns}
spec:
  selector: {matchLabels: {app: node}}
  template:
    metadata: {labels: {app: node}}
    spec:
      serviceAccountName: sa
      containers:
        - name: shaled
          image: shale:1
          command: [shaled]
          args: [--data-dir=/var/lib/shale, --csi-endpoint=unix:///csi/csi.sock,
                 "--node-id=$(KUBE_NODE_NAME)"]
          env: [{name: KUBE_NODE_NAME, value: n}]
          securityContext: {privileged: true}
          volumeMounts:
            - {name: socket, mountPath: /csi}
            - {name: kubelet, mountPath: /var/lib/kubelet, mountPropagation: Bidirectional}
            - {name: data, mountPath: /var/lib/shale}
            - {name: dev, mountPath: /dev}
        - name: csi-provisioner
          image: registry.k8s.io/sig-storage/csi-provisioner:v5.2.0
          args: [--csi-address=/csi/csi.sock, --feature-gates=Topology=true,
                 --extra-create-metadata, --node-deployment=true]
          env: [{name: NODE_NAME, value: n}]
          volumeMounts: [{name: socket, mountPath: /csi}]
        - name: reader
          image: busybox:1
          args: [sleep]
          volumeMounts: [{name: clone, mountPath: /data, readOnly: true}]
      volumes:
        - {name: socket, hostPath: {path: /var/lib/kubelet/plugins/csi.shale.io}}
        - {name: kubelet, hostPath: {path: /var/lib/kubelet}}
        - {name: data, hostPath: {path: /var/lib/shale}}
        - {name: dev, hostPath: {path: /dev}}
        - {name: clone, persistentVolumeClaim: {claimName: clone, readOnly: true}}
"""

HELP = "  --data-dir DIR\n  --csi-endpoint ADDR\n  --node-id ID\n"


def good_docs():
    docs, errs = load_yaml_text("selftest", GOOD)
    assert not errs, errs
    return docs


def find(docs, kind, name):
    return [d for d in docs if d.kind == kind and d.name == name][0]


class SelfTest(unittest.TestCase):
    """Each breakage must be reported, with a message naming what is wrong."""

    def test_good_bundle_passes(self):
        errs = validate(good_docs())
        self.assertEqual([], errs, fmt(errs))
        self.assertEqual([], check_shaled_flags(good_docs(), HELP))

    def expect(self, mutate, needle, check=validate):
        docs = copy.deepcopy(good_docs())
        mutate(docs)
        errs = check(docs)
        self.assertTrue(any(needle in e for e in errs),
                        f"expected an error containing {needle!r}, got:{fmt(errs)}")

    def test_broken_yaml(self):
        _, errs = load_yaml_text("broken", "a: [1, 2\nb: c")
        self.assertTrue(errs and "does not parse" in errs[0])

    def test_unknown_kind_and_missing_name(self):
        self.expect(lambda d: d[0].obj.update(kind="Namespce"), "unknown apiVersion/kind")
        self.expect(lambda d: d[1].obj["metadata"].pop("name"), "metadata.name is missing")
        self.expect(lambda d: d[1].obj["metadata"].pop("namespace"), "without metadata.namespace")

    def test_storageclass(self):
        sc = lambda d: find(d, "StorageClass", "data").obj  # noqa: E731
        self.expect(lambda d: sc(d).update(provisioner="other.io"), "provisioner must be")
        self.expect(lambda d: sc(d)["parameters"].update(replica="1"), "unknown parameter")
        self.expect(lambda d: sc(d)["parameters"].update(iops=100), "must be a string")
        self.expect(lambda d: sc(d)["parameters"].update(iops="fast"), "non-negative integer")
        self.expect(lambda d: sc(d)["parameters"].update(burstIops="50"), "is below iops")
        self.expect(lambda d: sc(d)["parameters"].update(fsType="btrfs"), "both fsType")
        self.expect(lambda d: sc(d)["parameters"].update(
            {"csi.storage.k8s.io/fstype": "btrfs"}), "not ext4 or xfs")
        self.expect(lambda d: sc(d)["parameters"].update(replicas="10"), "replicas must be")
        self.expect(lambda d: sc(d)["parameters"].update(replicas="0"), "replicas must be")
        self.expect(lambda d: sc(d)["parameters"].update(replicaNodeSelector="disk=ssd"),
                    "replicaNodeSelector needs replicas")
        self.expect(lambda d: sc(d)["parameters"].update(replicas="3",
                                                         replicaNodeSelector="disk=ssd,,x"),
                    "replicaNodeSelector requirement")
        self.expect(lambda d: sc(d).update(volumeBindingMode="Immediate"),
                    "WaitForFirstConsumer")

    def test_access_modes_and_sources(self):
        pvc = lambda d, n: find(d, "PersistentVolumeClaim", n).obj["spec"]  # noqa: E731
        self.expect(lambda d: pvc(d, "src").update(accessModes=["ReadOnlyMany"]),
                    "serves ReadWriteOnce")
        self.expect(lambda d: pvc(d, "clone").update(accessModes=["ReadWriteOnce"]),
                    "accessModes must be [ReadOnlyMany]")
        self.expect(lambda d: pvc(d, "clone")["dataSource"].update(name="nope"),
                    "dataSource VolumeSnapshot 'nope' does not exist")
        self.expect(lambda d: pvc(d, "clone").pop("dataSource"), "needs a VolumeSnapshot")
        self.expect(lambda d: pvc(d, "clone")["resources"]["requests"].update(storage="1Mi"),
                    "less than the snapshot's source")
        self.expect(lambda d: pvc(d, "src").update(storageClassName="gone"),
                    "StorageClass 'gone' does not exist")
        self.expect(lambda d: find(d, "VolumeSnapshot", "snap").obj["spec"]["source"].update(
            persistentVolumeClaimName="x"), "source PVC 'x' does not exist")

    def test_workload(self):
        spec = lambda d: find(d, "DaemonSet", "node").obj["spec"]["template"]["spec"]  # noqa
        self.expect(lambda d: spec(d)["containers"][0]["volumeMounts"].append(
            {"name": "ghost", "mountPath": "/ghost"}), "refers to no volume")
        self.expect(lambda d: spec(d).update(serviceAccountName="nobody"),
                    "is no ServiceAccount")
        self.expect(lambda d: spec(d)["containers"][0].pop("image"), "image is missing")
        self.expect(lambda d: spec(d)["containers"][0].pop("args"), "args are missing")
        self.expect(lambda d: spec(d)["containers"][0]["securityContext"].update(
            privileged=False), "privileged")
        self.expect(lambda d: spec(d)["containers"][0]["args"].append("--x=$(UNSET)"),
                    "which env does not set")
        self.expect(lambda d: spec(d)["volumes"][4]["persistentVolumeClaim"].update(
            readOnly=False), "must be used with readOnly: true")
        self.expect(lambda d: spec(d)["containers"][1]["args"].append("--leader-election"),
                    "leader election cannot be on")
        self.expect(lambda d: spec(d)["containers"][1].pop("env"), "needs NODE_NAME")
        self.expect(lambda d: spec(d)["containers"].append(
            {"name": "csi-resizer", "image": "registry.k8s.io/sig-storage/csi-resizer:v1.13.2",
             "args": ["--csi-address=/csi/csi.sock"],
             "volumeMounts": spec(d)["containers"][1]["volumeMounts"]}),
            "a resizer on every node needs")
        self.expect(lambda d: spec(d)["containers"][1].update(
            image="registry.k8s.io/sig-storage/csi-provisioner:v3.0.0"), "the flags here are")
        self.expect(lambda d: spec(d)["volumes"][0]["hostPath"].update(path="/tmp/x"),
                    "not the host directory")
        self.expect(lambda d: spec(d)["containers"][0]["args"].append("--nbd-socket=none"),
                    "--nbd-socket none")
        self.expect(lambda d: spec(d)["containers"][0]["volumeMounts"][1].pop(
            "mountPropagation"), "Bidirectional propagation")

    def test_controller_must_follow_shaled(self):
        dep = {"apiVersion": "apps/v1", "kind": "Deployment",
               "metadata": {"name": "ctl", "namespace": "ns"},
               "spec": {"selector": {"matchLabels": {"app": "ctl"}},
                        "template": {"metadata": {"labels": {"app": "ctl"}}, "spec": {
                            "serviceAccountName": "sa",
                            "containers": [{"name": "x", "image": "busybox:1", "args": ["x"],
                                            "volumeMounts": [{"name": "s", "mountPath": "/s"}]}],
                            "volumes": [{"name": "s", "hostPath": {"path": SOCKET_HOST_DIR}}]}}}}
        self.expect(lambda d: d.append(Doc("selftest", 98, dep)), "needs a required podAffinity")

    def test_rbac(self):
        self.expect(lambda d: find(d, "ClusterRole", "r").obj.update(rules=[]), "rules are empty")
        self.expect(lambda d: find(d, "ClusterRoleBinding", "rb").obj["roleRef"].update(
            name="gone"), "does not exist")
        # The provisioner loses its permissions when the role shrinks.
        self.expect(lambda d: find(d, "ClusterRole", "r").obj.update(
            rules=[{"apiGroups": [""], "resources": ["events"], "verbs": ["create"]}]),
            "lacks")

    def test_classes(self):
        vac = {"apiVersion": "storage.k8s.io/v1beta1", "kind": "VolumeAttributesClass",
               "metadata": {"name": "v"}, "driverName": DRIVER,
               "parameters": {"iops": "10", "color": "red"}}
        self.expect(lambda d: d.append(Doc("selftest", 99, vac)), "are not QoS keys")
        self.expect(lambda d: d.append(Doc("selftest", 99, vac)), "sets no value for")
        self.expect(lambda d: find(d, "VolumeSnapshotClass", "snaps").obj.update(
            parameters={"-bad key": "x"}), "not a valid Shale label key")

    def test_kustomization_references(self):
        _, _, errs = kustomization_refs(
            os.path.join(deploy_dir(), "kustomization.yaml"),
            {"kind": "Kustomization", "resources": ["no-such-file.yaml"],
             "patches": [{"path": "no-such-patch.yaml"}]})
        self.assertTrue(any("no-such-file.yaml does not exist" in e for e in errs), errs)
        self.assertTrue(any("no-such-patch.yaml does not exist" in e for e in errs), errs)

    def test_shaled_flag_and_source_checks(self):
        self.expect(lambda d: find(d, "DaemonSet", "node").obj["spec"]["template"]["spec"][
            "containers"][0]["args"].append("--csi-endpoit=x"), "shaled has no flag --csi-endpoit",
            check=lambda docs: check_shaled_flags(docs, HELP))
        errs = check_against_sources(good_docs(), 'kDriver = "csi.shale.io"; "iops"')
        self.assertTrue(any("burstIops" in e for e in errs), errs)
        self.assertTrue(any(TOPOLOGY_KEY in e for e in errs), errs)

    def test_cluster_tls_checks(self):
        # The real overlay, then each way of losing replica TLS: the flag, the mount, the
        # Secret volume's mode, the Certificate, its client usage.
        t = tree()
        good = patched_node(t, "cluster")
        docs = t.docs_under("cluster")
        self.assertEqual([], check_cluster_tls(good, docs))

        def broken(change, want, cluster_docs=None):
            ds = copy.deepcopy(good)
            change(pod_spec(ds))
            errs = check_cluster_tls(ds, docs if cluster_docs is None else cluster_docs)
            self.assertTrue(any(want in e for e in errs), f"want {want!r} in {errs}")

        def shaled(spec):
            return [c for c in spec["containers"] if c["name"] == "shaled"][0]

        def drop_flag(spec):
            shaled(spec)["args"] = [a for a in shaled(spec)["args"]
                                    if not a.startswith("--cluster-tls-dir")]
        broken(drop_flag, "no --cluster-tls-dir")

        def drop_mount(spec):
            shaled(spec)["volumeMounts"] = [m for m in shaled(spec)["volumeMounts"]
                                            if m["mountPath"] != "/etc/shale/replica-tls"]
        broken(drop_mount, "nothing is mounted at --cluster-tls-dir")

        def open_mode(spec):
            for v in spec["volumes"]:
                if get(v, "secret", "secretName") == "shale-replica-tls":
                    v["secret"]["defaultMode"] = 0o644
        broken(open_mode, "defaultMode 0400 or 0600")
        broken(lambda spec: None, "no cert-manager Certificate writes Secret",
               [d for d in docs if d.kind != "Certificate"])
        no_client = copy.deepcopy(docs)
        for d in no_client:
            if d.kind == "Certificate" and d.name == "shale-replica-tls":
                d.obj["spec"]["usages"].remove("client auth")
        broken(lambda spec: None, "usages lack 'client auth'", no_client)


def main():
    global ARGS
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repo", required=True, help="source directory of Shale")
    p.add_argument("--shaled", default="", help="path of the built shaled")
    ARGS, rest = p.parse_known_args()
    ARGS.repo = os.path.abspath(ARGS.repo)
    unittest.main(argv=[sys.argv[0], "-v"] + rest)


if __name__ == "__main__":
    main()
