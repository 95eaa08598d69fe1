"""Shared set-up for the interop client and server: finds the generated code and
builds transports/protocols from command-line names."""

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", "..", ".."))
GEN_PY = os.environ.get("THRIFT_GEN_PY", os.path.join(ROOT, ".interop", "thrift", "gen-py"))
if not os.path.isdir(os.path.join(GEN_PY, "interop")):
    sys.stderr.write(
        "generated code not found in %s: run scripts/interop/thrift.sh first\n" % GEN_PY
    )
    sys.exit(2)
sys.path.insert(0, GEN_PY)

from thrift.protocol import TBinaryProtocol, TCompactProtocol  # noqa: E402
from thrift.protocol.THeaderProtocol import THeaderProtocol, THeaderProtocolFactory  # noqa: E402
from thrift.transport import TTransport  # noqa: E402
from thrift.transport.THeaderTransport import THeaderClientType, THeaderSubprotocolID  # noqa: E402

TRANSPORTS = ("framed", "buffered", "unframed", "header")
PROTOCOLS = ("binary", "compact")


def add_common_args(parser):
    parser.add_argument("--transport", choices=TRANSPORTS, default="framed",
                        help="framed, buffered (= unframed) or header")
    parser.add_argument("--protocol", choices=PROTOCOLS, default="binary")


def parse_hostport(text):
    host, _, port = text.rpartition(":")
    return (host or "127.0.0.1"), int(port)


def header_subprotocol(protocol):
    return THeaderSubprotocolID.COMPACT if protocol == "compact" else THeaderSubprotocolID.BINARY


def plain_protocol_factory(protocol):
    if protocol == "compact":
        return TCompactProtocol.TCompactProtocolFactory()
    return TBinaryProtocol.TBinaryProtocolFactory()


def server_factories(transport, protocol):
    """(transport factory, protocol factory) for a server speaking exactly one format."""
    if transport == "header":
        # Only THeader clients: a framed or unframed client is refused, so a passing
        # header test really spoke THeader.
        return (TTransport.TTransportFactoryBase(),
                THeaderProtocolFactory(allowed_client_types=(THeaderClientType.HEADERS,),
                                       default_protocol=header_subprotocol(protocol)))
    if transport == "framed":
        return TTransport.TFramedTransportFactory(), plain_protocol_factory(protocol)
    return TTransport.TBufferedTransportFactory(), plain_protocol_factory(protocol)


def client_protocol(socket, transport, protocol):
    """(transport to open/close, protocol) for a client."""
    if transport == "header":
        proto = THeaderProtocol(socket, allowed_client_types=(THeaderClientType.HEADERS,),
                                default_protocol=header_subprotocol(protocol))
        return proto.trans, proto
    if transport == "framed":
        trans = TTransport.TFramedTransport(socket)
    else:
        trans = TTransport.TBufferedTransport(socket)
    return trans, plain_protocol_factory(protocol).getProtocol(trans)
