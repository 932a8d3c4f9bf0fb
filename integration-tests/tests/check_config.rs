//! The binary's start-up with a hostile environment or a misplaced secret: it must not
//! crash on a variable that is not UTF-8, and no error may print a value that could be a
//! password. Each test runs the real `fleetagg` in a child process with a clean
//! environment and looks at everything it printed.

use fleetagg_integration_tests::{fleetagg_bin, unique};
use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::process::{Command, Output};

/// Distinctive values: finding one in the output means it was echoed.
const SECRET: &str = "Cc9-chk-s3cr3t-Qw4";
const NUMERIC_SECRET: &str = "740213958";

/// `SECRET` followed by a byte that is not UTF-8.
fn not_utf8_secret() -> OsString {
    let mut bytes = SECRET.as_bytes().to_vec();
    bytes.push(0xff);
    OsString::from_vec(bytes)
}

fn fleetagg(args: &[&str], env: &[(&str, OsString)]) -> Output {
    Command::new(fleetagg_bin())
        .args(args)
        .env_clear()
        .envs(env.iter().map(|(key, value)| (*key, value)))
        .output()
        .expect("run fleetagg")
}

/// Everything the process printed, as text (invalid bytes replaced).
fn printed(output: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr))
}

fn assert_no_secret(output: &Output) {
    let all = [output.stdout.as_slice(), output.stderr.as_slice()].concat();
    for secret in [SECRET, NUMERIC_SECRET] {
        let found = all.windows(secret.len()).any(|window| window == secret.as_bytes());
        assert!(!found, "fleetagg printed a secret ({secret}):\n{}", printed(output));
    }
}

fn config_file(text: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(unique("fleetagg_check_config"));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("fleetagg.toml");
    std::fs::write(&path, text).expect("write config");
    path
}

#[test]
fn a_variable_that_is_not_utf8_elsewhere_in_the_environment_is_ignored() {
    let output = fleetagg(&["check-config"], &[("UNRELATED_BINARY_VALUE", not_utf8_secret())]);
    assert_eq!(output.status.code(), Some(0), "{}", printed(&output));
    assert_no_secret(&output);
}

#[test]
fn a_fleetagg_variable_that_is_not_utf8_is_named_without_its_value() {
    let output = fleetagg(&["check-config"], &[("FLEETAGG__MQTT__CLIENT_ID", not_utf8_secret())]);
    assert_eq!(output.status.code(), Some(1), "a configuration error, not a crash: {}", printed(&output));
    let text = printed(&output);
    assert!(text.contains("FLEETAGG__MQTT__CLIENT_ID") && text.contains("UTF-8"), "{text}");
    assert_no_secret(&output);
}

#[test]
fn an_env_secret_source_that_is_not_utf8_is_named_without_its_value() {
    let config = config_file("[database.password]\nsource = \"env\"\nvar = \"FLEETAGG_IT_DB_PASSWORD\"\n");
    let config = config.to_str().expect("UTF-8 temp path");
    let output =
        fleetagg(&["migrate", "--config", config], &[("FLEETAGG_IT_DB_PASSWORD", not_utf8_secret())]);
    assert_eq!(output.status.code(), Some(1), "{}", printed(&output));
    let text = printed(&output);
    assert!(text.contains("FLEETAGG_IT_DB_PASSWORD") && text.contains("UTF-8"), "{text}");
    assert_no_secret(&output);
}

#[test]
fn a_password_in_a_fleetagg_variable_is_named_but_never_printed() {
    for (var, key) in
        [("FLEETAGG__DATABASE__PASSWORD", "database.password"), ("FLEETAGG__MQTT__PASSWORD", "mqtt.password")]
    {
        for value in [SECRET, NUMERIC_SECRET] {
            let output = fleetagg(
                &["check-config"],
                &[(var, value.into()), ("FLEETAGG__MQTT__USERNAME", "fleetagg".into())],
            );
            assert_eq!(output.status.code(), Some(1), "{}", printed(&output));
            let text = printed(&output);
            assert!(text.contains(key) && text.contains(var), "the key and variable are named: {text}");
            assert!(text.contains("secret source"), "the error says what belongs there: {text}");
            assert_no_secret(&output);
        }
    }
}

#[test]
fn a_password_in_the_config_file_is_named_but_never_printed() {
    for (text, key) in [
        (format!("[database]\npassword = \"{SECRET}\"\n"), "database.password"),
        (format!("[mqtt]\nusername = \"u\"\npassword = \"{SECRET}\"\n"), "mqtt.password"),
        (format!("[database.password]\nsource = \"{SECRET}\"\n"), "database.password.source"),
        // A syntax error on the secret's own line: toml's message quotes the line.
        (format!("[database]\npassword = \"{SECRET}\n"), "line 2"),
    ] {
        let config = config_file(&text);
        let output = fleetagg(&["check-config", "--config", config.to_str().expect("UTF-8 temp path")], &[]);
        assert_eq!(output.status.code(), Some(1), "{}", printed(&output));
        let all = printed(&output);
        assert!(all.contains(key), "the error names `{key}`: {all}");
        assert_no_secret(&output);
    }
}
