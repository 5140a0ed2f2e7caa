//! Cron expressions as users write them for Kubernetes CronJobs (5 fields, weekdays from Sunday =
//! 0), translated for the `cron` crate, with one-line errors that quote only what was written.

use std::str::FromStr;

/// Parses a cron expression in UTC: 5 fields (minute hour day month weekday, weekdays 0–7 with 0
/// and 7 for Sunday) as users write them for Kubernetes `CronJobs`, or 6–7 fields with seconds
/// first (weekdays 1–7 from Sunday, as the cron crate reads them). The error is one line that
/// quotes only the expression as written and, when one field alone is wrong, names it.
pub fn parse_cron(expr: &str) -> Result<cron::Schedule, String> {
    let written: Vec<&str> = expr.split_whitespace().collect();
    let invalid = |why: String| format!("{expr:?} is not a valid cron expression: {why}");
    let (names, mut full): (&[CronField], Vec<String>) = match written.len() {
        5 => (
            &CRON_FIELDS[1..6],
            std::iter::once("0".to_string()).collect(),
        ),
        6 => (&CRON_FIELDS[..6], Vec::new()),
        7 => (&CRON_FIELDS[..], Vec::new()),
        n => {
            return Err(format!(
                "{expr:?} has {n} fields; expected 5 (minute hour day month weekday)"
            ));
        }
    };
    let mut weekday_error = None;
    for (field, text) in names.iter().zip(&written) {
        if written.len() == 5 && field.name == "weekday" {
            match unix_weekdays(text) {
                Ok(crate_form) => full.push(crate_form),
                Err(why) => {
                    weekday_error = Some(invalid(field.problem(text, &why)));
                    full.push("*".to_string());
                }
            }
        } else {
            full.push((*text).to_string());
        }
    }
    let crate_error = match cron::Schedule::from_str(&full.join(" ")) {
        Ok(schedule) if weekday_error.is_none() => return Ok(schedule),
        Ok(_) => String::new(),
        Err(e) => e.to_string(),
    };
    // Blame the first field that is rejected on its own, every other field being `*`.
    let offset = full.len() - written.len();
    for (i, (field, text)) in names.iter().zip(&written).enumerate() {
        let mut probe = vec!["*".to_string(); full.len()];
        probe[0] = "0".to_string();
        probe[offset + i].clone_from(&full[offset + i]);
        if field.name == "weekday"
            && let Some(why) = weekday_error.take()
        {
            return Err(why);
        }
        if let Err(e) = cron::Schedule::from_str(&probe.join(" ")) {
            let detail = field
                .out_of_range(text)
                .unwrap_or_else(|| last_line(&e.to_string()));
            return Err(invalid(field.problem(text, &detail)));
        }
    }
    Err(invalid(last_line(&crate_error)))
}

/// One field of a cron expression, for messages.
struct CronField {
    name: &'static str,
    min: u32,
    max: u32,
}

const CRON_FIELDS: [CronField; 7] = [
    CronField {
        name: "second",
        min: 0,
        max: 59,
    },
    CronField {
        name: "minute",
        min: 0,
        max: 59,
    },
    CronField {
        name: "hour",
        min: 0,
        max: 23,
    },
    CronField {
        name: "day of month",
        min: 1,
        max: 31,
    },
    CronField {
        name: "month",
        min: 1,
        max: 12,
    },
    CronField {
        name: "weekday",
        min: 1,
        max: 7,
    },
    CronField {
        name: "year",
        min: 1970,
        max: 2099,
    },
];

impl CronField {
    fn problem(&self, text: &str, why: &str) -> String {
        format!("the {} field {text:?} {why}", self.name)
    }

    /// "is out of range" when a number of the field (not a step after `/`) is outside it.
    fn out_of_range(&self, text: &str) -> Option<String> {
        let outside = text.split(',').any(|part| {
            let base = part.split('/').next().unwrap_or_default();
            base.split('-')
                .filter_map(|n| n.parse::<u32>().ok())
                .any(|n| n < self.min || n > self.max)
        });
        outside.then(|| format!("is out of range ({}-{})", self.min, self.max))
    }
}

/// The cron crate's reason, without its picture of the expression it was given (which has the
/// seconds field pullkeeper added and spans several lines).
fn last_line(message: &str) -> String {
    let reason = message
        .lines()
        .skip(1)
        .map(str::trim)
        .filter(|l| !l.trim_start_matches('^').is_empty())
        .last();
    reason.map_or_else(
        || "is not valid".to_string(),
        |r| format!("is not valid ({})", r.trim_end_matches('.')),
    )
}

const WEEKDAYS: [&str; 7] = ["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"];

/// Rewrites a 5-field expression's weekday field (0–7, 0 and 7 Sunday, names, ranges, steps,
/// lists) into weekday names, which the cron crate reads the same way in every form; its own
/// numbers start at 1 for Sunday, so `1-5` would otherwise mean Sunday to Thursday.
fn unix_weekdays(field: &str) -> Result<String, String> {
    if field == "*" || field == "?" {
        return Ok(field.to_string());
    }
    let day = |t: &str| -> Result<usize, String> {
        if let Ok(n) = t.parse::<usize>() {
            return if n <= 7 {
                Ok(n)
            } else {
                Err("is out of range (0-7, 0 and 7 are Sunday)".into())
            };
        }
        WEEKDAYS
            .iter()
            .position(|w| w.eq_ignore_ascii_case(t))
            .ok_or_else(|| "is not a weekday: use 0-7 (0 and 7 are Sunday) or SUN-SAT".to_string())
    };
    let mut days = [false; 7];
    for part in field.split(',') {
        let (base, step) = match part.split_once('/') {
            Some((b, s)) => match s.parse::<usize>() {
                Ok(n) if n > 0 => (b, Some(n)),
                _ => return Err("has a step that is not a positive number".into()),
            },
            None => (part, None),
        };
        let (first, last) = match base.split_once('-') {
            _ if base == "*" || base == "?" => (0, 6),
            Some((a, b)) => (day(a)?, day(b)?),
            None => {
                let a = day(base)?;
                (a, if step.is_some() { 6 } else { a })
            }
        };
        if first > last {
            return Err("has a range that runs backwards".into());
        }
        for d in (first..=last).step_by(step.unwrap_or(1)) {
            days[d % 7] = true;
        }
    }
    let names: Vec<&str> = WEEKDAYS
        .iter()
        .zip(days)
        .filter_map(|(name, on)| on.then_some(*name))
        .collect();
    Ok(names.join(","))
}
