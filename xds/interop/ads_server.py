"""A small state-of-the-world ADS management server for metaproxy's xDS interop tests.

It is built on libraries this project did not write: `envoy-data-plane` (Envoy's
published data-plane API as Python classes, on betterproto2) for every Envoy type and
the ADS service definition, and `grpclib` for gRPC. Aeraki's MetaProtocol
RouteConfiguration is not part of Envoy's API, so its messages are declared below with
betterproto2 from Aeraki's published field list.

Driven over stdin/stdout with one JSON object per line.
  stdin commands:
    {"cmd": "set", "version": "3", "clusters": ["v1", "v2"],
     "endpoints": {"v1": ["127.0.0.1:1234"]},
     "routes": {"kv-routes": [["v1", 90], ["v2", 10]]}}
        replace the whole state and push every type to every open stream;
    {"cmd": "bad_route", "version": "4"}
        push route configs whose matcher uses range_match (metaproxy rejects it).
  stdout events:
    {"event": "listening", "port": N}
    {"event": "request", "type": URL, "version": V, "nonce": N, "names": [...], "error": MSG|null}
    {"event": "sent", "type": URL, "version": V, "nonce": N}
Usage: ads_server.py [PORT]   (0 or absent: any free port). The server starts listening
after the first command, which sets the state it serves from the start.
"""

import asyncio
import itertools
import json
import sys
import time

import betterproto2
from grpclib.server import Server
from pydantic.dataclasses import dataclass

from envoy_data_plane.envoy.config.cluster import v3 as cluster_v3
from envoy_data_plane.envoy.config.core import v3 as core_v3
from envoy_data_plane.envoy.config.endpoint import v3 as endpoint_v3
from envoy_data_plane.envoy.config.route import v3 as route_v3
from envoy_data_plane.envoy.service.discovery import v3 as discovery_v3
from envoy_data_plane.envoy.type import v3 as type_v3
from envoy_data_plane.google.protobuf import Any

CLUSTER = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
ENDPOINT = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
ROUTE = "type.googleapis.com/aeraki.meta_protocol_proxy.config.route.v1alpha.RouteConfiguration"


# aeraki.meta_protocol_proxy.config.route.v1alpha, declared from its field list.
@dataclass(eq=False, repr=False)
class MetaRouteMatch(betterproto2.Message):
    metadata: "list[route_v3.HeaderMatcher]" = betterproto2.field(
        1, betterproto2.TYPE_MESSAGE, repeated=True
    )


@dataclass(eq=False, repr=False)
class MetaRouteAction(betterproto2.Message):
    cluster: "str | None" = betterproto2.field(
        1, betterproto2.TYPE_STRING, optional=True, group="cluster_specifier"
    )
    weighted_clusters: "route_v3.WeightedCluster | None" = betterproto2.field(
        2, betterproto2.TYPE_MESSAGE, optional=True, group="cluster_specifier"
    )


@dataclass(eq=False, repr=False)
class MetaRoute(betterproto2.Message):
    name: str = betterproto2.field(1, betterproto2.TYPE_STRING)
    match: "MetaRouteMatch | None" = betterproto2.field(2, betterproto2.TYPE_MESSAGE, optional=True)
    route: "MetaRouteAction | None" = betterproto2.field(3, betterproto2.TYPE_MESSAGE, optional=True)


@dataclass(eq=False, repr=False)
class MetaRouteConfiguration(betterproto2.Message):
    name: str = betterproto2.field(1, betterproto2.TYPE_STRING)
    routes: "list[MetaRoute]" = betterproto2.field(2, betterproto2.TYPE_MESSAGE, repeated=True)


def emit(**event):
    event["t"] = round(time.monotonic(), 4)
    sys.stdout.write(json.dumps(event) + "\n")
    sys.stdout.flush()


class State:
    def __init__(self):
        self.version = "0"
        self.clusters = []
        self.endpoints = {}
        self.routes = {}
        self.bad_routes = False
        self.streams = {}
        self.nonces = itertools.count(1)

    def resources(self, type_url, names):
        if type_url == CLUSTER:
            return [
                Any(
                    type_url=CLUSTER,
                    value=bytes(
                        cluster_v3.Cluster(
                            name=name,
                            type=cluster_v3.ClusterDiscoveryType.EDS,
                            eds_cluster_config=cluster_v3.ClusterEdsClusterConfig(),
                        )
                    ),
                )
                for name in self.clusters
            ]
        if type_url == ENDPOINT:
            return [
                Any(type_url=ENDPOINT, value=bytes(assignment(name, self.endpoints[name])))
                for name in names
                if name in self.endpoints
            ]
        if type_url == ROUTE:
            return [
                Any(type_url=ROUTE, value=bytes(route_config(name, self.routes[name], self.bad_routes)))
                for name in names
                if name in self.routes
            ]
        return []


def assignment(name, addresses):
    endpoints = []
    for address in addresses:
        host, port = address.rsplit(":", 1)
        endpoints.append(
            endpoint_v3.LbEndpoint(
                endpoint=endpoint_v3.Endpoint(
                    address=core_v3.Address(
                        socket_address=core_v3.SocketAddress(address=host, port_value=int(port))
                    )
                ),
                health_status=core_v3.HealthStatus.HEALTHY,
            )
        )
    return endpoint_v3.ClusterLoadAssignment(
        cluster_name=name, endpoints=[endpoint_v3.LocalityLbEndpoints(lb_endpoints=endpoints)]
    )


def route_config(name, split, bad):
    matcher = route_v3.HeaderMatcher(name="service", exact_match="canary")
    if bad:
        matcher = route_v3.HeaderMatcher(name="service", range_match=type_v3.Int64Range(start=0, end=9))
    return MetaRouteConfiguration(
        name=name,
        routes=[
            MetaRoute(
                name="canary",
                match=MetaRouteMatch(metadata=[matcher]),
                route=MetaRouteAction(
                    weighted_clusters=route_v3.WeightedCluster(
                        clusters=[
                            route_v3.WeightedClusterClusterWeight(name=cluster, weight=weight)
                            for cluster, weight in split
                        ]
                    )
                ),
            )
        ],
    )


STATE = State()


class Ads(discovery_v3.AggregatedDiscoveryServiceBase):
    async def stream_aggregated_resources(self, messages):
        queue = asyncio.Queue()
        subscriptions = {}
        key = object()
        STATE.streams[key] = (queue, subscriptions)

        async def read():
            try:
                async for req in messages:
                    error = req.error_detail.message if req.error_detail else None
                    emit(
                        event="request",
                        type=req.type_url,
                        version=req.version_info,
                        nonce=req.response_nonce,
                        names=list(req.resource_names),
                        error=error,
                    )
                    names = sorted(req.resource_names)
                    changed = subscriptions.get(req.type_url) != names
                    subscriptions[req.type_url] = names
                    if req.response_nonce == "" or changed:
                        await queue.put(req.type_url)
            finally:
                await queue.put(None)

        reader = asyncio.create_task(read())
        try:
            while True:
                type_url = await queue.get()
                if type_url is None:
                    break
                if type_url not in subscriptions:
                    continue
                nonce = str(next(STATE.nonces))
                response = discovery_v3.DiscoveryResponse(
                    version_info=STATE.version,
                    resources=STATE.resources(type_url, subscriptions[type_url]),
                    type_url=type_url,
                    nonce=nonce,
                )
                emit(event="sent", type=type_url, version=STATE.version, nonce=nonce)
                yield response
        finally:
            reader.cancel()
            STATE.streams.pop(key, None)


async def push(types):
    for queue, _ in list(STATE.streams.values()):
        for type_url in types:
            await queue.put(type_url)


async def read_command():
    line = await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    return json.loads(line) if line else None


async def control():
    while True:
        command = await read_command()
        if command is None:
            return
        await apply(command)


async def apply(command):
    STATE.version = command["version"]
    if command["cmd"] == "set":
        STATE.clusters = command["clusters"]
        STATE.endpoints = command["endpoints"]
        STATE.routes = command["routes"]
        STATE.bad_routes = False
        await push([CLUSTER, ENDPOINT, ROUTE])
    elif command["cmd"] == "bad_route":
        STATE.bad_routes = True
        await push([ROUTE])


async def main():
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 0
    # The first command is the state to serve from the start, as a control plane that
    # restarts serves what its sources say rather than nothing.
    first = await read_command()
    if first is None:
        return
    await apply(first)
    server = Server([Ads()])
    await server.start("127.0.0.1", port)
    bound = server._server.sockets[0].getsockname()[1]
    emit(event="listening", port=bound)
    await control()
    server.close()
    await server.wait_closed()


if __name__ == "__main__":
    asyncio.run(main())
