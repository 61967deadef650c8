//! The controller's Kubernetes API client: one pooled connection, HTTP/2 when the API server
//! offers it, and a count of every request on `/metrics`.
//!
//! `kube::Client::try_default()` builds the same stack but negotiates HTTP/1.1 only, so each
//! watch and each request in flight holds a TLS connection of its own (about one per Canary
//! at scale). Here ALPN offers `h2` first: kube-apiserver accepts it, and every watch and
//! request becomes a stream of one connection. The layers are kube's own public pieces, in
//! kube's order, so kubeconfig and in-cluster settings work as before (CA, client
//! certificates, TLS server name, tokens and exec plugins, impersonation, extra headers), and
//! 429/503/504 answers are retried with backoff, honouring `Retry-After` (API Priority and
//! Fairness rejects with 429 and says when to come back).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use http::header::{HeaderValue, USER_AGENT};
use http::{Method, Request, Response, StatusCode, Uri};
use hyper_rustls::{FixedServerNameResolver, HttpsConnectorBuilder};
use hyper_timeout::TimeoutConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use kube::client::retry::RetryPolicy;
use kube::client::{Body, ConfigExt, RustlsTlsError};
use kube::{Client, Config};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use tower::retry::RetryLayer;
use tower::{BoxError, Layer, Service, ServiceBuilder};

use super::Error;

/// How often an HTTP/2 connection is pinged, busy or idle.
const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(20);
/// How long a ping may go unanswered before the connection is dropped. With
/// [`KEEP_ALIVE_INTERVAL`], a dead connection (an API server gone without closing it, a
/// dropped route) is noticed within 30 s: every watch on it fails, re-lists on a new one.
/// Without pings one dead connection would hold all of them, silent.
const KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// The User-Agent of the controller's requests (API server audit logs and metrics show it),
/// unless the kubeconfig sets one.
const CONTROLLER_USER_AGENT: &str = concat!("canary-controller/", env!("CARGO_PKG_VERSION"));

/// The client `canary controller` uses for everything it asks the API server, configured as
/// `kube::Config::infer` finds it (in-cluster ServiceAccount, else `KUBECONFIG` or
/// `~/.kube/config`). Every request is counted in `requests`.
pub async fn controller_client(requests: RequestCounts) -> Result<Client, Error> {
    let config = Config::infer().await.map_err(kube::Error::InferConfig)?;
    client_for(config, requests)
}

/// [`controller_client`] for a configuration already loaded.
pub fn client_for(mut config: Config, requests: RequestCounts) -> Result<Client, Error> {
    if let Some(proxy) = &config.proxy_url {
        return Err(Error::Invalid(format!(
            "the kubeconfig's cluster sets proxy-url {proxy}, but canary controller connects to \
             the API server directly: remove proxy-url from the kubeconfig it uses"
        )));
    }
    // What kube's own builder does first: the TLS provider this build carries (only one is
    // compiled in, DESIGN.md), unless something installed one already.
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    }
    if !config.headers.iter().any(|(name, _)| name == USER_AGENT) {
        config
            .headers
            .push((USER_AGENT, HeaderValue::from_static(CONTROLLER_USER_AGENT)));
    }

    let mut tcp = HttpConnector::new();
    tcp.enforce_http(false);
    // Many small frames share one connection: a delayed ACK must not hold the next one.
    tcp.set_nodelay(true);
    let tls = HttpsConnectorBuilder::new()
        .with_tls_config(config.rustls_client_config()?)
        .https_or_http();
    let tls = match &config.tls_server_name {
        Some(name) => tls.with_server_name_resolver(FixedServerNameResolver::new(
            name.clone()
                .try_into()
                .map_err(RustlsTlsError::InvalidServerName)
                .map_err(kube::Error::RustlsTls)?,
        )),
        None => tls,
    };
    let mut connector = TimeoutConnector::new(tls.enable_all_versions().wrap_connector(tcp));
    connector.set_connect_timeout(config.connect_timeout);
    connector.set_read_timeout(config.read_timeout);
    connector.set_write_timeout(config.write_timeout);
    connector.set_reset_reader_on_write(config.reset_reader_on_write);
    let http: hyper_util::client::legacy::Client<_, Body> =
        hyper_util::client::legacy::Client::builder(TokioExecutor::new())
            .timer(TokioTimer::new())
            .pool_timer(TokioTimer::new())
            .http2_keep_alive_interval(KEEP_ALIVE_INTERVAL)
            .http2_keep_alive_timeout(KEEP_ALIVE_TIMEOUT)
            .http2_keep_alive_while_idle(true)
            .build(connector);

    // kube's order, except that the count sits inside the retries (each attempt is a request
    // the API server serves) and outside the base URI (the path as the API defines it,
    // whatever prefix the cluster URL adds).
    let service = ServiceBuilder::new()
        .option_layer(
            config
                .default_retry
                .then(|| RetryLayer::new(RetryPolicy::server_retry())),
        )
        .layer(CountRequestsLayer(requests))
        .layer(config.base_uri_layer())
        .option_layer(config.auth_layer()?)
        .layer(config.extra_headers_layer()?)
        .map_err(BoxError::from)
        .service(http);
    Ok(Client::new(service, config.default_namespace))
}

/// `canary_kube_requests_total{verb,resource,code}`: the controller's load on the API server.
#[derive(Clone, Default)]
pub struct RequestCounts(Family<RequestLabels, Counter>);

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    verb: &'static str,
    resource: String,
    code: &'static str,
}

impl RequestCounts {
    /// Adds the counter to `registry` (prefixed there, e.g. `canary_`).
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "kube_requests",
            "Requests to the Kubernetes API server, by verb, resource and response code class \
             (each retry counted; a watch counted when it starts)",
            self.0.clone(),
        );
    }

    fn count(&self, request: &ApiRequest, code: &'static str) {
        self.0
            .get_or_create(&RequestLabels {
                verb: request.verb,
                resource: request.resource.clone(),
                code,
            })
            .inc();
    }
}

/// A request as the API server's request info names it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiRequest {
    /// get, list, watch, create, update, patch, delete, deletecollection, or `other`.
    pub verb: &'static str,
    /// The plural resource (`deployments`), with its subresource (`canaries/status`);
    /// `discovery` for the API's discovery documents, `nonresource` for other paths.
    pub resource: String,
}

/// Subresources of a Namespace itself: `/api/v1/namespaces/NAME/status` is not a collection
/// named `status` in namespace NAME (the API server's own special case).
const NAMESPACE_SUBRESOURCES: [&str; 2] = ["status", "finalize"];

impl ApiRequest {
    /// Classifies a request by method and path as kube-apiserver does (its `RequestInfo`):
    /// `/api/VERSION/…` or `/apis/GROUP/VERSION/…`, then optionally `namespaces/NS/`, then
    /// `RESOURCE[/NAME[/SUBRESOURCE]]`. A GET without a name is a list, or a watch with
    /// `watch=true`; a DELETE without a name deletes a collection.
    pub fn classify(method: &Method, uri: &Uri) -> ApiRequest {
        let segments: Vec<&str> = uri.path().split('/').filter(|s| !s.is_empty()).collect();
        let within_version = match segments.as_slice() {
            ["api", _version, rest @ ..] => rest,
            ["apis", _group, _version, rest @ ..] => rest,
            ["api" | "apis", ..] => return ApiRequest::other(method, "discovery"),
            _ => return ApiRequest::other(method, "nonresource"),
        };
        // The old `/watch/` prefix (kube-rs does not use it, other clients may).
        let (watch_prefix, within_version) = match within_version {
            ["watch", rest @ ..] => (true, rest),
            rest => (false, rest),
        };
        let parts = match within_version {
            ["namespaces", _namespace, rest @ ..]
                if !rest.is_empty() && !NAMESPACE_SUBRESOURCES.contains(&rest[0]) =>
            {
                rest
            }
            parts => parts,
        };
        let Some(resource) = parts.first() else {
            return ApiRequest::other(method, "discovery");
        };
        let named = parts.len() >= 2;
        let resource = match parts.get(2) {
            Some(subresource) => format!("{resource}/{subresource}"),
            None => (*resource).to_string(),
        };
        let verb = match *method {
            Method::GET | Method::HEAD if watch_prefix || asks_to_watch(uri) => "watch",
            Method::GET | Method::HEAD if named => "get",
            Method::GET | Method::HEAD => "list",
            Method::POST => "create",
            Method::PUT => "update",
            Method::PATCH => "patch",
            Method::DELETE if named => "delete",
            Method::DELETE => "deletecollection",
            _ => "other",
        };
        ApiRequest { verb, resource }
    }

    /// A request that is not about a resource: reads are `get`.
    fn other(method: &Method, resource: &str) -> ApiRequest {
        ApiRequest {
            verb: if matches!(*method, Method::GET | Method::HEAD) {
                "get"
            } else {
                "other"
            },
            resource: resource.to_string(),
        }
    }
}

/// Whether the query says `watch=true` (or any spelling of true Go's `ParseBool` accepts).
fn asks_to_watch(uri: &Uri) -> bool {
    uri.query().is_some_and(|query| {
        query.split('&').any(|pair| {
            matches!(
                pair.split_once('='),
                Some(("watch", "1" | "t" | "T" | "true" | "TRUE" | "True"))
            )
        })
    })
}

/// The class of an answer's status code (`2xx`…), or `error` when none came back (the
/// connection failed or timed out).
fn code_class(answer: Option<StatusCode>) -> &'static str {
    match answer.map(|status| status.as_u16() / 100) {
        Some(1) => "1xx",
        Some(2) => "2xx",
        Some(3) => "3xx",
        Some(4) => "4xx",
        Some(5) => "5xx",
        _ => "error",
    }
}

/// Counts each request in [`RequestCounts`] when its answer's head arrives.
#[derive(Clone)]
struct CountRequestsLayer(RequestCounts);

impl<S> Layer<S> for CountRequestsLayer {
    type Service = CountRequests<S>;

    fn layer(&self, inner: S) -> Self::Service {
        CountRequests {
            inner,
            counts: self.0.clone(),
        }
    }
}

#[derive(Clone)]
struct CountRequests<S> {
    inner: S,
    counts: RequestCounts,
}

impl<S, B, R> Service<Request<B>> for CountRequests<S>
where
    S: Service<Request<B>, Response = Response<R>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Response<R>, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let kind = ApiRequest::classify(request.method(), request.uri());
        let counts = self.counts.clone();
        let answer = self.inner.call(request);
        Box::pin(async move {
            let answer = answer.await;
            let code = code_class(answer.as_ref().ok().map(Response::status));
            counts.count(&kind, code);
            tracing::trace!(
                verb = kind.verb,
                resource = kind.resource,
                code,
                "API request"
            );
            answer
        })
    }
}

/// The reconcile settings: at most `max_concurrent_reconciles` Canaries reconciled at once
/// (never two reconciles of the same Canary). Bounded, so a burst (a restart with every
/// Canary due, a resync) queues in the controller instead of arriving at the API server at
/// once; kube-runtime's default is unbounded.
pub fn controller_config(max_concurrent_reconciles: u16) -> kube::runtime::controller::Config {
    kube::runtime::controller::Config::default().concurrency(max_concurrent_reconciles)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_named_as_the_api_server_names_them() {
        let cases = [
            // Reads of one object, of a collection, and watches of either.
            (
                "GET",
                "/apis/apps/v1/namespaces/shop/deployments/web-canary",
                "get",
                "deployments",
            ),
            (
                "GET",
                "/apis/apps/v1/namespaces/shop/deployments?labelSelector=a%3Db",
                "list",
                "deployments",
            ),
            (
                "GET",
                "/apis/apps/v1/deployments?limit=500",
                "list",
                "deployments",
            ),
            (
                "GET",
                "/apis/apps/v1/namespaces/shop/deployments?watch=true&resourceVersion=7",
                "watch",
                "deployments",
            ),
            (
                "GET",
                "/apis/canary.dev/v1alpha1/canaries?allowWatchBookmarks=true&watch=1",
                "watch",
                "canaries",
            ),
            (
                "GET",
                "/apis/canary.dev/v1alpha1/canaries?watch=false",
                "list",
                "canaries",
            ),
            (
                "GET",
                "/apis/canary.dev/v1alpha1/canaries?fieldSelector=metadata.name%3Dweb&watch=true",
                "watch",
                "canaries",
            ),
            ("GET", "/api/v1/watch/namespaces/shop/pods", "watch", "pods"),
            (
                "GET",
                "/apis/networking.istio.io/v1/namespaces/shop/virtualservices/web",
                "get",
                "virtualservices",
            ),
            // Writes, subresources included.
            (
                "PATCH",
                "/apis/canary.dev/v1alpha1/namespaces/shop/canaries/web/status?fieldManager=canary-controller",
                "patch",
                "canaries/status",
            ),
            (
                "PATCH",
                "/apis/apps/v1/namespaces/shop/deployments/web-stable?fieldManager=canary-controller&force=true",
                "patch",
                "deployments",
            ),
            (
                "PUT",
                "/apis/coordination.k8s.io/v1/namespaces/canary-system/leases/canary-controller",
                "update",
                "leases",
            ),
            (
                "POST",
                "/apis/events.k8s.io/v1/namespaces/shop/events",
                "create",
                "events",
            ),
            (
                "POST",
                "/api/v1/namespaces/shop/pods/web-1/eviction",
                "create",
                "pods/eviction",
            ),
            (
                "DELETE",
                "/apis/apps/v1/namespaces/shop/deployments/web-canary",
                "delete",
                "deployments",
            ),
            (
                "DELETE",
                "/api/v1/namespaces/shop/configmaps",
                "deletecollection",
                "configmaps",
            ),
            (
                "GET",
                "/apis/apps/v1/namespaces/shop/deployments/web/scale",
                "get",
                "deployments/scale",
            ),
            // Namespaces themselves, whose subresources look like collections in them.
            ("GET", "/api/v1/namespaces", "list", "namespaces"),
            ("GET", "/api/v1/namespaces/shop", "get", "namespaces"),
            (
                "PUT",
                "/api/v1/namespaces/shop/finalize",
                "update",
                "namespaces/finalize",
            ),
            (
                "GET",
                "/api/v1/namespaces/shop/status",
                "get",
                "namespaces/status",
            ),
            // Cluster-scoped objects.
            (
                "GET",
                "/apis/canary.dev/v1alpha1/clusteranalysistemplates/shared",
                "get",
                "clusteranalysistemplates",
            ),
            // Discovery and paths outside the resource API.
            ("GET", "/apis/networking.istio.io/v1", "get", "discovery"),
            ("GET", "/apis", "get", "discovery"),
            ("GET", "/version", "get", "nonresource"),
            (
                "OPTIONS",
                "/apis/apps/v1/deployments",
                "other",
                "deployments",
            ),
        ];
        for (method, uri, verb, resource) in cases {
            let method: Method = method.parse().unwrap();
            let uri: Uri = uri.parse().unwrap();
            assert_eq!(
                ApiRequest::classify(&method, &uri),
                ApiRequest {
                    verb,
                    resource: resource.into()
                },
                "{method} {uri}"
            );
        }
    }

    #[test]
    fn answers_are_counted_by_class() {
        let cases = [
            (Some(StatusCode::OK), "2xx"),
            (Some(StatusCode::CREATED), "2xx"),
            (Some(StatusCode::NOT_MODIFIED), "3xx"),
            (Some(StatusCode::NOT_FOUND), "4xx"),
            (Some(StatusCode::TOO_MANY_REQUESTS), "4xx"),
            (Some(StatusCode::SERVICE_UNAVAILABLE), "5xx"),
            (None, "error"),
        ];
        for (status, class) in cases {
            assert_eq!(code_class(status), class, "{status:?}");
        }
    }

    #[tokio::test]
    async fn the_client_names_itself_keeps_the_kubeconfig_headers_and_counts_requests() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};

        // A plain-HTTP API server that records the head of the one request it answers.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            let mut head = Vec::new();
            let mut buffer = [0u8; 1024];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                let read = stream.read(&mut buffer).await.unwrap();
                assert!(read > 0, "the client closed before sending a request");
                head.extend_from_slice(&buffer[..read]);
            }
            stream
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                .await
                .unwrap();
            String::from_utf8(head).unwrap().to_ascii_lowercase()
        });
        let mut config = Config::new(format!("http://{address}").parse().unwrap());
        config.auth_info.impersonate = Some("system:serviceaccount:ops:canary".into());
        let counts = RequestCounts::default();
        let client = client_for(config, counts.clone()).unwrap();
        let answer = client
            .request_text(Request::get("/version").body(Vec::new()).unwrap())
            .await
            .unwrap();
        assert_eq!(answer, "ok");
        let head = server.await.unwrap();
        for expected in [
            "get /version http/1.1",
            "user-agent: canary-controller/",
            "impersonate-user: system:serviceaccount:ops:canary",
        ] {
            assert!(head.contains(expected), "{expected} missing from:\n{head}");
        }
        assert_eq!(
            counts
                .0
                .get_or_create(&RequestLabels {
                    verb: "get",
                    resource: "nonresource".into(),
                    code: "2xx",
                })
                .get(),
            1
        );
    }

    #[test]
    fn a_proxy_in_the_kubeconfig_is_refused_saying_what_to_change() {
        let mut config = Config::new("https://10.0.0.1:6443".parse().unwrap());
        config.proxy_url = Some("http://proxy.corp:3128".parse().unwrap());
        let error = client_for(config, RequestCounts::default())
            .err()
            .expect("refused")
            .to_string();
        assert!(
            error.contains("proxy-url http://proxy.corp:3128/")
                && error.contains("remove proxy-url"),
            "{error}"
        );
    }

    #[tokio::test]
    async fn each_request_and_each_retry_is_counted() {
        use prometheus_client::encoding::text::encode;
        use std::sync::Arc;
        use std::sync::atomic::{AtomicUsize, Ordering};

        // The API server sheds load twice (429), then answers.
        let served = Arc::new(AtomicUsize::new(0));
        let server = tower::service_fn({
            let served = served.clone();
            move |_: Request<Body>| {
                let status = match served.fetch_add(1, Ordering::SeqCst) {
                    0 | 1 => StatusCode::TOO_MANY_REQUESTS,
                    _ => StatusCode::OK,
                };
                let answer = Response::builder()
                    .status(status)
                    .header("Retry-After", "0")
                    .body(Body::empty())
                    .unwrap();
                std::future::ready(Ok::<_, BoxError>(answer))
            }
        });
        let counts = RequestCounts::default();
        let mut service = ServiceBuilder::new()
            .layer(RetryLayer::new(
                RetryPolicy::new(Duration::from_millis(1), Duration::from_millis(2), 3, true)
                    .unwrap(),
            ))
            .layer(CountRequestsLayer(counts.clone()))
            .service(server);
        let request = Request::patch(
            "/apis/canary.dev/v1alpha1/namespaces/shop/canaries/web/status?fieldManager=x",
        )
        .body(Body::from(b"{}".to_vec()))
        .unwrap();
        let answer = tower::ServiceExt::oneshot(&mut service, request)
            .await
            .unwrap();
        assert_eq!(answer.status(), StatusCode::OK, "retried until it passed");
        let mut registry = Registry::with_prefix("canary");
        counts.register(&mut registry);
        let mut text = String::new();
        encode(&mut text, &registry).unwrap();
        for expected in [
            r#"canary_kube_requests_total{verb="patch",resource="canaries/status",code="4xx"} 2"#,
            r#"canary_kube_requests_total{verb="patch",resource="canaries/status",code="2xx"} 1"#,
        ] {
            assert!(text.contains(expected), "{expected} missing from:\n{text}");
        }
    }
}
