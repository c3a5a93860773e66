//! deploy/kubernetes/: every manifest is a valid Kubernetes object (kubernetes-validate,
//! strict, offline against the API schemas; a broken copy is refused, so the check checks);
//! the Deployment keeps its promises (non-root, read-only root filesystem, no privilege
//! escalation, probes on /health/live and /health/ready, a grace period covering preStop and
//! shutdown_grace); the ConfigMap's autolb.yaml passes `autolb check`; and its scale.sh is
//! fenced: run against a stand-in `kubectl`, an older token is refused and a newer one
//! patches the replicas on the resourceVersion it read. `.ci/run` installs
//! kubernetes-validate (PyPI).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

const VERSION: &str = "1.30.0";

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/kubernetes")
}

fn manifests() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir())
        .expect("deploy/kubernetes")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    files
}

/// Every document of every manifest.
fn objects() -> Vec<Value> {
    manifests()
        .iter()
        .flat_map(|f| {
            let text = std::fs::read_to_string(f).expect("read manifest");
            text.split("\n---\n")
                .map(|doc| {
                    serde_saphyr::from_str::<Value>(doc)
                        .unwrap_or_else(|e| panic!("{}: {e}", f.display()))
                })
                .collect::<Vec<_>>()
        })
        .collect()
}

fn object(kind: &str, name: &str) -> Value {
    objects()
        .into_iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name} in deploy/kubernetes"))
}

/// `kubernetes-validate --strict` on `files`: (success, output).
fn validate(files: &[PathBuf]) -> (bool, String) {
    let out = Command::new("python3")
        .args(["-m", "kubernetes_validate", "--strict", "-k", VERSION])
        .args(files)
        .output()
        .expect("python3");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !text.contains("No module named kubernetes_validate"),
        "kubernetes-validate is missing (pip install kubernetes-validate; .ci/run installs it)"
    );
    (out.status.success(), text)
}

#[test]
fn every_manifest_is_a_valid_kubernetes_object() {
    let files = manifests();
    let kinds: Vec<String> = objects()
        .iter()
        .map(|o| o["kind"].as_str().unwrap_or_default().to_string())
        .collect();
    for kind in [
        "Deployment",
        "ConfigMap",
        "Service",
        "PodDisruptionBudget",
        "ServiceAccount",
        "Role",
        "RoleBinding",
    ] {
        assert!(kinds.iter().any(|k| k == kind), "no {kind}: {kinds:?}");
    }
    let (ok, out) = validate(&files);
    assert!(ok, "{out}");
    assert_eq!(out.matches(" passed ").count(), kinds.len(), "{out}");

    // The validator refuses what the API server would: a misspelled field, strictly.
    let tmp = tempfile::tempdir().expect("tempdir");
    let broken = tmp.path().join("deployment.yaml");
    let text = std::fs::read_to_string(dir().join("deployment.yaml")).expect("read");
    std::fs::write(
        &broken,
        text.replace("readOnlyRootFilesystem", "readOnlyRootFilesystm"),
    )
    .expect("write");
    let (ok, out) = validate(&[broken]);
    assert!(!ok, "a misspelled field passed:\n{out}");
}

fn seconds(s: &str) -> u64 {
    humantime::parse_duration(s)
        .unwrap_or_else(|e| panic!("{s}: {e}"))
        .as_secs()
}

#[test]
fn the_deployment_is_locked_down_and_its_grace_period_covers_the_drain() {
    let d = object("Deployment", "autolb");
    let pod = &d["spec"]["template"]["spec"];
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(pod["serviceAccountName"], "autolb");
    let c = &pod["containers"][0];
    let sc = &c["securityContext"];
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(sc["capabilities"]["drop"][0], "ALL");
    assert!(c["resources"]["requests"].is_object() && c["resources"]["limits"].is_object());
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/health/live");
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/health/ready");

    // terminationGracePeriodSeconds >= preStop sleep + shutdown_grace (+ a margin).
    let config = configmap_config();
    let grace = config
        .lines()
        .find_map(|l| l.trim().strip_prefix("shutdown_grace:"))
        .and_then(|v| v.split('#').next())
        .map(|v| seconds(v.trim()))
        .expect("shutdown_grace in the ConfigMap");
    let sleep: u64 = c["lifecycle"]["preStop"]["exec"]["command"][1]
        .as_str()
        .and_then(|s| s.parse().ok())
        .expect("preStop sleep");
    let period = pod["terminationGracePeriodSeconds"]
        .as_u64()
        .expect("period");
    assert!(
        period > sleep + grace,
        "terminationGracePeriodSeconds {period} <= preStop {sleep} + shutdown_grace {grace}"
    );
    // The scaler's Role reaches the one Deployment autolb balances, no more.
    let role = object("Role", "autolb-scaler");
    for rule in role["rules"].as_array().expect("rules") {
        assert_eq!(rule["resourceNames"], serde_json::json!(["api"]), "{rule}");
    }
}

fn configmap_config() -> String {
    object("ConfigMap", "autolb-config")["data"]["autolb.yaml"]
        .as_str()
        .expect("autolb.yaml")
        .to_string()
}

/// `autolb check` on the ConfigMap's config, laid out as the pod has it: the scripts
/// ConfigMap mounted (executable) where the config names it, and the admin token set from
/// its Secret. Without them check refuses it, as `run` would.
#[test]
fn the_configmap_config_passes_autolb_check() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().expect("tempdir");
    let scripts = tmp.path().join("scripts");
    std::fs::create_dir(&scripts).expect("mkdir");
    let script = object("ConfigMap", "autolb-scripts")["data"]["scale.sh"]
        .as_str()
        .expect("scale.sh")
        .to_string();
    let scale = scripts.join("scale.sh");
    std::fs::write(&scale, script).expect("write");
    std::fs::set_permissions(&scale, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let config = configmap_config();
    assert!(config.contains("/opt/autolb/scripts/scale.sh"), "{config}");
    let path = tmp.path().join("autolb.yaml");
    let mounted = config.replace("/opt/autolb/scripts", &scripts.display().to_string());
    std::fs::write(&path, &mounted).expect("write");
    let check = |token: Option<&str>| {
        let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_autolb"));
        c.args(["check", "-c"])
            .arg(&path)
            .env_remove("AUTOLB_ADMIN_TOKEN");
        if let Some(t) = token {
            c.env("AUTOLB_ADMIN_TOKEN", t);
        }
        let out = c.output().expect("autolb check");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, err) = check(Some("from-the-secret"));
    assert_eq!(code, Some(0), "{err}");
    // Without the Secret's variable, check says what run would refuse.
    let (code, err) = check(None);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("AUTOLB_ADMIN_TOKEN"), "{err}");
}

/// Run scale.sh with a stand-in `kubectl` whose Deployment has resourceVersion 41 and the
/// fencing-token annotation `stored` (None: no annotation). Returns (exit code, the
/// arguments of `kubectl patch`, if it ran).
fn scale(count: &str, token: &str, stored: Option<&str>) -> (i32, Option<String>) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let script = object("ConfigMap", "autolb-scripts")["data"]["scale.sh"]
        .as_str()
        .expect("scale.sh")
        .to_string();
    std::fs::write(tmp.path().join("scale.sh"), script).expect("write");
    let patched = tmp.path().join("patched");
    std::fs::write(
        tmp.path().join("kubectl"),
        format!(
            "#!/bin/sh\ncase $1 in\n  get) printf '41 %s' '{}' ;;\n  patch) echo \"$@\" > '{}' ;;\n  *) exit 2 ;;\nesac\n",
            stored.unwrap_or(""),
            patched.display()
        ),
    )
    .expect("write");
    // The stand-in is found on PATH: it must be executable.
    let mode = std::os::unix::fs::PermissionsExt::from_mode(0o755);
    std::fs::set_permissions(tmp.path().join("kubectl"), mode).expect("chmod");
    let status = Command::new("sh")
        .arg(tmp.path().join("scale.sh"))
        .args(["api", count, token])
        .env("PATH", format!("{}:/usr/bin:/bin", tmp.path().display()))
        .status()
        .expect("run scale.sh");
    (
        status.code().unwrap_or(-1),
        std::fs::read_to_string(&patched).ok(),
    )
}

#[test]
fn scale_sh_refuses_an_older_fencing_token_and_patches_on_the_version_it_read() {
    let (code, patched) = scale("5", "7", Some("9"));
    assert_ne!(code, 0);
    assert_eq!(patched, None, "a deposed leader's token scaled");

    for stored in [Some("3"), Some("7"), None] {
        let (code, patched) = scale("5", "7", stored);
        assert_eq!(code, 0, "stored {stored:?}");
        let patched = patched.expect("kubectl patch ran");
        assert!(
            patched.starts_with("patch deployment api --type=merge -p "),
            "{patched}"
        );
        let body: Value = serde_json::from_str(
            patched
                .trim()
                .trim_start_matches("patch deployment api --type=merge -p "),
        )
        .expect("JSON patch");
        assert_eq!(body["spec"]["replicas"], 5);
        assert_eq!(body["metadata"]["resourceVersion"], "41");
        assert_eq!(
            body["metadata"]["annotations"]["autolb.io/fencing-token"],
            "7"
        );
    }
}
