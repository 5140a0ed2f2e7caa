//! Kubernetes Events for what an operator must see: on pullkeeper's own Pod (a rotation that
//! failed, a Pod recovered) and on the object concerned (a foreign Secret, a stuck Pod).
//! Notes carry names and bounded reasons only, never credential material.
//!
//! A repeat of the same Event (same type, reason, action, regarding and related object, and the
//! same note) within six minutes is counted on the first one (`series`), as kube-runtime's
//! recorder does. Unlike that recorder, the note is part of what makes two Events the same: an
//! Event's note cannot change once written, so two registries failing, two different errors of
//! one registry, or two Pods recovered are each an Event of their own, never a count on the
//! first one's text.

use std::collections::HashMap;
use std::sync::Arc;

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::Event as ApiEvent;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::Client;
use kube::api::{Api, ObjectMeta, Patch, PatchParams, PostParams};
use serde_json::json;
use tokio::sync::Mutex;
use tracing::warn;

/// The controller name Events are reported as.
pub const CONTROLLER: &str = "pullkeeper";

/// How long a published Event is counted on rather than written anew.
const SERIES_TTL: SignedDuration = SignedDuration::from_mins(6);

/// Normal or Warning.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EventType {
    Normal,
    Warning,
}

impl EventType {
    fn as_str(self) -> &'static str {
        match self {
            Self::Normal => "Normal",
            Self::Warning => "Warning",
        }
    }
}

/// pullkeeper's own Pod, from the downward API (`POD_NAME`, `POD_NAMESPACE`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodIdentity {
    pub name: String,
    pub namespace: String,
}

impl PodIdentity {
    pub fn reference(&self) -> ObjectReference {
        ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Pod".into()),
            name: Some(self.name.clone()),
            namespace: Some(self.namespace.clone()),
            ..ObjectReference::default()
        }
    }
}

/// A reference to a Pod by name and UID (its Events then never mix with a same-named
/// successor's).
pub fn pod_reference(namespace: &str, name: &str, uid: &str) -> ObjectReference {
    ObjectReference {
        uid: Some(uid.into()),
        ..core_reference("Pod", namespace, name)
    }
}

/// A reference to a namespaced core/v1 object.
pub fn core_reference(kind: &str, namespace: &str, name: &str) -> ObjectReference {
    ObjectReference {
        api_version: Some("v1".into()),
        kind: Some(kind.into()),
        namespace: Some(namespace.into()),
        name: Some(name.into()),
        ..ObjectReference::default()
    }
}

/// What makes two Events one series.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct SeriesKey {
    type_: EventType,
    reason: String,
    action: String,
    regarding: RefKey,
    related: Option<RefKey>,
    note: String,
}

/// The identifying fields of an object reference.
type RefKey = [Option<String>; 5];

fn ref_key(r: &ObjectReference) -> RefKey {
    [
        r.api_version.clone(),
        r.kind.clone(),
        r.namespace.clone(),
        r.name.clone(),
        r.uid.clone(),
    ]
}

/// One published Event, for counting its repeats.
#[derive(Clone, Debug)]
struct Published {
    namespace: String,
    name: String,
    count: i32,
    last: Timestamp,
}

/// Publishes Events (`events.k8s.io/v1`) as controller `pullkeeper`.
#[derive(Clone)]
pub struct Events {
    client: Client,
    instance: String,
    own_pod: Option<ObjectReference>,
    published: Arc<Mutex<HashMap<SeriesKey, Published>>>,
}

/// One Event to publish.
struct Draft<'a> {
    type_: EventType,
    reason: &'a str,
    action: &'a str,
    regarding: &'a ObjectReference,
    related: Option<&'a ObjectReference>,
    note: String,
}

impl Events {
    pub fn new(client: Client, pod: Option<&PodIdentity>) -> Self {
        Self {
            client,
            instance: pod.map_or_else(|| CONTROLLER.to_string(), |p| p.name.clone()),
            own_pod: pod.map(PodIdentity::reference),
            published: Arc::default(),
        }
    }

    /// A Warning on `reference`.
    pub async fn warn(
        &self,
        reference: &ObjectReference,
        reason: &str,
        action: &str,
        note: String,
    ) {
        self.publish(Draft {
            type_: EventType::Warning,
            reason,
            action,
            regarding: reference,
            related: None,
            note,
        })
        .await;
    }

    /// A Normal Event on `reference`.
    pub async fn normal(
        &self,
        reference: &ObjectReference,
        reason: &str,
        action: &str,
        note: String,
    ) {
        self.publish(Draft {
            type_: EventType::Normal,
            reason,
            action,
            regarding: reference,
            related: None,
            note,
        })
        .await;
    }

    /// An Event on pullkeeper's own Pod, when it is known; `related` names the object it is
    /// about, when there is one (a recovered Pod).
    pub async fn on_own_pod(
        &self,
        type_: EventType,
        reason: &str,
        action: &str,
        related: Option<&ObjectReference>,
        note: String,
    ) {
        if let Some(reference) = &self.own_pod {
            self.publish(Draft {
                type_,
                reason,
                action,
                regarding: reference,
                related,
                note,
            })
            .await;
        }
    }

    async fn publish(&self, draft: Draft<'_>) {
        if let Err(e) = self.try_publish(&draft).await {
            warn!(error = %e, reason = draft.reason, "could not publish event");
        }
    }

    async fn try_publish(&self, draft: &Draft<'_>) -> Result<(), kube::Error> {
        let now = Timestamp::now();
        let key = SeriesKey {
            type_: draft.type_,
            reason: draft.reason.to_string(),
            action: draft.action.to_string(),
            regarding: ref_key(draft.regarding),
            related: draft.related.map(ref_key),
            note: draft.note.clone(),
        };
        let mut published = self.published.lock().await;
        published.retain(|_, p| p.last + SERIES_TTL > now);
        if let Some(p) = published.get_mut(&key) {
            let api = Api::<ApiEvent>::namespaced(self.client.clone(), &p.namespace);
            let count = p.count + 1;
            let patch = json!({"series": {"count": count, "lastObservedTime": MicroTime(now)}});
            match api
                .patch(&p.name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                Ok(_) => {
                    p.count = count;
                    p.last = now;
                    return Ok(());
                }
                // Gone (the API server's Event TTL): a new one is written below.
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(e) => return Err(e),
            }
        }
        let event = self.event(draft, now);
        let namespace = event.metadata.namespace.clone().unwrap_or_default();
        let name = event.metadata.name.clone().unwrap_or_default();
        Api::<ApiEvent>::namespaced(self.client.clone(), &namespace)
            .create(&PostParams::default(), &event)
            .await?;
        published.insert(
            key,
            Published {
                namespace,
                name,
                count: 1,
                last: now,
            },
        );
        Ok(())
    }

    fn event(&self, draft: &Draft<'_>, now: Timestamp) -> ApiEvent {
        let namespace = draft
            .regarding
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into());
        let base = draft.regarding.name.as_deref().unwrap_or(CONTROLLER);
        ApiEvent {
            metadata: ObjectMeta {
                name: Some(format!("{base}.{:x}", now.as_nanosecond())),
                namespace: Some(namespace),
                ..ObjectMeta::default()
            },
            action: Some(draft.action.to_string()),
            reason: Some(draft.reason.to_string()),
            note: Some(draft.note.clone()),
            event_time: Some(MicroTime(now)),
            regarding: Some(draft.regarding.clone()),
            related: draft.related.cloned(),
            reporting_controller: Some(CONTROLLER.into()),
            reporting_instance: Some(self.instance.clone()),
            type_: Some(draft.type_.as_str().into()),
            ..ApiEvent::default()
        }
    }
}
