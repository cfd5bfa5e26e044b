//! Watch streams: the initial events a watch starts with (synthetic ADDED, replayed
//! history, or a 410 ERROR), then live changes, BOOKMARKs and the end at timeoutSeconds.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use serde_json::{Value, json};
use tokio::sync::{broadcast, mpsc};

use super::api::{Body, status_object};
use super::cluster::Shared;
use super::selector::Selector;
use super::store::{Change, ChangeType, Feed, Kind};

/// A parsed `?watch=true` request.
pub struct WatchRequest {
    pub kind: Kind,
    pub namespace: Option<String>,
    pub selector: Selector,
    /// `None` for an absent or empty resourceVersion.
    pub resource_version: Option<u64>,
    pub bookmarks: bool,
    pub send_initial_events: bool,
    pub timeout: Duration,
}

impl WatchRequest {
    fn in_scope(&self, object: &Value) -> bool {
        let namespace_ok = self
            .namespace
            .as_deref()
            .is_none_or(|ns| object["metadata"]["namespace"].as_str() == Some(ns));
        namespace_ok && self.selector.matches(object)
    }

    /// The event this watch shows for a change, if any. Like the watch cache, an object
    /// that starts or stops matching the selector shows as ADDED or DELETED.
    fn event(&self, change: &Change) -> Option<Value> {
        if change.kind != self.kind {
            return None;
        }
        let now = self.in_scope(&change.object);
        let before = change.prev.as_ref().is_some_and(|p| self.in_scope(p));
        match (change.ty, before, now) {
            (ChangeType::Added, _, true) => Some(event("ADDED", change.object.clone())),
            (ChangeType::Deleted, _, true) => Some(event("DELETED", change.object.clone())),
            (ChangeType::Modified, true, true) => Some(event("MODIFIED", change.object.clone())),
            (ChangeType::Modified, false, true) => Some(event("ADDED", change.object.clone())),
            (ChangeType::Modified, true, false) => {
                let mut old = change.prev.clone().expect("modified change has a previous object");
                old["metadata"]["resourceVersion"] = json!(change.rv.to_string());
                Some(event("DELETED", old))
            }
            _ => None,
        }
    }

    fn bookmark(&self, rv: u64, initial_events_end: bool) -> Value {
        let mut metadata = json!({"resourceVersion": rv.to_string()});
        if initial_events_end {
            metadata["annotations"] = json!({"k8s.io/initial-events-end": "true"});
        }
        event(
            "BOOKMARK",
            json!({"kind": self.kind.name(), "apiVersion": self.kind.api_version(), "metadata": metadata}),
        )
    }
}

/// Starts a watch and returns its chunked body of JSON lines.
pub fn start(shared: &Arc<Shared>, request: WatchRequest) -> Body {
    let (initial, feed, start_rv) = {
        let state = shared.lock();
        let store = &state.store;
        match request
            .resource_version
            .filter(|rv| *rv != 0 || request.send_initial_events)
        {
            Some(rv) if !request.send_initial_events => match store.since(request.kind, rv) {
                Ok(since) => {
                    let events = since.changes.iter().filter_map(|c| request.event(c)).collect();
                    (events, Some(since.feed), rv)
                }
                Err(expired) => {
                    let message = format!("too old resource version: {} ({})", expired.requested, expired.oldest);
                    let status = status_object(410, "Expired", &message, None);
                    (vec![event("ERROR", status)], None, rv)
                }
            },
            // Absent or "0" (or a streaming list): synthetic ADDED events for what exists now.
            _ => {
                let snapshot = store.snapshot(request.kind, request.namespace.as_deref());
                let mut events: Vec<Value> = snapshot
                    .objects
                    .into_iter()
                    .filter(|o| request.selector.matches(o))
                    .map(|o| event("ADDED", o))
                    .collect();
                if request.send_initial_events && request.bookmarks {
                    events.push(request.bookmark(snapshot.rv, true));
                }
                (events, Some(snapshot.feed), snapshot.rv)
            }
        }
    };
    let initial = futures::stream::iter(initial.into_iter().map(frame));
    let Some(feed) = feed else {
        return StreamBody::new(initial).boxed_unsync();
    };
    let (tx, rx) = mpsc::channel::<Value>(64);
    let shutdown = shared.shutdown.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = shutdown.cancelled() => {}
            _ = tokio::time::sleep(request.timeout) => {}
            _ = tx.closed() => {}
            _ = pump(&request, feed, start_rv, &tx) => {}
        }
    });
    let live = futures::stream::unfold(
        rx,
        |mut rx| async move { rx.recv().await.map(|event| (frame(event), rx)) },
    );
    StreamBody::new(initial.chain(live)).boxed_unsync()
}

/// Forwards live changes and bookmarks until the client goes away or the feed lags.
async fn pump(request: &WatchRequest, mut feed: broadcast::Receiver<Feed>, start_rv: u64, tx: &mpsc::Sender<Value>) {
    let mut seen = start_rv;
    loop {
        let event = match feed.recv().await {
            Ok(Feed::Change(change)) if change.rv > seen => {
                seen = change.rv;
                request.event(&change)
            }
            Ok(Feed::Bookmark(rv)) if request.bookmarks && rv >= seen => {
                seen = rv;
                Some(request.bookmark(rv, false))
            }
            Ok(_) => None,
            // A watcher that falls behind is closed, as the real server closes slow watchers;
            // the client resumes from the last resourceVersion it saw.
            Err(_) => return,
        };
        if let Some(event) = event
            && tx.send(event).await.is_err()
        {
            return;
        }
    }
}

fn event(kind: &str, object: Value) -> Value {
    json!({"type": kind, "object": object})
}

fn frame(event: Value) -> Result<Frame<Bytes>, Infallible> {
    let mut line = serde_json::to_vec(&event).expect("serialize watch event");
    line.push(b'\n');
    Ok(Frame::data(Bytes::from(line)))
}
