//! Reading a configuration: file, then environment overrides, then validation.

use crate::{Config, ConfigError};
use std::collections::HashMap;
use std::path::Path;
use toml::{Table, Value};

/// Environment variables starting with this override keys: `FLEETAGG__MQTT__URL` sets
/// `mqtt.url`. Double underscores separate the levels because keys contain single ones.
pub const ENV_PREFIX: &str = "FLEETAGG__";

/// Loads `path` (or the defaults when `None`) and applies the overrides found in `env`.
pub fn load(
    path: Option<&Path>,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<Config, ConfigError> {
    let (text, origin) = match path {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
            (text, path.display().to_string())
        }
        None => (String::new(), "(defaults)".to_owned()),
    };
    load_from_str(&text, &origin, env)
}

/// Like [`load`], from TOML text; `origin` names it in error messages.
pub fn load_from_str(
    text: &str,
    origin: &str,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<Config, ConfigError> {
    let mut table: Table = text.parse().map_err(|err: toml::de::Error| ConfigError::Syntax {
        origin: origin.to_owned(),
        message: err.to_string(),
    })?;
    let env_keys = apply_env_overrides(&mut table, env)?;

    let config: Config = serde_path_to_error::deserialize(Value::Table(table)).map_err(|err| {
        let key = err.path().to_string();
        let from_env = env_keys.get(&key).map(|var| format!(" (set by {var})")).unwrap_or_default();
        ConfigError::Key { key, from_env, message: err.into_inner().to_string() }
    })?;
    config.validate()?;
    Ok(config)
}

/// Writes each `FLEETAGG__A__B=value` into `table` at `a.b`; returns which variable set
/// which dotted key, so errors can name the variable.
fn apply_env_overrides(
    table: &mut Table,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<HashMap<String, String>, ConfigError> {
    let mut origins = HashMap::new();
    for (var, raw) in env {
        let Some(rest) = var.strip_prefix(ENV_PREFIX) else {
            continue;
        };
        let path: Vec<String> = rest.split("__").map(str::to_ascii_lowercase).collect();
        if path.iter().any(String::is_empty) {
            return Err(ConfigError::Env { var, message: "has an empty key segment".into() });
        }
        insert_at(table, &path, env_value(&raw))
            .map_err(|message| ConfigError::Env { var: var.clone(), message })?;
        origins.insert(path.join("."), var);
    }
    Ok(origins)
}

/// An environment value is read as a TOML value when it is one (`5000`, `true`,
/// `["a", "b"]`, `"quoted"`), and as a plain string otherwise (`5s`, `tcp://host:1883`).
fn env_value(raw: &str) -> Value {
    format!("value = {raw}")
        .parse::<Table>()
        .ok()
        .and_then(|mut table| table.remove("value"))
        .unwrap_or_else(|| Value::String(raw.to_owned()))
}

fn insert_at(table: &mut Table, path: &[String], value: Value) -> Result<(), String> {
    match path {
        [] => Err("names no key".into()),
        [key] => {
            table.insert(key.clone(), value);
            Ok(())
        }
        [section, rest @ ..] => {
            let entry = table.entry(section.clone()).or_insert_with(|| Value::Table(Table::new()));
            match entry {
                Value::Table(inner) => insert_at(inner, rest, value),
                _ => Err(format!("`{section}` is a value, not a section")),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::EpochUnit;
    use std::time::Duration;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    #[test]
    fn defaults_match_the_contract() {
        let config = load_from_str("", "test", env(&[])).unwrap();
        assert_eq!(config.mqtt.url, "tcp://127.0.0.1:1883");
        assert_eq!(config.mqtt.client_id, "fleetagg");
        assert_eq!(config.mqtt.topics, vec!["machines/+/telemetry".to_owned()]);
        assert_eq!(config.mqtt.qos, 1);
        assert_eq!(config.mqtt.max_payload_bytes, 65_536);
        assert_eq!(config.aggregation.grace, Duration::from_secs(5));
        assert_eq!(config.aggregation.tick, Duration::from_secs(15));
        assert_eq!(config.aggregation.max_lateness, Duration::from_secs(600));
        assert_eq!(config.aggregation.future_tolerance, Some(Duration::from_secs(5)));
        assert_eq!(config.aggregation.default_timezone, chrono_tz::Tz::UTC);
        assert_eq!(config.aggregation.epoch_unit, EpochUnit::S);
        assert_eq!(config.database.batch_max_rows, 5_000);
        assert_eq!(config.database.flush_interval, Duration::from_secs(1));
        assert_eq!(config.rejects.max_per_second, 1_000);
    }

    #[test]
    fn file_values_and_env_overrides_apply() {
        let text = r#"
            [mqtt]
            url = "mqtt://broker:1883"
            [aggregation]
            grace = "2s"
            future_tolerance = "off"
            default_timezone = "Europe/Paris"
            epoch_unit = "ms"
        "#;
        let config = load_from_str(
            text,
            "test",
            env(&[
                ("FLEETAGG__DATABASE__BATCH_MAX_ROWS", "100"),
                ("FLEETAGG__AGGREGATION__GRACE", "250ms"),
                ("FLEETAGG__MQTT__TOPICS", r#"["a/+/t", "b/#"]"#),
                ("UNRELATED", "ignored"),
            ]),
        )
        .unwrap();
        assert_eq!(config.mqtt.paho_url(), "tcp://broker:1883");
        assert_eq!(config.aggregation.grace, Duration::from_millis(250));
        assert_eq!(config.aggregation.future_tolerance, None);
        assert_eq!(config.aggregation.default_timezone, chrono_tz::Europe::Paris);
        assert_eq!(config.aggregation.epoch_unit, EpochUnit::Ms);
        assert_eq!(config.database.batch_max_rows, 100);
        assert_eq!(config.mqtt.topics, vec!["a/+/t".to_owned(), "b/#".to_owned()]);
    }

    #[test]
    fn unknown_keys_are_named() {
        let err = load_from_str("[mqtt]\nqoss = 1\n", "test", env(&[])).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("qoss"), "{text}");

        let err = load_from_str("", "test", env(&[("FLEETAGG__DATABASE__BATCH", "1")])).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("FLEETAGG__DATABASE__BATCH") && text.contains("batch"), "{text}");
    }

    #[test]
    fn bad_values_name_their_key() {
        let err = load_from_str("[aggregation]\ngrace = \"soon\"\n", "test", env(&[])).unwrap_err();
        assert!(err.to_string().contains("aggregation.grace"), "{err}");
        let err = load_from_str("[mqtt]\nqos = 3\n", "test", env(&[])).unwrap_err();
        assert!(err.to_string().contains("mqtt.qos"), "{err}");
        let err =
            load_from_str("[aggregation]\ndefault_timezone = \"Mars/Olympus\"\n", "t", env(&[])).unwrap_err();
        assert!(err.to_string().contains("aggregation.default_timezone"), "{err}");
        let err = load_from_str("[mqtt]\nurl = \"http://x\"\n", "t", env(&[])).unwrap_err();
        assert!(err.to_string().contains("mqtt.url"), "{err}");
    }

    #[test]
    fn a_password_in_the_database_url_is_refused_without_echoing_it() {
        for url in [
            "postgres://app:s3cr3t-value@db:5432/fleet",
            "host=db user=app password=s3cr3t-value dbname=fleet",
        ] {
            let text = format!("[database]\nurl = \"{url}\"\n");
            let err = load_from_str(&text, "test", env(&[])).unwrap_err().to_string();
            assert!(err.contains("database.url") && err.contains("secret source"), "{err}");
            assert!(!err.contains("s3cr3t-value"), "password leaked: {err}");
        }
    }

    #[test]
    fn the_example_file_loads_and_lists_every_key() {
        let text = include_str!("../fleetagg.example.toml");
        let config = load_from_str(text, "example", env(&[])).unwrap();
        let printed = toml::to_string(&config).unwrap();
        let listed: Table = printed.parse().unwrap();
        let example: Table = text.parse().unwrap();
        for (section, keys) in &listed {
            for key in keys.as_table().unwrap().keys() {
                let documented = example.get(section).and_then(|s| s.get(key)).is_some();
                assert!(documented, "{section}.{key} is missing from fleetagg.example.toml");
            }
        }
    }
}
