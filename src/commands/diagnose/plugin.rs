//! The other route in a diagnosis: what pullkeeper's kubelet credential provider did for an
//! image's host, read from the invocation log it appends to on the node
//! (`credential-provider --invocation-log`; one JSON line per call, no credential).
//! `diagnose --credential-provider-log FILE` reads that file; without it the route is not
//! looked at.

use chrono::{DateTime, Utc};
use serde::Deserialize;

use super::{Cause, Pull, Verdict, verdict};

/// One call of the plugin, as its invocation log states it.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PluginCall {
    pub time: DateTime<Utc>,
    pub image_host: Option<String>,
    pub registry: Option<String>,
    pub provider: Option<String>,
    /// `served`, `no_match`, or an error's category.
    pub outcome: String,
    pub cache_duration_seconds: Option<u64>,
}

/// The calls in an invocation log, oldest first; lines that are not calls are skipped (a line
/// cut short by a full disk must not hide the others).
pub fn read_log(text: &str) -> Vec<PluginCall> {
    let mut calls: Vec<PluginCall> = text
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    calls.sort_by_key(|c| c.time);
    calls
}

/// What the credential provider route did for one container's pull.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PluginRoute<'a> {
    /// No invocation log was given: the route is not looked at.
    Unknown,
    /// The kubelet has not asked the plugin for this host since the Pod was created (and no
    /// answer it still caches covers the Pod); `latest` is the newest call for the host.
    NotAsked { latest: Option<&'a PluginCall> },
    /// The call whose answer the kubelet used for this Pod's pulls (a served answer cached
    /// from before the Pod was created counts while its cacheDuration lasts).
    Answered(&'a PluginCall),
}

/// The plugin's part in pulling from `host` for a Pod created at `created`, as of `now`.
pub fn route<'a>(
    calls: Option<&'a [PluginCall]>,
    host: &str,
    created: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
) -> PluginRoute<'a> {
    let Some(calls) = calls else {
        return PluginRoute::Unknown;
    };
    let latest = calls
        .iter()
        .rev()
        .filter(|c| c.time <= now)
        .find(|c| c.image_host.as_deref() == Some(host));
    let Some(call) = latest else {
        return PluginRoute::NotAsked { latest: None };
    };
    // A cache duration too large for the calendar (a log line is outside input) caches forever.
    let cached_until = i64::try_from(call.cache_duration_seconds.unwrap_or(0))
        .ok()
        .and_then(chrono::Duration::try_seconds)
        .and_then(|d| call.time.checked_add_signed(d));
    let covers = created.is_none_or(|created| {
        call.time >= created
            || (call.outcome == SERVED && cached_until.is_none_or(|until| until >= created))
    });
    if covers {
        PluginRoute::Answered(call)
    } else {
        PluginRoute::NotAsked { latest }
    }
}

const SERVED: &str = "served";
const NO_MATCH: &str = "no_match";

fn at(call: &PluginCall) -> String {
    call.time.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// The registry file and provider a call names, for messages.
fn source(call: &PluginCall) -> String {
    match (&call.registry, &call.provider) {
        (Some(r), Some(p)) => format!("registry {r}, provider {p}"),
        (Some(r), None) => format!("registry {r}"),
        _ => "no registry file".into(),
    }
}

/// The verdict when the plugin's answer is what the kubelet pulled with (no Secret of
/// pullkeeper's supplies the host to this Pod).
pub(super) fn verdict_for(call: &PluginCall, pull: &Pull<'_>) -> Verdict {
    let host = pull.host;
    let when = at(call);
    match call.outcome.as_str() {
        SERVED if pull.not_found => verdict(
            Cause::ImageNotFound,
            format!("registry {host} has no such image or tag"),
            "check the image name and tag; the credential provider served a credential, this is not a credential problem",
        ),
        SERVED if pull.refused => verdict(
            Cause::CredentialRefused,
            format!(
                "registry {host} refused the credential pullkeeper's credential provider served at {when} ({})",
                source(call)
            ),
            format!(
                "check what that registry file's provider logs in with on the node (its account, password or token file); the kubelet keeps the answer for {} s, then asks the plugin again",
                call.cache_duration_seconds.unwrap_or(0)
            ),
        ),
        SERVED => verdict(
            Cause::Other,
            format!(
                "pullkeeper's credential provider served {host} at {when} ({}); nothing pullkeeper controls is missing",
                source(call)
            ),
            "read the kubelet's message below",
        ),
        NO_MATCH => verdict(
            Cause::ProviderNoMatch,
            format!(
                "the kubelet asked pullkeeper's credential provider for {host} at {when}, and no registry file in the node's config directory serves {host}"
            ),
            format!(
                "add a registry file listing {host} in servers to the directory the plugin's --config names on the node, or take {host} out of its matchImages"
            ),
        ),
        failed => verdict(
            Cause::ProviderFailed,
            format!(
                "pullkeeper's credential provider failed for {host} at {when}: {failed} ({})",
                source(call)
            ),
            "the kubelet's log holds the plugin's one-line error; run `pullkeeper check --config DIR` on the node with the plugin's directory and fix what it reports",
        ),
    }
}

/// What to add to a Secret-route verdict when the Pod gets no credential that way and the
/// kubelet did not ask the plugin either: the route that should have served it.
pub(super) fn not_asked_note(host: &str, latest: Option<&PluginCall>) -> String {
    let last = latest.map_or_else(
        || "no call for it in the invocation log".to_string(),
        |c| {
            format!(
                "its last call for it was at {} ({}, cached {} s), before this Pod",
                at(c),
                c.outcome,
                c.cache_duration_seconds.unwrap_or(0)
            )
        },
    );
    format!(
        "the kubelet has not asked pullkeeper's credential provider for {host} for this Pod ({last}): the provider entry's matchImages does not cover {host}, or this node's kubelet runs without --image-credential-provider-config"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(host: &str, secs_ago: i64, outcome: &str, cache: u64) -> PluginCall {
        PluginCall {
            time: now() - chrono::Duration::seconds(secs_ago),
            image_host: Some(host.into()),
            registry: Some("harbor".into()),
            provider: Some("static".into()),
            outcome: outcome.into(),
            cache_duration_seconds: Some(cache),
        }
    }

    fn now() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-12-06T10:00:00Z")
            .expect("time")
            .with_timezone(&Utc)
    }

    #[test]
    fn the_log_is_read_as_the_plugin_writes_it_and_a_cut_line_is_skipped() {
        let text = concat!(
            r#"{"time":"2026-12-06T09:59:00.120Z","imageHost":"h.test","registry":"harbor","provider":"static","outcome":"served","loginServer":null,"cacheDurationSeconds":60,"elapsedMs":1}"#,
            "\n",
            r#"{"time":"2026-12-06T09:58:00.000Z","imageHost":null,"registry":null,"provider":null,"outcome":"request","loginServer":null,"cacheDurationSeconds":null,"elapsedMs":0}"#,
            "\n",
            r#"{"time":"2026-12-06T09:59:30.000Z","imageHo"#,
            "\n"
        );
        let calls = read_log(text);
        assert_eq!(calls.len(), 2);
        assert_eq!(calls[0].outcome, "request", "oldest first");
        assert_eq!(calls[1].image_host.as_deref(), Some("h.test"));
        assert_eq!(calls[1].cache_duration_seconds, Some(60));
    }

    /// What the plugin writes (`credential_provider::Invocation`) is what diagnose reads.
    #[test]
    fn the_plugins_own_record_reads_back_as_a_call() {
        let mut record =
            crate::credential_provider::Invocation::starting("2026-12-06T09:59:00.120Z".into());
        record.image_host = Some("h.test".into());
        record.registry = Some("harbor".into());
        record.provider = Some("static");
        record.outcome = SERVED;
        record.cache_duration_seconds = Some(60);
        let line = serde_json::to_string(&record).expect("record");
        assert_eq!(
            read_log(&line),
            vec![PluginCall {
                time: now() - chrono::Duration::seconds(60) + chrono::Duration::milliseconds(120),
                image_host: Some("h.test".into()),
                registry: Some("harbor".into()),
                provider: Some("static".into()),
                outcome: SERVED.into(),
                cache_duration_seconds: Some(60),
            }]
        );
    }

    #[test]
    fn an_answer_counts_for_a_pod_when_asked_after_its_creation_or_cached_over_it() {
        let created = Some(now() - chrono::Duration::seconds(100));
        let calls = [
            call("a.test", 300, SERVED, 60),
            call("b.test", 300, SERVED, 600),
            call("c.test", 50, "timeout", 0),
            call("d.test", 300, "timeout", 0),
        ];
        let route_of = |host| route(Some(&calls), host, created, now());
        assert_eq!(
            route_of("a.test"),
            PluginRoute::NotAsked {
                latest: Some(&calls[0])
            },
            "cached until 240 s ago, the Pod is 100 s old"
        );
        assert_eq!(route_of("b.test"), PluginRoute::Answered(&calls[1]));
        assert_eq!(route_of("c.test"), PluginRoute::Answered(&calls[2]));
        assert_eq!(
            route_of("d.test"),
            PluginRoute::NotAsked {
                latest: Some(&calls[3])
            },
            "a failure is not cached"
        );
        assert_eq!(route_of("e.test"), PluginRoute::NotAsked { latest: None });
        // A cache duration past the calendar's end caches forever instead of panicking.
        let forever = [call("a.test", 300, SERVED, u64::MAX)];
        assert_eq!(
            route(Some(&forever), "a.test", created, now()),
            PluginRoute::Answered(&forever[0])
        );
        assert_eq!(route(None, "a.test", created, now()), PluginRoute::Unknown);
        // The newest call wins.
        let twice = [
            call("a.test", 50, "timeout", 0),
            call("a.test", 10, SERVED, 60),
        ];
        assert_eq!(
            route(Some(&twice), "a.test", created, now()),
            PluginRoute::Answered(&twice[1])
        );
    }
}
