//! Kubernetes Events for what an operator must see: on pullkeeper's own Pod (a rotation that
//! failed, a Pod recovered) and on the object concerned (a foreign Secret, a stuck Pod).
//! Notes carry names and bounded reasons only, never credential material.

use k8s_openapi::api::core::v1::ObjectReference;
use kube::Client;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use tracing::warn;

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

/// Publishes Events as controller `pullkeeper`.
#[derive(Clone)]
pub struct Events {
    recorder: Recorder,
    own_pod: Option<ObjectReference>,
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

impl Events {
    pub fn new(client: Client, pod: Option<&PodIdentity>) -> Self {
        let reporter = Reporter {
            controller: "pullkeeper".into(),
            instance: pod.map(|p| p.name.clone()),
        };
        Self {
            recorder: Recorder::new(client, reporter),
            own_pod: pod.map(PodIdentity::reference),
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
        self.publish(reference, EventType::Warning, reason, action, note)
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
        self.publish(reference, EventType::Normal, reason, action, note)
            .await;
    }

    /// An Event on pullkeeper's own Pod, when it is known.
    pub async fn on_own_pod(&self, type_: EventType, reason: &str, action: &str, note: String) {
        if let Some(reference) = &self.own_pod {
            self.publish(reference, type_, reason, action, note).await;
        }
    }

    async fn publish(
        &self,
        reference: &ObjectReference,
        type_: EventType,
        reason: &str,
        action: &str,
        note: String,
    ) {
        let ev = Event {
            type_,
            reason: reason.into(),
            note: Some(note),
            action: action.into(),
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&ev, reference).await {
            warn!(error = %e, reason, "could not publish event");
        }
    }
}
