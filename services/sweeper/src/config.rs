//! `[sweeper]` in custodian.toml (`CUSTODIAN_SWEEPER__*`). Validated at start: a bad cron
//! expression or period is refused with the name of the setting.

use std::str::FromStr;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SweeperConfig {
    /// Scheduled inactivity sweeps.
    pub schedules: Vec<SweepSchedule>,
    /// Idle consents fetched and expired per transaction.
    pub batch: u64,
    /// A lease not renewed for this long passes to another replica.
    pub lease_ttl_secs: u64,
    pub retention: RetentionConfig,
}

/// One recurring sweep: consents idle past `inactivity_days` on `platform_id` (every
/// platform when absent) expire, at the times of `cron` (seconds field first, UTC).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SweepSchedule {
    pub name: String,
    #[serde(default)]
    pub platform_id: Option<String>,
    pub inactivity_days: u32,
    pub cron: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetentionConfig {
    /// When to purge (cron, UTC); empty disables.
    pub cron: String,
    pub history_days: u32,
    pub bus_records_days: u32,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        Self { cron: "0 30 3 * * *".into(), history_days: 365 * 2, bus_records_days: 14 }
    }
}

impl Default for SweeperConfig {
    fn default() -> Self {
        Self {
            // Seed §1.4: consent and tokens of people inactive for long are revoked.
            schedules: vec![SweepSchedule {
                name: "nightly".into(),
                platform_id: None,
                inactivity_days: 90,
                cron: "0 0 3 * * *".into(),
            }],
            batch: 1000,
            lease_ttl_secs: 30,
            retention: RetentionConfig::default(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("invalid setting {setting}: {reason}")]
pub struct ConfigError {
    pub setting: String,
    pub reason: String,
}

fn err(setting: String, reason: impl Into<String>) -> ConfigError {
    ConfigError { setting, reason: reason.into() }
}

pub fn parse_cron(setting: &str, expression: &str) -> Result<cron::Schedule, ConfigError> {
    cron::Schedule::from_str(expression).map_err(|e| {
        err(
            setting.to_owned(),
            format!("{expression:?} is not a cron expression (sec min hour day month weekday): {e}"),
        )
    })
}

impl SweeperConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut names = std::collections::HashSet::new();
        for (i, s) in self.schedules.iter().enumerate() {
            let at = |field: &str| format!("sweeper.schedules[{i}].{field} (CUSTODIAN_SWEEPER__SCHEDULES)");
            if !custodian_events::subjects::is_valid_token(&s.name) || !names.insert(s.name.clone()) {
                return Err(err(at("name"), "must be unique letters, digits, '-' or '_'"));
            }
            if s.inactivity_days == 0 || s.inactivity_days > 3650 {
                return Err(err(
                    at("inactivity_days"),
                    format!("{} is not a period of 1 to 3650 days", s.inactivity_days),
                ));
            }
            parse_cron(&at("cron"), &s.cron)?;
        }
        if self.batch == 0 || self.batch > 10_000 {
            return Err(err("sweeper.batch (CUSTODIAN_SWEEPER__BATCH)".into(), "must be 1 to 10000"));
        }
        if self.lease_ttl_secs < 2 {
            return Err(err("sweeper.lease_ttl_secs (CUSTODIAN_SWEEPER__LEASE_TTL_SECS)".into(), "must be at least 2"));
        }
        if !self.retention.cron.is_empty() {
            parse_cron("sweeper.retention.cron (CUSTODIAN_SWEEPER__RETENTION__CRON)", &self.retention.cron)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        SweeperConfig::default().validate().unwrap();
    }

    #[test]
    fn a_bad_cron_or_period_is_refused_naming_the_setting() {
        let mut c = SweeperConfig::default();
        c.schedules[0].cron = "every night".into();
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("sweeper.schedules[0].cron"), "{e}");
        let mut c = SweeperConfig::default();
        c.schedules[0].inactivity_days = 0;
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("sweeper.schedules[0].inactivity_days"), "{e}");
        let mut c = SweeperConfig::default();
        c.retention.cron = "61 * * * * *".into();
        assert!(c.validate().unwrap_err().to_string().contains("sweeper.retention.cron"));
    }
}
