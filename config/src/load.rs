//! Reading a configuration: file, then environment overrides, then validation.
//!
//! No error built here contains a value from the file or the environment (see
//! [`crate::de`]): errors name the key, the variable or the place in the file.

use crate::de::ValueDeserializer;
use crate::{Config, ConfigError};
use std::collections::HashMap;
use std::ffi::OsStr;
use std::path::Path;
use toml::{Table, Value};

/// Environment variables starting with this override keys: `FLEETAGG__MQTT__URL` sets
/// `mqtt.url`. Double underscores separate the levels because keys contain single ones.
pub const ENV_PREFIX: &str = "FLEETAGG__";

/// Loads `path` (or the defaults when `None`) and applies the overrides found in `env`.
///
/// `env` is the whole environment as the OS has it (`std::env::vars_os()`): only names
/// starting with [`ENV_PREFIX`] are looked at, so an unrelated variable that is not UTF-8
/// is no concern of ours.
pub fn load<K: AsRef<OsStr>, V: AsRef<OsStr>>(
    path: Option<&Path>,
    env: impl IntoIterator<Item = (K, V)>,
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
pub fn load_from_str<K: AsRef<OsStr>, V: AsRef<OsStr>>(
    text: &str,
    origin: &str,
    env: impl IntoIterator<Item = (K, V)>,
) -> Result<Config, ConfigError> {
    let mut table: Table = text.parse().map_err(|err: toml::de::Error| ConfigError::Syntax {
        origin: origin.to_owned(),
        message: syntax_message(text, &err),
    })?;
    let env_keys = apply_env_overrides(&mut table, env)?;

    let config: Config =
        serde_path_to_error::deserialize(ValueDeserializer(Value::Table(table))).map_err(|err| {
            let key = err.path().to_string();
            let from_env = set_by(&env_keys, &key).map(|var| format!(" (set by {var})")).unwrap_or_default();
            ConfigError::Key { key, from_env, message: err.into_inner().to_string() }
        })?;
    config.validate()?;
    Ok(config)
}

/// The variable that set `key` or a value holding it (`FLEETAGG__DATABASE__PASSWORD` for
/// an error at `database.password.source`).
fn set_by<'a>(env_keys: &'a HashMap<String, String>, key: &str) -> Option<&'a String> {
    env_keys
        .iter()
        .filter(|(set, _)| {
            key.strip_prefix(set.as_str())
                .is_some_and(|rest| rest.is_empty() || rest.starts_with('.') || rest.starts_with('['))
        })
        .max_by_key(|(set, _)| set.len())
        .map(|(_, var)| var)
}

/// Where the file is wrong and what toml expected there, without toml's excerpt of the
/// line: that line may hold a secret (`password = "…` with the quote left open).
fn syntax_message(text: &str, err: &toml::de::Error) -> String {
    let message = err.message().trim_end();
    match err.span() {
        Some(span) => {
            let before = text.get(..span.start).unwrap_or(text);
            let line = before.matches('\n').count() + 1;
            let column = before.rsplit('\n').next().map_or(0, |start| start.chars().count()) + 1;
            format!("line {line}, column {column}: {message}")
        }
        None => message.to_owned(),
    }
}

/// Writes each `FLEETAGG__A__B=value` into `table` at `a.b`; returns which variable set
/// which dotted key, so errors can name the variable. A variable of ours that is not
/// UTF-8 is an error naming it (never showing the value: it may be a password).
fn apply_env_overrides<K: AsRef<OsStr>, V: AsRef<OsStr>>(
    table: &mut Table,
    env: impl IntoIterator<Item = (K, V)>,
) -> Result<HashMap<String, String>, ConfigError> {
    let mut origins = HashMap::new();
    for (name, raw) in env {
        let (name, raw) = (name.as_ref(), raw.as_ref());
        if !name.as_encoded_bytes().starts_with(ENV_PREFIX.as_bytes()) {
            continue;
        }
        let Some(var) = name.to_str() else {
            return Err(ConfigError::Env {
                var: name.to_string_lossy().into_owned(),
                message: "the name is not valid UTF-8".into(),
            });
        };
        let var = var.to_owned();
        let Some(raw) = raw.to_str() else {
            return Err(ConfigError::Env {
                var,
                message: "the value is not valid UTF-8 (not shown: it may be a secret)".into(),
            });
        };
        let rest = var.strip_prefix(ENV_PREFIX).unwrap_or_default();
        let path: Vec<String> = rest.split("__").map(str::to_ascii_lowercase).collect();
        if path.iter().any(String::is_empty) {
            return Err(ConfigError::Env { var, message: "has an empty key segment".into() });
        }
        insert_at(table, &path, env_value(raw))
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
        assert_eq!(config.mqtt.url, vec!["tcp://127.0.0.1:1883".to_owned()]);
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
        assert_eq!(config.mqtt.paho_urls(), vec!["tcp://broker:1883".to_owned()]);
        assert_eq!(config.aggregation.grace, Duration::from_millis(250));
        assert_eq!(config.aggregation.future_tolerance, None);
        assert_eq!(config.aggregation.default_timezone, chrono_tz::Europe::Paris);
        assert_eq!(config.aggregation.epoch_unit, EpochUnit::Ms);
        assert_eq!(config.database.batch_max_rows, 100);
        assert_eq!(config.mqtt.topics, vec!["a/+/t".to_owned(), "b/#".to_owned()]);
    }

    #[test]
    fn several_brokers_are_a_list_in_order() {
        let text = "[mqtt]\nurl = [\"mqtt://a:1883\", \"ssl://b:8883\"]\n";
        let config = load_from_str(text, "test", env(&[])).unwrap();
        assert_eq!(config.mqtt.paho_urls(), vec!["tcp://a:1883".to_owned(), "ssl://b:8883".to_owned()]);
        assert!(config.mqtt.uses_tls());
        // An environment variable carries them as one string, separated by commas.
        let config =
            load_from_str("", "test", env(&[("FLEETAGG__MQTT__URL", "tcp://a:1883, tcp://b:1883")])).unwrap();
        assert_eq!(config.mqtt.url, vec!["tcp://a:1883".to_owned(), "tcp://b:1883".to_owned()]);
        assert!(!config.mqtt.uses_tls());
        // Printed back: one URL as a string, several as an array, read back the same.
        let printed = config.to_toml();
        assert_eq!(load_from_str(&printed, "test", env(&[])).unwrap().mqtt.url, config.mqtt.url, "{printed}");
        let one = load_from_str("", "test", env(&[])).unwrap();
        assert!(one.to_toml().contains(r#"url = "tcp://127.0.0.1:1883""#), "{}", one.to_toml());
        // Every URL is checked, and an empty list is refused.
        for text in [
            "[mqtt]\nurl = [\"tcp://a:1883\", \"http://b\"]\n",
            "[mqtt]\nurl = []\n",
            "[mqtt]\nurl = \"tcp://\"\n",
            // Credentials belong in mqtt.username and [mqtt.password]: a URL is logged.
            "[mqtt]\nurl = [\"tcp://a:1883\", \"ssl://fleet:Zq7-s3cr3t@b:8883\"]\n",
        ] {
            let err = load_from_str(text, "test", env(&[])).unwrap_err();
            assert!(err.to_string().contains("mqtt.url") && !err.to_string().contains("Zq7"), "{err}");
        }
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

    /// A distinctive value: any error text containing it echoed an input value.
    const SECRET: &str = "Zq7-s3cr3t-Vx9";

    fn assert_quiet(err: &ConfigError, key: &str) {
        let text = err.to_string();
        assert!(!text.contains(SECRET) && !text.contains("918273645"), "a value was echoed: {text}");
        assert!(text.contains(key), "the error should name `{key}`: {text}");
    }

    #[test]
    fn a_password_where_a_secret_source_belongs_is_named_but_never_echoed() {
        for (section, var) in
            [("database", "FLEETAGG__DATABASE__PASSWORD"), ("mqtt", "FLEETAGG__MQTT__PASSWORD")]
        {
            let key = format!("{section}.password");
            let mqtt_user = if section == "mqtt" { "[mqtt]\nusername = \"u\"\n" } else { "" };
            for value in [SECRET, "918273645", "[\"Zq7-s3cr3t-Vx9\"]", "\"Zq7-s3cr3t-Vx9\""] {
                let err = load_from_str(mqtt_user, "test", env(&[(var, value)])).unwrap_err();
                assert_quiet(&err, &key);
                assert!(err.to_string().contains(var), "the variable should be named: {err}");
            }
            let user = if section == "mqtt" { "username = \"u\"\n" } else { "" };
            let text = format!("[{section}]\n{user}password = \"{SECRET}\"\n");
            let err = load_from_str(&text, "test", env(&[])).unwrap_err();
            assert_quiet(&err, &key);
            assert!(err.to_string().contains("secret source"), "say what belongs there: {err}");
        }
    }

    #[test]
    fn no_configuration_error_echoes_a_value() {
        let toml_cases = [
            ("[database.password]\nsource = \"Zq7-s3cr3t-Vx9\"\n", "database.password.source"),
            (
                "[database.password]\nsource = \"env\"\nvar = \"X\"\nrefresh_interval = \"Zq7-s3cr3t-Vx9\"\n",
                "database.password.refresh_interval",
            ),
            ("[database.password]\nsource = \"file\"\npath = 918273645\n", "database.password.path"),
            ("[mqtt]\nurl = \"Zq7-s3cr3t-Vx9\"\n", "mqtt.url"),
            ("[mqtt]\nurl = \"http://user:Zq7-s3cr3t-Vx9@host\"\n", "mqtt.url"),
            ("[mqtt]\nqos = 918273645\n", "mqtt.qos"),
            ("[mqtt]\nqos = \"Zq7-s3cr3t-Vx9\"\n", "mqtt.qos"),
            ("[mqtt]\ntopics = \"Zq7-s3cr3t-Vx9\"\n", "mqtt.topics"),
            ("[mqtt]\nusername = 918273645\n", "mqtt.username"),
            ("[aggregation]\ngrace = \"Zq7-s3cr3t-Vx9\"\n", "aggregation.grace"),
            ("[aggregation]\nfuture_tolerance = \"Zq7-s3cr3t-Vx9\"\n", "aggregation.future_tolerance"),
            ("[aggregation]\ndefault_timezone = \"Zq7-s3cr3t-Vx9\"\n", "aggregation.default_timezone"),
            ("[aggregation]\nepoch_unit = \"Zq7-s3cr3t-Vx9\"\n", "aggregation.epoch_unit"),
            ("[database]\nbatch_max_rows = -918273645\n", "database.batch_max_rows"),
            ("[database]\nurl = \"postgres://u@h:Zq7-s3cr3t-Vx9/db\"\n", "database.url"),
            ("[database]\nurl = \"host=h port=Zq7-s3cr3t-Vx9\"\n", "database.url"),
            ("[metrics]\nlisten = \"Zq7-s3cr3t-Vx9\"\n", "metrics.listen"),
        ];
        for (text, key) in toml_cases {
            let err = load_from_str(text, "test", env(&[])).unwrap_err();
            assert_quiet(&err, key);
        }
        let env_cases = [
            ("FLEETAGG__DATABASE__PASSWORD__SOURCE", SECRET, "database.password.source"),
            ("FLEETAGG__MQTT__KEEP_ALIVE", SECRET, "mqtt.keep_alive"),
            ("FLEETAGG__REJECTS__MAX_PER_SECOND", "-918273645", "rejects.max_per_second"),
            ("FLEETAGG__SERVICE__SHUTDOWN_TIMEOUT", "918273645", "service.shutdown_timeout"),
        ];
        for (var, value, key) in env_cases {
            let err = load_from_str("", "test", env(&[(var, value)])).unwrap_err();
            assert_quiet(&err, key);
            assert!(err.to_string().contains(var), "the variable should be named: {err}");
        }
    }

    #[test]
    fn a_toml_syntax_error_gives_its_place_but_not_the_line() {
        for text in [
            "[database]\nurl = \"postgres://u@h/db\"\npassword = \"Zq7-s3cr3t-Vx9\n",
            "[mqtt]\npassword = Zq7-s3cr3t-Vx9\n",
            "[mqtt]\nZq7-s3cr3t-Vx9\n",
        ] {
            let err = load_from_str(text, "fleetagg.toml", env(&[])).unwrap_err();
            assert_quiet(&err, "fleetagg.toml");
            assert!(err.to_string().contains("line"), "the error should give the line: {err}");
        }
    }

    #[test]
    fn non_utf8_variables_are_ignored_unless_ours_and_never_shown() {
        use std::ffi::OsString;
        use std::os::unix::ffi::OsStringExt;
        let not_utf8 = || OsString::from_vec(b"Zq7-s3cr3t-Vx9\xff".to_vec());
        let unrelated = vec![(OsString::from("SOME_OTHER_VAR"), not_utf8())];
        assert!(load_from_str("", "test", unrelated).is_ok());

        let ours = vec![(OsString::from("FLEETAGG__MQTT__CLIENT_ID"), not_utf8())];
        let err = load_from_str("", "test", ours).unwrap_err();
        assert_quiet(&err, "FLEETAGG__MQTT__CLIENT_ID");
        assert!(err.to_string().contains("UTF-8"), "{err}");

        let mut name = b"FLEETAGG__MQTT__".to_vec();
        name.push(0xff);
        let err =
            load_from_str("", "test", vec![(OsString::from_vec(name), OsString::from("x"))]).unwrap_err();
        assert!(err.to_string().contains("FLEETAGG__MQTT__") && err.to_string().contains("UTF-8"), "{err}");
    }

    #[test]
    fn threads_are_split_by_default_and_left_to_the_os_on_request() {
        let default = load_from_str("", "test", env(&[])).unwrap();
        assert_eq!(default.service.thread_placement, crate::ThreadPlacement::Split);
        let os = load_from_str("", "test", env(&[("FLEETAGG__SERVICE__THREAD_PLACEMENT", "os")])).unwrap();
        assert_eq!(os.service.thread_placement, crate::ThreadPlacement::Os);
        let err = load_from_str("[service]\nthread_placement = \"pinned\"\n", "test", env(&[])).unwrap_err();
        assert!(err.to_string().contains("thread_placement"), "{err}");
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
