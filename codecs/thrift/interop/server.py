#!/usr/bin/env python3
"""Apache Thrift (Python) interop server for the metaproxy thrift codec.

    server.py --transport framed|buffered|header --protocol binary|compact 127.0.0.1:0

Serves `Store` (also as the default, non-multiplexed service) and `Calc` through a
TMultiplexedProcessor. Prints one JSON line {"listening": "host:port"} once bound (port 0
picks a free port), then serves until killed. On the header transport it echoes every
request header back as a reply header, so clients can observe header mutations.
"""

import argparse
import json
import sys
import threading

import peers
from interop import Calc, Store
from interop.ttypes import NotFound
from thrift.TMultiplexedProcessor import TMultiplexedProcessor
from thrift.server import TServer
from thrift.transport import TSocket


class StoreHandler:
    def __init__(self):
        self.last_note = ""
        self.lock = threading.Lock()

    def put(self, node, copies):
        if node.name == "missing":
            raise NotFound(what="node " + node.name, code=404)
        node.name = (node.name or "") + "!" * max(1, copies)
        return node

    def note(self, text):
        with self.lock:
            self.last_note = text

    def lastNote(self):
        with self.lock:
            return self.last_note

    def boom(self):
        raise RuntimeError("boom requested")


class CalcHandler:
    def add(self, a, b):
        return a + b


class EchoHeaders:
    """Wraps a processor: reply headers = request headers (header transport only)."""

    def __init__(self, inner):
        self.inner = inner

    def process(self, iprot, oprot):
        original = iprot.readMessageBegin

        def read_message_begin(*_ignored):
            # Unpatch first: TMultiplexedProcessor copies the protocol's __dict__.
            del iprot.readMessageBegin
            begin = original()
            if hasattr(iprot, "get_headers"):
                for key, value in list(iprot.get_headers().items()):
                    oprot.set_header(key, value)
            return begin

        iprot.readMessageBegin = read_message_begin
        try:
            return self.inner.process(iprot, oprot)
        finally:
            iprot.__dict__.pop("readMessageBegin", None)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    peers.add_common_args(parser)
    parser.add_argument("address", help="host:port to listen on (port 0 = any free port)")
    args = parser.parse_args()

    store = Store.Processor(StoreHandler())
    mux = TMultiplexedProcessor()
    mux.registerDefault(store)
    mux.registerProcessor("Store", store)
    mux.registerProcessor("Calc", Calc.Processor(CalcHandler()))

    host, port = peers.parse_hostport(args.address)
    server_socket = TSocket.TServerSocket(host=host, port=port)
    tfactory, pfactory = peers.server_factories(args.transport, args.protocol)
    server = TServer.TThreadedServer(EchoHeaders(mux), server_socket, tfactory, pfactory, daemon=True)
    server_socket.listen()
    bound = server_socket.handle.getsockname()
    print(json.dumps({"listening": "%s:%d" % (bound[0], bound[1])}), flush=True)
    server_socket.listen = lambda: None  # already listening
    try:
        server.serve()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
