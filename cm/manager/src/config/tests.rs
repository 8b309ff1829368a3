//! Unit tests of the node configuration: parsing, defaults, and the validation errors.

use super::*;

#[test]
fn parses_full_example() {
    let cfg = NodeConfig::parse(
        r#"
        node_id = "a"
        cluster_id = "c"
        listen = "127.0.0.1:7700"
        secret_file = "/tmp/s"
        [peer]
        address = "127.0.0.1:7701"
        [session]
        window = 64
        [[clients]]
        name = "echo"
        model = "async"
        "#,
    )
    .unwrap();
    assert_eq!(cfg.peer.unwrap().connections, 4);
    assert_eq!(cfg.session.window, 64);
    assert_eq!(cfg.clients[0].model, SendModel::Async);
}

/// Item 1 (issue 8): more `[[clients]]` than a node may register is refused when the
/// configuration is loaded, not discovered when the pair (re)connects.
#[test]
fn too_many_clients_refused_at_load() {
    let base = "node_id = \"a\"\ncluster_id = \"c\"\nlisten = \"127.0.0.1:1\"\n";
    let clients = |n: usize| -> String {
        (0..n)
            .map(|i| format!("[[clients]]\nname = \"c{i}\"\n"))
            .collect()
    };
    let ok = NodeConfig::parse(&format!("{base}{}", clients(300))).unwrap();
    assert_eq!(ok.clients.len(), 300);
    let e = NodeConfig::parse(&format!("{base}{}", clients(MAX_CLIENTS_PER_NODE + 1)))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("16385 [[clients]]") && e.contains("16384"),
        "{e}"
    );
}

#[test]
fn own_queue_pairs_are_parsed_and_bounded_by_max_client_qps() {
    let base = "node_id = \"a\"\ncluster_id = \"c\"\nlisten = \"127.0.0.1:1\"\n";
    let two = format!(
        "{base}[[clients]]\nname = \"m\"\nown_queue_pair = true\n\
         [[clients]]\nname = \"h\"\nown_queue_pair = true\n"
    );
    let ok = NodeConfig::parse(&two).unwrap();
    assert!(ok.clients.iter().all(|c| c.own_queue_pair));
    assert_eq!(ok.verbs.max_client_qps, 16);
    let e = NodeConfig::parse(&format!("{two}[verbs]\nmax_client_qps = 1\n"))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("own_queue_pair") && e.contains("max_client_qps = 1"),
        "{e}"
    );
    let e = NodeConfig::parse(&format!("{base}[verbs]\nmax_client_qps = 5000\n"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("0..=1024"), "{e}");
    let plain = NodeConfig::parse(&format!("{base}[[clients]]\nname = \"m\"\n")).unwrap();
    assert!(!plain.clients[0].own_queue_pair);
}

#[test]
fn busy_polling_is_off_by_default_and_bounded() {
    let base = "node_id = \"a\"\ncluster_id = \"c\"\nlisten = \"127.0.0.1:1\"\n";
    assert_eq!(NodeConfig::parse(base).unwrap().verbs.busy_poll_us, 0);
    let on = NodeConfig::parse(&format!("{base}[verbs]\nbusy_poll_us = 200\n")).unwrap();
    assert_eq!(on.verbs.busy_poll_us, 200);
    let e = NodeConfig::parse(&format!("{base}[verbs]\nbusy_poll_us = 10001\n"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("busy_poll_us") && e.contains("0..=10000"), "{e}");
}

#[test]
fn regions_are_off_by_default_and_parsed_when_given() {
    let base = "node_id = \"a\"\ncluster_id = \"c\"\nlisten = \"127.0.0.1:1\"\n";
    let off = NodeConfig::parse(base).unwrap();
    assert_eq!(off.regions, RegionTunables::default());
    assert_eq!(off.regions.dir, None);
    let on = NodeConfig::parse(&format!(
        "{base}[regions]\ndir = \"/dev/shm/peercm\"\nmax_bytes = 4096\n"
    ))
    .unwrap();
    assert_eq!(
        on.regions.dir.as_deref(),
        Some(Path::new("/dev/shm/peercm"))
    );
    assert_eq!(on.regions.max_bytes, 4096);
    let e = NodeConfig::parse(&format!("{base}[regions]\nmax_bytes = 0\n"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("regions.max_bytes"), "{e}");
    let e = NodeConfig::parse(&format!("{base}[regions]\ndir = \"\"\n"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("regions.dir"), "{e}");
    let e = NodeConfig::parse(&format!("{base}[regions]\nsize = 1\n"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("size"), "{e}");
}

#[test]
fn client_regions_need_a_dir_and_stay_within_the_limits() {
    let base = "node_id = \"a\"\ncluster_id = \"c\"\nlisten = \"127.0.0.1:1\"\n";
    let region =
        "[[clients]]\nname = \"m\"\n[[clients.regions]]\nname = \"log\"\nlen_bytes = 4096\n";
    let e = NodeConfig::parse(&format!("{base}{region}"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("[regions] dir"), "{e}");
    let dir = "[regions]\ndir = \"/tmp/x\"\nmax_bytes = 8192\n";
    let ok = NodeConfig::parse(&format!("{base}{dir}{region}")).unwrap();
    assert_eq!(ok.clients[0].regions[0].len_bytes, 4096);
    let twice = format!("{region}[[clients.regions]]\nname = \"log\"\nlen_bytes = 1\n");
    let e = NodeConfig::parse(&format!("{base}{dir}{twice}"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("twice"), "{e}");
    let big = region.replace("4096", "9000");
    let e = NodeConfig::parse(&format!("{base}{dir}{big}"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("max_bytes"), "{e}");
    let bad = region.replace("\"log\"", "\"../x\"");
    let e = NodeConfig::parse(&format!("{base}{dir}{bad}"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("../x"), "{e}");
}

#[test]
fn errors_name_the_field() {
    let e = NodeConfig::parse("node_id = \"a\"\ncluster_id = \"c\"\n")
        .unwrap_err()
        .to_string();
    assert!(e.contains("listen"), "{e}");
    let e = NodeConfig::parse("node_id = \"a b\"\ncluster_id = \"c\"\nlisten=\"127.0.0.1:1\"")
        .unwrap_err()
        .to_string();
    assert!(e.contains("node_id"), "{e}");
    let e =
        NodeConfig::parse("node_id = \"a\"\ncluster_id = \"c\"\nlisten=\"127.0.0.1:1\"\ntypo = 1")
            .unwrap_err()
            .to_string();
    assert!(e.contains("typo"), "{e}");
    let e = NodeConfig::parse(
        "node_id = \"a\"\ncluster_id = \"c\"\nlisten=\"127.0.0.1:1\"\n[session]\nheartbeat_interval_ms = 500\nlink_timeout_ms = 600",
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("link_timeout_ms"), "{e}");
}

/// Item 13: units are explicit in the names, and files written with the old names still load.
#[test]
fn units_in_names_and_old_names_accepted() {
    let base = "node_id = \"a\"\ncluster_id = \"c\"\nlisten = \"127.0.0.1:1\"\n";
    let new = NodeConfig::parse(&format!(
        "{base}[verbs]\ncapacity_mbits_per_s = {{ rxe0 = 10000 }}\n[[clients]]\nname = \"x\"\nbandwidth_mbytes_per_s = 7\n"
    ))
    .unwrap();
    let old = NodeConfig::parse(&format!(
        "{base}[verbs]\ncapacity_mbps = {{ rxe0 = 10000 }}\n[[clients]]\nname = \"x\"\nbandwidth_mbps = 7\n"
    ))
    .unwrap();
    for cfg in [new, old] {
        assert_eq!(cfg.verbs.capacity_mbits_per_s.get("rxe0"), Some(&10_000));
        assert_eq!(cfg.clients[0].bandwidth_mbytes_per_s, 7);
        assert_eq!(cfg.clients[0].spec().bandwidth_mbytes_per_s, 7);
    }
    let written = toml::to_string(
        &NodeConfig::parse(&format!(
            "{base}[[clients]]\nname = \"x\"\nbandwidth_mbps = 7\n"
        ))
        .unwrap(),
    )
    .unwrap();
    assert!(written.contains("bandwidth_mbytes_per_s = 7"), "{written}");
    assert!(!written.contains("bandwidth_mbps"), "{written}");
}

/// Item 3: a client's default acknowledgement timeout, absent by default, never 0.
#[test]
fn client_ack_timeout_is_optional_and_positive() {
    let base = "node_id = \"a\"\ncluster_id = \"c\"\nlisten = \"127.0.0.1:1\"\n[[clients]]\nname = \"x\"\n";
    let cfg = NodeConfig::parse(&format!("{base}ack_timeout_ms = 250\n")).unwrap();
    assert_eq!(cfg.clients[0].ack_timeout_ms, Some(250));
    assert_eq!(
        NodeConfig::parse(base).unwrap().clients[0].ack_timeout_ms,
        None
    );
    let e = NodeConfig::parse(&format!("{base}ack_timeout_ms = 0\n"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("ack_timeout_ms") && e.contains("\"x\""), "{e}");
}
