//! docker/ without a Docker engine: the compose file, prometheus.yml and the Grafana
//! provisioning parse as YAML and agree with each other and with autolb's config; the
//! Dockerfile is multi-stage, non-root, with a HEALTHCHECK; the Grafana dashboard and the
//! alert rules ask only for metrics (and labels) that a running autolb really exports, and
//! the rules pass their `promtool test rules` unit tests; `autolb check` accepts the config
//! the compose file mounts. The image's build step (docker/build-binaries, the same
//! profile) really runs, and so does the image's command (tini, autolb, its built-in
//! config): it serves on its own and stops cleanly. The systemd unit: tests/systemd.rs.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use common::prom::{exported, label_names, metric_names, TARGET_LABELS};
use serde_json::Value;

fn docker(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("docker")
        .join(rel)
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn yaml(rel: &str) -> Value {
    let path = docker(rel);
    serde_saphyr::from_str::<Value>(&read(&path))
        .unwrap_or_else(|e| panic!("{}: invalid YAML: {e}", path.display()))
}

fn compose() -> Value {
    yaml("docker-compose.yml")
}

/// The host path and container path of a `SRC:DST[:ro]` volume of `service`, whose source
/// ends with `suffix`.
fn mount(service: &Value, suffix: &str) -> (PathBuf, String) {
    service["volumes"]
        .as_array()
        .expect("volumes")
        .iter()
        .filter_map(Value::as_str)
        .find_map(|v| {
            let mut parts = v.split(':');
            let (src, dst) = (parts.next()?, parts.next()?);
            src.ends_with(suffix)
                .then(|| (docker(src), dst.to_string()))
        })
        .unwrap_or_else(|| panic!("no volume ending in {suffix}"))
}

/// The validated config the compose file mounts into the autolb container.
fn mounted_config() -> (PathBuf, autolb::config::Config) {
    let c = compose();
    let (path, target) = mount(&c["services"]["autolb"], "autolb.yaml");
    assert_eq!(target, "/etc/autolb/autolb.yaml");
    let config = autolb::tls::config_files::load(&path).unwrap_or_else(|e| panic!("{e}"));
    (path, config)
}

#[test]
fn the_compose_file_wires_autolb_apps_prometheus_and_grafana() {
    let c = compose();
    let services = c["services"].as_object().expect("services");
    for s in ["autolb", "app1", "app2", "app3", "prometheus", "grafana"] {
        assert!(services.contains_key(s), "service {s}");
    }
    let lb = &c["services"]["autolb"];
    assert_eq!(lb["build"]["dockerfile"], "docker/Dockerfile");
    let context = docker(lb["build"]["context"].as_str().expect("context"));
    assert!(
        context.join("Cargo.toml").is_file(),
        "the build context is the repository"
    );
    // Every bind-mounted source exists.
    for (name, s) in services {
        for v in s["volumes"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
        {
            let src = v.split(':').next().unwrap_or_default();
            if src.starts_with('.') {
                assert!(docker(src).exists(), "{name}: {src} does not exist");
            }
        }
    }
    // The app containers are the `apps` pool's backends, by their fixed addresses, and the
    // merge key gave each the shared settings.
    let (_, config) = mounted_config();
    let apps = config
        .pools
        .iter()
        .find(|p| p.name == "apps")
        .expect("pool apps");
    let wanted: BTreeSet<String> = apps.backends.iter().map(|b| b.addr.to_string()).collect();
    let mut have = BTreeSet::new();
    for name in ["app1", "app2", "app3"] {
        let s = &c["services"][name];
        assert_eq!(s["entrypoint"][0], "/usr/local/bin/autolb-echo", "{name}");
        let ip = s["networks"]["autolb"]["ipv4_address"]
            .as_str()
            .expect("ip");
        let args: Vec<&str> = s["command"]
            .as_array()
            .expect("command")
            .iter()
            .filter_map(Value::as_str)
            .collect();
        let port = args
            .windows(2)
            .find(|w| w[0] == "--port")
            .map(|w| w[1])
            .expect("--port");
        assert!(
            args.windows(2).any(|w| w == ["--host", "0.0.0.0"]),
            "{name} listens on all addresses"
        );
        have.insert(format!("{ip}:{port}"));
        assert!(
            s["healthcheck"]["test"].to_string().contains("/health"),
            "{name}"
        );
    }
    assert_eq!(have, wanted);
    // Published ports are the config's listeners and admin port.
    let published: Vec<String> = lb["ports"]
        .as_array()
        .expect("ports")
        .iter()
        .filter_map(|p| p.as_str().map(str::to_string))
        .collect();
    let mut ports: Vec<u16> = config.listeners.iter().map(|l| l.listen.port()).collect();
    ports.push(config.admin.listen.port());
    for port in ports {
        assert!(
            published.iter().any(|p| p.ends_with(&format!(":{port}"))),
            "port {port} published: {published:?}"
        );
    }
    // Secrets come from .env; every variable used has a line in .env.example.
    let text = read(&docker("docker-compose.yml"));
    let example = read(&docker(".env.example"));
    let defined: BTreeSet<&str> = example
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .filter_map(|l| l.split_once('=').map(|(k, _)| k.trim()))
        .collect();
    for var in text
        .split("${")
        .skip(1)
        .filter_map(|rest| rest.split(['}', ':', '-', '?']).next())
    {
        assert!(
            defined.contains(var),
            "{var} is used by docker-compose.yml but not in .env.example"
        );
    }
    assert!(
        lb["environment"]["AUTOLB_ADMIN_TOKEN"]
            .as_str()
            .is_some_and(|v| v.contains(":?")),
        "the token is required"
    );
    assert_eq!(
        config.admin.token_env.as_deref(),
        Some("AUTOLB_ADMIN_TOKEN"),
        "the admin listens beyond loopback: a token"
    );
}

#[test]
fn autolb_check_accepts_the_mounted_config() {
    let (path, config) = mounted_config();
    // As compose runs it: with the admin token in the environment.
    let out = std::process::Command::new(common::AUTOLB)
        .arg("check")
        .arg(&path)
        .env("AUTOLB_ADMIN_TOKEN", "compose-token")
        .output()
        .expect("autolb check");
    let (code, out, err) = (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    assert_eq!(code, 0, "stdout: {out}\nstderr: {err}");
    assert!(out.contains(": ok:"), "{out}");
    assert!(
        config.pools.iter().any(|p| p.autoscale.is_some()),
        "an autoscaled pool"
    );
}

#[test]
fn the_dockerfile_is_multi_stage_non_root_with_a_healthcheck() {
    let text = read(&docker("Dockerfile"));
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#'))
        .collect();
    let froms: Vec<usize> = lines
        .iter()
        .enumerate()
        .filter(|(_, l)| l.starts_with("FROM "))
        .map(|(i, _)| i)
        .collect();
    assert!(froms.len() >= 2, "multi-stage");
    let last = &lines[froms[froms.len() - 1]..];
    assert!(
        last.iter().any(|l| l.starts_with("COPY --from=build")),
        "binaries from the build stage"
    );
    let user = last
        .iter()
        .rev()
        .find_map(|l| l.strip_prefix("USER "))
        .expect("USER in the final stage");
    assert!(
        !matches!(user.split(':').next(), Some("root" | "0")),
        "non-root: {user}"
    );
    let (_, config) = mounted_config();
    let admin = config.admin.listen.port();
    let health = text.split("\nHEALTHCHECK ").nth(1).expect("HEALTHCHECK");
    let health = health.split("\nENTRYPOINT").next().unwrap_or(health);
    assert!(
        health.contains(&format!("127.0.0.1:{admin}/health")),
        "{health}"
    );
    let exposed: Vec<u16> = lines
        .iter()
        .filter_map(|l| l.strip_prefix("EXPOSE "))
        .flat_map(|l| l.split_whitespace())
        .filter_map(|p| p.parse().ok())
        .collect();
    for l in &config.listeners {
        assert!(
            exposed.contains(&l.listen.port()),
            "EXPOSE {}",
            l.listen.port()
        );
    }
    assert!(exposed.contains(&admin));
    assert!(
        text.contains("\"/etc/autolb/autolb.yaml\""),
        "runs the mounted config"
    );
    let build = read(&docker("build-binaries"));
    assert!(
        text.contains("docker/build-binaries /out") && build.contains("--locked"),
        "builds with docker/build-binaries, from Cargo.lock"
    );
    // Only the stripped binaries go into the image, not their debug info.
    assert!(
        last.iter()
            .all(|l| !l.starts_with("COPY --from=build") || !l.contains("/out/debug")),
        "no debug info in the image"
    );
    assert!(docker("Dockerfile.dockerignore").is_file());
}

#[test]
fn prometheus_scrapes_the_admin_port_of_the_autolb_service() {
    let p = yaml("prometheus.yml");
    let job = p["scrape_configs"]
        .as_array()
        .expect("scrape_configs")
        .iter()
        .find(|j| j["job_name"] == "autolb")
        .expect("job autolb");
    assert_eq!(job["metrics_path"], "/metrics");
    let (_, config) = mounted_config();
    let target = format!("autolb:{}", config.admin.listen.port());
    assert_eq!(job["static_configs"][0]["targets"][0], target.as_str());
    // The admin API answers only to IPs, localhost and AUTOLB_ADMIN_HOSTS (421 otherwise).
    let hosts = compose()["services"]["autolb"]["environment"]["AUTOLB_ADMIN_HOSTS"].clone();
    assert!(
        hosts
            .as_str()
            .is_some_and(|h| h.split(',').any(|h| h.trim() == "autolb")),
        "AUTOLB_ADMIN_HOSTS must name autolb for Prometheus: {hosts}"
    );
    assert!(compose()["services"]["prometheus"]["volumes"]
        .to_string()
        .contains("./prometheus.yml:/etc/prometheus/prometheus.yml"));
    // /metrics needs the read token: Prometheus reads it from the Compose secret made from
    // the variable the mounted config names.
    let var = config
        .admin
        .read_token_env
        .clone()
        .expect("the admin listens beyond loopback: a read token");
    assert_eq!(job["authorization"]["type"], "Bearer");
    let file = job["authorization"]["credentials_file"]
        .as_str()
        .expect("credentials_file");
    let secret = file
        .strip_prefix("/run/secrets/")
        .expect("a Compose secret");
    let c = compose();
    assert_eq!(c["secrets"][secret]["environment"], var.as_str());
    assert!(
        c["services"]["prometheus"]["secrets"]
            .as_array()
            .is_some_and(|s| s.iter().any(|s| s == secret)),
        "the prometheus service mounts {secret}"
    );
    assert!(
        c["services"]["autolb"]["environment"][var.as_str()]
            .as_str()
            .is_some_and(|v| v.contains(":?")),
        "{var} is required"
    );
}

#[test]
fn grafana_is_provisioned_from_files() {
    let c = compose();
    let g = &c["services"]["grafana"];
    let (provisioning, at) = mount(g, "grafana/provisioning");
    assert_eq!(at, "/etc/grafana/provisioning");
    let (dashboards, dash_at) = mount(g, "grafana/dashboards");
    let ds = yaml("grafana/provisioning/datasources/prometheus.yml");
    let uid = ds["datasources"][0]["uid"]
        .as_str()
        .expect("datasource uid");
    assert_eq!(ds["datasources"][0]["url"], "http://prometheus:9090");
    let provider = yaml("grafana/provisioning/dashboards/autolb.yml");
    assert_eq!(
        provider["providers"][0]["options"]["path"],
        dash_at.as_str()
    );
    assert!(provisioning.join("dashboards/autolb.yml").is_file());
    let dash = dashboard(&dashboards.join("autolb.json"));
    // Every datasource reference is the provisioned one.
    let mut refs = Vec::new();
    collect(&dash, &mut |k, v| {
        if k == "datasource" {
            refs.push(v["uid"].as_str().unwrap_or_default().to_string());
        }
    });
    assert!(
        !refs.is_empty() && refs.iter().all(|r| r == uid),
        "{refs:?}"
    );
    let ids: Vec<u64> = dash["panels"]
        .as_array()
        .expect("panels")
        .iter()
        .filter_map(|p| p["id"].as_u64())
        .collect();
    let unique: BTreeSet<u64> = ids.iter().copied().collect();
    assert_eq!(unique.len(), ids.len(), "unique panel ids");
    assert_eq!(dash["uid"], "autolb-overview");
}

fn dashboard(path: &Path) -> Value {
    serde_json::from_str(&read(path)).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Calls `f(key, value)` for every key of every object in `v`.
fn collect(v: &Value, f: &mut impl FnMut(&str, &Value)) {
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                f(k, x);
                collect(x, f);
            }
        }
        Value::Array(a) => a.iter().for_each(|x| collect(x, f)),
        _ => {}
    }
}

/// The PromQL of the dashboard: targets, annotations and variables.
fn queries(dash: &Value) -> Vec<String> {
    let mut out = Vec::new();
    collect(dash, &mut |k, v| match (k, v) {
        ("expr" | "definition", Value::String(s)) => out.push(s.clone()),
        ("query", Value::Object(q)) => {
            out.extend(q.get("query").and_then(Value::as_str).map(str::to_string))
        }
        _ => {}
    });
    out
}

#[tokio::test]
async fn the_grafana_dashboard_uses_only_metrics_autolb_exports() {
    // Everything the dashboard can show: an https listener (TLS metrics), a static pool
    // that served a request, and an autoscaled pool (instances, scaling events).
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = common::tls::TestCa::new("docker test CA");
    let (cert, key) = ca.issue(&["localhost"]).write(dir.path(), "site");
    let a = common::echo("a");
    let base = 28_000 + (std::process::id() % 100) as u16 * 10;
    let yaml = format!(
        "threads: 1
admin: {{ listen: \"127.0.0.1:0\" }}
listeners:
  - {{ name: web, listen: \"127.0.0.1:0\", protocol: http, pool: web }}
  - name: secure
    listen: \"127.0.0.1:0\"
    protocol: https
    pool: web
    tls:
      certificates:
        - {{ cert: {cert:?}, key: {key:?} }}
pools:
  web:
    backends:
{list}  auto:
    autoscale:
      command: [\"{echo}\", --port, \"{{port}}\"]
      ports: {lo}-{hi}
      min: 1
      max: 2
      interval: 300ms
      target: {{ inflight_per_instance: 10 }}
",
        list = common::backend_list(&[a.addr], ""),
        echo = common::ECHO,
        lo = base,
        hi = base + 9,
    );
    let lb = common::Autolb::start(&yaml);
    assert_eq!(common::get(lb.addr("web"), "/").await.status, 200);
    let text = common::wait_until(20, "scaling metrics", || async {
        let t = common::get(lb.admin, "/metrics").await.text();
        t.contains("autolb_scaling_events_total{").then_some(t)
    })
    .await;
    let (names, labels) = exported(&text);
    let check = |what: &str, q: &str, used: &mut BTreeSet<String>| {
        for m in metric_names(q) {
            assert!(
                names.contains(&m),
                "{what} queries {m}, which autolb does not export\n{q}"
            );
            used.insert(m);
        }
        for l in label_names(q) {
            assert!(
                l == "le" || TARGET_LABELS.contains(&l.as_str()) || labels.contains(&l),
                "{what}: label {l:?} is not exported\n{q}"
            );
        }
    };
    let dash = dashboard(&docker("grafana/dashboards/autolb.json"));
    let queries = queries(&dash);
    assert!(queries.len() >= 15, "{} queries", queries.len());
    let mut used = BTreeSet::new();
    for q in &queries {
        check("the dashboard", q, &mut used);
        // Several autolb nodes: every panel follows the `instance` variable.
        if !q.starts_with("label_values(") {
            assert!(
                q.contains("instance=~\"$instance\""),
                "no $instance filter:\n{q}"
            );
        }
    }
    // And the contract's metrics all have a panel.
    for m in [
        "autolb_requests_total",
        "autolb_request_duration_seconds_bucket",
        "autolb_backend_up",
        "autolb_backend_active_requests",
        "autolb_pool_instances",
        "autolb_scaling_events_total",
        "autolb_config_reloads_total",
        "autolb_downstream_connections",
        "autolb_tls_certificate_expiry_timestamp_seconds",
        "autolb_autoscale_desired_instances",
        "autolb_autoscale_signal",
        "autolb_retries_total",
        "autolb_outlier_ejections_total",
        "autolb_health_checks_total",
        "autolb_request_bytes_total",
        "autolb_response_bytes_total",
        "autolb_backend_response_seconds_bucket",
    ] {
        assert!(used.contains(m), "no panel shows {m}");
    }
    let vars = dash["templating"]["list"].as_array().expect("variables");
    assert!(
        vars.iter().any(|v| v["name"] == "instance"),
        "an instance variable"
    );

    // The alert rules too.
    let rules = self::yaml("prometheus/alerts.yml");
    let mut alerted = BTreeSet::new();
    for r in rules["groups"][0]["rules"].as_array().expect("rules") {
        let expr = r["expr"].as_str().expect("expr");
        check(&format!("alert {}", r["alert"]), expr, &mut alerted);
    }
    assert!(alerted.len() >= 10, "{alerted:?}");
}

#[test]
fn prometheus_loads_the_alert_rules_and_they_pass_their_unit_tests() {
    let p = yaml("prometheus.yml");
    let files = p["rule_files"].as_array().expect("rule_files");
    assert_eq!(files[0], "/etc/prometheus/alerts.yml");
    let (rules, at) = mount(&compose()["services"]["prometheus"], "alerts.yml");
    assert_eq!(at, "/etc/prometheus/alerts.yml");
    assert_eq!(rules, docker("./prometheus/alerts.yml"));
    let Some(promtool) = common::prom::promtool_or_skip("promtool test rules") else {
        return;
    };
    let dir = docker("prometheus");
    let (ok, said) = common::prom::run(&promtool, &["check", "rules", "alerts.yml"], &dir, "");
    assert!(
        ok && said.contains("SUCCESS"),
        "promtool check rules:\n{said}"
    );
    let (ok, said) = common::prom::run(&promtool, &["test", "rules", "alerts.test.yml"], &dir, "");
    assert!(
        ok && said.contains("SUCCESS"),
        "promtool test rules:\n{said}"
    );
}

/// The Dockerfile's instructions of its last stage (`run`), and the build stage's ARGs.
struct Image {
    profile: String,
    entrypoint: Vec<String>,
    cmd: Vec<String>,
    env: Vec<(String, String)>,
    /// `COPY SRC DST` of the repository's files into the image.
    copies: Vec<(String, String)>,
}

fn image() -> Image {
    let text = read(&docker("Dockerfile"));
    let stages: Vec<&str> = text.split("\nFROM ").collect();
    let build = stages
        .iter()
        .find(|s| s.contains(" AS build"))
        .expect("a build stage");
    let profile = build
        .lines()
        .find_map(|l| l.strip_prefix("ARG PROFILE="))
        .expect("ARG PROFILE=")
        .to_string();
    assert!(build.contains("PROFILE=${PROFILE}"), "the build uses it");
    let run = stages.last().expect("a run stage");
    let json = |key: &str| -> Vec<String> {
        let line = run
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .unwrap_or_else(|| panic!("{key}"));
        serde_json::from_str(line).unwrap_or_else(|e| panic!("{key}{line}: {e}"))
    };
    let env = run
        .lines()
        .filter_map(|l| l.strip_prefix("ENV "))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let copies = run
        .lines()
        .filter_map(|l| l.strip_prefix("COPY "))
        .filter(|l| !l.starts_with("--"))
        .filter_map(|l| l.split_once(' '))
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
    Image {
        profile,
        entrypoint: json("ENTRYPOINT "),
        cmd: json("CMD "),
        env,
        copies,
    }
}

fn sections(file: &Path) -> String {
    let out = std::process::Command::new("readelf")
        .args(["-S", "-W"])
        .arg(file)
        .output()
        .expect("readelf (binutils)");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_image_builds_and_its_command_serves_on_its_own() {
    let image = image();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    // The build stage's step, with the same profile. Its own target directory: the one of
    // `cargo test` is locked while tests run; kept between runs, so a rerun builds only
    // what changed.
    let out = tempfile::tempdir().expect("tempdir");
    let status = std::process::Command::new(docker("build-binaries"))
        .arg(out.path())
        .env("PROFILE", &image.profile)
        .env("CARGO_TARGET_DIR", root.join("target/docker-build"))
        .status()
        .expect("docker/build-binaries");
    assert!(status.success(), "docker/build-binaries failed");
    let bin = out.path().join("bin");
    for b in ["autolb", "autolb-echo"] {
        // DWARF sections (.debug_gdb_scripts is no debug info: rustc's pointer to its gdb
        // pretty-printers, loaded with the program).
        let shipped = sections(&bin.join(b));
        let dwarf: Vec<&str> = shipped
            .split_whitespace()
            .filter(|w| w.starts_with(".debug_") && *w != ".debug_gdb_scripts")
            .collect();
        assert!(
            dwarf.is_empty(),
            "{b} ships debug info {dwarf:?}:\n{shipped}"
        );
        assert!(
            shipped.contains(".gnu_debuglink"),
            "{b} names its debug file"
        );
        let debug = sections(&out.path().join("debug").join(format!("{b}.debug")));
        assert!(
            debug.contains(".debug_line"),
            "{b}.debug has the line tables"
        );
    }
    let version = std::process::Command::new(bin.join("autolb"))
        .arg("version")
        .output()
        .expect("version");
    let version = String::from_utf8_lossy(&version.stdout);
    assert!(
        version.contains(&format!("build profile: {}\n", image.profile)),
        "{version}"
    );

    // The image's command, its paths mapped: the binaries, the built-in config (its ports
    // moved to free loopback ones), tini when it is installed (.ci/run installs it).
    let (web, admin) = (common::redis::free_port(), common::redis::free_port());
    let base = 27_000 + (std::process::id() % 100) as u16 * 10;
    let (src, _) = image
        .copies
        .iter()
        .find(|(_, dst)| dst == "/etc/autolb/autolb.yaml")
        .expect("the built-in config is copied in");
    let yaml = std::fs::read_to_string(root.join(src))
        .expect("built-in config")
        .replace("0.0.0.0:8080", &format!("127.0.0.1:{web}"))
        .replace("127.0.0.1:9001", &format!("127.0.0.1:{admin}"))
        .replace("3100-3199", &format!("{base}-{}", base + 9));
    let etc = out.path().join("etc");
    std::fs::create_dir(&etc).expect("mkdir");
    let config = etc.join("autolb.yaml");
    std::fs::write(&config, yaml).expect("write");
    let tini = which("tini");
    let mut argv: Vec<String> = image.entrypoint.iter().chain(&image.cmd).cloned().collect();
    if tini.is_none() {
        eprintln!("NOTE: tini is not installed: running the image's command without it");
        assert_eq!(argv[..2], ["/usr/bin/tini", "--"]);
        argv.drain(..2);
    }
    let argv: Vec<String> = argv
        .into_iter()
        .map(|a| match a.as_str() {
            "/usr/bin/tini" => tini.clone().unwrap_or_default(),
            "/usr/local/bin/autolb" => bin.join("autolb").display().to_string(),
            "/etc/autolb/autolb.yaml" => config.display().to_string(),
            _ => a,
        })
        .collect();
    let mut child = common::command(&argv[0])
        .args(&argv[1..])
        .envs(image.env.iter().map(|(k, v)| (k, v)))
        // tini is PID 1 in the container; here it reaps as a subreaper.
        .env("TINI_SUBREAPER", "1")
        .env("TMPDIR", out.path())
        .current_dir(out.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("the image's command");
    let log = common::collect(child.stderr.take().expect("stderr"));
    let mut proc = common::Proc { child, log };
    let admin: std::net::SocketAddr = format!("127.0.0.1:{admin}").parse().expect("addr");
    let web: std::net::SocketAddr = format!("127.0.0.1:{web}").parse().expect("addr");
    common::wait_until(60, "two ready instances", || async {
        tokio::net::TcpStream::connect(admin).await.ok()?;
        let s = common::get(admin, "/scaling/status").await.json();
        (s["pools"][0]["current"] == 2).then_some(())
    })
    .await;
    let status = common::get(admin, "/cluster/status").await.json();
    let r = common::get(web, "/").await;
    assert_eq!(r.status, 200, "{}", proc.log());
    assert!(r.headers.contains_key("x-backend"));
    let h = common::get(admin, "/health").await.json();
    assert_eq!(h["status"], "ok", "{h}");
    let pids: Vec<u64> = status["instances"]
        .as_array()
        .expect("instances")
        .iter()
        .filter_map(|i| i["pid"].as_u64())
        .collect();
    assert_eq!(pids.len(), 2, "{status}");
    // docker stop: SIGTERM to PID 1, which passes it on; everything ends within the grace.
    // SAFETY: kill(2) takes no memory.
    unsafe {
        libc::kill(proc.pid() as i32, libc::SIGTERM);
    }
    let log = proc.log.clone();
    let code = common::wait_blocking_or(
        10,
        || proc.child.try_wait().expect("wait"),
        || format!("still running:\n{}", common::log_text(&log)),
    )
    .code();
    assert_eq!(code, Some(0), "{}", proc.log());
    for pid in pids {
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists()
                || std::fs::read_to_string(format!("/proc/{pid}/stat"))
                    .is_ok_and(|s| s.contains(") Z")),
            "instance {pid} outlived autolb"
        );
    }
}

fn which(program: &str) -> Option<String> {
    std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|d| d.join(program))
            .find(|p| p.is_file())
            .map(|p| p.display().to_string())
    })
}
