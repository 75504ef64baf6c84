//! The pages' languages: Dutch, French, German (Belgium's three official languages) and
//! English. Every string a page shows lives in a Fluent catalogue (`locales/<lang>.ftl`),
//! compiled into the binary; unit tests check that each catalogue has every key of the
//! others, that every key the code and the templates ask for exists, and that none is
//! unused. Dates are shown in the person's language and time zone, never as RFC 3339.

use std::collections::HashMap;
use std::sync::OnceLock;

use axum::http::{HeaderMap, header};
use chrono::{DateTime, Datelike as _, Utc};
use fluent_bundle::concurrent::FluentBundle;
use fluent_bundle::{FluentArgs, FluentResource, FluentValue};
use unic_langid::LanguageIdentifier;

/// A page's language.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Lang {
    En,
    Nl,
    Fr,
    De,
}

/// The cookie that keeps a language picked with the switcher (a preference, not personal data).
pub const LANG_COOKIE: &str = "custodian_lang";

impl Lang {
    /// In the order the switcher shows them.
    pub const ALL: [Lang; 4] = [Lang::Nl, Lang::Fr, Lang::De, Lang::En];

    pub fn code(self) -> &'static str {
        match self {
            Lang::En => "en",
            Lang::Nl => "nl",
            Lang::Fr => "fr",
            Lang::De => "de",
        }
    }

    /// The language's own name, as the switcher shows it.
    pub fn endonym(self) -> &'static str {
        match self {
            Lang::En => "English",
            Lang::Nl => "Nederlands",
            Lang::Fr => "Français",
            Lang::De => "Deutsch",
        }
    }

    pub fn from_code(code: &str) -> Option<Lang> {
        let primary = code.trim().split(['-', '_']).next()?.to_ascii_lowercase();
        Lang::ALL.into_iter().find(|l| l.code() == primary)
    }

    /// The language of a request: `?lang=` (the switcher), else the cookie it set, else the
    /// browser's `Accept-Language` by preference, else English.
    pub fn negotiate(query_lang: Option<&str>, headers: &HeaderMap) -> Lang {
        if let Some(lang) = query_lang.and_then(Lang::from_code) {
            return lang;
        }
        let cookie = crate::pages::cookie(headers, LANG_COOKIE).and_then(|v| Lang::from_code(&v));
        if let Some(lang) = cookie {
            return lang;
        }
        let accept = headers.get(header::ACCEPT_LANGUAGE).and_then(|v| v.to_str().ok()).unwrap_or_default();
        Lang::from_accept_language(accept).unwrap_or(Lang::En)
    }

    /// The first language of ours in an `Accept-Language` header, by its q-values
    /// (RFC 9110 §12.5.4); a range of `q=0` is refused, `*` is no preference.
    pub fn from_accept_language(header: &str) -> Option<Lang> {
        let mut ranges: Vec<(f32, usize, Lang)> = header
            .split(',')
            .enumerate()
            .filter_map(|(position, item)| {
                let mut parts = item.split(';');
                let range = parts.next()?.trim();
                let q = parts
                    .filter_map(|p| p.trim().strip_prefix("q="))
                    .find_map(|q| q.trim().parse::<f32>().ok())
                    .unwrap_or(1.0);
                let lang = Lang::from_code(range)?;
                (q > 0.0).then_some((q, position, lang))
            })
            .collect();
        // Highest q first; among equals, the order the browser gave.
        ranges.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
        ranges.first().map(|(_, _, lang)| *lang)
    }

    fn source(self) -> &'static str {
        match self {
            Lang::En => include_str!("../locales/en.ftl"),
            Lang::Nl => include_str!("../locales/nl.ftl"),
            Lang::Fr => include_str!("../locales/fr.ftl"),
            Lang::De => include_str!("../locales/de.ftl"),
        }
    }
}

struct Catalogue {
    bundle: FluentBundle<FluentResource>,
    keys: Vec<String>,
}

fn catalogues() -> &'static HashMap<Lang, Catalogue> {
    static CATALOGUES: OnceLock<HashMap<Lang, Catalogue>> = OnceLock::new();
    CATALOGUES.get_or_init(|| {
        Lang::ALL
            .into_iter()
            .map(|lang| {
                // The catalogues are compiled in and checked by the unit tests: a syntax error
                // there is a build defect, not a runtime condition.
                let resource = FluentResource::try_new(lang.source().to_owned())
                    .unwrap_or_else(|(_, errors)| panic!("locales/{}.ftl: {errors:?}", lang.code()));
                let keys = resource
                    .entries()
                    .filter_map(|entry| match entry {
                        fluent_syntax::ast::Entry::Message(m) => Some(m.id.name.to_owned()),
                        _ => None,
                    })
                    .collect();
                let id: LanguageIdentifier = lang.code().parse().unwrap_or_default();
                let mut bundle = FluentBundle::new_concurrent(vec![id]);
                // The pages are HTML, escaped by the templates: no bidi isolation marks.
                bundle.set_use_isolating(false);
                if let Err(errors) = bundle.add_resource(resource) {
                    panic!("locales/{}.ftl: {errors:?}", lang.code());
                }
                (lang, Catalogue { bundle, keys })
            })
            .collect()
    })
}

/// The message keys of one language's catalogue.
pub fn keys(lang: Lang) -> &'static [String] {
    &catalogues()[&lang].keys
}

/// Translates pages' strings into one language, and shows times in one time zone.
#[derive(Debug, Clone, Copy)]
pub struct Tr {
    pub lang: Lang,
    pub tz: chrono_tz::Tz,
}

impl Tr {
    pub fn new(lang: Lang, tz: chrono_tz::Tz) -> Self {
        Self { lang, tz }
    }

    /// The message `key`, with `args` in its placeables. A key missing from the catalogue
    /// shows as itself (and the catalogue test fails).
    pub fn args(&self, key: &str, args: &[(&str, &str)]) -> String {
        let catalogue = &catalogues()[&self.lang];
        let Some(pattern) = catalogue.bundle.get_message(key).and_then(|m| m.value()) else {
            tracing::warn!(key, lang = self.lang.code(), "no such message");
            return key.to_owned();
        };
        let mut fluent_args = FluentArgs::new();
        for (name, value) in args {
            // Numbers stay numbers, so plural rules pick the right form.
            match value.parse::<i64>() {
                Ok(n) => fluent_args.set(*name, FluentValue::from(n)),
                Err(_) => fluent_args.set(*name, FluentValue::from(*value)),
            }
        }
        let mut errors = Vec::new();
        let text = catalogue.bundle.format_pattern(pattern, Some(&fluent_args), &mut errors);
        if !errors.is_empty() {
            tracing::warn!(key, lang = self.lang.code(), ?errors, "message not fully formatted");
        }
        text.into_owned()
    }

    /// Whether the catalogue has `key` (for words of a machine's vocabulary that may grow).
    pub fn has(&self, key: &str) -> bool {
        catalogues()[&self.lang].bundle.has_message(key)
    }

    /// The message `key`, with no arguments.
    pub fn t(&self, key: &str) -> String {
        self.args(key, &[])
    }

    /// One argument (templates call this; a slice of pairs is awkward there).
    pub fn t1(&self, key: &str, name: &str, value: &str) -> String {
        self.args(key, &[(name, value)])
    }

    pub fn t2(&self, key: &str, n1: &str, v1: &str, n2: &str, v2: &str) -> String {
        self.args(key, &[(n1, v1), (n2, v2)])
    }

    /// A date and time in the person's language and time zone, to the second.
    pub fn datetime(&self, at: &DateTime<Utc>) -> String {
        let local = at.with_timezone(&self.tz);
        let month = self.t(&format!("month-{}", local.month()));
        self.args(
            "datetime",
            &[
                ("day", &local.day().to_string()),
                ("month", &month),
                ("year", &local.year().to_string()),
                ("time", &local.format("%H:%M:%S").to_string()),
            ],
        )
    }

    /// Only the time of day, for steps of one timeline.
    pub fn time(&self, at: &DateTime<Utc>) -> String {
        at.with_timezone(&self.tz).format("%H:%M:%S").to_string()
    }

    /// An optional time, or the catalogue's word for "never".
    pub fn datetime_or_never(&self, at: &Option<DateTime<Utc>>) -> String {
        match at {
            Some(at) => self.datetime(at),
            None => self.t("never"),
        }
    }
}

/// A time zone by its IANA name (`Europe/Brussels`).
pub fn time_zone(name: &str) -> Result<chrono_tz::Tz, String> {
    name.parse::<chrono_tz::Tz>().map_err(|e| format!("unknown time zone {name:?}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_is_in_every_language() {
        let english: std::collections::BTreeSet<&String> = keys(Lang::En).iter().collect();
        assert!(english.len() > 50, "the English catalogue is loaded: {} keys", english.len());
        for lang in Lang::ALL {
            let these: std::collections::BTreeSet<&String> = keys(lang).iter().collect();
            let missing: Vec<_> = english.difference(&these).collect();
            let extra: Vec<_> = these.difference(&english).collect();
            assert!(missing.is_empty() && extra.is_empty(), "{}: missing {missing:?}, extra {extra:?}", lang.code());
        }
    }

    /// A literal as a key: itself, or, for a key built with `format!("prefix-{…}")`, the
    /// prefix with `*` appended; `None` if it cannot be a key.
    fn as_key(literal: &str, needs_dash: bool) -> Option<String> {
        let (stem, dynamic) = match literal.find('{') {
            Some(brace) if literal.ends_with('}') => (&literal[..brace], true),
            _ => (literal, false),
        };
        let key_like = (stem.contains('-') || !needs_dash)
            && stem.starts_with(|c: char| c.is_ascii_lowercase())
            && stem.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
        key_like.then(|| if dynamic { format!("{stem}*") } else { stem.to_owned() })
    }

    /// The keys passed straight to the translator: `.t("…")`, `.t1(`, `.t2(`, `.args(`,
    /// also as `&format!("…")`.
    fn called_keys(text: &str) -> Vec<String> {
        let mut found = Vec::new();
        for call in [".t(", ".t1(", ".t2(", ".args("] {
            for (at, _) in text.match_indices(call) {
                let after = text[at + call.len()..].trim_start().trim_start_matches("&format!(");
                let Some(after) = after.strip_prefix('"') else { continue };
                let Some(end) = after.find('"') else { continue };
                found.extend(as_key(&after[..end], false));
            }
        }
        found
    }

    /// Every key-like literal of Rust source with a dash (`"console-replay-applied"`).
    fn key_like_literals(text: &str) -> Vec<String> {
        text.split('"').skip(1).step_by(2).filter_map(|literal| as_key(literal, true)).collect()
    }

    fn sources(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
        for entry in std::fs::read_dir(dir).expect("a source directory").flatten() {
            let path = entry.path();
            if path.is_dir() {
                sources(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs" || e == "html") {
                out.push(path);
            }
        }
    }

    /// A key the code asks for that no catalogue has would show as the key itself; a key no
    /// code asks for is a translation nobody reads. Counted: the literals passed to `t`, `t1`,
    /// `t2` and `args`, and in Rust files that use [`Tr`] every key-like literal whose first
    /// word is a catalogue's (`console-…`, `receipt-…`), wherever the key is chosen.
    #[test]
    fn every_key_the_code_asks_for_is_in_the_catalogue_and_every_key_is_asked_for() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let english: std::collections::BTreeSet<&str> = keys(Lang::En).iter().map(String::as_str).collect();
        let first_words: std::collections::BTreeSet<&str> =
            english.iter().filter_map(|k| k.split('-').next()).collect();
        let mut files = Vec::new();
        sources(&root.join("services"), &mut files);
        sources(&root.join("shared"), &mut files);
        let mut used = std::collections::BTreeSet::new();
        let mut prefixes = std::collections::BTreeSet::new();
        let mut missing = Vec::new();
        for file in &files {
            let text = std::fs::read_to_string(file).expect("a readable source");
            let template = file.extension().is_some_and(|e| e == "html");
            // Rust files that translate: those that name the translator.
            if !template && !["&Tr", "Tr::new", "i18n::"].iter().any(|n| text.contains(n)) {
                continue;
            }
            let mut asked = called_keys(&text);
            if !template {
                let catalogue_words = |k: &String| k.split('-').next().is_some_and(|w| first_words.contains(w));
                asked.extend(key_like_literals(&text).into_iter().filter(catalogue_words));
            }
            for key in asked {
                if let Some(prefix) = key.strip_suffix('*') {
                    if !english.iter().any(|k| k.starts_with(prefix)) {
                        missing.push(format!("{}: {prefix}…", file.display()));
                    }
                    prefixes.insert(prefix.to_owned());
                } else if english.contains(key.as_str()) {
                    used.insert(key);
                } else {
                    missing.push(format!("{}: {key}", file.display()));
                }
            }
        }
        assert!(
            files.len() > 20 && used.len() > 50,
            "the sources were read: {} files, {} keys",
            files.len(),
            used.len()
        );
        assert!(missing.is_empty(), "keys asked for that the catalogue lacks: {missing:#?}");
        let unused: Vec<_> = english
            .iter()
            .filter(|k| !used.contains(**k) && !prefixes.iter().any(|p| k.starts_with(p.as_str())))
            .collect();
        assert!(unused.is_empty(), "keys no code asks for: {unused:?}");
    }

    #[test]
    fn every_message_formats_without_error_in_every_language() {
        let sample = [
            ("platform", "P"),
            ("name", "N"),
            ("number", "0123.456.789"),
            ("time", "10:42:01"),
            ("when", "4 December 2026"),
            ("view", "V"),
            ("count", "2"),
            ("attempts", "3"),
            ("day", "4"),
            ("month", "M"),
            ("year", "2026"),
            ("lang", "en"),
            ("level", "L"),
            ("hours", "5"),
            ("kind", "k"),
            ("state", "s"),
            ("reason", "r"),
            ("stage", "s"),
            ("subject", "s"),
            ("id", "i"),
            ("deadline", "d"),
            ("consumer", "c"),
            ("done", "1"),
            ("total", "2"),
            ("what", "w"),
            ("tokens", "1"),
            ("views", "2"),
            ("scanned", "3"),
            ("sections", "s"),
            ("role", "r"),
            ("publisher", "p"),
            ("how", "h"),
            ("operator", "o"),
        ];
        for lang in Lang::ALL {
            let catalogue = &catalogues()[&lang];
            for key in keys(lang) {
                let pattern = catalogue.bundle.get_message(key).and_then(|m| m.value()).expect("a value");
                let mut args = FluentArgs::new();
                for (name, value) in sample {
                    match value.parse::<i64>() {
                        Ok(n) => args.set(name, FluentValue::from(n)),
                        Err(_) => args.set(name, FluentValue::from(value)),
                    }
                }
                let mut errors = Vec::new();
                let text = catalogue.bundle.format_pattern(pattern, Some(&args), &mut errors);
                assert!(errors.is_empty(), "{}: {key}: {errors:?}", lang.code());
                assert!(!text.trim().is_empty(), "{}: {key} is empty", lang.code());
            }
        }
    }

    #[test]
    fn accept_language_picks_by_quality_then_order() {
        assert_eq!(Lang::from_accept_language("fr-BE,fr;q=0.9,en;q=0.8"), Some(Lang::Fr));
        assert_eq!(Lang::from_accept_language("es, nl;q=0.5, de;q=0.7"), Some(Lang::De));
        assert_eq!(Lang::from_accept_language("de;q=0, nl-BE"), Some(Lang::Nl));
        assert_eq!(Lang::from_accept_language("es, *"), None);
        assert_eq!(Lang::from_accept_language(""), None);
        let mut headers = HeaderMap::new();
        headers.insert(header::ACCEPT_LANGUAGE, "nl-BE".parse().unwrap());
        headers.insert(header::COOKIE, format!("a=b; {LANG_COOKIE}=de").parse().unwrap());
        assert_eq!(Lang::negotiate(Some("fr"), &headers), Lang::Fr);
        assert_eq!(Lang::negotiate(Some("xx"), &headers), Lang::De, "an unknown ?lang= falls back to the cookie");
        headers.remove(header::COOKIE);
        assert_eq!(Lang::negotiate(None, &headers), Lang::Nl);
    }

    #[test]
    fn dates_are_in_the_language_and_time_zone() {
        let at: DateTime<Utc> = "2026-12-04T09:42:01.123456789Z".parse().unwrap();
        let tz = time_zone("Europe/Brussels").unwrap();
        assert_eq!(Tr::new(Lang::En, tz).datetime(&at), "4 December 2026, 10:42:01");
        assert_eq!(Tr::new(Lang::Nl, tz).datetime(&at), "4 december 2026, 10:42:01");
        assert_eq!(Tr::new(Lang::Fr, tz).datetime(&at), "4 décembre 2026 à 10:42:01");
        assert_eq!(Tr::new(Lang::De, tz).datetime(&at), "4. Dezember 2026, 10:42:01");
        let summer: DateTime<Utc> = "2026-07-01T09:00:00Z".parse().unwrap();
        assert_eq!(Tr::new(Lang::En, tz).time(&summer), "11:00:00", "CEST in summer");
        assert!(time_zone("Mars/Olympus").is_err());
    }
}
