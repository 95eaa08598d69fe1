//! The demo's built-in configuration: one YAML template, rendered with conventional
//! fixed addresses for `--print-config` and with the demo's ephemeral ports for the run.

use std::net::SocketAddr;

/// The built-in config. `${name}` placeholders are replaced by [`render`].
pub const TEMPLATE: &str = r#"# The config of `metaproxy demo`. Save it and run it with
#   metaproxy run --config demo.yaml
# after pointing the cluster endpoints at your own Dubbo / Thrift services
# (`metaproxy demo` starts echo backends on these ports in-process).
admin:
  address: ${admin}
listeners:
  - name: dubbo-in
    address: ${dubbo_in}
    codec: dubbo
    route_config: dubbo-routes
  - name: thrift-in
    address: ${thrift_in}
    codec: thrift
    # auto-detects framed / unframed / header transport and binary / compact protocol;
    # headers (routing on them, mutations) need the header transport.
    options: {transport: auto, protocol: auto}
    route_config: thrift-routes
route_configs:
  - name: dubbo-routes
    routes:
      # Route by metadata: the attachment `user: beta` always goes to v2.
      - name: beta-users
        match:
          metadata:
            - {key: interface, exact: com.example.DemoService}
            - {key: user, exact: beta}
        route:
          cluster: dubbo-v2
        request_mutation:
          - {key: x-route, value: beta}
      # Everyone else: a 90/10 canary split, every request mirrored to shadow.
      - name: canary
        match:
          metadata:
            - {key: interface, exact: com.example.DemoService}
        route:
          weighted_clusters:
            - {cluster: dubbo-v1, weight: 90}
            - {cluster: dubbo-v2, weight: 10}
          mirror:
            - {cluster: dubbo-shadow, percent: 100}
          timeout: 2s
        request_mutation:
          - {key: x-proxied-by, value: metaproxy}
      # No route for any other interface: the proxy answers SERVICE_NOT_FOUND (60).
  - name: thrift-routes
    routes:
      # Route by a header-transport header: `user: beta` always goes to v2.
      - name: beta-users
        match:
          metadata:
            - {key: service, exact: EchoService}
            - {key: user, exact: beta}
        route:
          cluster: thrift-v2
        request_mutation:
          - {key: x-route, value: beta}
      # Route by method: EchoService:echo and EchoService:ping get the canary split
      # and are mirrored to shadow.
      - name: canary
        match:
          metadata:
            - {key: service, exact: EchoService}
            - {key: method, regex: "^(echo|ping)$"}
        route:
          weighted_clusters:
            - {cluster: thrift-v1, weight: 90}
            - {cluster: thrift-v2, weight: 10}
          mirror:
            - {cluster: thrift-shadow, percent: 100}
          timeout: 2s
        request_mutation:
          - {key: x-proxied-by, value: metaproxy}
      # No route for other methods: the proxy answers TApplicationException UNKNOWN_METHOD (1).
clusters:
  - name: dubbo-v1
    lb_policy: round_robin
    endpoints:
      - ${dubbo_v1_a}
      - ${dubbo_v1_b}
  - name: dubbo-v2
    endpoints:
      - ${dubbo_v2}
  - name: dubbo-shadow
    endpoints:
      - ${dubbo_shadow}
  - name: thrift-v1
    lb_policy: round_robin
    endpoints:
      - ${thrift_v1_a}
      - ${thrift_v1_b}
  - name: thrift-v2
    endpoints:
      - ${thrift_v2}
  - name: thrift-shadow
    endpoints:
      - ${thrift_shadow}
"#;

/// Listener names of the built-in config.
pub const DUBBO_LISTENER: &str = "dubbo-in";
/// Listener names of the built-in config.
pub const THRIFT_LISTENER: &str = "thrift-in";

/// The route that carries the canary split and the mirror, in both route configs.
pub const CANARY_ROUTE: &str = "canary";
/// The route by metadata (`user: beta`), in both route configs.
pub const BETA_ROUTE: &str = "beta-users";

/// The Dubbo interface that has routes.
pub const DUBBO_INTERFACE: &str = "com.example.DemoService";
/// A Dubbo interface without a route (local reply `no_route`).
pub const DUBBO_UNKNOWN_INTERFACE: &str = "com.example.LegacyService";
/// The Thrift service of the multiplexed calls.
pub const THRIFT_SERVICE: &str = "EchoService";
/// Thrift methods with a route (the canary route matches them by a regex).
pub const THRIFT_METHODS: [&str; 2] = ["EchoService:echo", "EchoService:ping"];
/// A Thrift method without a route (local reply `no_route`).
pub const THRIFT_UNKNOWN_METHOD: &str = "EchoService:shutdown";

/// One backend of the demo: which protocol, cluster and name, and its conventional port.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BackendSlot {
    /// Template placeholder (without `${}`).
    pub placeholder: &'static str,
    /// `dubbo` or `thrift`.
    pub protocol: &'static str,
    /// The cluster it belongs to.
    pub cluster: &'static str,
    /// The name it reports in its replies (`backend` attachment / header).
    pub name: &'static str,
    /// The port used by `--print-config`.
    pub port: u16,
}

/// Every backend the demo starts, in the order of the template.
pub const BACKENDS: [BackendSlot; 8] = [
    BackendSlot {
        placeholder: "dubbo_v1_a",
        protocol: "dubbo",
        cluster: "dubbo-v1",
        name: "v1-a",
        port: 20881,
    },
    BackendSlot {
        placeholder: "dubbo_v1_b",
        protocol: "dubbo",
        cluster: "dubbo-v1",
        name: "v1-b",
        port: 20882,
    },
    BackendSlot {
        placeholder: "dubbo_v2",
        protocol: "dubbo",
        cluster: "dubbo-v2",
        name: "v2",
        port: 20883,
    },
    BackendSlot {
        placeholder: "dubbo_shadow",
        protocol: "dubbo",
        cluster: "dubbo-shadow",
        name: "shadow",
        port: 20884,
    },
    BackendSlot {
        placeholder: "thrift_v1_a",
        protocol: "thrift",
        cluster: "thrift-v1",
        name: "v1-a",
        port: 9091,
    },
    BackendSlot {
        placeholder: "thrift_v1_b",
        protocol: "thrift",
        cluster: "thrift-v1",
        name: "v1-b",
        port: 9092,
    },
    BackendSlot {
        placeholder: "thrift_v2",
        protocol: "thrift",
        cluster: "thrift-v2",
        name: "v2",
        port: 9093,
    },
    BackendSlot {
        placeholder: "thrift_shadow",
        protocol: "thrift",
        cluster: "thrift-shadow",
        name: "shadow",
        port: 9094,
    },
];

/// Addresses to put into the template.
#[derive(Clone, Debug)]
pub struct Addresses {
    /// The admin server.
    pub admin: String,
    /// The Dubbo listener.
    pub dubbo_in: String,
    /// The Thrift listener.
    pub thrift_in: String,
    /// One per entry of [`BACKENDS`], same order.
    pub backends: [String; BACKENDS.len()],
}

impl Addresses {
    /// The conventional fixed addresses printed by `--print-config`.
    pub fn conventional() -> Self {
        Addresses {
            admin: "127.0.0.1:9901".into(),
            dubbo_in: "127.0.0.1:20880".into(),
            thrift_in: "127.0.0.1:9090".into(),
            backends: BACKENDS.map(|b| format!("127.0.0.1:{}", b.port)),
        }
    }

    /// Listeners and admin on ephemeral loopback ports, backends where they were bound.
    pub fn ephemeral(backends: [SocketAddr; BACKENDS.len()]) -> Self {
        Addresses {
            admin: "127.0.0.1:0".into(),
            dubbo_in: "127.0.0.1:0".into(),
            thrift_in: "127.0.0.1:0".into(),
            backends: backends.map(|a| a.to_string()),
        }
    }
}

/// The template with every placeholder replaced.
pub fn render(addrs: &Addresses) -> String {
    let mut out = TEMPLATE
        .replace("${admin}", &addrs.admin)
        .replace("${dubbo_in}", &addrs.dubbo_in)
        .replace("${thrift_in}", &addrs.thrift_in);
    for (slot, addr) in BACKENDS.iter().zip(addrs.backends.iter()) {
        out = out.replace(&format!("${{{}}}", slot.placeholder), addr);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_placeholder_is_replaced() {
        let text = render(&Addresses::conventional());
        assert!(!text.contains("${"), "placeholder left in:\n{text}");
        assert!(text.contains("127.0.0.1:20884"));
    }

    #[test]
    fn rendered_config_is_valid() {
        for addrs in [
            Addresses::conventional(),
            Addresses::ephemeral(std::array::from_fn(|i| {
                SocketAddr::from(([127, 0, 0, 1], 40000 + i as u16))
            })),
        ] {
            let text = render(&addrs);
            let config = metaproxy::config::parse(&text, "demo.yaml".as_ref()).unwrap();
            let validated = metaproxy::validate(&config, &metaproxy::default_registry());
            assert!(validated.is_ok(), "{validated:?}");
            assert!(validated.unwrap().warnings.is_empty());
        }
    }

    #[test]
    fn template_names_what_the_traffic_uses() {
        for needle in [
            DUBBO_LISTENER,
            THRIFT_LISTENER,
            CANARY_ROUTE,
            BETA_ROUTE,
            DUBBO_INTERFACE,
            THRIFT_SERVICE,
        ] {
            assert!(TEMPLATE.contains(needle), "{needle}");
        }
        assert!(!TEMPLATE.contains(DUBBO_UNKNOWN_INTERFACE));
        for b in BACKENDS {
            assert!(
                TEMPLATE.contains(&format!("name: {}", b.cluster)),
                "{}",
                b.cluster
            );
        }
    }
}
