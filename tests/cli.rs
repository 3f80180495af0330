//! The binary's commands: check-config on the shipped file, on a broken
//! file, and with an environment override.

use std::process::Command;

fn wsgate(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_wsgate"))
        .args(args)
        .envs(env.iter().copied())
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn the_shipped_config_passes() {
    let (code, stdout, stderr) = wsgate(&["check-config", "--config", "config/wsgate.toml"], &[]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("addr = \"0.0.0.0:8443\""), "{stdout}");
    assert!(stdout.contains("kind = \"echo\""), "{stdout}");
    // With no --config the default path is used.
    let (code, _, stderr) = wsgate(&["check-config"], &[]);
    assert_eq!(code, 0, "{stderr}");
}

#[test]
fn a_broken_config_names_every_bad_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        r#"
        [listen]
        addr = "not-an-address"
        [tls]
        cert = "/nonexistent/cert.pem"
        key = "/nonexistent/key.pem"
        colour = "blue"
        [limits]
        handshake_timeout = "fortnight"
        max_message_size = "lots"
        [[routes]]
        path = "/x"
        kind = "teleport"
        "#,
    )
    .unwrap();
    let (code, stdout, stderr) = wsgate(&["check-config", "--config", path.to_str().unwrap()], &[]);
    assert_eq!(code, 64, "{stdout}{stderr}");
    for key in [
        "listen.addr",
        "tls.cert",
        "tls.key",
        "tls.colour: unknown key",
        "limits.handshake_timeout",
        "limits.max_message_size",
        "routes[0].kind",
    ] {
        assert!(stderr.contains(key), "{key} not named in:\n{stderr}");
    }
    // Running on it refuses to start, with the same report.
    let (code, _, stderr) = wsgate(&["--config", path.to_str().unwrap()], &[]);
    assert_eq!(code, 64);
    assert!(stderr.contains("listen.addr"), "{stderr}");
}

#[test]
fn an_environment_override_changes_a_value() {
    let (code, stdout, stderr) = wsgate(
        &["check-config"],
        &[
            ("WSGATE__LIMITS__MAX_CONNECTIONS", "7"),
            ("WSGATE__LIMITS__IDLE_TIMEOUT", "1m"),
        ],
    );
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("max_connections = 7"), "{stdout}");
    assert!(stdout.contains("idle_timeout = \"1m\""), "{stdout}");
    let (code, _, stderr) = wsgate(
        &["check-config"],
        &[("WSGATE__LIMITS__MAX_CONNECTIONS", "many")],
    );
    assert_eq!(code, 64);
    assert!(stderr.contains("limits.max_connections"), "{stderr}");
}
