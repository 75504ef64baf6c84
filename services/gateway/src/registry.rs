//! `[gateway.portal]`: what the person's portal says of each trusted platform. Seed Annex A
//! identifies a trusted platform by its company name and enterprise (CBE) number; the
//! registry gives both, what each scope lets the platform see, in plain words and per
//! language, and the views it runs. A platform missing from it is shown as unidentified.

use std::collections::BTreeMap;

use custodian_web::i18n::{Lang, Tr};
use serde::{Deserialize, Serialize};

/// `[gateway.portal]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PortalConfig {
    /// Times on the pages are shown in this zone (IANA name).
    pub time_zone: String,
    /// `[[gateway.portal.platforms]]`.
    pub platforms: Vec<PlatformEntry>,
}

impl Default for PortalConfig {
    fn default() -> Self {
        Self { time_zone: "Europe/Brussels".into(), platforms: Vec::new() }
    }
}

/// Text in several languages: `{ en = "…", nl = "…", fr = "…", de = "…" }`. A language
/// missing falls back to English, then to any given.
pub type Localized = BTreeMap<String, String>;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlatformEntry {
    pub platform_id: String,
    /// The name people know it by.
    pub name: String,
    /// The company that runs it, as registered.
    pub legal_name: String,
    /// Its enterprise number at the Crossroads Bank for Enterprises (`0123.456.749`).
    pub enterprise_number: String,
    /// What each scope lets it see, when the catalogue's general words are not enough.
    #[serde(default)]
    pub scopes: BTreeMap<String, Localized>,
    /// The views (front ends) it runs.
    #[serde(default)]
    pub views: Vec<ViewEntry>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ViewEntry {
    pub view_id: String,
    pub name: Localized,
}

/// The text for `lang`, falling back to English, then to any.
pub fn localized(text: &Localized, lang: Lang) -> Option<&str> {
    text.get(lang.code()).or_else(|| text.get("en")).or_else(|| text.values().next()).map(String::as_str)
}

impl PortalConfig {
    /// Refuses a registry that would mislead: a bad enterprise number, a platform twice, an
    /// unknown zone, a scope or view without words.
    pub fn validate(&self) -> Result<(), String> {
        custodian_web::i18n::time_zone(&self.time_zone).map_err(|e| format!("gateway.portal.time_zone: {e}"))?;
        let mut seen = std::collections::BTreeSet::new();
        for p in &self.platforms {
            if !seen.insert(p.platform_id.as_str()) {
                return Err(format!("gateway.portal.platforms: {:?} is listed twice", p.platform_id));
            }
            if p.name.trim().is_empty() || p.legal_name.trim().is_empty() {
                return Err(format!("gateway.portal.platforms {:?}: name and legal_name are required", p.platform_id));
            }
            normalize_enterprise_number(&p.enterprise_number)
                .map_err(|e| format!("gateway.portal.platforms {:?}: {e}", p.platform_id))?;
            for (scope, words) in &p.scopes {
                if localized(words, Lang::En).is_none_or(|w| w.trim().is_empty()) {
                    return Err(format!("gateway.portal.platforms {:?}: scope {scope:?} has no words", p.platform_id));
                }
            }
            for v in &p.views {
                if localized(&v.name, Lang::En).is_none_or(|w| w.trim().is_empty()) {
                    return Err(format!(
                        "gateway.portal.platforms {:?}: view {:?} has no name",
                        p.platform_id, v.view_id
                    ));
                }
            }
        }
        Ok(())
    }

    pub fn tz(&self) -> chrono_tz::Tz {
        custodian_web::i18n::time_zone(&self.time_zone).unwrap_or(chrono_tz::Europe::Brussels)
    }

    pub fn platform(&self, platform_id: &str) -> Option<&PlatformEntry> {
        self.platforms.iter().find(|p| p.platform_id == platform_id)
    }

    /// A platform's name for people: its registered name, or its id when unregistered.
    pub fn platform_name(&self, platform_id: &str) -> String {
        self.platform(platform_id).map_or_else(|| platform_id.to_owned(), |p| p.name.clone())
    }

    /// A view's name for people: from its platform's entry, or its id.
    pub fn view_name(&self, platform_id: &str, view_id: &str, lang: Lang) -> String {
        self.platform(platform_id)
            .and_then(|p| p.views.iter().find(|v| v.view_id == view_id))
            .and_then(|v| localized(&v.name, lang))
            .map_or_else(|| view_id.to_owned(), str::to_owned)
    }

    /// What `scope` lets the platform see, in plain words.
    pub fn scope_words(&self, platform_id: &str, scope: &str, tr: &Tr) -> String {
        if let Some(words) =
            self.platform(platform_id).and_then(|p| p.scopes.get(scope)).and_then(|w| localized(w, tr.lang))
        {
            return words.to_owned();
        }
        match scope {
            "openid" | "profile" | "email" | "offline_access" => tr.t(&format!("scope-{scope}")),
            other => tr.t1("scope-unknown", "name", other),
        }
    }
}

/// A Belgian enterprise number as `0123.456.749`: ten digits, the first 0 or 1, the last two
/// 97 minus the first eight modulo 97.
pub fn normalize_enterprise_number(number: &str) -> Result<String, String> {
    let digits: String = number.chars().filter(|c| !matches!(c, '.' | ' ')).collect();
    let digits = digits.strip_prefix("BE").unwrap_or(&digits);
    if digits.len() != 10 || !digits.chars().all(|c| c.is_ascii_digit()) || !matches!(&digits[..1], "0" | "1") {
        return Err(format!("enterprise number {number:?} is not ten digits starting with 0 or 1"));
    }
    let body: u64 = digits[..8].parse().map_err(|_| format!("enterprise number {number:?}"))?;
    let check: u64 = digits[8..].parse().map_err(|_| format!("enterprise number {number:?}"))?;
    if 97 - body % 97 != check {
        return Err(format!("enterprise number {number:?} fails its check digits"));
    }
    Ok(format!("{}.{}.{}", &digits[..4], &digits[4..7], &digits[7..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enterprise_numbers_are_checked() {
        // 0203.201.340 is the NMBS/SNCB's: a real, valid number.
        assert_eq!(normalize_enterprise_number("0203201340").unwrap(), "0203.201.340");
        assert_eq!(normalize_enterprise_number("BE 0203.201.340").unwrap(), "0203.201.340");
        assert!(normalize_enterprise_number("0203.201.341").is_err());
        assert!(normalize_enterprise_number("2203.201.340").is_err());
        assert!(normalize_enterprise_number("0203.201.34").is_err());
    }

    #[test]
    fn a_registry_that_would_mislead_is_refused() {
        let entry = |id: &str, number: &str| PlatformEntry {
            platform_id: id.into(),
            name: "P".into(),
            legal_name: "P NV".into(),
            enterprise_number: number.into(),
            scopes: BTreeMap::new(),
            views: Vec::new(),
        };
        let ok = PortalConfig { platforms: vec![entry("a", "0203.201.340")], ..Default::default() };
        assert!(ok.validate().is_ok());
        let twice =
            PortalConfig { platforms: vec![entry("a", "0203.201.340"), entry("a", "0203.201.340")], ..ok.clone() };
        assert!(twice.validate().unwrap_err().contains("twice"));
        let bad = PortalConfig { platforms: vec![entry("a", "0203.201.399")], ..ok.clone() };
        assert!(bad.validate().unwrap_err().contains("check digits"));
        let zone = PortalConfig { time_zone: "Europe/Atlantis".into(), ..ok };
        assert!(zone.validate().is_err());
    }
}
