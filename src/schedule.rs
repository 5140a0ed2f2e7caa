//! When to refresh next: pure functions of the policy, the credential's lifetime and the time.

use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};

use crate::config::RefreshPolicy;

fn to_delta(d: Duration) -> TimeDelta {
    TimeDelta::from_std(d).unwrap_or(TimeDelta::MAX)
}

/// `t + d`, saturating at the calendar's end instead of panicking (a lifetime or interval can
/// reach past it).
fn add(t: DateTime<Utc>, d: Duration) -> DateTime<Utc> {
    t.checked_add_signed(to_delta(d))
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}

fn to_std(d: TimeDelta) -> Duration {
    d.to_std().unwrap_or(Duration::ZERO)
}

/// The lifetime used for scheduling: the stated one when it is in the future of the issue time,
/// otherwise the policy's default (an already-expired or missing expiry must not spin).
pub fn effective_lifetime(
    policy: &RefreshPolicy,
    issued_at: DateTime<Utc>,
    expires_at: Option<DateTime<Utc>>,
) -> Duration {
    expires_at
        .map(|e| e - issued_at)
        .filter(|d| *d > TimeDelta::zero())
        .map_or(policy.default_lifetime, to_std)
}

/// The next refresh after a successful fetch at `issued_at`: the earliest of the cron
/// schedule, `renew_at` of the lifetime, and `max_interval`; never sooner than `min_interval`;
/// moved by up to ±`jitter` of the delay (`unit` is a random number in [-1, 1]), but never past
/// the renewal point.
pub fn next_refresh(
    policy: &RefreshPolicy,
    now: DateTime<Utc>,
    issued_at: DateTime<Utc>,
    expires_at: Option<DateTime<Utc>>,
    unit: f64,
) -> DateTime<Utc> {
    let lifetime = effective_lifetime(policy, issued_at, expires_at);
    let renew = add(issued_at, lifetime.mul_f64(policy.renew_at));
    let mut at = renew.min(add(now, policy.max_interval));
    if let Some(cron) = policy.schedule.as_ref().and_then(|s| s.after(&now).next()) {
        at = at.min(cron);
    }
    let delay = to_std(at - now);
    let jittered = delay.mul_f64((1.0 + policy.jitter * unit.clamp(-1.0, 1.0)).max(0.0));
    let at = add(now, jittered).min(renew.max(now));
    at.max(add(now, policy.min_interval))
}

/// The wait before retry number `attempt` (1-based) after a failure: exponential from
/// `backoff_initial` up to `backoff_max`, and at most a quarter of the time left before the
/// current credential expires so several retries happen before it does; never below one
/// second, and never before a provider's `Retry-After`. `unit` in [0, 1] spreads retries
/// between half and all of the computed wait.
pub fn backoff(
    policy: &RefreshPolicy,
    attempt: u32,
    now: DateTime<Utc>,
    expires_at: Option<DateTime<Utc>>,
    retry_after: Option<Duration>,
    unit: f64,
) -> Duration {
    let exp = 2u32.saturating_pow(attempt.saturating_sub(1).min(30));
    let mut wait = policy
        .backoff_initial
        .saturating_mul(exp)
        .min(policy.backoff_max);
    if let Some(left) = expires_at
        .map(|e| e - now)
        .filter(|d| *d > TimeDelta::zero())
    {
        wait = wait.min(to_std(left) / 4);
    }
    let wait = wait
        .mul_f64(0.5 + 0.5 * unit.clamp(0.0, 1.0))
        .max(Duration::from_secs(1));
    retry_after.map_or(wait, |r| wait.max(r))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse_cron;
    use crate::testing::policy;

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s)
            .expect("time")
            .with_timezone(&Utc)
    }

    #[test]
    fn renews_at_two_thirds_of_a_twelve_hour_token() {
        let now = t("2026-01-01T00:00:00Z");
        let next = next_refresh(&policy(), now, now, Some(t("2026-01-01T12:00:00Z")), 0.0);
        assert_eq!(next, t("2026-01-01T08:00:00Z"));
    }

    #[test]
    fn cron_schedule_wins_when_earlier() {
        let mut p = policy();
        p.schedule = Some(parse_cron("30 */2 * * *").expect("cron"));
        let now = t("2026-01-01T00:10:00Z");
        let next = next_refresh(&p, now, now, Some(t("2026-01-01T12:10:00Z")), 0.0);
        assert_eq!(next, t("2026-01-01T00:30:00Z"));
    }

    #[test]
    fn lifetimes_and_intervals_past_the_calendars_end_saturate_instead_of_panicking() {
        let mut p = policy();
        p.max_interval = Duration::from_secs(u64::MAX / 4);
        p.min_interval = Duration::from_secs(u64::MAX / 4);
        p.default_lifetime = Duration::from_secs(u64::MAX / 4);
        let now = t("2026-01-01T00:00:00Z");
        let far = Some(DateTime::<Utc>::MAX_UTC);
        for expiry in [None, far] {
            let next = next_refresh(&p, now, now, expiry, 1.0);
            assert_eq!(next, DateTime::<Utc>::MAX_UTC);
        }
    }

    #[test]
    fn max_interval_caps_long_lifetimes() {
        let mut p = policy();
        p.max_interval = Duration::from_hours(1);
        let now = t("2026-01-01T00:00:00Z");
        let next = next_refresh(&p, now, now, Some(t("2026-02-01T00:00:00Z")), 0.0);
        assert_eq!(next, t("2026-01-01T01:00:00Z"));
    }

    #[test]
    fn an_expiry_in_the_past_is_clamped_to_the_minimum_interval_instead_of_spinning() {
        let now = t("2026-01-01T00:00:00Z");
        let next = next_refresh(&policy(), now, now, Some(t("2015-01-01T00:00:00Z")), -1.0);
        // Past expiry → default lifetime (1 h) → renew at 40 min; never before min interval.
        assert_eq!(next, t("2026-01-01T00:40:00Z"));
        let mut p = policy();
        p.default_lifetime = Duration::from_secs(1);
        let next = next_refresh(&p, now, now, None, -1.0);
        assert_eq!(next, now + TimeDelta::seconds(60));
    }

    #[test]
    fn jitter_moves_earlier_but_never_past_renewal() {
        let mut p = policy();
        p.jitter = 0.1;
        let now = t("2026-01-01T00:00:00Z");
        let exp = Some(t("2026-01-01T12:00:00Z"));
        assert_eq!(
            next_refresh(&p, now, now, exp, -1.0),
            t("2026-01-01T07:12:00Z")
        );
        assert_eq!(
            next_refresh(&p, now, now, exp, 1.0),
            t("2026-01-01T08:00:00Z")
        );
    }

    #[test]
    fn backoff_grows_then_caps_and_stays_well_before_expiry() {
        let p = policy();
        let now = t("2026-01-01T00:00:00Z");
        assert_eq!(
            backoff(&p, 1, now, None, None, 1.0),
            Duration::from_secs(10)
        );
        assert_eq!(
            backoff(&p, 3, now, None, None, 1.0),
            Duration::from_secs(40)
        );
        assert_eq!(
            backoff(&p, 20, now, None, None, 1.0),
            Duration::from_mins(5)
        );
        assert_eq!(
            backoff(&p, 20, now, None, None, 0.0),
            Duration::from_secs(150)
        );
        // 8 minutes left → at most 2 minutes between retries.
        let exp = Some(now + TimeDelta::minutes(8));
        assert_eq!(backoff(&p, 20, now, exp, None, 1.0), Duration::from_mins(2));
        assert_eq!(
            backoff(&p, 1, now, None, Some(Duration::from_secs(90)), 1.0),
            Duration::from_secs(90)
        );
    }
}
