#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""The router's monitoring endpoint (--metrics-port), over real HTTP:

- a router alone (no instance yet): /health answers 503 and baton_router_up is 0;
- a 1 prefill + 1 decode cluster after one request: /health 200, the request counted as
  completed, both instances up with their KV pools, one TTFT / TPOT / duration observation in
  well-formed histograms (cumulative buckets, +Inf equal to the count); with --stamp-input,
  every message read over TCP in the histogram of its wait in the router's sockets (absent
  without the option);
- bad requests get their status and the endpoint keeps answering: unknown path 404, POST 405,
  garbage 400, an oversized head 431, a request sent in pieces 200, and a request behind a full
  set of idle connections is answered once they time out.
"""
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "support"))
from free_ports import free_ports  # noqa: E402

BIN = os.path.join(os.environ["BATON_BINARY_DIR"], "bin")


def free_port():
    return free_ports(1)[0]


def raw(port, data, pieces=1, timeout=15):
    """Sends data (in pieces, 0.2 s apart) and returns the whole answer."""
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    step = max(1, len(data) // pieces)
    for i in range(0, len(data), step):
        s.sendall(data[i:i + step])
        if pieces > 1:
            time.sleep(0.2)
    out = b""
    while True:
        b = s.recv(65536)
        if not b:
            break
        out += b
    s.close()
    return out


def get(port, path):
    ans = raw(port, f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    head, _, body = ans.partition(b"\r\n\r\n")
    code = int(head.split(b" ")[1])
    length = int(re.search(rb"Content-Length: (\d+)", head).group(1))
    assert length == len(body), (length, len(body))
    return code, head.decode(), body.decode()


def wait_http(port, proc, seconds=30):
    end = time.time() + seconds
    while time.time() < end:
        if proc.poll() is not None:
            raise AssertionError("process exited")
        try:
            return get(port, "/health")
        except OSError:
            time.sleep(0.1)
    raise AssertionError("no metrics endpoint")


def samples(text):
    """{(name, labels): value} of a Prometheus text body."""
    out = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = re.match(r'^([a-z_]+)(\{[^}]*\})? (\S+)$', line)
        assert m, line
        out[(m.group(1), m.group(2) or "")] = float(m.group(3))
    return out


class MetricsTest(unittest.TestCase):
    def test_router_alone_cannot_serve(self):
        port, mport = free_port(), free_port()
        p = subprocess.Popen([f"{BIN}/baton-router", "--bind", "127.0.0.1", "--port", str(port),
                              "--cluster-port", str(free_port()), "--metrics-port", str(mport),
                              "--log-level", "warn"])
        try:
            code, _, body = wait_http(mport, p)
            self.assertEqual((code, body), (503, "cannot serve\n"))
            code, head, body = get(mport, "/metrics")
            self.assertEqual(code, 200)
            self.assertIn("text/plain; version=0.0.4", head)
            self.assertEqual(samples(body)[("baton_router_up", "")], 0)
            self.assertNotIn("baton_router_input_wait_seconds", body)
        finally:
            p.terminate()
            self.assertEqual(p.wait(30), 0)

    def test_cluster(self):
        tmp = tempfile.mkdtemp()
        model = os.path.join(tmp, "tiny.gguf")
        subprocess.run([f"{BIN}/baton", "model", "gen", "--preset", "tiny", "--out", model],
                       check=True, stdout=subprocess.DEVNULL)
        port, mport = free_port(), free_port()
        up = subprocess.Popen([f"{BIN}/baton", "up", "--model", model, "--port", str(port),
                               "--cluster-port", str(free_port()), "--threads", "2",
                               "--kv-mem", "8M", "--metrics-port", str(mport)],
                              stdout=subprocess.PIPE, text=True,
                              env=dict(os.environ, BATON_STAMP_INPUT="1"))
        try:
            self.assertIn("serving on", up.stdout.readline())
            subprocess.run([f"{BIN}/baton", "generate", "--router", f"tcp://127.0.0.1:{port}",
                            "--prompt-ids", "1,40,41,42", "-n", "6", "--ignore-eos"],
                           check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            self.assertEqual(get(mport, "/health")[:3:2], (200, "ok\n"))
            # a connection that is not ZeroMQ at all: the router closes it and counts it
            g = socket.create_connection(("127.0.0.1", port), timeout=15)
            g.sendall(b"G" * 64)
            got = b""
            while chunk := g.recv(4096):  # the router's greeting, then its close
                got += chunk
            self.assertTrue(got.startswith(b"\xff"), got)
            g.close()
            s = samples(get(mport, "/metrics")[2])
            self.assertEqual(s[("baton_router_up", "")], 1)
            self.assertEqual(s[("baton_router_connections", '{socket="cluster"}')], 2)
            self.assertEqual(
                s[("baton_router_connections_refused_total", '{socket="clients"}')], 1)
            self.assertEqual(
                s[("baton_router_connections_refused_total", '{socket="cluster"}')], 0)
            self.assertEqual(s[("baton_router_requests_total", '{outcome="completed"}')], 1)
            self.assertEqual(s[("baton_router_requests_total", '{outcome="failed"}')], 0)
            for inst, role in (("prefill-0", "prefill"), ("decode-0", "decode")):
                lab = f'{{instance="{inst}",role="{role}"}}'
                self.assertEqual(s[("baton_instance_up", lab)], 1)
                self.assertGreater(s[("baton_instance_kv_blocks_total", lab)], 0)
                self.assertEqual(s[("baton_instance_assigned_total", lab)], 1)
            for h in ("ttft", "tpot", "request_duration", "input_wait"):
                name = f"baton_router_{h}_seconds"
                buckets = [(k[1], v) for k, v in s.items() if k[0] == name + "_bucket"]
                values = [v for _, v in buckets]
                self.assertEqual(values, sorted(values), name)
                n = s[(name + "_count", "")]
                self.assertEqual(s[(name + "_bucket", '{le="+Inf"}')], n)
                if h == "input_wait":  # every message read: the request's six or more, ...
                    self.assertGreaterEqual(n, 6)
                else:
                    self.assertEqual(n, 1)
            wait = s[("baton_router_input_wait_seconds_sum", "")]
            n_wait = s[("baton_router_input_wait_seconds_count", "")]
            self.assertGreaterEqual(wait, 0)
            self.assertLess(wait / n_wait, 0.1)  # read as they come, not once a tick
            # TPOT is what the client saw: (last relay - first relay) / (tokens - 1). When the
            # decode side's tokens reach the router before the prefill side's first token, all
            # of them go to the client in one message and the observation is exactly 0.
            tpot = s[("baton_router_tpot_seconds_sum", "")]
            total = s[("baton_router_request_duration_seconds_sum", "")]
            ttft = s[("baton_router_ttft_seconds_sum", "")]
            self.assertGreater(ttft, 0)
            self.assertLessEqual(ttft, total + 1e-6)
            self.assertGreaterEqual(tpot, 0)
            self.assertLessEqual(tpot * 5, total - ttft + 1e-6)  # printed to 9 digits

            def status(data, pieces=1):
                return int(raw(mport, data, pieces).split(b" ")[1])
            self.assertEqual(get(mport, "/nope")[0], 404)
            self.assertEqual(status(b"POST /metrics HTTP/1.1\r\n\r\n"), 405)
            self.assertEqual(status(b"garbage\r\n\r\n"), 400)
            self.assertEqual(status(b"GET /metrics HTTP/1.1\r\nX: " + b"a" * 5000 + b"\r\n\r\n"),
                             431)
            self.assertEqual(status(b"GET /metrics?x=1 HTTP/1.1\r\nHost: x\r\n\r\n", 4), 200)
            idle = [socket.create_connection(("127.0.0.1", mport)) for _ in range(20)]
            t0 = time.time()
            self.assertEqual(get(mport, "/health")[0], 200)
            self.assertLess(time.time() - t0, 12)
            for c in idle:
                c.close()
            self.assertEqual(get(mport, "/health")[0], 200)
        finally:
            up.terminate()
            self.assertEqual(up.wait(60), 0)


if __name__ == "__main__":
    unittest.main(argv=sys.argv[:1], verbosity=2)
