//! Test support, not part of the canary product: a stand-in for a service mesh's data plane.
//!
//! Every period (1 s) it reads the weights of the VirtualServices and HTTPRoutes it follows
//! (or, without a mesh, the ready pods behind the Services it follows, see [`pods`])
//! from the API server, simulates the requests a mesh would route to each destination at the
//! configured rate, answers them by each workload's behaviour (error rate, error code,
//! log-normal latency; changeable at run time, now or at a later time), and exposes Istio's
//! metrics (for Services: the apps' own `http_requests_total` and
//! `http_request_duration_seconds` by pod) on `/metrics` for a real Prometheus to scrape. See
//! docs/local-cluster.md.
//!
//! HTTP endpoints: `GET /metrics`, `GET /state` (weights, behaviours, totals),
//! `PUT /workloads/{workload}` with a [`behaviour::BehaviourChange`] as JSON,
//! `PUT /rate` with `{"requestsPerSecond": N}`, `GET /healthz`.

pub mod behaviour;
pub mod control;
pub mod mesh;
pub mod pods;
pub mod routing;
