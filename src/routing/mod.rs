//! Traffic routers: where the stable/canary weights live. Istio first (VirtualService weights
//! over DestinationRule subsets); Gateway API and HAProxy follow the same shape.

pub mod istio;
