//! Config reload through symlinks, through the real program: the exact layout and update
//! of a Kubernetes ConfigMap volume (`autolb.yaml -> ..data/autolb.yaml`, `..data ->
//! ..TIMESTAMP`, swapped by renaming `..data_tmp` onto `..data`), a later `sed -i` inside
//! the new directory, a chain of two symlinks (a `current` release link), a file deleted
//! and then recreated, and an editor's save (temp file + rename). Each real change reloads
//! exactly once; a change of nothing but links or timestamps (same bytes) reloads nothing.

mod common;

use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};

use common::{echo, get, wait_until, Autolb, Echo};

/// A config whose pool `web` is the single backend `to`.
fn conf(to: &Echo) -> String {
    common::config(
        1,
        "",
        &format!(
            "pools:\n  web:\n    backends:\n{}",
            common::backend_list(&[to.addr], "")
        ),
    )
}

/// Debug logs of the watcher: its "files unchanged" lines show it looked and saw no change.
const ENV: &[(&str, &str)] = &[("AUTOLB_LOG", "info,autolb::config::watch=debug")];

async fn generation(lb: &Autolb) -> u64 {
    get(lb.admin, "/health").await.json()["config"]["generation"]
        .as_u64()
        .expect("generation")
}

/// Wait until traffic reaches `name`, then check the config was applied exactly `gen`
/// times in all.
async fn serves(lb: &Autolb, name: &str, gen: u64) {
    let addr = lb.addr("web");
    wait_until(30, &format!("traffic to {name}"), || async {
        (get(addr, "/").await.text() == name).then_some(())
    })
    .await;
    assert_eq!(generation(lb).await, gen, "log:\n{}", lb.proc.log());
}

/// How often the watcher has looked at unchanged files so far.
fn unchanged(lb: &Autolb) -> usize {
    lb.proc.log().matches("files unchanged").count()
}

/// Wait until the watcher looked again and found nothing to do; the config is still the
/// one of generation `gen`.
async fn saw_no_change(lb: &Autolb, before: usize, gen: u64) {
    wait_until(30, "the watcher to look at the unchanged files", || async {
        (unchanged(lb) > before).then_some(())
    })
    .await;
    assert_eq!(generation(lb).await, gen, "log:\n{}", lb.proc.log());
}

/// `ln -sfn TARGET LINK` done atomically: a temporary link renamed onto `link`.
fn swap_link(target: &str, link: &Path) {
    let tmp = link.with_file_name(format!(
        "{}_tmp",
        link.file_name().and_then(|n| n.to_str()).expect("name")
    ));
    symlink(target, &tmp).expect("temporary symlink");
    std::fs::rename(&tmp, link).expect("rename the link into place");
}

/// What the kubelet does on a ConfigMap update: a new timestamped directory, `..data`
/// swapped onto it, the old directory removed.
fn configmap_update(root: &Path, old: &str, new: &str, yaml: &str) {
    std::fs::create_dir(root.join(new)).expect("new data directory");
    std::fs::write(root.join(new).join("autolb.yaml"), yaml).expect("write");
    swap_link(new, &root.join("..data"));
    std::fs::remove_dir_all(root.join(old)).expect("remove the old directory");
}

/// An editor's save (and `sed -i`): a temporary file in the same directory renamed onto it.
fn save_by_rename(file: &Path, yaml: &str) {
    let tmp = file.with_file_name(".autolb.yaml.swp");
    std::fs::write(&tmp, yaml).expect("write the temporary file");
    std::fs::rename(&tmp, file).expect("rename onto the file");
}

/// Create `file` with its whole content at once (written elsewhere, renamed into place), so
/// that no reload can see it half written.
fn recreate(file: &Path, yaml: &str) {
    let staged = tempfile::NamedTempFile::new_in(std::env::temp_dir()).expect("temp file");
    std::fs::write(staged.path(), yaml).expect("write");
    let (_, staged) = staged.keep().expect("keep");
    if std::fs::rename(&staged, file).is_err() {
        // Another file system: copy, the old way.
        std::fs::copy(&staged, file).expect("copy");
        let _ = std::fs::remove_file(&staged);
    }
}

fn configmap(dir: &Path, first: &str, yaml: &str) -> PathBuf {
    std::fs::create_dir(dir.join(first)).expect("data directory");
    std::fs::write(dir.join(first).join("autolb.yaml"), yaml).expect("write");
    symlink(first, dir.join("..data")).expect("..data");
    symlink("..data/autolb.yaml", dir.join("autolb.yaml")).expect("autolb.yaml");
    dir.join("autolb.yaml")
}

#[tokio::test]
async fn a_configmap_update_reloads_once_and_so_does_a_later_edit_in_its_new_directory() {
    let (a, b, c) = (echo("a"), echo("b"), echo("c"));
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("config");
    std::fs::create_dir(&root).expect("mount point");
    let t1 = "..2026_12_07_10_00_00.000000001";
    let t2 = "..2026_12_07_10_05_00.000000002";
    let t3 = "..2026_12_07_10_09_00.000000003";
    let path = configmap(&root, t1, &conf(&a));
    let lb = Autolb::start_file(dir, path, ENV);
    serves(&lb, "a", 1).await;

    configmap_update(&root, t1, t2, &conf(&b));
    serves(&lb, "b", 2).await;

    // `sed -i` inside the directory `..data` now points to.
    save_by_rename(&root.join(t2).join("autolb.yaml"), &conf(&c));
    serves(&lb, "c", 3).await;

    // An update that changes nothing but the directory names: no reload.
    let before = unchanged(&lb);
    configmap_update(&root, t2, t3, &conf(&c));
    saw_no_change(&lb, before, 3).await;

    // And the watches followed the swap to the newest directory.
    save_by_rename(&root.join(t3).join("autolb.yaml"), &conf(&a));
    serves(&lb, "a", 4).await;
    let log = lb.proc.log();
    assert!(!log.contains("reload refused"), "log:\n{log}");
}

#[tokio::test]
async fn a_chain_of_two_symlinks_is_followed_through_both_links() {
    let (a, b, c) = (echo("a"), echo("b"), echo("c"));
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().to_path_buf();
    for d in ["etc", "srv/releases/1", "srv/releases/2", "srv/other"] {
        std::fs::create_dir_all(root.join(d)).expect("mkdir");
    }
    std::fs::write(root.join("srv/releases/1/autolb.yaml"), conf(&a)).expect("write");
    std::fs::write(root.join("srv/releases/2/autolb.yaml"), conf(&b)).expect("write");
    std::fs::write(root.join("srv/other/autolb.yaml"), conf(&c)).expect("write");
    // etc/autolb.yaml -> ../srv/current/autolb.yaml, srv/current -> releases/1
    symlink("releases/1", root.join("srv/current")).expect("current");
    symlink("../srv/current/autolb.yaml", root.join("etc/autolb.yaml")).expect("link");
    let lb = Autolb::start_file(dir, root.join("etc/autolb.yaml"), ENV);
    serves(&lb, "a", 1).await;

    // The second link moves (a deploy switches `current`).
    swap_link("releases/2", &root.join("srv/current"));
    serves(&lb, "b", 2).await;

    // The first link moves.
    swap_link("../srv/other/autolb.yaml", &root.join("etc/autolb.yaml"));
    serves(&lb, "c", 3).await;

    // Back to `current`, whose file has the same bytes as the one served: no reload.
    std::fs::write(root.join("srv/releases/2/autolb.yaml"), conf(&c)).expect("write");
    let before = unchanged(&lb);
    swap_link("../srv/current/autolb.yaml", &root.join("etc/autolb.yaml"));
    saw_no_change(&lb, before, 3).await;

    // An edit of the file at the end of the chain, in place.
    std::fs::write(root.join("srv/releases/2/autolb.yaml"), conf(&a)).expect("write");
    serves(&lb, "a", 4).await;
}

#[tokio::test]
async fn a_deleted_then_recreated_file_reloads_once_and_is_never_refused_meanwhile() {
    let (a, b) = (echo("a"), echo("b"));
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("autolb.yaml");
    std::fs::write(&path, conf(&a)).expect("write");
    let lb = Autolb::start_file(dir, path.clone(), ENV);
    serves(&lb, "a", 1).await;

    std::fs::remove_file(&path).expect("delete");
    assert!(
        lb.proc.log_shows(
            "a watched file is missing",
            std::time::Duration::from_secs(30)
        ),
        "log:\n{}",
        lb.proc.log()
    );
    // Still serving the config it had.
    assert_eq!(get(lb.addr("web"), "/").await.text(), "a");
    recreate(&path, &conf(&b));
    serves(&lb, "b", 2).await;

    // Deleted and recreated with the same bytes: nothing to reload.
    std::fs::remove_file(&path).expect("delete");
    let before = unchanged(&lb);
    recreate(&path, &conf(&b));
    saw_no_change(&lb, before, 2).await;
    let log = lb.proc.log();
    assert!(!log.contains("reload refused"), "log:\n{log}");
}

#[tokio::test]
async fn an_editor_save_by_rename_reloads_once_and_an_unchanged_save_does_not() {
    let (a, b) = (echo("a"), echo("b"));
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("autolb.yaml");
    std::fs::write(&path, conf(&a)).expect("write");
    let lb = Autolb::start_file(dir, path.clone(), ENV);
    serves(&lb, "a", 1).await;

    save_by_rename(&path, &conf(&b));
    serves(&lb, "b", 2).await;

    // Saved again without a change (`:w` in an editor).
    let before = unchanged(&lb);
    save_by_rename(&path, &conf(&b));
    saw_no_change(&lb, before, 2).await;

    // A backup-style save: the old file renamed away, a new one written.
    std::fs::rename(&path, path.with_file_name("autolb.yaml~")).expect("backup");
    std::fs::write(&path, conf(&a)).expect("write");
    serves(&lb, "a", 3).await;
}
