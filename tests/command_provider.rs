//! The `command` provider end to end: `scale` and `list` shell scripts over three
//! `autolb-echo` backends (the script "starts" members by listing more of them), manual
//! scaling up and down, and DNS discovery of `localhost`.

mod common;

use common::wait_scaling;

use std::collections::HashSet;

use common::{echo, Autolb, Client};

const TOKEN: &str = "cmd-token";

async fn manual(lb: &Autolb, n: u32) {
    let mut c = Client::connect(lb.admin).await;
    let body = format!(r#"{{"pool":"web","instances":{n},"reason":"test"}}"#);
    let r = c
        .request(
            http::Request::post("/scaling/manual")
                .header("content-type", "application/json")
                .header("host", "admin")
                .header("authorization", format!("Bearer {TOKEN}"))
                .body(http_body_util::Full::new(bytes::Bytes::from(body)))
                .expect("request"),
        )
        .await;
    assert_eq!(r.status, 202, "{}", r.text());
}

fn config(autoscale: &str) -> String {
    format!(
        "threads: 1
admin: {{ listen: \"127.0.0.1:0\", token_env: AUTOLB_TEST_TOKEN }}
listeners:
  - {{ name: web, listen: \"127.0.0.1:0\", protocol: http, pool: web }}
pools:
  web:
    health_check: {{ type: http, path: /health, interval: 100ms, timeout: 100ms, rise: 1, fall: 2 }}
    autoscale:
      provider: command
      min: 1
      max: 3
      interval: 300ms
      target: {{ inflight_per_instance: 1000 }}
      scale_down: {{ stabilization: 0s }}
{autoscale}"
    )
}

#[tokio::test]
async fn scale_and_list_scripts_drive_the_members() {
    let backends = [echo("m1"), echo("m2"), echo("m3")];
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("scale.sh"), "echo \"$2\" > count.$1\n").expect("write");
    let addrs: Vec<String> = backends.iter().map(|b| b.addr.to_string()).collect();
    let list = format!(
        "n=$(cat count.web 2>/dev/null || echo 0)\nset -- {}\nout=''\ni=0\nfor a in \"$@\"; do\n  [ $i -ge $n ] && break\n  out=\"$out${{out:+,}}{{\\\"address\\\":\\\"$a\\\"}}\"\n  i=$((i+1))\ndone\necho \"[$out]\"\n",
        addrs.join(" ")
    );
    std::fs::write(dir.path().join("list.sh"), list).expect("write");
    let yaml = config(&format!(
        "      scale: [sh, scale.sh, \"{{pool}}\", \"{{count}}\"]\n      list: [sh, list.sh]\n      cwd: \"{}\"\n",
        dir.path().display()
    ));
    let lb = Autolb::start_with_env(&yaml, &[("AUTOLB_TEST_TOKEN", TOKEN)]);

    // `min: 1`: scale runs with 1, list shows one member, its check passes.
    let s = wait_scaling(&lb, 20, "one member", |s| {
        s["current"] == 1 && s["requested"] == 1
    })
    .await;
    assert_eq!(s["provider"], "command");
    assert_eq!(
        std::fs::read_to_string(dir.path().join("count.web"))
            .unwrap_or_default()
            .trim(),
        "1"
    );

    manual(&lb, 3).await;
    wait_scaling(&lb, 20, "three members", |s| s["current"] == 3).await;
    let mut names = HashSet::new();
    let mut c = Client::connect(lb.addr("web")).await;
    for _ in 0..30 {
        let r = c.get("/").await;
        assert_eq!(r.status, 200);
        names.insert(r.text());
    }
    assert_eq!(names.len(), 3, "{names:?}");
    let cluster = common::get(lb.admin, "/cluster/status").await.json();
    let members = cluster["instances"].as_array().map_or(0, Vec::len);
    assert_eq!(members, 3, "{cluster:#}");

    manual(&lb, 1).await;
    let s = wait_scaling(&lb, 20, "back to one", |s| s["current"] == 1).await;
    assert_eq!(s["requested"], 1);
    for _ in 0..10 {
        assert_eq!(c.get("/").await.text(), "m1");
    }
}

#[tokio::test]
async fn dns_discovery_finds_members() {
    let b = echo("d1");
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("scale.sh"), "echo \"$2\" > count\n").expect("write");
    let yaml = config(&format!(
        "      scale: [sh, scale.sh, \"{{pool}}\", \"{{count}}\"]\n      discovery: {{ dns: \"localhost:{}\", interval: 200ms }}\n      cwd: \"{}\"\n",
        b.addr.port(),
        dir.path().display()
    ));
    let lb = Autolb::start_with_env(&yaml, &[("AUTOLB_TEST_TOKEN", TOKEN)]);
    wait_scaling(&lb, 20, "the DNS member", |s| s["current"] == 1).await;
    let mut c = Client::connect(lb.addr("web")).await;
    assert_eq!(c.get("/").await.text(), "d1");
}
