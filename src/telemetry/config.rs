//! What the exporter is told: the `[telemetry]` section of the config file,
//! with the standard `OTEL_*` environment variables laid over it, and the
//! checks of both.

use crate::error::{Error, Result};
use serde::Deserialize;

/// The only OTLP protocol Switchboard exports with.
pub const PROTOCOL: &str = "http/protobuf";
/// The service name spans carry unless told otherwise.
pub const DEFAULT_SERVICE_NAME: &str = "switchboard";
/// How long one export may take before it is dropped, unless told otherwise.
pub const DEFAULT_TIMEOUT_MS: u64 = 10_000;

/// The variable GenAI instrumentations read for whether content goes on
/// spans; here, tool arguments and results.
const CAPTURE_VARIABLE: &str = "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT";

/// Samplers by their `OTEL_TRACES_SAMPLER` names; the ratio ones take `sampler_arg`.
const SAMPLERS: &[&str] = &[
    "always_on",
    "always_off",
    "traceidratio",
    "parentbased_always_on",
    "parentbased_always_off",
    "parentbased_traceidratio",
];

/// Trace export settings: the `[telemetry]` section of the config file, and
/// what a library user hands [`Telemetry::start`](super::Telemetry::start).
/// Nothing is exported without an endpoint.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetryConfig {
    /// `false` exports nothing, whatever else is set (`OTEL_SDK_DISABLED=true` too).
    pub enabled: bool,
    /// The collector's OTLP/HTTP base URL (`OTEL_EXPORTER_OTLP_ENDPOINT`);
    /// spans go to `{endpoint}/v1/traces`.
    pub endpoint: Option<String>,
    /// The full URL spans are posted to, used as is
    /// (`OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`); wins over `endpoint`.
    pub traces_endpoint: Option<String>,
    /// `http/protobuf`, the only one supported (`OTEL_EXPORTER_OTLP_PROTOCOL`).
    pub protocol: String,
    /// The `service.name` of the spans (`OTEL_SERVICE_NAME`).
    pub service_name: String,
    /// Which traces are kept (`OTEL_TRACES_SAMPLER`): `always_on`,
    /// `always_off`, `traceidratio`, or one of those behind `parentbased_`
    /// (the default, `parentbased_always_on`, follows the caller's choice).
    pub sampler: String,
    /// The ratio of the ratio samplers, 0 to 1 (`OTEL_TRACES_SAMPLER_ARG`; default 1).
    pub sampler_arg: Option<f64>,
    /// Milliseconds one export may take; a slower collector loses that batch.
    pub timeout_ms: u64,
    /// Puts each call's arguments and result on its `execute_tool` span
    /// (`gen_ai.tool.call.arguments` / `.result`), redacted and capped by
    /// the `[audit]` rules (`OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT`).
    /// Off by default: they may hold what the caller would not show a
    /// tracing backend.
    pub capture_tool_content: bool,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        TelemetryConfig {
            enabled: true,
            endpoint: None,
            traces_endpoint: None,
            protocol: PROTOCOL.into(),
            service_name: DEFAULT_SERVICE_NAME.into(),
            sampler: "parentbased_always_on".into(),
            sampler_arg: None,
            timeout_ms: DEFAULT_TIMEOUT_MS,
            capture_tool_content: false,
        }
    }
}

impl TelemetryConfig {
    /// This config with the standard environment variables laid over it: a
    /// variable that is set wins over the key it stands for. A variable that
    /// cannot work is an error naming it.
    pub fn with_env(self) -> Result<TelemetryConfig> {
        self.with_vars(|name| std::env::var(name).ok().filter(|v| !v.trim().is_empty()))
    }

    fn with_vars(mut self, var: impl Fn(&str) -> Option<String>) -> Result<TelemetryConfig> {
        if let Some(disabled) = var("OTEL_SDK_DISABLED") {
            match disabled.trim().to_ascii_lowercase().as_str() {
                "true" => self.enabled = false,
                "false" => {}
                other => {
                    return Err(Error::invalid(format!(
                        "OTEL_SDK_DISABLED is {other:?}: set it to true or false"
                    )))
                }
            }
        }
        if let Some(capture) = var(CAPTURE_VARIABLE) {
            self.capture_tool_content = match capture.trim().to_ascii_lowercase().as_str() {
                "true" => true,
                "false" => false,
                other => {
                    return Err(Error::invalid(format!(
                        "{CAPTURE_VARIABLE} is {other:?}: set it to true or false"
                    )))
                }
            };
        }
        let set = |value: &mut Option<String>, name: &str| {
            if let Some(v) = var(name) {
                *value = Some(v.trim().to_string());
            }
        };
        set(&mut self.endpoint, "OTEL_EXPORTER_OTLP_ENDPOINT");
        set(
            &mut self.traces_endpoint,
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        );
        let protocol = var("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
            .map(|p| ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", p))
            .or_else(|| {
                var("OTEL_EXPORTER_OTLP_PROTOCOL").map(|p| ("OTEL_EXPORTER_OTLP_PROTOCOL", p))
            });
        if let Some((name, protocol)) = protocol {
            let protocol = protocol.trim().to_string();
            check_protocol(&protocol).map_err(|why| Error::invalid(format!("{name} {why}")))?;
            self.protocol = protocol;
        }
        if let Some(name) = var("OTEL_SERVICE_NAME") {
            self.service_name = name.trim().to_string();
        }
        if let Some(sampler) = var("OTEL_TRACES_SAMPLER") {
            let sampler = sampler.trim().to_string();
            check_sampler(&sampler)
                .map_err(|why| Error::invalid(format!("OTEL_TRACES_SAMPLER {why}")))?;
            self.sampler = sampler;
        }
        if let Some(arg) = var("OTEL_TRACES_SAMPLER_ARG") {
            let ratio = arg
                .trim()
                .parse::<f64>()
                .ok()
                .filter(|r| (0.0..=1.0).contains(r))
                .ok_or_else(|| {
                    Error::invalid(format!(
                        "OTEL_TRACES_SAMPLER_ARG is {arg:?}: set it to a ratio from 0 to 1"
                    ))
                })?;
            self.sampler_arg = Some(ratio);
        }
        for (name, value) in [
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &self.endpoint),
            ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", &self.traces_endpoint),
        ] {
            if let (Some(url), true) = (value, var(name).is_some()) {
                check_url(url).map_err(|why| Error::invalid(format!("{name} {why}")))?;
            }
        }
        Ok(self)
    }

    /// What is wrong with the section's own values, by key (without the
    /// `telemetry.` prefix).
    pub fn problems(&self) -> Vec<(&'static str, String)> {
        let mut found = Vec::new();
        if let Err(why) = check_protocol(&self.protocol) {
            found.push(("protocol", why));
        }
        if let Err(why) = check_sampler(&self.sampler) {
            found.push(("sampler", why));
        }
        if let Some(ratio) = self.sampler_arg {
            if !(0.0..=1.0).contains(&ratio) {
                found.push((
                    "sampler_arg",
                    format!("is {ratio}: set a ratio from 0 to 1"),
                ));
            }
        }
        for (key, value) in [
            ("endpoint", &self.endpoint),
            ("traces_endpoint", &self.traces_endpoint),
        ] {
            if let Some(Err(why)) = value.as_deref().map(check_url) {
                found.push((key, why));
            }
        }
        if self.service_name.trim().is_empty() {
            found.push((
                "service_name",
                "is empty: name the service, or remove the key".into(),
            ));
        }
        if self.timeout_ms == 0 {
            found.push(("timeout_ms", "must be at least 1".into()));
        }
        found
    }

    /// The URL spans are posted to, if any: nothing is exported without one.
    pub fn traces_url(&self) -> Option<String> {
        if !self.enabled {
            return None;
        }
        if let Some(url) = &self.traces_endpoint {
            return Some(url.clone());
        }
        let base = self.endpoint.as_deref()?;
        Some(format!("{}/v1/traces", base.trim_end_matches('/')))
    }
}

fn check_protocol(protocol: &str) -> std::result::Result<(), String> {
    if protocol == PROTOCOL {
        return Ok(());
    }
    Err(format!(
        "is {protocol:?}: Switchboard exports OTLP over HTTP with protobuf only; set it to \
         {PROTOCOL} (a collector's OTLP/HTTP port, usually 4318), or leave it unset"
    ))
}

fn check_sampler(sampler: &str) -> std::result::Result<(), String> {
    if SAMPLERS.contains(&sampler) {
        return Ok(());
    }
    Err(format!(
        "is {sampler:?}: set one of {}",
        SAMPLERS.join(", ")
    ))
}

fn check_url(url: &str) -> std::result::Result<(), String> {
    match reqwest::Url::parse(url) {
        Ok(u) if matches!(u.scheme(), "http" | "https") && u.host_str().is_some() => Ok(()),
        _ => Err(format!(
            "is {url:?}: set the collector's http:// or https:// URL, e.g. http://127.0.0.1:4318"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn with(vars: &[(&str, &str)]) -> Result<TelemetryConfig> {
        let vars: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        TelemetryConfig::default().with_vars(|name| vars.get(name).cloned())
    }

    #[test]
    fn nothing_is_exported_without_an_endpoint_or_when_disabled() {
        assert_eq!(with(&[]).unwrap().traces_url(), None);
        let c = with(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318/")]).unwrap();
        assert_eq!(
            c.traces_url().as_deref(),
            Some("http://127.0.0.1:4318/v1/traces")
        );
        let c = with(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318"),
            ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://127.0.0.1:9/t"),
        ])
        .unwrap();
        assert_eq!(c.traces_url().as_deref(), Some("http://127.0.0.1:9/t"));
        let c = with(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318"),
            ("OTEL_SDK_DISABLED", "true"),
        ])
        .unwrap();
        assert_eq!(c.traces_url(), None);
    }

    #[test]
    fn variables_win_over_the_section_and_bad_ones_name_themselves() {
        let c = with(&[
            ("OTEL_SERVICE_NAME", "gateway"),
            ("OTEL_TRACES_SAMPLER", "traceidratio"),
            ("OTEL_TRACES_SAMPLER_ARG", "0.25"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
        ])
        .unwrap();
        assert_eq!(c.service_name, "gateway");
        assert_eq!(
            (c.sampler.as_str(), c.sampler_arg),
            ("traceidratio", Some(0.25))
        );
        assert!(!c.capture_tool_content, "off unless asked");
        let c = with(&[(CAPTURE_VARIABLE, "true")]).unwrap();
        assert!(c.capture_tool_content);
        for (name, value) in [
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
            ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/json"),
            ("OTEL_TRACES_SAMPLER", "jaeger_remote"),
            ("OTEL_TRACES_SAMPLER_ARG", "2"),
            ("OTEL_SDK_DISABLED", "yes"),
            (CAPTURE_VARIABLE, "sometimes"),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "127.0.0.1:4318"),
        ] {
            let err = with(&[(name, value)]).unwrap_err().to_string();
            assert!(err.contains(name), "{name}: {err}");
        }
    }

    #[test]
    fn the_section_reports_each_bad_key() {
        let c = TelemetryConfig {
            protocol: "grpc".into(),
            sampler: "sometimes".into(),
            sampler_arg: Some(1.5),
            endpoint: Some("collector:4318".into()),
            timeout_ms: 0,
            ..TelemetryConfig::default()
        };
        let keys: Vec<&str> = c.problems().iter().map(|(k, _)| *k).collect();
        assert_eq!(
            keys,
            [
                "protocol",
                "sampler",
                "sampler_arg",
                "endpoint",
                "timeout_ms"
            ]
        );
        assert!(TelemetryConfig::default().problems().is_empty());
    }
}
