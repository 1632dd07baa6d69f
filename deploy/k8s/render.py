#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Renders Kubernetes manifests for a baton cluster from the values baton-plan writes.

    build/bin/baton-plan ... --values values.yaml
    python3 deploy/k8s/render.py --values values.yaml --image REGISTRY/baton:TAG \
        --model-pvc models > baton.yaml
    kubectl apply -f baton.yaml

What it writes (one YAML stream, docs/kubernetes.md):
- the router: a Deployment of one pod and a Service (clients on port 5555, daemons on 5556),
  its HTTP /metrics (Prometheus, with the usual scrape annotations) and /health (the pod's
  readiness probe: ready once the cluster can serve) on port 9090;
  with the slo-aware policy, a ConfigMap holding the latency profile it reads;
- one Deployment per role the plan uses (prefill, decode, colocated), with the plan's replica
  count, batch limits and KV memory, one GPU per pod on the cuda backend;
- low node affinity: prefill and decode pods prefer to share nodes (the plan's units); high:
  no constraint between them.

The daemons find each other through the router (they connect to it; KV addresses travel with
the assignments), so no per-pod Service is needed; KV moves pod to pod over UCX and kvx's own
TCP connection, on the pods' IPs (docs/kvx.md). Each daemon runs one instance on one device:
a plan with tensor or pipeline parallel degrees above 1 is refused.
"""
import argparse
import json
import os
import sys

import yaml

ROUTER = "baton-router"
CLIENT_PORT = 5555
CLUSTER_PORT = 5556
METRICS_PORT = 9090
ROLES = ("prefill", "decode", "colocated")
PROFILE_PATH = "/etc/baton/profile.json"
MODEL_DIR = "/models"


class RenderError(Exception):
    pass


class Dumper(yaml.SafeDumper):
    """Multi-line strings (the profile) as literal blocks, as a person would write them."""


Dumper.add_representer(str, lambda d, s: d.represent_scalar(
    "tag:yaml.org,2002:str", s, style="|" if "\n" in s else None))


def labels(component):
    return {"app.kubernetes.io/name": "baton", "app.kubernetes.io/component": component}


def container(name, image, binary, args, gpus, mounts):
    c = {"name": name, "image": image, "command": [binary], "args": args,
         "volumeMounts": mounts}
    if gpus:
        c["resources"] = {"limits": {"nvidia.com/gpu": gpus}}
    return c


def deployment(name, component, replicas, containers, volumes, extra_spec=None, grace=60):
    spec = {"terminationGracePeriodSeconds": grace, "containers": containers,
            "volumes": volumes}
    spec.update(extra_spec or {})
    return {"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": name, "labels": labels(component)},
            "spec": {"replicas": replicas,
                     "selector": {"matchLabels": labels(component)},
                     "template": {"metadata": {"labels": labels(component)}, "spec": spec}}}


def model_volume(a):
    if a.model_pvc:
        return {"name": "models", "persistentVolumeClaim": {"claimName": a.model_pvc,
                                                            "readOnly": True}}
    return {"name": "models", "hostPath": {"path": a.model_host_path, "type": "Directory"}}


def int_field(role, v, key):
    x = v.get(key, 0)
    if not isinstance(x, int) or x < 0:
        raise RenderError(f"values: {role}.{key} must be a non-negative integer, not {x!r}")
    return x


def daemon(role, v, a, model_file, affinity):
    replicas = int_field(role, v, "replicas")
    tp, pp = int_field(role, v, "tensorParallel"), int_field(role, v, "pipelineParallel")
    if replicas and tp * pp > 1:
        raise RenderError(f"values: {role} asks for tensor parallel {tp} x pipeline parallel "
                          f"{pp}; baton's daemons run each instance on one device (plan with "
                          f"profiles of tensor parallel degree 1)")
    args = ["--router", f"tcp://{ROUTER}:{CLUSTER_PORT}",
            "--model", f"{MODEL_DIR}/{os.path.basename(model_file)}",
            "--backend", a.backend,
            "--max-batch-tokens", str(int_field(role, v, "maxBatchTokens") or 512),
            "--max-batch-seqs", str(int_field(role, v, "maxBatchSeqs") or 64)]
    kv = int_field(role, v, "kvCacheBytes")
    if kv:
        args += ["--kv-mem", str(kv)]
    if a.backend == "cpu" and a.threads:
        args += ["--threads", str(a.threads)]
    extra = {}
    other = {"prefill": "decode", "decode": "prefill"}.get(role)
    if affinity == "low" and other:
        # The plan's units put prefill and decode stages on the same nodes, where KV moves
        # over the fastest link: ask the scheduler for it.
        extra["affinity"] = {"podAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
            {"weight": 100, "podAffinityTerm": {"labelSelector": {"matchLabels": labels(other)},
                                                "topologyKey": "kubernetes.io/hostname"}}]}}
    gpus = 1 if a.backend == "cuda" else 0
    c = container(role, a.image, f"baton-{role}", args, gpus,
                  [{"name": "models", "mountPath": MODEL_DIR, "readOnly": True}])
    # SIGTERM drains (stop accepting, finish what is running); give it time.
    return deployment(f"baton-{role}", role, replicas, [c], [model_volume(a)], extra,
                      grace=a.drain_seconds)


def router(r, a, model_file):
    policy = r.get("policy", "least-loaded")
    args = ["--port", str(CLIENT_PORT), "--cluster-port", str(CLUSTER_PORT),
            "--policy", policy,
            "--model", f"{MODEL_DIR}/{os.path.basename(model_file)}",
            "--slo-ttft-ms", str(r.get("sloTtftMs", 1000)),
            "--slo-tpot-ms", str(r.get("sloTpotMs", 100)),
            "--metrics-port", str(METRICS_PORT)]
    mounts = [{"name": "models", "mountPath": MODEL_DIR, "readOnly": True}]
    volumes = [model_volume(a)]
    docs = []
    profile = a.profile or r.get("profile")
    if policy == "slo-aware" and not profile:
        raise RenderError("values: router.policy slo-aware needs a profile (router.profile or "
                          "--profile)")
    if profile:
        try:
            with open(profile) as f:
                text = f.read()
            json.loads(text)
        except (OSError, ValueError) as e:
            raise RenderError(f"profile {profile}: {e}")
        docs.append({"apiVersion": "v1", "kind": "ConfigMap",
                     "metadata": {"name": "baton-profile", "labels": labels("router")},
                     "data": {"profile.json": text}})
        args += ["--profile", PROFILE_PATH]
        mounts.append({"name": "profile", "mountPath": os.path.dirname(PROFILE_PATH),
                       "readOnly": True})
        volumes.append({"name": "profile", "configMap": {"name": "baton-profile"}})
    c = container("router", a.image, "baton-router", args, 0, mounts)
    c["ports"] = [{"name": "client", "containerPort": CLIENT_PORT},
                  {"name": "cluster", "containerPort": CLUSTER_PORT},
                  {"name": "metrics", "containerPort": METRICS_PORT}]
    c["readinessProbe"] = {"httpGet": {"path": "/health", "port": "metrics"},
                           "periodSeconds": 5, "failureThreshold": 2}
    d = deployment(ROUTER, "router", 1, [c], volumes, grace=a.drain_seconds)
    d["spec"]["template"]["metadata"]["annotations"] = {
        "prometheus.io/scrape": "true", "prometheus.io/port": str(METRICS_PORT),
        "prometheus.io/path": "/metrics"}
    docs.append(d)
    docs.append({"apiVersion": "v1", "kind": "Service",
                 "metadata": {"name": ROUTER, "labels": labels("router")},
                 "spec": {"selector": labels("router"),
                          "ports": [{"name": "client", "port": CLIENT_PORT,
                                     "targetPort": "client"},
                                    {"name": "cluster", "port": CLUSTER_PORT,
                                     "targetPort": "cluster"},
                                    {"name": "metrics", "port": METRICS_PORT,
                                     "targetPort": "metrics"}]}})
    return docs


def render(values, a):
    if not isinstance(values, dict):
        raise RenderError("values: not a mapping")
    model = values.get("model") or {}
    model_file = a.model_file or model.get("file")
    if not model_file:
        raise RenderError("values: model.file is missing (baton-plan --model-file, or "
                          "--model-file here)")
    affinity = (values.get("placement") or {}).get("affinity", "high")
    docs = router(values.get("router") or {}, a, model_file)
    used = 0
    for role in ROLES:
        v = values.get(role) or {}
        if int_field(role, v, "replicas"):
            docs.append(daemon(role, v, a, model_file, affinity))
            used += 1
    if not used:
        raise RenderError("values: no instances (prefill, decode and colocated replicas all 0)")
    for d in docs:
        if a.namespace:
            d["metadata"]["namespace"] = a.namespace
    return docs


def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--values", required=True, help="values YAML from baton-plan --values")
    ap.add_argument("--image", default="baton:latest",
                    help="container image with baton's programs on PATH (default baton:latest)")
    vol = ap.add_mutually_exclusive_group(required=True)
    vol.add_argument("--model-pvc", help="PersistentVolumeClaim holding the model file")
    vol.add_argument("--model-host-path", help="directory on every node holding the model file")
    ap.add_argument("--model-file", help="model file name (default: the values' model.file)")
    ap.add_argument("--profile", help="latency profile for the router (default: the values' "
                    "router.profile, read from here)")
    ap.add_argument("--backend", default="cuda", choices=("cuda", "cpu"),
                    help="compute backend of the daemons (default cuda: one GPU per pod)")
    ap.add_argument("--threads", type=int, default=0, help="cpu backend: compute threads")
    ap.add_argument("--namespace", help="namespace for every object")
    ap.add_argument("--drain-seconds", type=int, default=60,
                    help="terminationGracePeriodSeconds: time a pod has to drain (default 60)")
    ap.add_argument("-o", "--out", help="write here instead of standard output")
    return ap.parse_args(argv)


def main(argv=None):
    a = parse_args(argv)
    try:
        with open(a.values) as f:
            values = yaml.safe_load(f)
        docs = render(values, a)
    except (OSError, yaml.YAMLError, RenderError) as e:
        sys.stderr.write(f"render: {e}\n")
        return 1
    text = yaml.dump_all(docs, Dumper=Dumper, sort_keys=False, default_flow_style=False)
    if a.out:
        with open(a.out, "w") as f:
            f.write(text)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
