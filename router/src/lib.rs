//! Route matching, weighted splits, mirror policy and load balancers for metaproxy (pure logic, no I/O).
