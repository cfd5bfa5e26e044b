//! Workloads on a `FakeCluster`: Deployments, stored as the API server stores them, for what
//! asks a workload which pods are its own (`porthole import` of `kubectl port-forward
//! deploy/NAME`). No controller runs: pods come from [`FakeCluster::add_endpoint`].

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec};
use k8s_openapi::api::core::v1::{PodSpec, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};

use super::cluster::{FakeCluster, from_value, to_value};
use super::store::Kind;

impl FakeCluster {
    /// Creates or replaces Deployment `namespace/name` whose selector and pod template carry
    /// `labels` (ADDED or MODIFIED). Panics if the namespace does not exist, where the real
    /// server answers 404.
    pub fn apply_deployment(&self, namespace: &str, name: &str, labels: &[(&str, &str)]) -> Deployment {
        let labels: BTreeMap<String, String> = labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let deployment = Deployment {
            metadata: ObjectMeta {
                name: Some(name.to_string()),
                namespace: Some(namespace.to_string()),
                labels: Some(labels.clone()),
                ..ObjectMeta::default()
            },
            spec: Some(DeploymentSpec {
                replicas: Some(1),
                selector: LabelSelector {
                    match_labels: Some(labels.clone()),
                    match_expressions: None,
                },
                template: PodTemplateSpec {
                    metadata: Some(ObjectMeta {
                        labels: Some(labels),
                        ..ObjectMeta::default()
                    }),
                    spec: Some(PodSpec::default()),
                },
                ..DeploymentSpec::default()
            }),
            status: None,
        };
        self.mutate(|state| {
            assert!(
                state.store.get(Kind::Namespace, "", namespace).is_some(),
                "namespaces \"{namespace}\" not found"
            );
            from_value(&state.store.put(Kind::Deployment, to_value(&deployment)))
        })
    }
}
