//! The `peercm` binary as a user runs it: help, configuration errors, two real `peercm node`
//! processes talking over loopback, and a short demo.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn peercm() -> Command {
    Command::new(env!("CARGO_BIN_EXE_peercm"))
}

fn tmpdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("peercm-cli-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn write(dir: &Path, file: &str, text: &str) -> PathBuf {
    let p = dir.join(file);
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn help_lists_the_commands() {
    let out = peercm().arg("--help").output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for cmd in ["demo", "node", "devices", "status", "secret"] {
        assert!(text.contains(cmd), "--help lacks {cmd}: {text}");
    }
    for cmd in ["demo", "node", "devices", "status", "secret"] {
        let out = peercm().args([cmd, "--help"]).output().unwrap();
        assert!(out.status.success(), "{cmd} --help");
    }
}

#[test]
fn bad_configurations_fail_with_a_clear_error() {
    let d = tmpdir("badcfg");
    let cases = [
        ("missing.toml", None, "cannot read"),
        (
            "typo.toml",
            Some("node_id=\"a\"\ncluster_id=\"c\"\nlisten=\"127.0.0.1:0\"\nlsiten=1\n"),
            "lsiten",
        ),
        (
            "noaddr.toml",
            Some("node_id=\"a\"\ncluster_id=\"c\"\n"),
            "listen",
        ),
        (
            "badname.toml",
            Some("node_id=\"a b\"\ncluster_id=\"c\"\nlisten=\"127.0.0.1:0\"\n"),
            "node_id",
        ),
        (
            "nosecret.toml",
            Some("node_id=\"a\"\ncluster_id=\"c\"\nlisten=\"127.0.0.1:0\"\n"),
            "--insecure",
        ),
        (
            "shortsecret.toml",
            Some(
                "node_id=\"a\"\ncluster_id=\"c\"\nlisten=\"127.0.0.1:0\"\nsecret_file=\"SECRET\"\n",
            ),
            "at least 32",
        ),
        (
            // The outside test's secret, made long enough: still one repeated character.
            "weaksecret.toml",
            Some("node_id=\"a\"\ncluster_id=\"c\"\nlisten=\"127.0.0.1:0\"\nsecret_file=\"WEAK\"\n"),
            "peercm secret generate",
        ),
    ];
    write(&d, "short.secret", "tiny\n");
    write(&d, "weak.secret", &format!("{}\n", "x".repeat(48)));
    for (file, text, needle) in cases {
        if let Some(t) = text {
            let t = t
                .replace("SECRET", d.join("short.secret").to_str().unwrap())
                .replace("WEAK", d.join("weak.secret").to_str().unwrap());
            write(&d, file, &t);
        }
        let out = peercm()
            .args(["node", "--config"])
            .arg(d.join(file))
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{file}: should fail");
        assert!(
            err.contains(needle),
            "{file}: error should mention {needle:?}: {err}"
        );
        assert!(!err.contains("panicked"), "{file}: {err}");
    }
}

struct Proc(Child);
impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn terminate(p: &mut Proc) -> String {
    let pid = p.0.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(status) = p.0.try_wait().unwrap() {
            assert!(status.success(), "node exited with {status}");
            break;
        }
        assert!(Instant::now() < deadline, "node ignored SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut out = String::new();
    p.0.stdout.take().unwrap().read_to_string(&mut out).unwrap();
    out
}

#[test]
fn two_node_processes_connect_and_report_status() {
    let d = tmpdir("pair");
    // The pair shares a secret written by `peercm secret generate`.
    let secret = d.join("secret");
    let out = peercm()
        .args(["secret", "generate", "--out"])
        .arg(&secret)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let b_cfg = write(
        &d,
        "b.toml",
        &format!(
            "node_id = \"ctrl-b\"\ncluster_id = \"pair\"\nlisten = \"127.0.0.1:0\"\nsecret_file = {:?}\n[[clients]]\nname = \"echo\"\n",
            secret
        ),
    );
    let mut b = Proc(
        peercm()
            .args(["node", "--config"])
            .arg(&b_cfg)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    // b prints its bound address first.
    let mut first = String::new();
    BufReader::new(b.0.stdout.as_mut().unwrap())
        .read_line(&mut first)
        .unwrap();
    let addr = first
        .trim()
        .strip_prefix("listening on ")
        .expect("listening line")
        .to_string();
    let a_cfg = write(
        &d,
        "a.toml",
        &format!(
            "node_id = \"ctrl-a\"\ncluster_id = \"pair\"\nsecret_file = {:?}\nstatus_socket = {:?}\n[peer]\naddress = \"{addr}\"\nconnections = 3\n[[clients]]\nname = \"echo\"\n",
            secret,
            d.join("a.sock")
        ),
    );
    let mut a = Proc(
        peercm()
            .args(["node", "--config"])
            .arg(&a_cfg)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    // Wait for a's own log to say three links and the client are up (no fixed sleep).
    let stderr = a.0.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let (mut links, mut up) = (0, false);
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            links += usize::from(line.contains("link") && line.contains(" up (dialed"));
            up |= line.contains("client echo: Up");
            if links >= 3 && up {
                let _ = tx.send(());
            }
        }
    });
    rx.recv_timeout(Duration::from_secs(30))
        .expect("node a reported 3 links and client Up within 30 s");
    // `peercm status` reads the running node.
    let out = peercm()
        .args(["status", "--socket"])
        .arg(d.join("a.sock"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("node ctrl-a  partner ctrl-b  session up"),
        "{text}"
    );
    assert!(
        text.contains("TCP fallback (verbs unavailable here"),
        "{text}"
    );
    assert!(text.contains("echo"), "{text}");
    assert!(text.contains("link 1 up"), "{text}");
    let out = peercm()
        .args(["status", "--json", "--socket"])
        .arg(d.join("a.sock"))
        .output()
        .unwrap();
    let live: serde_json::Value = serde_json::from_slice(&out.stdout).expect("status --json");
    assert_eq!(live["interconnects"][0]["name"], "tcp", "{live}");
    assert_eq!(live["interconnects"][0]["clients"][0], "echo", "{live}");
    assert_eq!(live["clients"][0]["interconnect"], 0, "{live}");
    let a_out = terminate(&mut a);
    assert!(a_out.starts_with("status on "), "{a_out}");
    let json = &a_out[a_out.find('{').unwrap_or(0)..];
    let status: serde_json::Value =
        serde_json::from_str(json).expect("a prints its status as JSON");
    assert_eq!(status["session"], "up", "{status}");
    assert_eq!(status["peer"], "ctrl-b");
    assert_eq!(status["links"].as_array().unwrap().len(), 3);
    assert_eq!(status["clients"][0]["name"], "echo");
    assert_eq!(status["clients"][0]["state"], "CONNECTED");
    let b_out = terminate(&mut b);
    assert!(b_out.contains("\"node_id\": \"ctrl-b\""), "{b_out}");
}

#[test]
fn status_without_a_running_node_says_so() {
    let d = tmpdir("status-none");
    let out = peercm()
        .args(["status", "--socket"])
        .arg(d.join("nothing.sock"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot reach a peercm node"), "{err}");
}

#[test]
fn demo_passes_and_prints_its_summary() {
    let out = peercm()
        .args(["demo", "--records", "3000", "--record-bytes", "256"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "demo failed:\n{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("3000 stored on node-b, LSN 1..=3000"),
        "{text}"
    );
    assert!(text.contains("killed TCP link"), "{text}");
    assert!(text.contains("RESULT    PASS"), "{text}");
}

/// `peercm devices` exits 0 on any host: with devices listed where verbs work (the soft-RoCE
/// lane checks rxe0/rxe1 appear; with every port down they are listed with a note), or with
/// the typed reason and the TCP fallback elsewhere.
#[test]
fn devices_lists_hcas_or_names_the_reason() {
    let out = peercm().args(["devices", "--json"]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    if v["available"] == true {
        assert!(!v["devices"].as_array().unwrap().is_empty());
        // Devices whose ports are all down are listed too, with a note (information only).
        if v["active_ports"].as_u64().unwrap() > 0 {
            assert_eq!(v["transport"], "rdma");
        } else {
            assert_eq!(v["transport"], "tcp");
            assert!(v["note"]
                .as_str()
                .unwrap()
                .contains("no RDMA port is ACTIVE"));
        }
    } else {
        let reason = v["reason"].as_str().expect("a reason when unavailable");
        assert!(!reason.is_empty());
        assert_eq!(v["transport"], "tcp");
        let text = peercm().arg("devices").output().unwrap();
        assert!(text.status.success());
        let t = String::from_utf8_lossy(&text.stdout);
        assert!(t.contains(reason) && t.contains("TCP"), "{t}");
    }
}

#[test]
fn secret_generate_writes_a_strong_private_secret_and_keeps_an_existing_one() {
    use std::os::unix::fs::PermissionsExt;
    let d = tmpdir("secret");
    // To standard output: 32 random bytes as hex, different every time.
    let gen = || {
        let out = peercm().args(["secret", "generate"]).output().unwrap();
        assert!(out.status.success());
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    };
    let (s1, s2) = (gen(), gen());
    assert_eq!(s1.len(), 64, "{s1}");
    assert!(s1.chars().all(|c| c.is_ascii_hexdigit()), "{s1}");
    assert_ne!(s1, s2);
    assert!(peercm_cm_manager::ClusterSecret::new(s1.as_bytes()).is_ok());
    // To a file: mode 0600; an existing file is kept unless --force.
    let path = d.join("cluster.secret");
    let generate = |force: bool| {
        let mut cmd = peercm();
        cmd.args(["secret", "generate", "--out"]).arg(&path);
        if force {
            cmd.arg("--force");
        }
        cmd.output().unwrap()
    };
    assert!(generate(false).status.success());
    let first = std::fs::read_to_string(&path).unwrap();
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let refused = generate(false);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("--force"));
    assert_eq!(std::fs::read_to_string(&path).unwrap(), first, "kept");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    assert!(generate(true).status.success());
    assert_ne!(std::fs::read_to_string(&path).unwrap(), first, "replaced");
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "a replaced file is private again");
}
