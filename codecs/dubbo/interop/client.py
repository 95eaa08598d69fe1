#!/usr/bin/env python3
"""Calls a Dubbo service with an independent Python client (dubbo-ssl-python, the Dubbo
TCP protocol with hessian2) and prints one JSON object per call on stdout.

Run it with the venv that scripts/interop/dubbo.sh installs:

    .interop/dubbo/venv/bin/python codecs/dubbo/interop/client.py \\
        --target 127.0.0.1:20880 --interface com.example.DemoService --method sayHello \\
        --version 1.0.0 --group blue --attachment user=alice --args '["hi"]' --count 3

Output, one line per call:

    {"ok": true, "result": "hi", "elapsed_ms": 1.2}
    {"ok": false, "status": 60, "status_name": "SERVICE_NOT_FOUND", "error": "...", "elapsed_ms": 0.8}
    {"ok": false, "status": null, "status_name": null, "error": "timeout: ...", "elapsed_ms": 3000.1}

`status` is the Dubbo response status byte of an error response (60 no route, 80
upstream failure, 31 timeout, 100 overloaded, 40 bad request), or null when no response
arrived (client timeout, connection refused or closed). Exit code: 0 when every call
succeeded, 1 otherwise, 2 on bad arguments or a missing client library.

Known limits of the client library (so of this script): it reads response types 0-2
only (not the attachment-carrying 3-5), sends two-way calls only, and always sends the
attachments path, interface, version and group (group "" when --group is not given).
"""

import argparse
import json
import os
import sys
import threading
import time

STATUS_NAMES = {
    20: "OK",
    30: "CLIENT_TIMEOUT",
    31: "SERVER_TIMEOUT",
    40: "BAD_REQUEST",
    50: "BAD_RESPONSE",
    60: "SERVICE_NOT_FOUND",
    70: "SERVICE_ERROR",
    80: "SERVER_ERROR",
    90: "CLIENT_ERROR",
    100: "SERVER_THREADPOOL_EXHAUSTED_ERROR",
}


def emit(obj):
    sys.stdout.write(json.dumps(obj, ensure_ascii=False, default=str) + "\n")
    sys.stdout.flush()


def parse_args(argv):
    p = argparse.ArgumentParser(description="Call a Dubbo service; print JSON lines.")
    p.add_argument("--target", required=True, help="host:port of the proxy or provider")
    p.add_argument("--interface", required=True, help="service interface (path)")
    p.add_argument("--method", required=True)
    p.add_argument("--version", default="", help="service version (default empty)")
    p.add_argument("--group", default="", help="service group (default empty)")
    p.add_argument("--attachment", action="append", default=[], metavar="KEY=VALUE",
                   help="an extra attachment; repeatable")
    p.add_argument("--args", default="[]",
                   help="JSON array of arguments: strings, ints, floats, bools, lists")
    p.add_argument("--count", type=int, default=1, help="calls to make, one after another")
    p.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for each reply")
    p.add_argument("--dubbo-version", default="2.0.2",
                   help="dubbo protocol version sent in the body (default 2.0.2)")
    a = p.parse_args(argv)
    attachments = {}
    for item in a.attachment:
        if "=" not in item:
            p.error("--attachment wants KEY=VALUE, got %r" % item)
        k, v = item.split("=", 1)
        attachments[k] = v
    try:
        args = json.loads(a.args)
    except ValueError as e:
        p.error("--args is not JSON: %s" % e)
    if not isinstance(args, list):
        p.error("--args must be a JSON array")
    return a, attachments, args


def main(argv):
    opts, attachments, args = parse_args(argv)
    try:
        from dubbo_ssl.client import DubboClient
        from dubbo_ssl.common import constants
        from dubbo_ssl.connection import connections
    except ImportError as e:
        emit({"ok": False, "status": None, "status_name": None,
              "error": "dubbo-ssl-python is not installed (run scripts/interop/dubbo.sh): %s" % e})
        return 2

    # The library has no name for status 100 and would fail on it.
    constants.response_status_message.setdefault(100, STATUS_NAMES[100])
    # Remember the status byte of each response header: the library turns an error
    # response into an exception carrying only the message.
    last_status = {"value": None}
    lock = threading.Lock()
    original = connections.BaseConnectionPool._parse_head

    def parse_head(self, data, conn):
        if len(data) >= 4 and not data[2] & 0x20:
            with lock:
                last_status["value"] = data[3]
        return original(self, data, conn)

    connections.BaseConnectionPool._parse_head = parse_head

    client = DubboClient(interface=opts.interface, group=opts.group, version=opts.version,
                         dubbo_version=opts.dubbo_version, host=opts.target, verify=None)
    failures = 0
    for _ in range(opts.count):
        with lock:
            last_status["value"] = None
        start = time.monotonic()
        try:
            result = client.call(method=opts.method, args=list(args),
                                 context=dict(attachments) or None, timeout=opts.timeout)
            elapsed = round((time.monotonic() - start) * 1000, 3)
            emit({"ok": True, "result": result, "elapsed_ms": elapsed})
        except Exception as e:  # noqa: BLE001 - every failure is reported as JSON
            elapsed = round((time.monotonic() - start) * 1000, 3)
            failures += 1
            with lock:
                status = last_status["value"]
            name = type(e).__name__
            message = str(e).strip()
            if status is None and "timed out" in message.lower():
                message = "timeout: " + message
            emit({"ok": False, "status": status, "status_name": STATUS_NAMES.get(status),
                  "error": "%s: %s" % (name, message), "elapsed_ms": elapsed})
    return 1 if failures else 0


if __name__ == "__main__":
    code = main(sys.argv[1:])
    sys.stdout.flush()
    sys.stderr.flush()
    # The library keeps non-daemon reader and heartbeat threads running.
    os._exit(code)
