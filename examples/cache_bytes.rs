//! Bytes per cached object: fills the daemon's index the way the watches do — compact namespace,
//! ServiceAccount and Secret states — from API objects shaped like a real cluster's, and prints
//! the heap bytes each kind of object costs, counted by an instrumenting global allocator
//! (`stats_alloc`) over every allocation and free. Prints figures; asserts nothing.
//!
//! `cargo run --example cache_bytes` (`PK_CACHE_OBJECTS`, default 10000); `make bench` runs it.

use std::alloc::System;

use k8s_openapi::api::core::v1::{Namespace, Secret, ServiceAccount};
use kube::core::PartialObjectMeta;
use pullkeeper::index::Index;
use pullkeeper::ownership::Owner;
use pullkeeper::plan::{AccountState, NamespaceState, SecretState};
use serde_json::json;
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

/// Heap bytes allocated and not freed since `region` began.
fn held(region: &Region<'_, System>) -> isize {
    let c = region.change();
    c.bytes_allocated.cast_signed() - c.bytes_deallocated.cast_signed() + c.bytes_reallocated
}

fn namespace(i: usize) -> PartialObjectMeta<Namespace> {
    serde_json::from_value(json!({
        "apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadata",
        "metadata": {
            "name": format!("team-{i:05}"), "uid": format!("5c8e7a1e-0000-4000-8000-{i:012}"),
            "resourceVersion": format!("{}", 100_000 + i),
            "creationTimestamp": "2026-12-01T10:00:00Z",
            "labels": {"kubernetes.io/metadata.name": format!("team-{i:05}"), "team": "payments"},
            "managedFields": [{"manager": "kubectl-create", "operation": "Update", "apiVersion": "v1",
                               "time": "2026-12-01T10:00:00Z", "fieldsType": "FieldsV1",
                               "fieldsV1": {"f:metadata": {"f:labels": {".": {}, "f:team": {}}}}}],
        },
    }))
    .expect("namespace")
}

fn account(i: usize) -> ServiceAccount {
    serde_json::from_value(json!({
        "metadata": {
            "name": "default", "namespace": format!("team-{i:05}"),
            "uid": format!("7d1f2c3b-0000-4000-8000-{i:012}"),
            "resourceVersion": format!("{}", 200_000 + i),
            "annotations": {"pullkeeper.dev/image-pull-secrets": "ecr-pull"},
        },
        "imagePullSecrets": [{"name": "ecr-pull"}],
    }))
    .expect("account")
}

fn secret(i: usize) -> Secret {
    serde_json::from_value(json!({
        "metadata": {
            "name": "ecr-pull", "namespace": format!("team-{i:05}"),
            "uid": format!("9a0b1c2d-0000-4000-8000-{i:012}"),
            "resourceVersion": format!("{}", 300_000 + i),
            "labels": {"app.kubernetes.io/managed-by": "pullkeeper", "pullkeeper.dev/instance": "pullkeeper",
                       "pullkeeper.dev/registry": "ecr"},
            "annotations": {"pullkeeper.dev/content-hash": "0".repeat(64),
                            "pullkeeper.dev/expires-at": "2026-12-01T22:00:00Z"},
        },
        "type": "kubernetes.io/dockerconfigjson",
        // A 12-hour ECR token is ~2 KiB: the data is hashed and dropped, never kept.
        "data": {".dockerconfigjson": "e".repeat(2800)},
    }))
    .expect("secret")
}

fn per_object(what: &str, n: usize, bytes: isize) -> isize {
    println!(
        "{what:<44} {n:>6} objects  {:>9} bytes  {:>6.0} bytes/object",
        bytes,
        bytes as f64 / n as f64
    );
    bytes
}

fn main() {
    let n: usize = std::env::var("PK_CACHE_OBJECTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let owner = Owner::default();

    let index = Index::default();
    let region = Region::new(GLOBAL);
    for i in 0..n {
        index.put_namespace(&NamespaceState::of_meta(&namespace(i).metadata));
    }
    let mut total = per_object("namespace (index, compact)", n, held(&region));

    let region = Region::new(GLOBAL);
    for i in 0..n {
        let sa = account(i);
        index.put_account(&format!("team-{i:05}"), AccountState::of(&sa, &owner));
    }
    total += per_object("ServiceAccount (index, compact)", n, held(&region));

    let region = Region::new(GLOBAL);
    for i in 0..n {
        let s = secret(i);
        index.put_secret(&format!("team-{i:05}"), SecretState::of(&s, &owner));
    }
    total += per_object("pullkeeper's Secret (index, compact)", n, held(&region));

    per_object("all three (the index, per namespace)", n, total);

    // For comparison: the whole objects the daemon cached before (managed fields dropped).
    let region = Region::new(GLOBAL);
    let whole: Vec<(PartialObjectMeta<Namespace>, ServiceAccount, Secret)> = (0..n)
        .map(|i| {
            let mut ns = namespace(i);
            ns.metadata.managed_fields = None;
            (ns, account(i), secret(i))
        })
        .collect();
    per_object(
        "whole Namespace+ServiceAccount+Secret (before)",
        n,
        held(&region),
    );
    drop(whole);
    assert_eq!(index.namespace_count(), n, "every namespace indexed");
}
