//! The whole loader: defaults, overrides, every problem with its key, and
//! `check-config` output that reads back as the same config.

use super::*;

fn load(text: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
    let env = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    Config::load(ConfigSource::Text(text), Some(env))
}

/// Load `text`, expect it refused, and check each of `keys` is named;
/// returns every key named.
fn assert_named(text: &str, keys: &[&str]) -> Vec<String> {
    let err = load(text, &[]).unwrap_err();
    let named: Vec<String> = err.issues.into_iter().map(|i| i.key).collect();
    for key in keys {
        assert!(
            named.iter().any(|n| n == key),
            "{key} missing from {named:?}"
        );
    }
    named
}

const MINIMAL: &str = r#"
    [tls]
    self_signed_if_missing = true
    cert = "/nonexistent/wsgate-test/cert.pem"
    key = "/nonexistent/wsgate-test/key.pem"
    [[routes]]
    path = "/echo"
    kind = "echo"
"#;

#[test]
fn defaults_apply() {
    let c = load(MINIMAL, &[]).unwrap();
    assert_eq!(c.listen.addr, DEFAULT_LISTEN_ADDR.parse().unwrap());
    assert_eq!(c.limits.max_connections, DEFAULT_MAX_CONNECTIONS);
    assert_eq!(c.limits.idle_timeout, Some(DEFAULT_IDLE_TIMEOUT));
    assert_eq!(c.routes[0].name, "/echo");
    assert!(c.dev_cert_needed());
}

#[test]
fn env_overrides_file() {
    let c = load(
        MINIMAL,
        &[
            ("WSGATE__LIMITS__MAX_CONNECTIONS", "7"),
            ("WSGATE__LISTEN__ADDR", "127.0.0.1:1"),
        ],
    )
    .unwrap();
    assert_eq!(c.limits.max_connections, 7);
    assert_eq!(c.listen.addr, "127.0.0.1:1".parse().unwrap());
}

#[test]
fn every_problem_is_listed_with_its_key() {
    let text = r#"
        [listen]
        addr = "nowhere"
        bogus = 1
        [tls]
        cert = "/nonexistent/a.pem"
        key = "/nonexistent/b.pem"
        [limits]
        idle_timeout = "soon"
        max_message_size = "12 parsecs"
        max_connections = 0
        [[routes]]
        path = "echo"
        kind = "teleport"
    "#;
    assert_named(
        text,
        &[
            "listen.bogus",
            "listen.addr",
            "tls.cert",
            "tls.key",
            "limits.idle_timeout",
            "limits.max_message_size",
            "limits.max_connections",
            "routes[0].path",
            "routes[0].kind",
        ],
    );
}

#[test]
fn frame_size_is_clamped_to_message_size() {
    let text = format!("{MINIMAL}\n[limits]\nmax_message_size = \"1KiB\"\n");
    let c = load(&text, &[]).unwrap();
    assert_eq!(c.limits.max_frame_size, 1024);
}

#[test]
fn duplicate_routes_are_refused() {
    let text =
        format!("{MINIMAL}\n[[routes]]\npath = \"/echo\"\nkind = \"echo\"\nname = \"other\"\n");
    let err = load(&text, &[]).unwrap_err();
    assert_eq!(err.issues[0].key, "routes[1].path");
}

#[test]
fn upstream_routes_validate_every_key() {
    let text = format!(
        "{MINIMAL}strip_prefix = true\n{}",
        r#"
        [[routes]]
        path = "/app"
        kind = "upstream"
        upstreams = ["http://x:1/", "ws://user:pw@x:1/", "wss://api.internal/ws"]
        balance = "random"
        backoff = "10s"
        backoff_max = "1s"
        tls_client_cert = "/nonexistent/c.pem"
        [[routes]]
        path = "/none"
        kind = "upstream"
    "#
    );
    let keys = assert_named(
        &text,
        &[
            "routes[0].strip_prefix",
            "routes[1].upstreams[0]",
            "routes[1].upstreams[1]",
            "routes[1].balance",
            "routes[1].backoff_max",
            "routes[1].tls_client_key",
            "routes[2].upstreams",
        ],
    );
    assert!(
        !keys.iter().any(|k| k == "routes[1].upstreams[2]"),
        "wss://api.internal/ws is valid"
    );
}

#[test]
fn shipped_config_is_valid_and_prints_back() {
    let c = Config::load(ConfigSource::Text(EMBEDDED_DEFAULT), Some(HashMap::new()))
        .expect("shipped config validates");
    let printed = c.to_string();
    // The printed form is itself a valid config with the same meaning
    // (cert paths aside, which may not exist in a test checkout).
    let again = load(
        &printed.replace(
            "self_signed_if_missing = false",
            "self_signed_if_missing = true",
        ),
        &[],
    );
    let again = again.expect("printed config parses");
    assert_eq!(again.routes, c.routes);
    assert_eq!(again.limits.max_message_size, c.limits.max_message_size);
}

#[test]
fn routes_of_one_namespace_name_their_clients_one_way() {
    let hub = |path: &str, extra: &str| {
        format!("[[routes]]\npath = \"{path}\"\nkind = \"hub\"\nnamespace = \"team\"\n{extra}\n")
    };
    let certs = |extra: &str| format!("{MINIMAL}{}{}", hub("/a", ""), hub("/b", extra));
    // The same way twice is fine.
    load(&certs(""), &[]).expect("two open routes may share a namespace");
    // An open route beside one whose clients a certificate names is not.
    assert_named(&certs("client_cert = true"), &["routes[2].namespace"]);
    assert_named(&certs("names = \"unique\""), &["routes[2].namespace"]);
}

#[test]
fn the_backplane_is_memory_unless_redis_is_configured_in_full() {
    let c = load(MINIMAL, &[]).unwrap();
    assert_eq!(c.hub.backplane, BackplaneConfig::Memory);
    let redis = format!(
        "{MINIMAL}\n[hub.backplane]\nkind = \"redis\"\nurl = \"rediss://app:s3cret@redis.internal:6380/2\"\nnode_ttl = \"3s\"\n"
    );
    let c = load(&redis, &[]).unwrap();
    let BackplaneConfig::Redis(r) = &c.hub.backplane else {
        panic!("redis expected: {:?}", c.hub.backplane);
    };
    assert_eq!(
        (r.prefix.as_str(), r.node_ttl, r.queue),
        (
            "wsgate",
            std::time::Duration::from_secs(3),
            DEFAULT_BACKPLANE_QUEUE
        )
    );
    let printed = c.to_string();
    assert!(!printed.contains("s3cret"), "the password is never printed");
    assert!(
        printed.contains("rediss://app:(set)@redis.internal:6380/2"),
        "{printed}"
    );
    // Each problem names its key.
    for (keys, named) in [
        ("kind = \"etcd\"", "hub.backplane.kind"),
        ("kind = \"redis\"", "hub.backplane.url"),
        ("kind = \"redis\"\nurl = \"http://x\"", "hub.backplane.url"),
        (
            "kind = \"redis\"\nurl_env = \"WSGATE_TEST_UNSET_VARIABLE\"",
            "hub.backplane.url_env",
        ),
        (
            "kind = \"redis\"\nurl = \"redis://x\"\nprefix = \"a{b}\"",
            "hub.backplane.prefix",
        ),
        (
            "kind = \"redis\"\nurl = \"redis://x\"\nnode_ttl = \"100ms\"",
            "hub.backplane.node_ttl",
        ),
        (
            "kind = \"memory\"\nurl = \"redis://x\"",
            "hub.backplane.url",
        ),
    ] {
        assert_named(&format!("{MINIMAL}\n[hub.backplane]\n{keys}\n"), &[named]);
    }
}

#[test]
fn compression_is_on_unless_a_route_turns_it_off() {
    let route = |kind: &str, keys: &str| {
        format!("{MINIMAL}\n[[routes]]\npath = \"/x\"\nkind = \"{kind}\"\n{keys}\n")
    };
    let upstream = |keys: &str| {
        route(
            "upstream",
            &format!("upstreams = [\"ws://127.0.0.1:1\"]\n{keys}"),
        )
    };
    let default = Some(Compression::On(Deflate {
        min_size: DEFAULT_COMPRESSION_MIN_SIZE,
        level: DEFAULT_COMPRESSION_LEVEL,
        context_takeover: false,
    }));
    for kind in ["hub", "echo"] {
        assert_eq!(
            load(&route(kind, ""), &[]).unwrap().routes[1].compression,
            default
        );
    }
    let c = load(&upstream(""), &[]).unwrap();
    assert_eq!(c.routes[1].compression, default);
    let RouteKind::Upstream(pool) = &c.routes[1].kind else {
        panic!("an upstream route");
    };
    assert_eq!(pool.upstream_compression, UpstreamCompression::Auto);
    let c = load(
        &route(
            "hub",
            "compression = \"on\"\ncompression_level = 6\ncompression_context_takeover = true",
        ),
        &[],
    )
    .unwrap();
    let six = Some(Compression::On(Deflate {
        min_size: DEFAULT_COMPRESSION_MIN_SIZE,
        level: 6,
        context_takeover: true,
    }));
    assert_eq!(c.routes[1].compression, six);
    // Printed as it is read, off as well as on.
    let reread = |c: &Config| {
        load(
            &c.to_string().replace(
                "self_signed_if_missing = false",
                "self_signed_if_missing = true",
            ),
            &[],
        )
        .unwrap()
    };
    assert_eq!(reread(&c).routes[1].compression, six);
    let c = load(
        &upstream("compression = \"off\"\nupstream_compression = \"always\""),
        &[],
    )
    .unwrap();
    assert_eq!(c.routes[1].compression, Some(Compression::Off));
    assert_eq!(c.routes[1].deflate(), None);
    let again = reread(&c);
    assert_eq!(again.routes[1].compression, Some(Compression::Off));
    assert!(
        matches!(&again.routes[1].kind, RouteKind::Upstream(u) if u.upstream_compression == UpstreamCompression::Always)
    );
    assert_named(
        &route("echo", "compression = \"yes\""),
        &["routes[1].compression"],
    );
    assert_named(
        &route("echo", "compression = \"on\"\ncompression_level = 10"),
        &["routes[1].compression_level"],
    );
    assert_named(
        &upstream("upstream_compression = \"sometimes\""),
        &["routes[1].upstream_compression"],
    );
}
