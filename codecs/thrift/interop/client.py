#!/usr/bin/env python3
"""Apache Thrift (Python) interop client for the metaproxy thrift codec.

    client.py --transport framed|buffered|header --protocol binary|compact 127.0.0.1:9090 \
        [--calls put,missing,note,boom,add,store_mux] [--leaves 200] [--header k=v ...] [--zlib]

Runs the calls in order on one connection and prints one JSON object per call:
{"call": ..., "ok": true, "result": ...} or {"call": ..., "error": CLASS, ...} with
"type" and "message" for a TApplicationException (1 unknown method, 6 internal error,
7 protocol error). On the header transport each line also has "headers": the reply's
headers. Exits 0 when every call produced a line (errors included), 1 when the
connection broke.
"""

import argparse
import json
import sys

import peers
from interop import Calc, Store
from interop.ttypes import Kind, Leaf, Node, NotFound
from thrift.protocol.TMultiplexedProtocol import TMultiplexedProtocol
from thrift.Thrift import TApplicationException
from thrift.transport import TSocket, TTransport
from thrift.transport.THeaderTransport import THeaderTransformID

ALL_CALLS = "put,missing,note,boom,add,store_mux"


def big_node(leaves):
    def leaf(i):
        return Leaf(id=i, label="leaf-%d" % i, blob=bytes([i % 256]) * 1024, weight=i / 7.0,
                    flag=i % 2 == 0, big=-(1 << 40) + i, small=-i % 30000, tiny=i % 100)

    child = None
    for depth in range(5):
        child = Node(name="child-%d" % depth, leaves=[leaf(depth)], child=child, kind=Kind.SMALL)
    return Node(
        name="root",
        leaves=[leaf(i) for i in range(leaves)],
        byName={"k%d" % i: leaf(i) for i in range(0, leaves, 10)},
        tags=set(range(-5, 50)),
        child=child,
        kind=Kind.LARGE,
        nested=[[{1: True, -2: False}], [], [{}]],
    )


def summarize(node):
    """A compact, comparable digest of a Node."""
    return {
        "name": node.name,
        "leaves": len(node.leaves or []),
        "blob_bytes": sum(len(l.blob or b"") for l in node.leaves or []),
        "byName": sorted((node.byName or {}).keys()),
        "tags": len(node.tags or ()),
        "nested": json.dumps([[sorted(m.items()) for m in inner] for inner in node.nested or []]),
        "depth": depth_of(node),
    }


def depth_of(node):
    depth = 0
    while node is not None:
        depth += 1
        node = node.child
    return depth


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    peers.add_common_args(parser)
    parser.add_argument("address", help="host:port of the server (or the proxy)")
    parser.add_argument("--calls", default=ALL_CALLS, help="comma-separated, default " + ALL_CALLS)
    parser.add_argument("--leaves", type=int, default=200, help="leaves in the big Node (1 KiB each)")
    parser.add_argument("--header", action="append", default=[], help="k=v request header (header transport)")
    parser.add_argument("--zlib", action="store_true", help="apply the zlib transform (header transport)")
    parser.add_argument("--timeout", type=float, default=10.0, help="socket timeout in seconds")
    args = parser.parse_args()

    host, port = peers.parse_hostport(args.address)
    socket = TSocket.TSocket(host, port)
    socket.setTimeout(args.timeout * 1000)
    trans, proto = peers.client_protocol(socket, args.transport, args.protocol)
    if args.zlib:
        trans.add_transform(THeaderTransformID.ZLIB)
    store = Store.Client(proto)
    store_mux = Store.Client(TMultiplexedProtocol(proto, "Store"))
    calc = Calc.Client(TMultiplexedProtocol(proto, "Calc"))
    trans.open()

    def set_headers():
        if args.transport == "header":
            for kv in args.header:
                k, _, v = kv.partition("=")
                proto.set_header(k.encode(), v.encode())

    def reply_headers():
        if args.transport != "header":
            return None
        return {k.decode("utf-8", "replace"): v.decode("utf-8", "replace")
                for k, v in sorted(proto.get_headers().items())}

    calls = {
        "put": lambda: summarize(store.put(big_node(args.leaves), 2)),
        "missing": lambda: summarize(store.put(Node(name="missing"), 1)),
        "note": lambda: (store.note("hello from python"), store.lastNote())[1],
        "boom": lambda: store.boom(),
        "add": lambda: calc.add(2, 3),
        "store_mux": lambda: summarize(store_mux.put(Node(name="mux", leaves=[]), 1)),
    }
    broken = False
    for name in [c for c in args.calls.split(",") if c]:
        line = {"call": name}
        try:
            set_headers()
            line["result"] = calls[name]()
            line["ok"] = True
        except NotFound as e:
            line.update(error="NotFound", what=e.what, code=e.code)
        except TApplicationException as e:
            line.update(error="TApplicationException", type=e.type, message=e.message)
        except TTransport.TTransportException as e:
            line.update(error="TTransportException", type=e.type, message=str(e))
            broken = True
        except Exception as e:  # noqa: BLE001 - report anything else as data
            line.update(error=type(e).__name__, message=str(e))
            broken = True
        headers = reply_headers()
        if headers is not None:
            line["headers"] = headers
        print(json.dumps(line, sort_keys=True), flush=True)
        if broken:
            break
    trans.close()
    return 1 if broken else 0


if __name__ == "__main__":
    sys.exit(main())
