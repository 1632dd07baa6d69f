#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Tests deploy/k8s/render.py on values that baton-plan writes: the objects and their wiring
(selectors, ports, the router's address), replica counts and limits as planned, every flag
given to a program being one that program takes (checked against its --help), the low-affinity
rule, and the refusals (parallel degrees above 1, slo-aware without a profile, no model file,
malformed values). Run from the source tree with BATON_BINARY_DIR set (ctest does both)."""
import os
import subprocess
import sys
import tempfile
import unittest

import yaml

HERE = os.path.dirname(os.path.abspath(__file__))
SRC = os.path.dirname(os.path.dirname(HERE))
BIN = os.path.join(os.environ.get("BATON_BINARY_DIR", os.path.join(SRC, "build")), "bin")
RENDER = os.path.join(HERE, "render.py")
PROFILE = os.path.join(SRC, "docs", "profiles", "baton-110m-cpu-2threads.json")


def plan(tmp, algorithm, policy="least-loaded"):
    """Runs baton-plan for the 110m model on a small cluster; returns the values file."""
    out = os.path.join(tmp, f"values-{algorithm}-{policy}.yaml")
    subprocess.run([os.path.join(BIN, "baton-plan"), "--model", "110m", "--profiles", PROFILE,
                    "--nodes", "2", "--gpus-per-node", "4", "--gpu-mem", "8G",
                    "--inter-gbps", "1", "--prompt-len", "64", "--prompt-max", "256",
                    "--output-len", "16", "--output-max", "64", "--rate", "4",
                    "--slo-ttft-ms", "700", "--slo-tpot-ms", "30", "--requests", "300",
                    "--algorithm", algorithm, "--policy", policy, "--max-tp", "1",
                    "--model-file", "/data/110m-q8_0.gguf", "--values", out],
                   check=True, capture_output=True, cwd=SRC)
    return out


def render(*args):
    p = subprocess.run([sys.executable, RENDER] + list(args), capture_output=True, text=True,
                       cwd=SRC)
    docs = list(yaml.safe_load_all(p.stdout)) if p.returncode == 0 else None
    return p.returncode, docs, p.stderr


_help = {}


def flags_of(binary):
    """The --options a program lists in its --help."""
    if binary not in _help:
        p = subprocess.run([os.path.join(BIN, binary), "--help"], capture_output=True,
                           text=True)
        text = p.stdout + p.stderr
        _help[binary] = {w for line in text.splitlines() for w in line.split()
                         if w.startswith("--")}
    return _help[binary]


def by_kind(docs, kind):
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


class RenderTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory()

    @classmethod
    def tearDownClass(cls):
        cls.tmp.cleanup()

    def check_wiring(self, docs, values):
        deps = by_kind(docs, "Deployment")
        svc = by_kind(docs, "Service")["baton-router"]
        self.assertEqual(deps["baton-router"]["spec"]["replicas"], 1)
        for name, d in deps.items():
            tmpl = d["spec"]["template"]
            self.assertEqual(d["spec"]["selector"]["matchLabels"], tmpl["metadata"]["labels"])
            vols = {v["name"] for v in tmpl["spec"]["volumes"]}
            for c in tmpl["spec"]["containers"]:
                binary = c["command"][0]
                self.assertTrue(os.path.exists(os.path.join(BIN, binary)), binary)
                known = flags_of(binary)
                for arg in c["args"]:
                    if arg.startswith("--"):
                        self.assertIn(arg, known, f"{binary} takes no {arg}")
                for m in c["volumeMounts"]:
                    self.assertIn(m["name"], vols)
                args = dict(zip(c["args"][::2], c["args"][1:][::2]))
                self.assertEqual(args["--model"], "/models/110m-q8_0.gguf")
                if name != "baton-router":
                    self.assertEqual(args["--router"], "tcp://baton-router:5556")
        router_pod = deps["baton-router"]["spec"]["template"]
        self.assertEqual(svc["spec"]["selector"], router_pod["metadata"]["labels"])
        rc = router_pod["spec"]["containers"][0]
        ports = {p["name"] for p in rc["ports"]}
        self.assertEqual({p["targetPort"] for p in svc["spec"]["ports"]}, ports)
        # readiness is the router's /health on its metrics port, which its args open
        self.assertEqual(rc["readinessProbe"]["httpGet"], {"path": "/health", "port": "metrics"})
        metrics = [p["containerPort"] for p in rc["ports"] if p["name"] == "metrics"]
        rargs = dict(zip(rc["args"][::2], rc["args"][1:][::2]))
        self.assertEqual([int(rargs["--metrics-port"])], metrics)
        self.assertEqual(router_pod["metadata"]["annotations"]["prometheus.io/port"],
                         str(metrics[0]))
        with open(values) as f:
            v = yaml.safe_load(f)
        for role in ("prefill", "decode", "colocated"):
            n = v[role]["replicas"]
            self.assertEqual(f"baton-{role}" in deps, n > 0, role)
            if n:
                d = deps[f"baton-{role}"]
                self.assertEqual(d["spec"]["replicas"], n)
                c = d["spec"]["template"]["spec"]["containers"][0]
                args = dict(zip(c["args"][::2], c["args"][1:][::2]))
                self.assertEqual(args["--max-batch-tokens"], str(v[role]["maxBatchTokens"]))
                self.assertEqual(args["--kv-mem"], str(v[role]["kvCacheBytes"]))
        return deps

    def test_disaggregated_high_affinity(self):
        values = plan(self.tmp.name, "high-affinity")
        rc, docs, err = render("--values", values, "--model-pvc", "models")
        self.assertEqual(rc, 0, err)
        deps = self.check_wiring(docs, values)
        for role in ("prefill", "decode"):
            spec = deps[f"baton-{role}"]["spec"]["template"]["spec"]
            self.assertEqual(spec["containers"][0]["resources"]["limits"]["nvidia.com/gpu"], 1)
            self.assertEqual(spec["volumes"][0]["persistentVolumeClaim"]["claimName"], "models")
            self.assertNotIn("affinity", spec)

    def test_low_affinity_pairs_prefill_with_decode(self):
        values = plan(self.tmp.name, "low-affinity")
        rc, docs, err = render("--values", values, "--model-host-path", "/srv/models",
                               "--backend", "cpu", "--threads", "4", "--namespace", "llm")
        self.assertEqual(rc, 0, err)
        deps = self.check_wiring(docs, values)
        self.assertTrue(all(d["metadata"]["namespace"] == "llm" for d in docs))
        spec = deps["baton-prefill"]["spec"]["template"]["spec"]
        term = spec["affinity"]["podAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
        self.assertEqual(term[0]["podAffinityTerm"]["labelSelector"]["matchLabels"],
                         deps["baton-decode"]["spec"]["template"]["metadata"]["labels"])
        self.assertNotIn("resources", spec["containers"][0])  # cpu: no GPU asked for
        self.assertIn("--threads", spec["containers"][0]["args"])

    def test_colocated_slo_aware_carries_the_profile(self):
        values = plan(self.tmp.name, "colocated", "slo-aware")
        rc, docs, err = render("--values", values, "--model-pvc", "models")
        self.assertEqual(rc, 0, err)
        self.check_wiring(docs, values)
        cm = by_kind(docs, "ConfigMap")["baton-profile"]
        with open(PROFILE) as f:
            self.assertEqual(cm["data"]["profile.json"], f.read())
        c = by_kind(docs, "Deployment")["baton-router"]["spec"]["template"]["spec"][
            "containers"][0]
        self.assertEqual(c["args"][c["args"].index("--policy") + 1], "slo-aware")
        self.assertEqual(c["args"][c["args"].index("--profile") + 1], "/etc/baton/profile.json")

    def write(self, name, text):
        p = os.path.join(self.tmp.name, name)
        with open(p, "w") as f:
            f.write(text)
        return p

    def test_refusals(self):
        base = ("model:\n  file: \"/m/x.gguf\"\nrouter:\n  policy: %s\n"
                "prefill:\n  replicas: 1\n  tensorParallel: %d\n  pipelineParallel: 1\n")
        cases = [
            (base % ("least-loaded", 2), "one device"),
            (base % ("slo-aware", 1), "needs a profile"),
            ("router:\n  policy: least-loaded\nprefill:\n  replicas: 1\n", "model.file"),
            ("model:\n  file: x\nprefill:\n  replicas: 0\n", "no instances"),
            ("model:\n  file: x\nprefill:\n  replicas: -3\n", "non-negative"),
            ("- just\n- a list\n", "not a mapping"),
            ("model: [unclosed\n", "render:"),
        ]
        for i, (text, why) in enumerate(cases):
            rc, docs, err = render("--values", self.write(f"bad{i}.yaml", text),
                                   "--model-pvc", "m")
            self.assertEqual(rc, 1, text)
            self.assertIn(why, err, text)
        rc, _, err = render("--values", os.path.join(self.tmp.name, "none.yaml"),
                            "--model-pvc", "m")
        self.assertEqual(rc, 1)
        ok = self.write("ok.yaml", base % ("least-loaded", 1))
        rc, _, err = render("--values", ok)  # no model volume named
        self.assertNotEqual(rc, 0)


if __name__ == "__main__":
    unittest.main()
