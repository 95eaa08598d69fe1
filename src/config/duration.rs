//! Durations written as strings (`500ms`, `2s`, `5m`) in the config file.

use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A duration parsed from a human string such as `500ms`, `2s` or `5m`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct ConfigDuration(pub Duration);

impl ConfigDuration {
    /// `secs` seconds.
    pub const fn from_secs(secs: u64) -> Self {
        ConfigDuration(Duration::from_secs(secs))
    }

    /// The duration.
    pub fn get(self) -> Duration {
        self.0
    }
}

impl std::str::FromStr for ConfigDuration {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        humantime::parse_duration(s.trim())
            .map(ConfigDuration)
            .map_err(|e| format!("invalid duration {s:?} ({e}); write e.g. 500ms, 2s, 5m"))
    }
}

impl<'de> Deserialize<'de> for ConfigDuration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl Serialize for ConfigDuration {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&humantime::format_duration(self.0).to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_spec_forms() {
        assert_eq!(
            "500ms".parse::<ConfigDuration>().unwrap().get(),
            Duration::from_millis(500)
        );
        assert_eq!(
            "2s".parse::<ConfigDuration>().unwrap().get(),
            Duration::from_secs(2)
        );
        assert_eq!(
            "5m".parse::<ConfigDuration>().unwrap().get(),
            Duration::from_secs(300)
        );
        assert!("5 parsecs".parse::<ConfigDuration>().is_err());
        assert!("".parse::<ConfigDuration>().is_err());
    }
}
