#!/usr/bin/env python3
"""Sanity checks on rendered manifests (kubectl kustomize / helm template output).

usage: check_rendered.py kustomize BASE.yaml MONITORED.yaml OVERLAY_NAME=OVERLAY.yaml ...
           (MONITORED: the base with the prometheus-operator component)
       check_rendered.py helm DEFAULT.yaml FULL.yaml KUSTOMIZE_BASE.yaml
       check_rendered.py config-dir RENDERED.yaml OUT_DIR
           (writes the ConfigMap's registry files into OUT_DIR, for `pullkeeper check`)
       check_rendered.py installer KUSTOMIZE_BASE.yaml KUSTOMIZE_WITH.yaml HELM_DEFAULT.yaml HELM_WITH.yaml OUT_DIR
           (KUSTOMIZE_WITH: the base with components/credential-provider-installer and a node
           ConfigMap; HELM_WITH: credentialProvider.installer.enabled; writes the kustomize
           installer's registry files into OUT_DIR)

Prints one line per problem and exits 1 if there is any.
"""
import json
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
problems = []


def load(path):
    return [d for d in yaml.safe_load_all(Path(path).read_text()) if d]


def by_kind(docs):
    out = {}
    for d in docs:
        out.setdefault(d["kind"], []).append(d)
    return out


def one(objs, kind, where):
    found = objs.get(kind, [])
    if len(found) != 1:
        problems.append(f"{where}: expected one {kind}, found {len(found)}")
        return {}
    return found[0]


def expect(cond, msg):
    if not cond:
        problems.append(msg)


FORBIDDEN_VERBS = {"*", "update", "deletecollection", "escalate", "bind", "impersonate"}


def check_rbac(objs, where):
    for kind in ("ClusterRole", "Role"):
        for role in objs.get(kind, []):
            for rule in role.get("rules", []):
                for field in ("apiGroups", "resources", "verbs"):
                    expect("*" not in rule.get(field, []), f"{where}: {kind} {role['metadata']['name']} has a wildcard in {field}")
                expect("serviceaccounts/token" not in rule.get("resources", []),
                       f"{where}: {kind} grants serviceaccounts/token")
                if kind == "ClusterRole":
                    bad = FORBIDDEN_VERBS & set(rule.get("verbs", []))
                    expect(not bad, f"{where}: ClusterRole grants {sorted(bad)}")
                if "secrets" in rule.get("resources", []) and not rule.get("resourceNames"):
                    expect(set(rule.get("verbs", [])) <= {"create"},
                           f"{where}: {kind} {role['metadata']['name']} grants {rule.get('verbs')} on every Secret (only create may be unnamed)")


SECRET_VERBS = ["get", "list", "watch", "patch", "delete"]


def split_secret_names(objs, where, expected):
    """Takes the ClusterRole granting Secrets by name (and its binding) out of `objs`, checks it
    (Secrets only, by name, pullkeeper's verbs) and returns its names. `expected`: whether there
    are names to grant (a chart without registries renders no such role)."""
    names = None
    for kind in ("ClusterRole", "ClusterRoleBinding"):
        keep, taken = [], []
        for d in objs.get(kind, []):
            (taken if d["metadata"]["name"].endswith("-secrets") else keep).append(d)
        if kind in objs:
            objs[kind] = keep
        expect(len(taken) == int(expected), f"{where}: expected {int(expected)} {kind} for the Secret names, found {len(taken)}")
        for d in taken:
            if kind == "ClusterRole":
                rules = d.get("rules", [])
                expect(len(rules) == 1, f"{where}: the Secret names role has {len(rules)} rules")
                for rule in rules:
                    expect(rule.get("apiGroups") == [""] and rule.get("resources") == ["secrets"],
                           f"{where}: the Secret names role grants more than Secrets")
                    expect(rule.get("verbs") == SECRET_VERBS, f"{where}: the Secret names role's verbs are {rule.get('verbs')}")
                    expect(bool(rule.get("resourceNames")), f"{where}: the Secret names role names no Secret")
                    names = set(rule.get("resourceNames", []))
    return names or set()


def config_secret_names(objs, where):
    """The secretName of every registry file in the mounted ConfigMap."""
    names = set()
    for key, text in (config_map(objs, where).get("data") or {}).items():
        doc = yaml.safe_load(text) or {}
        if key != "defaults.yaml" and doc.get("secretName"):
            names.add(doc["secretName"])
    return names


def check_admission_policy(objs, where):
    """The guardrails are bound to exactly the Deployment's ServiceAccount."""
    policy = one(objs, "ValidatingAdmissionPolicy", where)
    binding = one(objs, "ValidatingAdmissionPolicyBinding", where)
    expect(binding.get("spec", {}).get("policyName") == policy.get("metadata", {}).get("name"),
           f"{where}: the admission policy binding names another policy")
    expect(binding.get("spec", {}).get("validationActions") == ["Deny"], f"{where}: the admission policy does not deny")
    sa = one(objs, "ServiceAccount", where)["metadata"]
    user = f"system:serviceaccount:{sa.get('namespace')}:{sa.get('name')}"
    conditions = [c.get("expression", "") for c in policy.get("spec", {}).get("matchConditions", [])]
    expect(conditions == [f"request.userInfo.username == '{user}'"],
           f"{where}: the admission policy does not match exactly {user}: {conditions}")
    expect(policy.get("spec", {}).get("failurePolicy") == "Fail", f"{where}: the admission policy does not fail closed")


def check_deployment(dep, where, replicas=2):
    spec = dep.get("spec", {})
    expect(spec.get("replicas") == replicas, f"{where}: replicas {spec.get('replicas')} != {replicas}")
    pod = spec.get("template", {}).get("spec", {})
    psc = pod.get("securityContext", {})
    expect(psc.get("runAsNonRoot") is True, f"{where}: pod runAsNonRoot not true")
    expect(psc.get("runAsUser") == 65532, f"{where}: pod runAsUser not 65532")
    expect(psc.get("seccompProfile", {}).get("type") == "RuntimeDefault", f"{where}: pod seccomp not RuntimeDefault")
    containers = pod.get("containers", [])
    expect(len(containers) == 1, f"{where}: expected one container")
    if not containers:
        return
    c = containers[0]
    sc = c.get("securityContext", {})
    expect(sc.get("readOnlyRootFilesystem") is True, f"{where}: readOnlyRootFilesystem not true")
    expect(sc.get("allowPrivilegeEscalation") is False, f"{where}: allowPrivilegeEscalation not false")
    expect(sc.get("capabilities", {}).get("drop") == ["ALL"], f"{where}: capabilities not dropping ALL")
    expect(sc.get("seccompProfile", {}).get("type") == "RuntimeDefault", f"{where}: container seccomp not RuntimeDefault")
    args = c.get("args", [])
    expect(args[:6] == ["run", "--config", "/etc/pullkeeper", "--admin-addr", "0.0.0.0:9090", "--log-format"],
           f"{where}: unexpected args {args}")
    ports = {p.get("name"): p.get("containerPort") for p in c.get("ports", [])}
    expect(ports.get("admin") == 9090, f"{where}: no admin port 9090")
    expect(c.get("livenessProbe", {}).get("httpGet", {}).get("path") == "/livez", f"{where}: liveness probe not /livez")
    expect(c.get("readinessProbe", {}).get("httpGet", {}).get("path") == "/readyz", f"{where}: readiness probe not /readyz")
    for probe in ("livenessProbe", "readinessProbe"):
        expect(c.get(probe, {}).get("httpGet", {}).get("port") == "admin", f"{where}: {probe} not on port admin")
    res = c.get("resources", {})
    expect(res.get("requests", {}).get("cpu") and res.get("requests", {}).get("memory"), f"{where}: no cpu/memory requests")
    expect(res.get("limits", {}).get("memory"), f"{where}: no memory limit")
    env = {e["name"]: e.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") for e in c.get("env", [])}
    values = {e["name"]: e.get("value") for e in c.get("env", [])}
    expect(values.get("PULLKEEPER_LEADER_ELECT") == "true", f"{where}: leader election not on (replicas would both write)")
    expect(env.get("POD_NAME") == "metadata.name", f"{where}: POD_NAME not from metadata.name")
    expect(env.get("POD_NAMESPACE") == "metadata.namespace", f"{where}: POD_NAMESPACE not from metadata.namespace")
    mounts = {m["mountPath"]: m for m in c.get("volumeMounts", [])}
    expect("/etc/pullkeeper" in mounts and "subPath" not in mounts.get("/etc/pullkeeper", {}),
           f"{where}: config not mounted as a directory at /etc/pullkeeper")
    vols = [v for v in pod.get("volumes", []) if "configMap" in v]
    expect(len(vols) == 1, f"{where}: expected one ConfigMap volume")


OPERATOR_KINDS = ("ServiceMonitor", "PrometheusRule")


def check_no_operator_kinds(objs, where):
    """What a bare cluster must accept: no kind of the Prometheus Operator's CRDs."""
    for kind in OPERATOR_KINDS:
        expect(kind not in objs, f"{where}: renders a {kind}, which a cluster without the Prometheus Operator rejects")
    for kind, docs in objs.items():
        for d in docs:
            expect(not d.get("apiVersion", "").startswith("monitoring.coreos.com/"),
                   f"{where}: {kind} {d['metadata']['name']} needs the Prometheus Operator's CRDs")


def split_pod_recovery(objs, where):
    """Takes the optional pod-recovery ClusterRole and binding out of `objs` (checked here: Pods
    only, list/watch and at most delete, bound to pullkeeper's ServiceAccount) and returns them."""
    taken = {}
    for kind in ("ClusterRole", "ClusterRoleBinding"):
        keep = []
        for d in objs.get(kind, []):
            (taken.setdefault(kind, []) if d["metadata"]["name"].endswith("-pod-recovery") else keep).append(d)
        if kind in objs:
            objs[kind] = keep
    for role in taken.get("ClusterRole", []):
        for rule in role.get("rules", []):
            expect(rule.get("apiGroups") == [""] and rule.get("resources") == ["pods"],
                   f"{where}: the pod-recovery ClusterRole grants more than Pods")
            expect(set(rule.get("verbs", [])) <= {"list", "watch", "delete"} and {"list", "watch"} <= set(rule.get("verbs", [])),
                   f"{where}: the pod-recovery ClusterRole's verbs are {rule.get('verbs')}")
    expect(len(taken.get("ClusterRole", [])) == len(taken.get("ClusterRoleBinding", [])),
           f"{where}: the pod-recovery ClusterRole and its binding come together")
    return taken


# The base's Secret names role lists a placeholder until an overlay replaces it with the names of
# its registry files (the base and the overlays ship none: deploy/README.md).
BASE_NAMES = ("ecr-pull",)


def check_common(objs, where, replicas=2, with_monitoring=True, policy=True, extra_names=()):
    objs = dict(objs)
    split_pod_recovery(objs, where)
    wanted = config_secret_names(objs, where) | set(extra_names)
    names = split_secret_names(objs, where, bool(wanted))
    expect(names == wanted, f"{where}: the role grants Secrets {sorted(names)}, the registry files name {sorted(wanted)}")
    if policy:
        check_admission_policy(objs, where)
    for kind in ["ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding",
                 "Deployment", "Service", "PodDisruptionBudget"] + (["ServiceMonitor", "PrometheusRule"] if with_monitoring else []):
        one(objs, kind, where)
    check_rbac(objs, where)
    check_deployment(one(objs, "Deployment", where), where, replicas)
    sa = one(objs, "ServiceAccount", where)
    dep = one(objs, "Deployment", where)
    expect(dep.get("spec", {}).get("template", {}).get("spec", {}).get("serviceAccountName") == sa.get("metadata", {}).get("name"),
           f"{where}: Deployment does not use the ServiceAccount")
    svc = one(objs, "Service", where)
    expect(any(p.get("port") == 9090 and p.get("targetPort") == "admin" for p in svc.get("spec", {}).get("ports", [])),
           f"{where}: Service has no port 9090 -> admin")
    cm = config_map(objs, where)
    for key, text in (cm.get("data") or {}).items():
        expect(key.endswith(".yaml"), f"{where}: ConfigMap key {key} is not a .yaml file")
        try:
            doc = yaml.safe_load(text)
            expect(key == "defaults.yaml" or "provider" in doc, f"{where}: registry file {key} has no provider")
        except yaml.YAMLError as e:
            problems.append(f"{where}: ConfigMap key {key} is not YAML: {e}")
    if with_monitoring:
        rules = yaml.safe_load((ROOT / "dashboards/alerts.yaml").read_text())
        pr = one(objs, "PrometheusRule", where)
        expect(pr.get("spec", {}).get("groups") == rules["groups"], f"{where}: PrometheusRule differs from dashboards/alerts.yaml")


def config_map(objs, where):
    """The ConfigMap the Deployment mounts as its config directory."""
    dep = one(objs, "Deployment", where)
    names = [v["configMap"]["name"] for v in dep.get("spec", {}).get("template", {}).get("spec", {}).get("volumes", [])
             if "configMap" in v]
    found = [c for c in objs.get("ConfigMap", []) if c["metadata"]["name"] in names]
    if len(found) != 1:
        problems.append(f"{where}: expected one ConfigMap mounted by the Deployment, found {len(found)}")
        return {}
    return found[0]


def pod_labels(objs, where):
    return one(objs, "Deployment", where).get("spec", {}).get("template", {}).get("metadata", {}).get("labels", {})


def sa_annotations(objs, where):
    return one(objs, "ServiceAccount", where).get("metadata", {}).get("annotations") or {}


def kustomize(base_path, monitored_path, overlays):
    base = by_kind(load(base_path))
    check_common(base, "kustomize base", with_monitoring=False, extra_names=BASE_NAMES)
    # No registry file runs unless the user wrote it: an overlay merging its own files into the
    # ConfigMap must not keep a sample running (deploy/README.md, "Your registry files").
    expect(not (config_map(base, "kustomize base").get("data") or {}),
           "kustomize base: the ConfigMap ships a registry file; it must ship none")
    check_no_operator_kinds(base, "kustomize base")
    # The component adds exactly the ServiceMonitor and the PrometheusRule, and changes nothing else.
    monitored = by_kind(load(monitored_path))
    where = "kustomize base + components/prometheus-operator"
    check_common(monitored, where, extra_names=BASE_NAMES)
    expect({k: v for k, v in monitored.items() if k not in OPERATOR_KINDS} == base,
           f"{where}: the component changes more than it adds")
    sm = one(monitored, "ServiceMonitor", where)
    svc = one(base, "Service", "kustomize base")
    expect(sm.get("spec", {}).get("selector", {}).get("matchLabels", {}).items()
           <= svc.get("metadata", {}).get("labels", {}).items(),
           f"{where}: the ServiceMonitor does not select the Service")
    expect(any(e.get("port") in {p.get("name") for p in svc.get("spec", {}).get("ports", [])}
               for e in sm.get("spec", {}).get("endpoints", [])),
           f"{where}: the ServiceMonitor scrapes no port of the Service")
    ns = one(base, "Namespace", "kustomize base")
    expect(ns.get("metadata", {}).get("labels", {}).get("pod-security.kubernetes.io/enforce") == "restricted",
           "kustomize base: namespace does not enforce the restricted Pod Security Standard")
    # The base's RBAC is rbac.yaml verbatim, its guardrails admission-policy.yaml.
    rbac = by_kind(load(ROOT / "deploy/kustomize/base/rbac.yaml"))
    for kind in ("ClusterRole", "Role"):
        rules = lambda objs: sorted((d["metadata"]["name"], json.dumps(d["rules"], sort_keys=True)) for d in objs.get(kind, []))
        expect(rules(base) == rules(rbac), f"kustomize base: {kind} rules changed")
    policy = by_kind(load(ROOT / "deploy/kustomize/base/admission-policy.yaml"))
    for kind in ("ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding"):
        expect(one(base, kind, "base") == one(policy, kind, "admission-policy.yaml"), f"kustomize base: {kind} changed")
    wanted = {
        "eks-irsa": ({"eks.amazonaws.com/role-arn"}, set()),
        "eks-pod-identity": (set(), set()),
        "gke": ({"iam.gke.io/gcp-service-account"}, set()),
        "aks": ({"azure.workload.identity/client-id"}, {"azure.workload.identity/use"}),
    }
    for spec in overlays:
        name, path = spec.split("=", 1)
        objs = by_kind(load(path))
        where = f"overlay {name}"
        check_common(objs, where, with_monitoring=False, extra_names=BASE_NAMES)
        check_no_operator_kinds(objs, where)
        expect(not (config_map(objs, where).get("data") or {}),
               f"{where}: the ConfigMap ships a registry file; it must ship none")
        annotations, labels = wanted[name]
        expect(set(sa_annotations(objs, where)) >= annotations, f"{where}: ServiceAccount lacks {annotations}")
        expect(set(pod_labels(objs, where)) >= labels, f"{where}: pod lacks labels {labels}")
        if name == "aks":
            expect(pod_labels(objs, where).get("azure.workload.identity/use") == "true", f"{where}: use label not \"true\"")
        if name == "eks-pod-identity":
            expect(not sa_annotations(objs, where), f"{where}: Pod Identity needs no ServiceAccount annotation")


def helm(default_path, full_path, kustomize_path):
    default = by_kind(load(default_path))
    check_common(default, "helm defaults", with_monitoring=False)
    # The defaults must install on a cluster without the Prometheus Operator.
    check_no_operator_kinds(default, "helm defaults")
    full = by_kind(load(full_path))
    values = yaml.safe_load((ROOT / "deploy/helm/pullkeeper/ci/full-values.yaml").read_text())
    check_common(full, "helm full values", replicas=3, extra_names=values["rbac"]["extraSecretNames"])
    where = "helm full values"
    cm = config_map(full, where).get("data") or {}
    expect(set(cm) == {f"{n}.yaml" for n in values["registries"]}, f"{where}: ConfigMap keys {sorted(cm)}")
    for name, registry in values["registries"].items():
        expect(yaml.safe_load(cm.get(f"{name}.yaml", "")) == registry, f"{where}: {name}.yaml does not equal its values")
    expect(sa_annotations(full, where) == values["serviceAccount"]["annotations"], f"{where}: ServiceAccount annotations")
    expect(pod_labels(full, where).get("azure.workload.identity/use") == "true", f"{where}: podLabels not applied")
    c = one(full, "Deployment", where)["spec"]["template"]["spec"]["containers"][0]
    expect(c.get("resources") == values["resources"], f"{where}: resources not applied")
    for kind in ("ServiceMonitor", "PrometheusRule"):
        expect(one(full, kind, where)["metadata"].get("labels", {}).get("release") == "kube-prometheus-stack",
               f"{where}: {kind} labels not applied")
    dashboards = [c for c in full.get("ConfigMap", []) if c["metadata"]["name"].endswith("-dashboard")]
    expect(len(dashboards) == 1, f"{where}: expected one Grafana dashboard ConfigMap")
    expect(not any(c["metadata"]["name"].endswith("-dashboard") for c in default.get("ConfigMap", [])),
           "helm defaults: dashboard ConfigMap rendered although disabled")
    for c in dashboards:
        expect(c["metadata"].get("namespace") == values["grafanaDashboard"]["namespace"], f"{where}: dashboard namespace")
        expect(c["metadata"].get("labels", {}).get("grafana_dashboard") == "1", f"{where}: dashboard lacks the sidecar label")
        expect(json.loads(c["data"]["pullkeeper.json"]) == json.loads((ROOT / "dashboards/pullkeeper.json").read_text()),
               f"{where}: dashboard ConfigMap differs from dashboards/pullkeeper.json")
    # Same permissions, guardrails and pod as the kustomize base.
    base = by_kind(load(kustomize_path))
    main_role = lambda objs: [d for d in objs.get("ClusterRole", []) if not d["metadata"]["name"].endswith(("-secrets", "-pod-recovery"))]
    expect([d["rules"] for d in main_role(default)] == [d["rules"] for d in main_role(base)],
           "helm: ClusterRole rules differ from deploy/kustomize/base/rbac.yaml")
    expect(one(default, "Role", "helm")["rules"] == one(base, "Role", "kustomize")["rules"],
           "helm: Role rules differ from deploy/kustomize/base/rbac.yaml")
    without_identity = lambda p: {k: v for k, v in p.get("spec", {}).items() if k != "matchConditions"}
    expect(without_identity(one(default, "ValidatingAdmissionPolicy", "helm")) ==
           without_identity(one(base, "ValidatingAdmissionPolicy", "kustomize")),
           "helm: the admission policy differs from deploy/kustomize/base/admission-policy.yaml")
    hc = one(default, "Deployment", "helm")["spec"]["template"]["spec"]
    kc = one(base, "Deployment", "kustomize")["spec"]["template"]["spec"]
    expect(hc["securityContext"] == kc["securityContext"], "helm: pod securityContext differs from the kustomize base")
    for field in ("args", "env", "ports", "livenessProbe", "readinessProbe", "resources", "securityContext", "volumeMounts"):
        expect(hc["containers"][0].get(field) == kc["containers"][0].get(field),
               f"helm: container {field} differs from the kustomize base")


INSTALLER_OWN = ("Namespace", "DaemonSet", "ConfigMap")


def flag(args, name):
    """The value of `--name VALUE` or `--name=VALUE` in a container's args."""
    for i, a in enumerate(args):
        if a == name and i + 1 < len(args):
            return args[i + 1]
        if a.startswith(name + "="):
            return a[len(name) + 1:]
    return None


def installer_objects(objs):
    """The credential-provider installer's objects: everything in its DaemonSet's namespace, and
    that Namespace."""
    ds = objs.get("DaemonSet", [])
    ns = ds[0]["metadata"].get("namespace") if ds else None
    return ns, {k: [d for d in v if d["metadata"].get("namespace") == ns or (k == "Namespace" and d["metadata"]["name"] == ns)]
                for k, v in objs.items()}


def check_installer(objs, where):
    """The node installer DaemonSet: its own namespace (Pod Security "privileged", not
    pullkeeper's), no API token, root without any capability or privilege, read-only root
    filesystem, exactly two hostPath directories — the kubelet's provider bin dir and the
    directory of its provider config — mounted under --host-prefix, the config ConfigMap read-only."""
    ds = one(objs, "DaemonSet", where)
    ns = ds.get("metadata", {}).get("namespace")
    expect(ns and ns != "pullkeeper", f"{where}: the installer runs in pullkeeper's namespace {ns!r} (restricted) instead of its own")
    namespaces = [n for n in objs.get("Namespace", []) if n["metadata"]["name"] == ns]
    expect(len(namespaces) == 1, f"{where}: no Namespace {ns} for the installer")
    for n in namespaces:
        expect(n["metadata"].get("labels", {}).get("pod-security.kubernetes.io/enforce") == "privileged",
               f"{where}: namespace {ns} does not say it enforces the privileged Pod Security level")
    pod = ds.get("spec", {}).get("template", {}).get("spec", {})
    expect(pod.get("automountServiceAccountToken") is False, f"{where}: the installer mounts a ServiceAccount token")
    for host in ("hostNetwork", "hostPID", "hostIPC"):
        expect(not pod.get(host), f"{where}: the installer uses {host}")
    expect({"operator": "Exists"} in pod.get("tolerations", []), f"{where}: the installer does not tolerate tainted nodes")
    psc = pod.get("securityContext", {})
    expect(psc.get("runAsUser") == 0, f"{where}: the installer does not run as root (it writes root-owned files)")
    expect(psc.get("seccompProfile", {}).get("type") == "RuntimeDefault", f"{where}: installer seccomp not RuntimeDefault")
    expect(not pod.get("initContainers"), f"{where}: the installer has init containers")
    containers = pod.get("containers", [])
    expect(len(containers) == 1, f"{where}: the installer has {len(containers)} containers")
    if not containers:
        return
    c = containers[0]
    sc = c.get("securityContext", {})
    expect(sc.get("privileged") is False, f"{where}: the installer is privileged")
    expect(sc.get("allowPrivilegeEscalation") is False, f"{where}: installer allowPrivilegeEscalation not false")
    expect(sc.get("readOnlyRootFilesystem") is True, f"{where}: installer readOnlyRootFilesystem not true")
    expect(sc.get("capabilities", {}).get("drop") == ["ALL"] and not sc.get("capabilities", {}).get("add"),
           f"{where}: the installer keeps capabilities")
    expect(c.get("resources", {}).get("limits", {}).get("memory"), f"{where}: installer has no memory limit")
    args = c.get("args", [])
    expect(args[:1] == ["node-install"], f"{where}: the installer does not run node-install: {args}")
    prefix = flag(args, "--host-prefix")
    bin_dir, config = flag(args, "--bin-dir"), flag(args, "--provider-config")
    node_dir, images = flag(args, "--node-config-dir"), flag(args, "--match-images")
    expect(prefix and bin_dir and config and node_dir and images, f"{where}: installer args lack a path or --match-images: {args}")
    if not (prefix and bin_dir and config and node_dir):
        return
    wanted = {bin_dir, str(Path(config).parent)}
    host_paths = {}
    for v in pod.get("volumes", []):
        if "hostPath" in v:
            host_paths[v["name"]] = v["hostPath"]
            expect(v["hostPath"].get("type") == "Directory", f"{where}: hostPath {v['hostPath'].get('path')} is not type Directory")
        else:
            expect(set(v) == {"name", "configMap"}, f"{where}: the installer has a volume other than hostPath and its ConfigMap: {v}")
    expect({h.get("path") for h in host_paths.values()} == wanted,
           f"{where}: the installer mounts host paths {sorted(h.get('path') for h in host_paths.values())}, expected only {sorted(wanted)}")
    expect(any(node_dir.startswith(d.rstrip("/") + "/") for d in wanted),
           f"{where}: --node-config-dir {node_dir} lies outside the mounted host directories")
    mounts = {m["name"]: m for m in c.get("volumeMounts", [])}
    for name, h in host_paths.items():
        expect(mounts.get(name, {}).get("mountPath") == prefix.rstrip("/") + h.get("path", ""),
               f"{where}: hostPath {h.get('path')} is not mounted at {prefix}{h.get('path')}")
    cms = [v for v in pod.get("volumes", []) if "configMap" in v]
    expect(len(cms) == 1 and mounts.get(cms[0]["name"] if cms else "", {}).get("mountPath") == flag(args, "--config")
           and mounts.get(cms[0]["name"] if cms else "", {}).get("readOnly") is True,
           f"{where}: the installer's ConfigMap is not mounted read-only at --config")


def installer_config_map(objs, where):
    ds = one(objs, "DaemonSet", where)
    names = [v["configMap"]["name"] for v in ds.get("spec", {}).get("template", {}).get("spec", {}).get("volumes", []) if "configMap" in v]
    found = [c for c in objs.get("ConfigMap", []) if c["metadata"]["name"] in names
             and c["metadata"].get("namespace") == ds["metadata"].get("namespace")]
    expect(len(found) == 1, f"{where}: expected one ConfigMap mounted by the installer in its namespace, found {len(found)}")
    return found[0] if found else {}


def installer(base_path, with_path, helm_default_path, helm_with_path, out_dir):
    base = by_kind(load(base_path))
    with_ = by_kind(load(with_path))
    where = "kustomize base + components/credential-provider-installer"
    ns, own = installer_objects(with_)
    check_installer(own, where)
    rest = {k: [d for d in v if d not in own.get(k, [])] for k, v in with_.items()}
    rest = {k: v for k, v in rest.items() if v}
    expect(rest == base, f"{where}: the component changes more than it adds")
    expect({k for k, v in own.items() if v} <= set(INSTALLER_OWN), f"{where}: the component adds {sorted(k for k, v in own.items() if v)}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for key, text in (installer_config_map(own, where).get("data") or {}).items():
        (out / key).write_text(text)

    default = by_kind(load(helm_default_path))
    expect("DaemonSet" not in default, "helm defaults: the installer DaemonSet is rendered although off by default")
    helm_with = by_kind(load(helm_with_path))
    hwhere = "helm credentialProvider.installer.enabled"
    hns, hown = installer_objects(helm_with)
    check_installer(hown, hwhere)
    expect(hns == ns, f"{hwhere}: the installer's namespace {hns} differs from the component's {ns}")
    hpod = one(hown, "DaemonSet", hwhere).get("spec", {}).get("template", {}).get("spec", {})
    kpod = one(own, "DaemonSet", where).get("spec", {}).get("template", {}).get("spec", {})
    for field in ("securityContext", "automountServiceAccountToken", "enableServiceLinks", "tolerations", "nodeSelector"):
        expect(hpod.get(field) == kpod.get(field), f"helm: installer pod {field} differs from the kustomize component")
    strip = lambda vols: [{k: v for k, v in vol.items() if k != "configMap"} for vol in vols]
    expect(strip(hpod.get("volumes", [])) == strip(kpod.get("volumes", [])), "helm: installer hostPath volumes differ from the kustomize component")
    for field in ("args", "securityContext", "resources", "volumeMounts"):
        expect(hpod["containers"][0].get(field) == kpod["containers"][0].get(field),
               f"helm: installer container {field} differs from the kustomize component")
    expect(one(hown, "Namespace", hwhere)["metadata"].get("labels", {}).get("pod-security.kubernetes.io/enforce")
           == one(own, "Namespace", where)["metadata"].get("labels", {}).get("pod-security.kubernetes.io/enforce"),
           "helm: the installer namespace's Pod Security level differs from the kustomize component's")
    expect(bool(installer_config_map(hown, hwhere).get("data")), f"{hwhere}: the node ConfigMap holds no registry file")


def main():
    mode = sys.argv[1] if len(sys.argv) > 1 else ""
    if mode == "kustomize" and len(sys.argv) >= 4:
        kustomize(sys.argv[2], sys.argv[3], sys.argv[4:])
    elif mode == "helm" and len(sys.argv) == 5:
        helm(*sys.argv[2:])
    elif mode == "kustomize-user" and len(sys.argv) == 3:
        # An overlay with its own registry files: the common checks, the role naming exactly them.
        objs = by_kind(load(sys.argv[2]))
        check_common(objs, "user overlay", with_monitoring=False)
        expect(bool(config_secret_names(objs, "user overlay")), "user overlay: no registry file")
    elif mode == "installer" and len(sys.argv) == 7:
        installer(*sys.argv[2:])
    elif mode == "config-dir" and len(sys.argv) == 4:
        out = Path(sys.argv[3])
        out.mkdir(parents=True, exist_ok=True)
        data = config_map(by_kind(load(sys.argv[2])), sys.argv[2]).get("data") or {}
        for key, text in data.items():
            (out / key).write_text(text)
    else:
        print(__doc__, file=sys.stderr)
        return 2
    for p in problems:
        print(f"FAIL: {p}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
