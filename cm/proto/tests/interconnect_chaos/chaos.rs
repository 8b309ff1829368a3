//! The test world: the session pair, the placement policy on `a`, the rails, the clients on
//! both sides and what the test expects of them; its setup from a seed and small lookups.

use super::*;

pub(super) struct Chaos<'a> {
    pub(super) seed: u64,
    pub(super) step: &'a Cell<usize>,
    pub(super) phase: &'static str,
    pub(super) p: Pair,
    pub(super) cfg: SessionConfig,
    pub(super) placement: Placement,
    /// RDMA rails: (id, capacity in Mb/s, failure domain).
    pub(super) rails: Vec<(InterconnectId, u32, String)>,
    pub(super) usable: BTreeMap<InterconnectId, bool>,
    pub(super) link_ic: BTreeMap<LinkId, InterconnectId>,
    pub(super) n_clients: usize,
    pub(super) models: Vec<SendModel>,
    pub(super) a_ids: Vec<ClientId>,
    /// Client ids on the current partner incarnation, and whether each called `connect`.
    pub(super) b_ids: Vec<ClientId>,
    pub(super) b_connected: Vec<bool>,
    /// Current partner incarnation.
    pub(super) inc: u32,
    /// Node id of the partner `a` last had a link to.
    pub(super) partner_node: String,
    /// The partner crashed and has not returned yet.
    pub(super) partner_down: bool,
    /// A switch began (link up to another node while holding) and no PeerSwitched came yet.
    pub(super) switch_pending: bool,
    pub(super) switch_seen: BTreeSet<usize>,
    pub(super) switch_epoch: u64,
    /// The partner incarnation `a` is in session with (it can still be a crashed one whose
    /// RDMA links went silent).
    pub(super) a_view: u32,
    /// `a` may NACK (and go Down) in this step, for this reason: its hold ended (the same
    /// partner back, or expired), or it learned that the partner restarted.
    pub(super) nack_ok: Option<(NackReason, DownReason)>,
    /// b lost the session alone and a new link came up: a resets (NACKs `ConnectionLost`,
    /// `Down{PeerReset}`) whenever b's RESET-REQUEST heartbeat reaches it.
    /// (a's epoch when it was armed: once a's epoch moved past it, a has reset.)
    pub(super) reset_request_pending: Option<u64>,
    pub(super) streams: BTreeMap<(Who, usize), Stream>,
    /// Highest sequence number delivered to (receiving side, client), for clients that consume
    /// late (seeds without auto-consumption).
    pub(super) last_delivered: BTreeMap<(Side, usize), u64>,
    /// Sync messages delivered to (receiving side, client), unanswered: (seq, message number).
    pub(super) to_answer: BTreeMap<(Side, usize), Vec<(u64, usize)>>,
    pub(super) cursor_a: usize,
    pub(super) cursor_b: usize,
    /// Acknowledged messages whose delivery is checked once both sides' events are in:
    /// (sender, client, number, acknowledging incarnation or AT_A).
    pub(super) acked_unchecked: Vec<(Who, usize, usize, u32)>,
    pub(super) expected_migrations: BTreeMap<usize, VecDeque<(InterconnectId, InterconnectId)>>,
    pub(super) bytes_fed: BTreeMap<usize, u64>,
    pub(super) byte_scale: u64,
    pub(super) slow: Option<LinkId>,
    pub(super) trace: bool,
    pub(super) totals: Totals,
}

impl<'a> Chaos<'a> {
    pub(super) fn new(seed: u64, step: &'a Cell<usize>) -> Self {
        let cfg = SessionConfig {
            window: 2 + (seed % 7) as u32,
            heartbeat_interval: Duration::from_millis(100),
            link_timeout: Duration::from_millis(1500),
            flow_high_water: 12,
            flow_low_water: 4,
            hold_on_partner_loss: Some(HOLD),
            ..SessionConfig::default()
        };
        let mut p = Pair::with_config(seed, cfg.clone());
        let trace = std::env::var_os("PEERCM_IC_CHAOS_TRACE").is_some();
        p.trace = trace;
        // One seed in three: clients read late (credit only comes back on `consumed`).
        p.auto_consume = (seed / 3) % 3 != 2;
        let ms = |v: u64| Duration::from_millis(v);
        let pcfg = PlacementConfig {
            failback_hold: [ms(300), ms(1000), ms(2000)][p.rng.below(3) as usize],
            min_move_interval: [ms(500), ms(2000)][p.rng.below(2) as usize],
            rebalance_interval: [ms(100), ms(250)][p.rng.below(2) as usize],
            ..PlacementConfig::default()
        };
        let mut placement = Placement::new(pcfg);
        let now = p.now;
        let n_rails = 2 + p.rng.below(2) as u32;
        let shared_hca = p.rng.below(2) == 0;
        let mut rails = Vec::new();
        for r in 1..=n_rails {
            let capacity = [25_000, 50_000, 100_000, 10_000][p.rng.below(4) as usize];
            let domain = if shared_hca && r <= 2 {
                "mlx5_0".to_string()
            } else {
                format!("mlx5_{}", r - 1)
            };
            rails.push((InterconnectId::rail(r), capacity, domain));
        }
        let mut usable = BTreeMap::new();
        placement.upsert_interconnect(
            InterconnectInfo {
                id: InterconnectId::TCP,
                kind: InterconnectKind::Tcp,
                capacity_mbits_per_s: 10_000,
                failure_domain: "tcp".into(),
                usable: false,
            },
            now,
        );
        usable.insert(InterconnectId::TCP, false);
        for (id, capacity, domain) in &rails {
            placement.upsert_interconnect(
                InterconnectInfo {
                    id: *id,
                    kind: InterconnectKind::Rdma,
                    capacity_mbits_per_s: *capacity,
                    failure_domain: domain.clone(),
                    usable: false,
                },
                now,
            );
            usable.insert(*id, false);
        }
        // Clients: different send models (shuffled) and declared bandwidths.
        let n_clients = 2 + p.rng.below(2) as usize;
        let mut models = MODELS.to_vec();
        for i in (1..models.len()).rev() {
            let j = p.rng.below(i as u64 + 1) as usize;
            models.swap(i, j);
        }
        models.truncate(n_clients);
        let mut a_ids = Vec::new();
        for (c, &model) in models.iter().enumerate() {
            let latency = match (c, p.rng.below(3)) {
                (0, 0) => LatencyClass::Critical,
                (_, 1) => LatencyClass::Bulk,
                _ => LatencyClass::Normal,
            };
            let bandwidth = [20, 300, 1200, 2500, 5000][p.rng.below(5) as usize];
            let spec = ClientSpec {
                bandwidth_mbytes_per_s: bandwidth,
                latency,
                model,
            };
            let id =
                p.a.register(&format!("client{c}"), spec)
                    .expect("register on a");
            p.a.connect(id).expect("connect on a");
            placement.add_client(id, bandwidth, latency, now);
            a_ids.push(id);
        }
        let byte_scale = [1, 100_000, 2_000_000][p.rng.below(3) as usize];
        let partner_node = p.b_info.node_id.clone();
        let mut ch = Chaos {
            seed,
            step,
            phase: "program",
            p,
            cfg,
            placement,
            rails,
            usable,
            link_ic: BTreeMap::new(),
            n_clients,
            models,
            a_ids,
            b_ids: Vec::new(),
            b_connected: Vec::new(),
            inc: 0,
            partner_node,
            partner_down: false,
            switch_pending: false,
            switch_seen: BTreeSet::new(),
            switch_epoch: 0,
            a_view: 0,
            nack_ok: None,
            reset_request_pending: None,
            streams: BTreeMap::new(),
            to_answer: BTreeMap::new(),
            last_delivered: BTreeMap::new(),
            cursor_a: 0,
            cursor_b: 0,
            acked_unchecked: Vec::new(),
            expected_migrations: BTreeMap::new(),
            bytes_fed: BTreeMap::new(),
            byte_scale,
            slow: None,
            trace,
            totals: Totals::default(),
        };
        for c in 0..n_clients {
            ch.streams.insert((Who::A, c), Stream::default());
        }
        ch.register_on_b();
        if ch.trace {
            println!(
                "seed {seed}: clients {:?}, rails {:?}, window {}, byte scale {}",
                ch.models, ch.rails, ch.cfg.window, ch.byte_scale
            );
        }
        ch
    }

    pub(super) fn ctx(&self) -> String {
        format!(
            "seed {} step {} ({})",
            self.seed,
            self.step.get(),
            self.phase
        )
    }

    /// Registers every client on the current partner incarnation; each connects or not.
    pub(super) fn register_on_b(&mut self) {
        self.b_ids.clear();
        self.b_connected.clear();
        for c in 0..self.n_clients {
            let spec = self.p.a.client_spec(self.a_ids[c]).expect("client spec");
            let id = self
                .p
                .b
                .register(&format!("client{c}"), spec)
                .expect("register on b");
            let connect = self.p.rng.below(2) == 0;
            if connect {
                self.p.b.connect(id).expect("connect on b");
            }
            self.b_ids.push(id);
            self.b_connected.push(connect);
            self.streams
                .insert((Who::B(self.inc), c), Stream::default());
        }
    }

    pub(super) fn rail_ids(&self) -> Vec<InterconnectId> {
        self.rails.iter().map(|r| r.0).collect()
    }

    /// Links of interconnect `ic` that a has (in its view: a link b dropped first, or one to a
    /// crashed partner, counts until a judges it dead).
    pub(super) fn links_on(&self, ic: InterconnectId) -> Vec<LinkId> {
        self.p
            .a
            .links()
            .filter(|&l| self.p.a.link_interconnect(l) == Some(ic))
            .collect()
    }

    /// Every link a has.
    pub(super) fn a_links(&self) -> Vec<LinkId> {
        self.p.a.links().collect()
    }

    pub(super) fn stream(&mut self, key: (Who, usize)) -> &mut Stream {
        let ctx = self.ctx();
        self.streams
            .get_mut(&key)
            .unwrap_or_else(|| panic!("{ctx}: no stream {key:?}"))
    }
}
