//! The deployment files in `deploy/` parse, and what they refer to exists: compose services and
//! mounted files, Prometheus targets, Grafana's data source and dashboard folder, Kubernetes
//! ConfigMaps, Secrets, labels and named ports, `ting serve` flags and environment variables,
//! and every metric the dashboard plots.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::TestServer;
use yaml_rust2::{Yaml, YamlLoader};

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

fn read(relative: &str) -> String {
    let path = deploy_dir().join(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn yaml_docs(relative: &str) -> Vec<Yaml> {
    let docs = YamlLoader::load_from_str(&read(relative))
        .unwrap_or_else(|e| panic!("{relative} is not valid YAML: {e}"));
    assert!(!docs.is_empty(), "{relative} is empty");
    docs
}

/// Every YAML file under `deploy/`, relative to it.
fn yaml_files() -> Vec<String> {
    fn walk(dir: &Path, base: &Path, out: &mut Vec<String>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, base, out);
            } else if matches!(
                path.extension().and_then(|e| e.to_str()),
                Some("yaml" | "yml")
            ) {
                out.push(path.strip_prefix(base).unwrap().display().to_string());
            }
        }
    }
    let mut files = Vec::new();
    walk(&deploy_dir(), &deploy_dir(), &mut files);
    files.sort();
    files
}

/// The flags and environment variables `ting serve` accepts, from its own `--help`.
fn serve_options() -> (BTreeSet<String>, BTreeSet<String>) {
    let help = Command::new(env!("CARGO_BIN_EXE_ting"))
        .args(["serve", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8(help.stdout).unwrap();
    let words = |prefix: &str| -> BTreeSet<String> {
        help.split(|c: char| !(c.is_ascii_alphanumeric() || c == '-' || c == '_'))
            .filter(|w| w.starts_with(prefix) && w.len() > prefix.len())
            .map(String::from)
            .collect()
    };
    let (flags, env) = (words("--"), words("TING_"));
    assert!(
        flags.contains("--redis") && env.contains("TING_REDIS_URL"),
        "{help}"
    );
    (flags, env)
}

fn assert_flags_known(what: &str, args: &[&str], flags: &BTreeSet<String>) {
    for arg in args.iter().filter(|a| a.starts_with("--")) {
        assert!(
            flags.contains(*arg),
            "{what}: `ting serve` has no flag {arg}"
        );
    }
}

/// A compose service with YAML merge keys (`<<: *anchor`) applied, as Compose does.
fn merged(service: &Yaml) -> HashMap<String, Yaml> {
    let mut out = HashMap::new();
    let Yaml::Hash(hash) = service else {
        return out;
    };
    if let Some(Yaml::Hash(base)) = hash.get(&Yaml::String("<<".into())) {
        for (k, v) in base {
            out.insert(k.as_str().unwrap().to_owned(), v.clone());
        }
    }
    for (k, v) in hash {
        let key = k.as_str().unwrap();
        if key == "<<" {
            continue;
        }
        if let (Some(Yaml::Hash(old)), Yaml::Hash(new)) = (out.get(key), v) {
            // `environment: {<<: *ting-env, …}`: merge one level deeper.
            let mut combined = old.clone();
            if let Some(Yaml::Hash(inner)) = new.get(&Yaml::String("<<".into())) {
                combined.extend(inner.clone());
            }
            combined.extend(
                new.iter()
                    .filter(|(k, _)| k.as_str() != Some("<<"))
                    .map(|(k, v)| (k.clone(), v.clone())),
            );
            out.insert(key.to_owned(), Yaml::Hash(combined));
        } else {
            out.insert(key.to_owned(), v.clone());
        }
    }
    out
}

fn strings(yaml: &Yaml) -> Vec<String> {
    match yaml {
        Yaml::Array(items) => items
            .iter()
            .filter_map(|i| i.as_str().map(String::from))
            .collect(),
        Yaml::String(s) => vec![s.clone()],
        _ => Vec::new(),
    }
}

fn hash_keys(yaml: &Yaml) -> Vec<String> {
    match yaml {
        Yaml::Hash(h) => h
            .keys()
            .filter_map(|k| k.as_str().map(String::from))
            .filter(|k| k != "<<")
            .collect(),
        _ => Vec::new(),
    }
}

#[test]
fn every_manifest_parses() {
    let files = yaml_files();
    assert!(files.len() >= 8, "{files:?}");
    for file in &files {
        yaml_docs(file);
    }
    serde_json::from_str::<serde_json::Value>(&read("grafana/dashboards/ting.json"))
        .expect("the dashboard is JSON");
}

#[test]
fn compose_prometheus_and_grafana_refer_to_what_exists() {
    let (_, env_vars) = serve_options();
    let compose = &yaml_docs("compose.yaml")[0];
    let services: HashMap<String, HashMap<String, Yaml>> = match &compose["services"] {
        Yaml::Hash(h) => h
            .iter()
            .map(|(k, v)| (k.as_str().unwrap().to_owned(), merged(v)))
            .collect(),
        other => panic!("no services: {other:?}"),
    };
    let mut http_ports = HashMap::new();
    let mut mounts = Vec::new();
    for (name, service) in &services {
        for dependency in service.get("depends_on").map(strings).unwrap_or_default() {
            assert!(
                services.contains_key(&dependency),
                "{name} depends on unknown {dependency}"
            );
        }
        for volume in service.get("volumes").map(strings).unwrap_or_default() {
            let mut parts = volume.split(':');
            let (source, target) = (parts.next().unwrap(), parts.next().unwrap());
            if let Some(relative) = source.strip_prefix("./") {
                assert!(
                    deploy_dir().join(relative).exists(),
                    "{name} mounts missing {source}"
                );
            } else {
                assert!(
                    !compose["volumes"][source].is_badvalue(),
                    "{name} mounts the undeclared volume {source}"
                );
            }
            mounts.push(target.to_owned());
        }
        let environment = service.get("environment").cloned().unwrap_or(Yaml::Null);
        for key in hash_keys(&environment) {
            if key.starts_with("TING_") {
                assert!(env_vars.contains(&key), "{name}: ting serve ignores {key}");
            }
        }
        if let Some(port) = environment["TING_HTTP_PORT"].as_str() {
            http_ports.insert(name.clone(), port.to_owned());
        }
    }
    assert_eq!(http_ports.len(), 3, "three ting nodes: {http_ports:?}");

    let prometheus = &yaml_docs("prometheus/prometheus.yml")[0];
    let targets = strings(&prometheus["scrape_configs"][0]["static_configs"][0]["targets"]);
    assert_eq!(targets.len(), 3);
    for target in targets {
        let (host, port) = target.split_once(':').unwrap();
        assert_eq!(
            http_ports.get(host).map(String::as_str),
            Some(port),
            "scrape target {target} is not a node's HTTP port"
        );
    }

    let datasource = &yaml_docs("grafana/provisioning/datasources/prometheus.yaml")[0];
    let uid = datasource["datasources"][0]["uid"].as_str().unwrap();
    let provider = &yaml_docs("grafana/provisioning/dashboards/ting.yaml")[0];
    let folder = provider["providers"][0]["options"]["path"]
        .as_str()
        .unwrap();
    assert!(
        mounts.iter().any(|m| m == folder),
        "Grafana reads dashboards from {folder}, which compose does not mount"
    );
    let dashboard: serde_json::Value =
        serde_json::from_str(&read("grafana/dashboards/ting.json")).unwrap();
    for panel in dashboard["panels"].as_array().unwrap() {
        assert_eq!(panel["datasource"]["uid"], uid, "{}", panel["title"]);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_dashboard_plots_metrics_that_exist() {
    let server = TestServer::start(Duration::from_secs(5)).await;
    let exposition = reqwest::get(server.url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    server.shutdown().await;
    let exported: BTreeSet<&str> = exposition
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    let dashboard: serde_json::Value =
        serde_json::from_str(&read("grafana/dashboards/ting.json")).unwrap();
    let mut plotted = BTreeSet::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap();
            for word in expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
                if word.starts_with("ting_") {
                    plotted.insert(word.to_owned());
                }
            }
        }
    }
    assert!(plotted.len() >= 8, "{plotted:?}");
    // Counters labelled by peer node appear with a node's first link; a single server has
    // none, so these are checked against the metric definitions instead.
    let per_peer = ["ting_relay_bytes_total", "ting_relay_packets_total"];
    let definitions = std::fs::read_to_string(deploy_dir().join("../sfu/src/metrics.rs")).unwrap();
    for metric in &plotted {
        let base = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| metric.strip_suffix(s))
            .unwrap_or(metric);
        let defined_per_peer =
            per_peer.contains(&base) && definitions.contains(&format!("\"{base}\""));
        assert!(
            exported.contains(base) || defined_per_peer,
            "the dashboard plots {metric}, which ting does not export ({exported:?})"
        );
    }
}

#[test]
fn kubernetes_references_resolve() {
    let (flags, env_vars) = serve_options();
    let mut objects = Vec::new();
    for file in yaml_files().iter().filter(|f| f.starts_with("kubernetes/")) {
        objects.extend(yaml_docs(file));
    }
    let named = |kind: &str| -> HashMap<String, Yaml> {
        objects
            .iter()
            .filter(|o| o["kind"].as_str() == Some(kind))
            .map(|o| {
                (
                    o["metadata"]["name"].as_str().unwrap().to_owned(),
                    o.clone(),
                )
            })
            .collect()
    };
    let (config_maps, secrets) = (named("ConfigMap"), named("Secret"));
    for (name, map) in &config_maps {
        for key in hash_keys(&map["data"]) {
            if key.starts_with("TING_") {
                assert!(
                    env_vars.contains(&key),
                    "ConfigMap {name}: ting serve ignores {key}"
                );
            }
        }
    }
    let workloads: Vec<&Yaml> = objects
        .iter()
        .filter(|o| {
            matches!(
                o["kind"].as_str(),
                Some("Deployment" | "DaemonSet" | "StatefulSet")
            )
        })
        .collect();
    assert!(workloads.len() >= 2);
    for workload in &workloads {
        let name = workload["metadata"]["name"].as_str().unwrap();
        let template = &workload["spec"]["template"];
        for (key, value) in match &workload["spec"]["selector"]["matchLabels"] {
            Yaml::Hash(h) => h.clone(),
            _ => panic!("{name}: no selector"),
        } {
            assert_eq!(
                template["metadata"]["labels"][key.as_str().unwrap()],
                value,
                "{name}: the selector does not match the pod labels"
            );
        }
        for container in template["spec"]["containers"].as_vec().unwrap() {
            let ports: Vec<&str> = container["ports"]
                .as_vec()
                .map(|p| p.iter().filter_map(|p| p["name"].as_str()).collect())
                .unwrap_or_default();
            for probe in ["readinessProbe", "livenessProbe"] {
                let port = &container[probe]["httpGet"]["port"];
                let port = if port.is_badvalue() {
                    &container[probe]["tcpSocket"]["port"]
                } else {
                    port
                };
                if let Some(port) = port.as_str() {
                    assert!(
                        ports.contains(&port),
                        "{name}: {probe} uses unknown port {port}"
                    );
                }
            }
            for from in container["envFrom"].as_vec().into_iter().flatten() {
                let map = from["configMapRef"]["name"].as_str().unwrap();
                assert!(config_maps.contains_key(map), "{name}: no ConfigMap {map}");
            }
            for env in container["env"].as_vec().into_iter().flatten() {
                let var = env["name"].as_str().unwrap();
                if name == "ting" {
                    assert!(env_vars.contains(var), "{name}: ting serve ignores {var}");
                }
                let secret = &env["valueFrom"]["secretKeyRef"];
                if let Some(secret_name) = secret["name"].as_str() {
                    let key = secret["key"].as_str().unwrap();
                    let defined = secrets
                        .get(secret_name)
                        .is_some_and(|s| !s["stringData"][key].is_badvalue());
                    assert!(defined, "{name}: no Secret {secret_name} with key {key}");
                }
            }
            if name == "ting" {
                let args: Vec<String> = strings(&container["args"]);
                assert_eq!(args.first().map(String::as_str), Some("serve"));
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                assert_flags_known("DaemonSet ting", &args, &flags);
            }
            for mount in container["volumeMounts"].as_vec().into_iter().flatten() {
                let volume = mount["name"].as_str().unwrap();
                let declared = template["spec"]["volumes"]
                    .as_vec()
                    .is_some_and(|v| v.iter().any(|d| d["name"].as_str() == Some(volume)));
                assert!(declared, "{name}: mounts undeclared volume {volume}");
            }
        }
    }
    for service in named("Service").values() {
        let name = service["metadata"]["name"].as_str().unwrap();
        let selector = match &service["spec"]["selector"] {
            Yaml::Hash(h) => h.clone(),
            _ => panic!("Service {name} selects nothing"),
        };
        let target = workloads.iter().find(|w| {
            selector.iter().all(|(k, v)| {
                w["spec"]["template"]["metadata"]["labels"][k.as_str().unwrap()] == *v
            })
        });
        let target = target.unwrap_or_else(|| panic!("Service {name} selects no workload"));
        let ports: Vec<&str> = target["spec"]["template"]["spec"]["containers"]
            .as_vec()
            .unwrap()
            .iter()
            .flat_map(|c| c["ports"].as_vec().into_iter().flatten())
            .filter_map(|p| p["name"].as_str())
            .collect();
        for port in service["spec"]["ports"].as_vec().unwrap() {
            if let Some(target_port) = port["targetPort"].as_str() {
                assert!(
                    ports.contains(&target_port),
                    "Service {name}: no port {target_port}"
                );
            }
        }
    }
}

#[test]
fn systemd_and_container_commands_use_real_flags() {
    let (flags, _) = serve_options();
    let unit = read("systemd/ting.service");
    let exec = unit
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .expect("ExecStart");
    let args: Vec<&str> = exec.split_whitespace().collect();
    assert_eq!(args.get(1), Some(&"serve"));
    assert_flags_known("ting.service", &args, &flags);

    let dockerfile = read("Dockerfile");
    let cmd = dockerfile
        .lines()
        .find_map(|l| l.strip_prefix("CMD "))
        .expect("CMD");
    let cmd: Vec<String> = serde_json::from_str(cmd).expect("CMD in exec form");
    let cmd: Vec<&str> = cmd.iter().map(String::as_str).collect();
    assert_eq!(cmd.first(), Some(&"serve"));
    assert_flags_known("Dockerfile", &cmd, &flags);
    for copied in ["web/package.json", "web/package-lock.json"] {
        assert!(dockerfile.contains(copied));
        assert!(deploy_dir().join("..").join(copied).exists(), "{copied}");
    }
}
