//! Porthole: reliable localhost forwards to services in local Kubernetes clusters.
