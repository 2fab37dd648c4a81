//! Parsing of human durations on the command line: `10s`, `500ms`, `2m`, `1.5s`, `250us`.
//!
//! A bare number is read as seconds. Units: `ns`, `us`, `ms`, `s`, `m`, `h`.

use std::time::Duration;

use crate::BenchError;

/// Reads a duration such as `10s`, `500ms`, `1.5s`, `2m` or `1h`; a bare number is seconds.
pub fn parse_duration_text(text: &str) -> Result<Duration, BenchError> {
    let invalid = |reason| BenchError::InvalidDuration {
        text: text.to_string(),
        reason,
    };
    let trimmed = text.trim();
    let unit_start_index = trimmed
        .find(|character: char| character.is_ascii_alphabetic())
        .unwrap_or(trimmed.len());
    let (number_text, unit_text) = trimmed.split_at(unit_start_index);
    if number_text.is_empty() {
        return Err(invalid("missing number"));
    }
    let number: f64 = number_text
        .parse()
        .map_err(|_| invalid("not a decimal number"))?;
    if !number.is_finite() || number < 0.0 {
        return Err(invalid("must be a finite, non-negative number"));
    }
    let unit_seconds = match unit_text {
        "" | "s" => 1.0,
        "ns" => 1e-9,
        "us" | "µs" => 1e-6,
        "ms" => 1e-3,
        "m" | "min" => 60.0,
        "h" => 3600.0,
        _ => return Err(invalid("unknown unit (use ns, us, ms, s, m or h)")),
    };
    Duration::try_from_secs_f64(number * unit_seconds).map_err(|_| invalid("out of range"))
}

/// Formats a duration for people: `1.500s`, `250ms`, `80us`.
pub fn format_duration_short(duration: Duration) -> String {
    let nanos = duration.as_nanos();
    if nanos >= 1_000_000_000 {
        format!("{:.3}s", duration.as_secs_f64())
    } else if nanos >= 1_000_000 {
        format!("{:.3}ms", nanos as f64 / 1e6)
    } else {
        format!("{}us", duration.as_micros())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_units_and_bare_seconds() {
        assert_eq!(parse_duration_text("10s").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_duration_text("10").unwrap(), Duration::from_secs(10));
        assert_eq!(
            parse_duration_text("500ms").unwrap(),
            Duration::from_millis(500)
        );
        assert_eq!(
            parse_duration_text("250us").unwrap(),
            Duration::from_micros(250)
        );
        assert_eq!(
            parse_duration_text("1.5s").unwrap(),
            Duration::from_millis(1500)
        );
        assert_eq!(parse_duration_text("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(
            parse_duration_text("1h").unwrap(),
            Duration::from_secs(3600)
        );
        assert_eq!(parse_duration_text("0s").unwrap(), Duration::ZERO);
    }

    #[test]
    fn rejects_garbage() {
        for text in ["", "s", "ten seconds", "-1s", "5parsecs", "NaNs", "inf"] {
            let result = parse_duration_text(text);
            assert!(
                matches!(result, Err(BenchError::InvalidDuration { .. })),
                "{text:?} gave {result:?}"
            );
        }
    }

    #[test]
    fn formats_short() {
        assert_eq!(format_duration_short(Duration::from_millis(1500)), "1.500s");
        assert_eq!(
            format_duration_short(Duration::from_micros(2500)),
            "2.500ms"
        );
        assert_eq!(format_duration_short(Duration::from_micros(80)), "80us");
    }
}
