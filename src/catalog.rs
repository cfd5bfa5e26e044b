//! The cluster's namespaces, services and their ports, as a picker shows them: read from the
//! engine's watched world, so listing costs no API call.

use serde::Serialize;

use crate::route::World;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CatalogError {
    /// Nothing has been listed from the cluster (yet): the reason, in words.
    #[error("the cluster cannot be listed: {0}")]
    Unavailable(String),
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Catalog {
    pub namespaces: Vec<NamespaceEntry>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NamespaceEntry {
    pub name: String,
    pub services: Vec<ServiceEntry>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ServiceEntry {
    pub name: String,
    /// `ClusterIP`, `NodePort`, `LoadBalancer`, `ExternalName`.
    #[serde(rename = "type")]
    pub type_: String,
    pub ports: Vec<PortEntry>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PortEntry {
    pub name: Option<String>,
    pub port: i32,
    pub protocol: String,
    pub node_port: Option<i32>,
}

impl Catalog {
    /// Every namespace (even one without services), sorted by name, services sorted within.
    pub fn of(world: &World) -> Catalog {
        let mut namespaces: Vec<NamespaceEntry> = world
            .namespaces
            .iter()
            .filter_map(|ns| ns.metadata.name.clone())
            .map(|name| NamespaceEntry {
                name,
                services: Vec::new(),
            })
            .collect();
        namespaces.sort_by(|a, b| a.name.cmp(&b.name));
        for service in &world.services {
            let (Some(ns), Some(name)) = (&service.metadata.namespace, &service.metadata.name) else {
                continue;
            };
            let spec = service.spec.clone().unwrap_or_default();
            let entry = ServiceEntry {
                name: name.clone(),
                type_: spec.type_.unwrap_or_else(|| "ClusterIP".into()),
                ports: spec
                    .ports
                    .unwrap_or_default()
                    .into_iter()
                    .map(|p| PortEntry {
                        name: p.name,
                        port: p.port,
                        protocol: p.protocol.unwrap_or_else(|| "TCP".into()),
                        node_port: p.node_port,
                    })
                    .collect(),
            };
            // A service seen before its namespace (the watches are not ordered) still shows.
            let index = match namespaces.binary_search_by(|n| n.name.as_str().cmp(ns)) {
                Ok(i) => i,
                Err(i) => {
                    namespaces.insert(
                        i,
                        NamespaceEntry {
                            name: ns.clone(),
                            services: Vec::new(),
                        },
                    );
                    i
                }
            };
            namespaces[index].services.push(entry);
        }
        for ns in &mut namespaces {
            ns.services.sort_by(|a, b| a.name.cmp(&b.name));
        }
        Catalog { namespaces }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use k8s_openapi::api::core::v1::{Namespace, Service, ServicePort, ServiceSpec};
    use kube::api::ObjectMeta;

    use super::*;

    fn namespace(name: &str) -> Arc<Namespace> {
        Arc::new(Namespace {
            metadata: ObjectMeta {
                name: Some(name.into()),
                ..Default::default()
            },
            ..Default::default()
        })
    }

    fn service(ns: &str, name: &str, node_port: Option<i32>) -> Arc<Service> {
        Arc::new(Service {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some(ns.into()),
                ..Default::default()
            },
            spec: Some(ServiceSpec {
                type_: node_port.map(|_| "NodePort".to_string()),
                ports: Some(vec![ServicePort {
                    name: Some("http".into()),
                    port: 80,
                    node_port,
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            ..Default::default()
        })
    }

    #[test]
    fn namespaces_and_services_are_sorted_and_typed() {
        let world = World {
            namespaces: vec![namespace("web"), namespace("empty")],
            services: vec![
                service("web", "b", Some(30080)),
                service("web", "a", None),
                service("late", "x", None),
            ],
            nodes: vec![],
            endpoint_slices: vec![],
            pods: vec![],
        };
        let catalog = Catalog::of(&world);
        let names: Vec<&str> = catalog.namespaces.iter().map(|n| n.name.as_str()).collect();
        assert_eq!(names, ["empty", "late", "web"]);
        let web = &catalog.namespaces[2];
        assert_eq!(web.services[0].name, "a");
        assert_eq!(web.services[0].type_, "ClusterIP");
        assert_eq!(web.services[1].type_, "NodePort");
        assert_eq!(web.services[1].ports[0].node_port, Some(30080));
        assert_eq!(web.services[1].ports[0].protocol, "TCP");
    }
}
