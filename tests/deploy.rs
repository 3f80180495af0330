//! What deploy/ ships: Prometheus rules and config pass promtool; the
//! dashboard and alerts use only metrics wsgate exports; the Kubernetes
//! manifests and compose files parse and agree on ports, probes and paths
//! (and HAProxy accepts the multi-node example's balancer); every wsgate
//! config in deploy/ validates, and several nodes serve a hub route only
//! over a Redis backplane. (No Docker engine runs here, so
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

/// Run a checker from a Debian package that scripts/test installs; it must
/// exit 0.
fn check_with(program: &str, package: &str, args: &[&str]) {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| {
            panic!("{program}: {e}: run scripts/test, which installs Debian's {package} package")
        });
    assert!(
        out.status.success(),
        "{program} {args:?}:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn promtool(args: &[&str]) {
    check_with("promtool", "prometheus", args);
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
    // and lets the drain finish within the grace period. Its Redis URL is
    // the one the pod's environment gets from the example secret.
    let configmap = &yaml("k8s/configmap.yaml")[0];
    let secrets = yaml("k8s/secret-example.yaml");
    let text = configmap["data"]["wsgate.toml"].as_str().unwrap();
    let config = validate(&with_url_from_env(text, container, &secrets));
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

    // Several replicas serve hub routes only as one hub, over Redis; node
    // drains leave some of them serving.
    let replicas = deployment["spec"]["replicas"].as_i64().unwrap();
    assert_eq!(replicas, 3);
    check_replicas(&config, replicas);
    let pdb = &yaml("k8s/pdb.yaml")[0];
    assert!(pdb["spec"]["maxUnavailable"].as_i64().unwrap() < replicas);
    assert_eq!(
        pdb["spec"]["selector"]["matchLabels"],
        deployment["spec"]["selector"]["matchLabels"]
    );

    // The example Redis: its Service is what the secret's URL names, selects
    // the Redis pods (and the public Service does not), and the server
    // requires the password the URL carries.
    let redis = yaml("k8s/redis-example.yaml");
    let redis_deployment = redis
        .iter()
        .find(|d| d["kind"].as_str() == Some("Deployment"))
        .unwrap();
    let redis_service = redis
        .iter()
        .find(|d| d["kind"].as_str() == Some("Service"))
        .unwrap();
    let pod_labels = &redis_deployment["spec"]["template"]["metadata"]["labels"];
    for (k, v) in redis_service["spec"]["selector"].as_hash().unwrap() {
        assert_eq!(
            &pod_labels[k.as_str().unwrap()],
            v,
            "Redis Service selector"
        );
    }
    assert_eq!(
        redis_deployment["spec"]["replicas"].as_i64(),
        Some(1),
        "one Redis"
    );
    let wsgate_selector = services[0]["spec"]["selector"].as_hash().unwrap();
    assert!(
        wsgate_selector
            .iter()
            .any(|(k, v)| &pod_labels[k.as_str().unwrap()] != v),
        "the wsgate Services must not select the Redis pods"
    );
    let redis_container = &redis_deployment["spec"]["template"]["spec"]["containers"][0];
    let redis_port = &redis_service["spec"]["ports"][0];
    assert!(
        redis_container["ports"]
            .as_vec()
            .unwrap()
            .iter()
            .any(|p| p["name"] == redis_port["targetPort"]),
        "the Redis Service's targetPort is a container port"
    );
    let url = secret_value(&secrets, "wsgate-redis", "url");
    assert_eq!(
        host_port(&url),
        format!(
            "{}:{}",
            redis_service["metadata"]["name"].as_str().unwrap(),
            redis_port["port"].as_i64().unwrap()
        )
    );
    let password = secret_value(&secrets, "wsgate-redis", "password");
    assert!(url.contains(&format!(":{password}@")));
    let args: Vec<&str> = redis_container["args"]
        .as_vec()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    let env_var = |name: &str| {
        redis_container["env"]
            .as_vec()
            .unwrap()
            .iter()
            .find(|e| e["name"].as_str() == Some(name))
            .map(|e| e["valueFrom"]["secretKeyRef"].clone())
    };
    let pass_arg = args[args.iter().position(|&a| a == "--requirepass").unwrap() + 1];
    let var = pass_arg
        .strip_prefix("$(")
        .and_then(|v| v.strip_suffix(')'))
        .expect("--requirepass $(VAR)");
    let from = env_var(var).expect("the password variable is set");
    assert_eq!(from["name"].as_str(), Some("wsgate-redis"));
    assert_eq!(from["key"].as_str(), Some("password"));
    assert!(
        args.windows(2)
            .any(|w| w == ["--maxmemory-policy", "noeviction"])
    );
}

/// A config in the file's own shape with `[hub.backplane] url_env` replaced
/// by the `url` that variable has in this container: the value of the
/// secret key its `secretKeyRef` names, in the example secrets. (The loader
/// reads that variable from the process's environment, which a test cannot
/// set for itself.)
fn with_url_from_env(text: &str, container: &Yaml, secrets: &[Yaml]) -> String {
    let mut table: toml::Table = text.parse().unwrap();
    let Some(backplane) = table
        .get_mut("hub")
        .and_then(|h| h.get_mut("backplane"))
        .and_then(toml::Value::as_table_mut)
    else {
        return text.to_owned();
    };
    let Some(var) = backplane.remove("url_env") else {
        return text.to_owned();
    };
    let var = var.as_str().unwrap();
    let from = container["env"]
        .as_vec()
        .unwrap()
        .iter()
        .find(|e| e["name"].as_str() == Some(var))
        .unwrap_or_else(|| panic!("url_env names {var}, which the container does not set"));
    let secret_ref = &from["valueFrom"]["secretKeyRef"];
    let url = secret_value(
        secrets,
        secret_ref["name"].as_str().unwrap(),
        secret_ref["key"].as_str().unwrap(),
    );
    backplane.insert("url".to_owned(), toml::Value::String(url));
    toml::to_string(&table).unwrap()
}

/// The decoded value of `key` in the example secret called `name`.
fn secret_value(secrets: &[Yaml], name: &str, key: &str) -> String {
    use base64::Engine;
    let secret = secrets
        .iter()
        .find(|s| s["metadata"]["name"].as_str() == Some(name))
        .unwrap_or_else(|| panic!("no example secret {name}"));
    let encoded = secret["data"][key]
        .as_str()
        .unwrap_or_else(|| panic!("secret {name} has no key {key}"));
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .unwrap();
    String::from_utf8(bytes).unwrap()
}

/// `HOST:PORT` of a `redis://[user:password@]host:port/db` URL.
fn host_port(url: &str) -> String {
    let rest = url.split_once("://").unwrap().1;
    let rest = rest.rsplit_once('@').map_or(rest, |(_, r)| r);
    rest.split('/').next().unwrap().to_owned()
}

/// More than one node may serve a hub route only when they share a Redis
/// backplane: with the memory one they would be separate hubs.
fn check_replicas(config: &toml::Table, nodes: i64) {
    let serves_hub = config["routes"]
        .as_array()
        .unwrap()
        .iter()
        .any(|r| r["kind"].as_str() == Some("hub"));
    if nodes > 1 && serves_hub {
        assert_eq!(
            config["hub"]["backplane"]["kind"].as_str(),
            Some("redis"),
            "{nodes} nodes serve a hub route without a shared backplane"
        );
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

#[test]
fn compose_scale_two_nodes_share_one_config_redis_and_a_balancer() {
    let compose = &yaml("docker-compose.scale.yml")[0];
    let services = &compose["services"];
    let nodes = ["wsgate-a", "wsgate-b"];
    for name in nodes.iter().chain(&["redis", "balancer"]) {
        assert!(!services[*name].is_badvalue(), "service {name}");
    }
    // The nodes are alike: image, command, mounts, environment.
    for key in ["build", "command", "volumes", "environment", "cap_add"] {
        assert_eq!(
            services["wsgate-a"][key], services["wsgate-b"][key],
            "{key}"
        );
    }
    let node = &services["wsgate-a"];
    let mounts: Vec<&str> = node["volumes"]
        .as_vec()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    let mounted = mounts
        .iter()
        .find_map(|m| m.strip_suffix(":/etc/wsgate/wsgate.toml:ro"))
        .expect("the config is mounted");
    let text = read(mounted.strip_prefix("./").unwrap());
    let config = validate(&text);
    check_replicas(&config, nodes.len() as i64);
    // The Redis URL names the compose service, on Redis's default port
    // (its command sets no other).
    let url = config["hub"]["backplane"]["url"].as_str().unwrap();
    assert_eq!(host_port(url), "redis:6379");
    let redis_args: Vec<&str> = services["redis"]["command"]
        .as_vec()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert!(!redis_args.contains(&"--port"));
    assert!(
        redis_args
            .windows(2)
            .any(|w| w == ["--maxmemory-policy", "noeviction"])
    );
    let admin = node["environment"]["WSGATE__ADMIN__ADDR"].as_str().unwrap();
    let admin_port: u16 = admin.rsplit(':').next().unwrap().parse().unwrap();
    assert_eq!(port(&config, "admin"), admin_port);

    // HAProxy: the published port is the one it binds; one server per node,
    // at the node's listen port, checked on /readyz at the admin port; and
    // haproxy itself accepts the file.
    let balancer = &services["balancer"];
    let cfg_mount = balancer["volumes"][0].as_str().unwrap();
    let cfg_path = cfg_mount
        .split(':')
        .next()
        .unwrap()
        .strip_prefix("./")
        .unwrap();
    let cfg = read(cfg_path);
    let published = balancer["ports"][0].as_str().unwrap();
    let bind_port = published.rsplit(':').next().unwrap();
    assert!(
        cfg.lines()
            .any(|l| l.trim() == format!("bind :{bind_port}")),
        "haproxy binds {bind_port}"
    );
    assert_eq!(published, "8443:8443");
    let servers: Vec<&str> = cfg
        .lines()
        .filter_map(|l| l.trim().strip_prefix("server "))
        .map(|l| l.split_whitespace().nth(1).unwrap())
        .collect();
    let expected: Vec<String> = nodes
        .iter()
        .map(|n| format!("{n}:{}", port(&config, "listen")))
        .collect();
    assert_eq!(servers, expected);
    assert!(cfg.contains(&format!("check port {admin_port}")));
    assert!(cfg.contains("uri /readyz"));
    assert!(cfg.lines().any(|l| l.trim() == "mode tcp"));
    check_with(
        "haproxy",
        "haproxy",
        &["-c", "-f", deploy(cfg_path).to_str().unwrap()],
    );
}

#[test]
fn every_wsgate_config_file_in_deploy_validates() {
    let mut found = Vec::new();
    let mut dirs = vec![deploy("")];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "toml") {
                validate(&std::fs::read_to_string(&path).unwrap());
                found.push(path);
            }
        }
    }
    // deploy/wsgate.toml, compose/wsgate.toml, compose/wsgate-scale.toml
    // (the Kubernetes one is in configmap.yaml, checked above).
    assert!(found.len() >= 3, "{found:?}");
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
