#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Loopback TCP ports for tests to listen on: free_ports(n), or `free_ports.py [N]` prints N.

A port is free when chosen, but the test's own process binds it only later, and meanwhile
another process may take it. A port the system hands out for bind(0) is also where it puts
the source ports of outgoing connections, which tests running beside each other make by the
hundred. So ports are drawn at random below the system's ephemeral range, where only another
listener can take them (callers still retry when their bind fails).
"""
import random
import socket
import sys


def ephemeral_low():
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_ports(n=1):
    hi = min(ephemeral_low(), 65536) - 1
    lo = 20000 if hi > 21000 else 1024
    held, ports = [], []
    try:
        for _ in range(2000):
            if len(ports) == n:
                break
            port = random.randint(lo, hi)
            s = socket.socket()
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                s.close()
                continue
            held.append(s)
            ports.append(port)
        while len(ports) < n:  # a crowded range: whatever the system gives
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            held.append(s)
            ports.append(s.getsockname()[1])
    finally:
        for s in held:
            s.close()
    return ports


if __name__ == "__main__":
    print(" ".join(str(p) for p in free_ports(int(sys.argv[1]) if len(sys.argv) > 1 else 1)))
