//! Dubbo 2 (hessian2) codec for metaproxy.
