//! Every provider behind one [`MetricsSource`]: a request goes to the provider it names
//! ([`QueryRequest::provider`]). The controller and the CLI hold one of these.

use std::sync::Arc;

use super::{
    AddressPolicy, GraphiteSource, InfluxDbSource, JobSource, MetricsError, MetricsSource,
    PrometheusSource, ProviderQuery, QueryOutput, QueryRequest, WebSource,
};

/// One source per provider, sharing one address policy. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Providers {
    prometheus: PrometheusSource,
    web: WebSource,
    job: JobSource,
    influxdb: InfluxDbSource,
    graphite: GraphiteSource,
}

impl Providers {
    /// Sources with the default address policy (see [`AddressPolicy`]).
    pub fn new() -> Result<Self, MetricsError> {
        Self::with_policy(AddressPolicy::default())
    }

    /// Sources that send requests only where `policy` allows.
    pub fn with_policy(policy: AddressPolicy) -> Result<Self, MetricsError> {
        let prometheus = PrometheusSource::with_policy(policy)?;
        let policy = Arc::new(prometheus.address_policy().clone());
        Ok(Self {
            web: WebSource::with_policy(policy.clone())?,
            influxdb: InfluxDbSource::with_policy(policy.clone())?,
            graphite: GraphiteSource::with_policy(policy)?,
            job: JobSource::default(),
            prometheus,
        })
    }

    /// The same sources, running measurement Jobs with `client` (the controller's).
    pub fn with_kube(self, client: kube::Client) -> Self {
        Self {
            job: JobSource::with_client(client),
            ..self
        }
    }

    /// Where these sources may send requests.
    pub fn address_policy(&self) -> &AddressPolicy {
        self.prometheus.address_policy()
    }
}

impl MetricsSource for Providers {
    async fn instant_query(&self, request: &QueryRequest) -> Result<QueryOutput, MetricsError> {
        match &request.provider {
            ProviderQuery::Prometheus => self.prometheus.instant_query(request).await,
            ProviderQuery::Web(_) => self.web.instant_query(request).await,
            ProviderQuery::Job(_) => self.job.instant_query(request).await,
            ProviderQuery::InfluxDb(_) => self.influxdb.instant_query(request).await,
            ProviderQuery::Graphite { .. } => self.graphite.instant_query(request).await,
        }
    }
}
