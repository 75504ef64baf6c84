//! What operators deploy beside Custodian (`k8s/monitoring/`): the alert rules pass
//! `promtool check rules`, and the revocation alert fires, in `promtool test rules`, on the
//! gauges a stack exports while a view never acknowledges its wipe.

use std::path::{Path, PathBuf};
use std::time::Duration;

use custodian_testkit::eventually;
use reqwest::StatusCode;
use serde_json::Value;

use crate::support::{Stack, test_vault_config, unique};

fn monitoring(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../k8s/monitoring").join(file)
}

/// The rule groups of the PrometheusRule (its `spec`), as a plain Prometheus rules file.
fn rules_file() -> String {
    let rule = std::fs::read_to_string(monitoring("prometheus-rule.yaml")).expect("prometheus-rule.yaml");
    let spec = rule.split_once("\nspec:\n").expect("a spec").1;
    spec.lines().map(|l| l.strip_prefix("  ").unwrap_or(l)).collect::<Vec<_>>().join("\n") + "\n"
}

/// An alert's annotation, read from the rule (promtool compares them exactly).
fn annotation(alert: &str, key: &str) -> String {
    let rules = rules_file();
    let block = rules.split("- alert: ").find(|b| b.starts_with(alert)).expect("the alert");
    let line = block.lines().find_map(|l| l.trim().strip_prefix(&format!("{key}: "))).expect("the annotation");
    serde_json::from_str::<String>(line).expect("a quoted annotation")
}

fn promtool(args: &[&str], dir: &Path) -> (bool, String) {
    let out = std::process::Command::new("promtool")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("promtool must be installed (make test installs it)");
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

#[test]
fn the_alert_rules_pass_promtool_check_rules() {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(dir.path().join("rules.yaml"), rules_file()).expect("rules");
    let (ok, out) = promtool(&["check", "rules", "rules.yaml"], dir.path());
    assert!(ok && out.contains("SUCCESS: 7 rules found"), "{out}");
}

#[tokio::test]
async fn a_view_that_never_acks_fires_the_pending_revocation_alert() {
    let mut stack = Stack::start().await;
    let (client, settings) = stack.register_platform().await;
    let platform = client.client_id.clone();
    stack.start_vault(test_vault_config(vec![settings]));
    let person = unique("unacked");
    let (browser, _cookie, _) = stack.login_through_gateway(&person).await;
    eventually("the login to grant consent", Duration::from_secs(15), || {
        let (browser, url) = (browser.clone(), stack.url("/v1/me/consents"));
        async move {
            let body: Value = browser.get(url).send().await.ok()?.json().await.ok()?;
            (!body["consents"].as_array()?.is_empty()).then_some(())
        }
    })
    .await;
    let view_id = unique("silent");
    let view = stack.start_view(&view_id).await;
    view.start_session(None, &person, &platform, Duration::from_secs(10)).await.expect("a session");
    // The view goes away with the person's data in memory: its wipe is never acknowledged.
    stack.pause_view(&view_id).await;
    let response = browser.delete(stack.url(&format!("/v1/me/consents/{platform}"))).send().await.expect("revoke");
    assert_eq!(response.status(), StatusCode::ACCEPTED);

    // The stack's own gauges, as /metrics serves them, once they show the wait.
    let metrics = &stack.vault_metrics;
    eventually("the gauges to show the pending wipe", Duration::from_secs(20), || async {
        (metrics.pending_wipes.get() >= 1 && metrics.oldest_pending_revocation_seconds.get() > 0.0).then_some(())
    })
    .await;
    let mut registry = prometheus_client::registry::Registry::default();
    metrics.register(&mut registry);
    let mut scraped = String::new();
    prometheus_client::encoding::text::encode(&mut scraped, &registry).expect("encode");
    let gauge = |name: &str| -> f64 {
        scraped
            .lines()
            .find_map(|l| l.strip_prefix(name).and_then(|v| v.strip_prefix(' ')))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("{name} not exported:\n{scraped}"))
    };
    let age = gauge("custodian_vault_oldest_pending_revocation_age_seconds");
    let wipes = gauge("custodian_vault_pending_wipes");
    assert!(age > 0.0 && wipes >= 1.0, "{scraped}");

    // From there the view stays silent: the age grows by the clock, the wipe stays pending.
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(dir.path().join("rules.yaml"), rules_file()).expect("rules");
    let alert = "CustodianRevocationPendingPastBound";
    let test = format!(
        r#"rule_files: [rules.yaml]
evaluation_interval: 15s
tests:
  - interval: 15s
    input_series:
      - series: 'custodian_vault_oldest_pending_revocation_age_seconds{{instance="vault-1"}}'
        values: '{age}+15x24'
      - series: 'custodian_vault_pending_wipes{{instance="vault-1"}}'
        values: '{wipes}x24'
    alert_rule_test:
      - eval_time: 1m
        alertname: {alert}
        exp_alerts: []
      - eval_time: 5m
        alertname: {alert}
        exp_alerts:
          - exp_labels: {{ severity: page }}
            exp_annotations:
              summary: {summary:?}
              description: {description:?}
"#,
        summary = annotation(alert, "summary"),
        description = annotation(alert, "description"),
    );
    std::fs::write(dir.path().join("test.yaml"), test).expect("test");
    let (ok, out) = promtool(&["test", "rules", "test.yaml"], dir.path());
    assert!(ok && out.contains("SUCCESS"), "{out}");
}

/// The same registry reaches an OTLP collector (the standard exporter, every second here):
/// the request counter as a monotonic sum and the latency as a histogram in seconds, with
/// the values the Prometheus scrape shows, under the process's `service.name`.
#[tokio::test]
async fn the_metrics_reach_an_otlp_collector_with_the_values_the_scrape_shows() {
    let stack = Stack::start().await;
    // A count no other test's gateway reaches: this many reads of the OpenAPI document.
    let reads = 23;
    for _ in 0..reads {
        let response = stack.http.get(stack.url("/openapi.json")).send().await.expect("openapi");
        assert_eq!(response.status(), StatusCode::OK);
    }
    let scraped = stack.http.get(stack.url("/metrics")).send().await.expect("scrape").text().await.expect("text");
    let line =
        format!("custodian_http_requests_total{{method=\"GET\",route=\"/openapi.json\",status=\"200\"}} {reads}");
    assert!(scraped.lines().any(|l| l == line), "the scrape shows {line:?}:\n{scraped}");

    let receiver = custodian_testkit::otlp::OtlpReceiver::shared();
    let labels = |pairs: &[(&str, &str)]| -> std::collections::BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    };
    let counted = labels(&[("method", "GET"), ("route", "/openapi.json"), ("status", "200")]);
    let timed = labels(&[("method", "GET"), ("route", "/openapi.json")]);
    eventually("the request counter and histogram over OTLP", Duration::from_secs(20), || async {
        let metrics = receiver.metrics();
        let has = |name: &str, kind: &str, unit: &str, attributes: &std::collections::BTreeMap<String, String>| {
            metrics.iter().any(|m| {
                m.name == name
                    && m.kind == kind
                    && m.unit == unit
                    && m.service == "custodian-tests"
                    && m.points.iter().any(|(a, v)| a == attributes && *v == f64::from(reads))
            })
        };
        (has("custodian_http_requests", "sum", "", &counted)
            && has("custodian_http_request_duration_seconds", "histogram", "seconds", &timed))
        .then_some(())
    })
    .await;
}
