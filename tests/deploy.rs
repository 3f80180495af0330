//! What deploy/ ships: Prometheus rules and config pass promtool; the
//! dashboard and alerts use only metrics wsgate exports; the Kubernetes
//! manifests and compose file parse and agree on ports, probes and paths;
//! every wsgate config in deploy/ validates. (No Docker engine runs here, so
//! the images themselves are not built by the tests.)

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use wsgate::{Config, ConfigSource};
use yaml_rust2::{Yaml, YamlLoader};

fn deploy(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("deploy")
        .join(path)
}

fn read(path: &str) -> String {
    std::fs::read_to_string(deploy(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn yaml(path: &str) -> Vec<Yaml> {
    YamlLoader::load_from_str(&read(path)).unwrap_or_else(|e| panic!("{path} is not YAML: {e}"))
}

fn promtool(args: &[&str]) {
    let out = Command::new("promtool").args(args).output().expect(
        "promtool is not installed: run scripts/test, which installs Debian's prometheus package",
    );
    assert!(
        out.status.success(),
        "promtool {args:?}:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn promtool_accepts_the_rules_and_the_scrape_config() {
    promtool(&[
        "check",
        "rules",
        deploy("prometheus/alerts.yml").to_str().unwrap(),
    ]);
    promtool(&[
        "check",
        "config",
        deploy("prometheus/prometheus.yml").to_str().unwrap(),
    ]);
}

/// Metric names in a PromQL expression (wsgate's and the process ones).
fn metric_names(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    let bytes = expr.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let starts = (bytes[i].is_ascii_alphabetic() || bytes[i] == b'_')
            && (i == 0
                || !(bytes[i - 1].is_ascii_alphanumeric()
                    || bytes[i - 1] == b'_'
                    || bytes[i - 1] == b'$'));
        if starts {
            let end = (i..bytes.len())
                .find(|&j| !(bytes[j].is_ascii_alphanumeric() || bytes[j] == b'_'))
                .unwrap_or(bytes.len());
            let word = &expr[i..end];
            if word.starts_with("wsgate_") || word.starts_with("process_") {
                names.push(word.to_owned());
            }
            i = end;
        } else {
            i += 1;
        }
    }
    names
}

/// Exported by wsgate: its own names (histograms also as _bucket, _sum,
/// _count) and the process metrics.
fn exported(name: &str) -> bool {
    const PROCESS: &[&str] = &[
        "process_cpu_seconds_total",
        "process_open_fds",
        "process_max_fds",
        "process_virtual_memory_bytes",
        "process_virtual_memory_max_bytes",
        "process_resident_memory_bytes",
        "process_start_time_seconds",
        "process_threads",
    ];
    let base = ["_bucket", "_sum", "_count"]
        .iter()
        .find_map(|s| name.strip_suffix(s))
        .unwrap_or(name);
    wsgate::metrics::ALL.contains(&name)
        || wsgate::metrics::ALL.contains(&base)
        || PROCESS.contains(&name)
}

#[test]
fn the_dashboard_and_alerts_use_only_exported_metrics() {
    let mut exprs = Vec::new();
    let dashboard: serde_json::Value =
        serde_json::from_str(&read("grafana/wsgate-dashboard.json")).unwrap();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            exprs.push(target["expr"].as_str().unwrap().to_owned());
        }
    }
    let dashboard_count = exprs.len();
    for group in yaml("prometheus/alerts.yml")[0]["groups"].as_vec().unwrap() {
        for rule in group["rules"].as_vec().unwrap() {
            exprs.push(rule["expr"].as_str().unwrap().to_owned());
        }
    }
    assert!(dashboard_count >= 10 && exprs.len() > dashboard_count);
    let mut used = 0;
    for expr in &exprs {
        for name in metric_names(expr) {
            assert!(
                exported(&name),
                "{name} (in `{expr}`) is not a metric wsgate exports"
            );
            used += 1;
        }
    }
    assert!(used > exprs.len() / 2, "the expressions name metrics");
    // The parser finds what it should.
    assert_eq!(
        metric_names("rate(wsgate_bytes_total[$__rate_interval]) + up"),
        ["wsgate_bytes_total"]
    );
}

#[test]
fn the_kubernetes_manifests_agree_on_ports_probes_and_paths() {
    let deployment = &yaml("k8s/deployment.yaml")[0];
    let container = &deployment["spec"]["template"]["spec"]["containers"][0];
    let ports: HashMap<&str, i64> = container["ports"]
        .as_vec()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["name"].as_str().unwrap(),
                p["containerPort"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(ports.get("wss"), Some(&8443));
    assert_eq!(ports.get("admin"), Some(&9090));
    assert_eq!(
        container["readinessProbe"]["httpGet"]["path"].as_str(),
        Some("/readyz")
    );
    assert_eq!(
        container["readinessProbe"]["httpGet"]["port"].as_str(),
        Some("admin")
    );
    assert_eq!(
        container["livenessProbe"]["httpGet"]["path"].as_str(),
        Some("/healthz")
    );
    assert!(
        container["lifecycle"]["preStop"]["exec"]["command"]
            .as_vec()
            .is_some()
    );
    assert_eq!(
        container["securityContext"]["readOnlyRootFilesystem"].as_bool(),
        Some(true)
    );
    let grace = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
        .as_i64()
        .unwrap();

    // The config the ConfigMap carries listens where the pod's ports say,
    // and lets the drain finish within the grace period.
    let configmap = &yaml("k8s/configmap.yaml")[0];
    let config = validate(configmap["data"]["wsgate.toml"].as_str().unwrap());
    assert_eq!(port(&config, "listen") as i64, ports["wss"]);
    assert_eq!(port(&config, "admin") as i64, ports["admin"]);
    assert!((drain_timeout(&config).as_secs() as i64) < grace);

    // Both Services point at named container ports that exist.
    let services = yaml("k8s/service.yaml");
    assert_eq!(services.len(), 2);
    let mut service_ports = HashMap::new();
    for service in &services {
        for port in service["spec"]["ports"].as_vec().unwrap() {
            let target = port["targetPort"].as_str().unwrap();
            assert!(ports.contains_key(target), "targetPort {target}");
            service_ports.insert(
                port["name"].as_str().unwrap().to_owned(),
                port["port"].as_i64().unwrap(),
            );
        }
    }
    assert_eq!(service_ports.get("wss"), Some(&443));
    let monitor = &yaml("k8s/servicemonitor.yaml")[0];
    let endpoint = &monitor["spec"]["endpoints"][0];
    assert_eq!(endpoint["path"].as_str(), Some("/metrics"));
    assert!(service_ports.contains_key(endpoint["port"].as_str().unwrap()));
    let admin_service = services
        .iter()
        .find(|s| s["metadata"]["name"].as_str() == Some("wsgate-admin"))
        .unwrap();
    for (k, v) in monitor["spec"]["selector"]["matchLabels"]
        .as_hash()
        .unwrap()
    {
        assert_eq!(&admin_service["metadata"]["labels"][k.as_str().unwrap()], v);
    }
    for file in ["k8s/pdb.yaml", "k8s/secret-example.yaml"] {
        assert!(yaml(file)[0]["kind"].as_str().is_some(), "{file}");
    }
}

#[test]
fn compose_prometheus_and_the_image_agree() {
    let compose = &yaml("docker-compose.yml")[0];
    let services = &compose["services"];
    for name in ["wsgate", "backend", "prometheus", "grafana"] {
        assert!(!services[name].is_badvalue(), "service {name}");
    }
    let wsgate = &services["wsgate"];
    assert_eq!(wsgate["ports"][0].as_str(), Some("8443:8443"));
    let admin = wsgate["environment"]["WSGATE__ADMIN__ADDR"]
        .as_str()
        .unwrap();
    let scrape = &yaml("prometheus/prometheus.yml")[0]["scrape_configs"][0];
    let target = scrape["static_configs"][0]["targets"][0].as_str().unwrap();
    assert_eq!(
        target.rsplit(':').next(),
        admin.rsplit(':').next(),
        "Prometheus scrapes the admin port"
    );
    assert_eq!(
        target.split(':').next(),
        Some("wsgate"),
        "by the compose service name"
    );
    // The compose config is valid, and its upstream is the backend service.
    let config = validate(&read("compose/wsgate.toml"));
    assert_eq!(port(&config, "listen"), 8443);
    let backend = read("example-backend/echo.py");
    assert!(backend.contains("9000") && read("compose/wsgate.toml").contains("ws://backend:9000"));
    // Grafana is provisioned with the dashboard and Prometheus.
    let provider = &yaml("grafana/provisioning/dashboards/wsgate.yml")[0];
    let mount = services["grafana"]["volumes"]
        .as_vec()
        .unwrap()
        .iter()
        .filter_map(Yaml::as_str)
        .collect::<Vec<_>>()
        .join(" ");
    assert!(
        mount.contains(
            provider["providers"][0]["options"]["path"]
                .as_str()
                .unwrap()
        )
    );
    let datasource = &yaml("grafana/provisioning/datasources/prometheus.yml")[0];
    assert_eq!(
        datasource["datasources"][0]["url"].as_str(),
        Some("http://prometheus:9090")
    );
    // The image probes the admin listener of the config it ships.
    let dockerfile = read("Dockerfile");
    let image_config = validate(&read("wsgate.toml"));
    assert!(dockerfile.contains(&format!(
        "http://127.0.0.1:{}/healthz",
        port(&image_config, "admin")
    )));
    assert!(dockerfile.contains("USER wsgate") && dockerfile.contains("cap_net_bind_service"));
    let unit = read("systemd/wsgate.service");
    assert!(
        unit.contains("AmbientCapabilities=CAP_NET_BIND_SERVICE")
            && unit.contains("DynamicUser=yes")
    );
}

/// Validate a config from deploy/, with its certificate paths pointed at
/// test certificates (the real ones are the operator's); returns the
/// effective config as `check-config` prints it (every key, defaults in).
fn validate(text: &str) -> toml::Table {
    let certs = common::certs(&["localhost"]);
    let env: HashMap<String, String> = [
        ("WSGATE__TLS__CERT", certs.cert.to_str().unwrap()),
        ("WSGATE__TLS__KEY", certs.key.to_str().unwrap()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    let config =
        Config::load(ConfigSource::Text(text), Some(env)).unwrap_or_else(|e| panic!("{e}\n{text}"));
    let effective = config.to_string();
    effective
        .parse()
        .unwrap_or_else(|e| panic!("{e}\n{effective}"))
}

/// The port of a listener (`listen` or `admin`) in an effective config.
fn port(config: &toml::Table, listener: &str) -> u16 {
    let addr = config[listener]["addr"].as_str().unwrap();
    addr.parse::<std::net::SocketAddr>().unwrap().port()
}

fn drain_timeout(config: &toml::Table) -> std::time::Duration {
    humantime::parse_duration(config["limits"]["drain_timeout"].as_str().unwrap()).unwrap()
}
