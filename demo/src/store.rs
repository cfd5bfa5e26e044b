//! The object store of a fake cluster: objects as API JSON, one global resourceVersion,
//! the retained change history, and the feed that live watches read.

use std::collections::BTreeMap;
use std::hash::{BuildHasher, Hasher};
use std::sync::Arc;

use serde_json::{Value, json};
use tokio::sync::broadcast;

/// The resource types the fake API serves.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub enum Kind {
    Namespace,
    Node,
    Service,
    EndpointSlice,
    Pod,
    Deployment,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Namespace => "Namespace",
            Kind::Node => "Node",
            Kind::Service => "Service",
            Kind::EndpointSlice => "EndpointSlice",
            Kind::Pod => "Pod",
            Kind::Deployment => "Deployment",
        }
    }

    pub fn api_version(self) -> &'static str {
        match self {
            Kind::EndpointSlice => "discovery.k8s.io/v1",
            Kind::Deployment => "apps/v1",
            _ => "v1",
        }
    }

    pub fn plural(self) -> &'static str {
        match self {
            Kind::Namespace => "namespaces",
            Kind::Node => "nodes",
            Kind::Service => "services",
            Kind::EndpointSlice => "endpointslices",
            Kind::Pod => "pods",
            Kind::Deployment => "deployments",
        }
    }

    pub fn namespaced(self) -> bool {
        matches!(self, Kind::Service | Kind::EndpointSlice | Kind::Pod | Kind::Deployment)
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum ChangeType {
    Added,
    Modified,
    Deleted,
}

/// One committed change; `prev` is the object before it, which selector-filtered
/// watches need to turn a MODIFIED into an ADDED or DELETED.
#[derive(Debug)]
pub struct Change {
    pub rv: u64,
    pub kind: Kind,
    pub ty: ChangeType,
    pub object: Value,
    pub prev: Option<Value>,
}

/// What live watches receive, in commit order.
#[derive(Clone, Debug)]
pub enum Feed {
    Change(Arc<Change>),
    /// Every change up to this resourceVersion has been fed.
    Bookmark(u64),
}

/// Retained history no longer reaches back to `requested`.
#[derive(Debug)]
pub struct Expired {
    pub requested: u64,
    pub oldest: u64,
}

/// Changes after a resourceVersion plus the feed of later ones, taken atomically.
pub struct Since {
    pub changes: Vec<Arc<Change>>,
    pub feed: broadcast::Receiver<Feed>,
}

/// Current objects at `rv` plus the feed of later changes, taken atomically.
pub struct Snapshot {
    pub rv: u64,
    pub objects: Vec<Value>,
    pub feed: broadcast::Receiver<Feed>,
}

type Key = (Kind, String, String);

pub struct Store {
    rv: u64,
    objects: BTreeMap<Key, Value>,
    history: Vec<Arc<Change>>,
    /// History holds every change with rv greater than this.
    compacted: u64,
    feed: broadcast::Sender<Feed>,
}

impl Default for Store {
    fn default() -> Store {
        Store {
            // A fresh etcd is never at revision 0 once the API server has bootstrapped.
            rv: 100,
            objects: BTreeMap::new(),
            history: Vec::new(),
            compacted: 100,
            feed: broadcast::channel(4096).0,
        }
    }
}

impl Store {
    pub fn rv(&self) -> u64 {
        self.rv
    }

    pub fn get(&self, kind: Kind, namespace: &str, name: &str) -> Option<&Value> {
        self.objects.get(&(kind, namespace.to_string(), name.to_string()))
    }

    /// Objects of `kind`, in a namespace or in all, ordered by namespace and name like etcd keys.
    pub fn list(&self, kind: Kind, namespace: Option<&str>) -> Vec<Value> {
        self.objects
            .iter()
            .filter(|((k, ns, _), _)| *k == kind && namespace.is_none_or(|n| n == ns))
            .map(|(_, v)| v.clone())
            .collect()
    }

    /// Creates or replaces an object, keeping its uid and creationTimestamp. A write that
    /// changes nothing is a no-op, as on the real API server (no new resourceVersion, no event).
    pub fn put(&mut self, kind: Kind, mut object: Value) -> Value {
        object["kind"] = json!(kind.name());
        object["apiVersion"] = json!(kind.api_version());
        let key = key_of(kind, &object);
        let prev = self.objects.get(&key).cloned();
        let meta = &mut object["metadata"];
        match &prev {
            Some(p) => {
                meta["uid"] = p["metadata"]["uid"].clone();
                meta["creationTimestamp"] = p["metadata"]["creationTimestamp"].clone();
                meta["resourceVersion"] = p["metadata"]["resourceVersion"].clone();
                if *p == object {
                    return object;
                }
            }
            None => {
                meta["uid"] = json!(uid());
                meta["creationTimestamp"] = json!(now());
            }
        }
        self.rv += 1;
        object["metadata"]["resourceVersion"] = json!(self.rv.to_string());
        self.objects.insert(key, object.clone());
        let ty = if prev.is_some() {
            ChangeType::Modified
        } else {
            ChangeType::Added
        };
        self.record(kind, ty, object.clone(), prev);
        object
    }

    /// Deletes an object; the DELETED event carries its last state at the deletion's resourceVersion.
    pub fn delete(&mut self, kind: Kind, namespace: &str, name: &str) -> Option<Value> {
        let prev = self.objects.remove(&(kind, namespace.to_string(), name.to_string()))?;
        self.rv += 1;
        let mut object = prev.clone();
        object["metadata"]["resourceVersion"] = json!(self.rv.to_string());
        self.record(kind, ChangeType::Deleted, object.clone(), Some(prev));
        Some(object)
    }

    fn record(&mut self, kind: Kind, ty: ChangeType, object: Value, prev: Option<Value>) {
        let change = Arc::new(Change {
            rv: self.rv,
            kind,
            ty,
            object,
            prev,
        });
        self.history.push(change.clone());
        // No receivers is fine: nobody is watching.
        let _ = self.feed.send(Feed::Change(change));
    }

    /// Tells every live watch that it has seen everything up to the current resourceVersion.
    pub fn bookmark(&self) {
        let _ = self.feed.send(Feed::Bookmark(self.rv));
    }

    /// Forgets the history, as etcd compaction and the watch cache's window do.
    pub fn compact(&mut self) {
        self.history.clear();
        self.compacted = self.rv;
    }

    pub fn snapshot(&self, kind: Kind, namespace: Option<&str>) -> Snapshot {
        Snapshot {
            rv: self.rv,
            objects: self.list(kind, namespace),
            feed: self.feed.subscribe(),
        }
    }

    /// The retained changes of `kind` after `rv`, or [`Expired`] when history is compacted past it.
    pub fn since(&self, kind: Kind, rv: u64) -> Result<Since, Expired> {
        if rv < self.compacted {
            return Err(Expired {
                requested: rv,
                oldest: self.compacted,
            });
        }
        let changes = self
            .history
            .iter()
            .filter(|c| c.kind == kind && c.rv > rv)
            .cloned()
            .collect();
        Ok(Since {
            changes,
            feed: self.feed.subscribe(),
        })
    }
}

fn key_of(kind: Kind, object: &Value) -> Key {
    let meta = &object["metadata"];
    let name = meta["name"].as_str().expect("object has metadata.name");
    let namespace = if kind.namespaced() {
        meta["namespace"]
            .as_str()
            .expect("namespaced object has metadata.namespace")
    } else {
        ""
    };
    (kind, namespace.to_string(), name.to_string())
}

/// A random version-4 UUID.
pub fn uid() -> String {
    let hi = random_u64();
    let lo = random_u64();
    format!(
        "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
        hi >> 32,
        (hi >> 16) & 0xffff,
        hi & 0xfff,
        0x8000 | (lo >> 48) & 0x3fff,
        lo & 0xffff_ffff_ffff
    )
}

/// Random bits from std's per-process randomly keyed hasher; good enough for test ids.
pub fn random_u64() -> u64 {
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
    hasher.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default(),
    );
    hasher.finish()
}

/// The current time with second precision, as the API server stamps metadata.
pub fn now() -> String {
    let second = k8s_openapi::jiff::Timestamp::now().as_second();
    k8s_openapi::jiff::Timestamp::from_second(second)
        .expect("current time is in range")
        .to_string()
}
