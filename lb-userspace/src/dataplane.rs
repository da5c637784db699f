//! Loading, attaching and reading the XDP programs. This is the only module that touches
//! aya; everything else talks to the data path through it.
//!
//! Two eBPF objects are embedded in the binary at build time (see `build.rs`):
//! * `lb-xdp`: the load-balancing program `lb_xdp` and its maps;
//! * `lb-xdp-pass`: map-less helpers, `xdp_pass` (the lab attaches it to veth peers that
//!   receive XDP_TX frames) and `xdp_floor` (the benchmark's floor);
//! * `lb-xdp-probe`: `xdp_probe`, the benchmark's memory probe (one random line of an
//!   array map as big as a connection table).
use std::{
    ffi::CString,
    io,
    path::{Path, PathBuf},
};

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, Map, MapData, PerCpuArray},
    programs::{
        TestRun, TestRunOptions, Xdp, XdpMode,
        links::{FdLink, PinnedLink},
    },
};
use lb_common::{
    ExitReason, StatCounter,
    datapath::{
        FLOW_WAYS, FlowBucket4, FlowBucket6, FlowKey, FlowKey4, FlowValue, FlowWays as _,
        GatewayValue, MAX_GATEWAYS, MAX_VIPS, NodeConfig, RING_CHUNK_SLOTS, RING_CHUNKS,
        RING_NO_GATEWAY, RING_SIZE, RingChunk, VIP_PROBES, VIP_SLOT_USED, VIP_TABLE_SLOTS, VipKey,
        VipSlot, VipStats, VipValue, flow_buckets, flow_entry4_decode, flow_entry6_decode,
        map_names, ring_slot_gateway, ring_slot_value, vip_filter_bit, vip_slot_hash,
    },
};

/// The data-path object, built from `lb-ebpf/src/main.rs`.
pub static LB_XDP_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/lb-xdp"));
/// The helper object, built from `lb-ebpf/src/bin/lb-xdp-pass.rs`.
pub static PASS_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/lb-xdp-pass"));
/// The memory-probe object, built from `lb-ebpf/src/bin/lb-xdp-probe.rs`.
pub static PROBE_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/lb-xdp-probe"));

/// Name of the data-path program inside [`LB_XDP_OBJECT`].
pub const LB_PROGRAM: &str = "lb_xdp";
/// Name of the per-exit-reason counter map.
pub const EXIT_STATS_MAP: &str = "EXIT_STATS";
/// File name of a pinned XDP link inside a pin directory.
pub const LINK_PIN: &str = "link";

/// What went wrong in the data-path layer, with the interface or path it concerns.
#[derive(Debug, thiserror::Error)]
pub enum DataplaneError {
    #[error("loading the eBPF object failed: {0}")]
    Load(#[source] Box<aya::EbpfError>),
    #[error("program {name} is missing from the eBPF object")]
    MissingProgram { name: &'static str },
    #[error("map {name} is missing from the eBPF object")]
    MissingMap { name: &'static str },
    #[error("program {name}: {source}")]
    Program {
        name: &'static str,
        #[source]
        source: Box<aya::programs::ProgramError>,
    },
    #[error("interface {iface:?} does not exist")]
    UnknownInterface { iface: String },
    #[error("attaching to {iface} in {mode} mode failed: {source}")]
    Attach {
        iface: String,
        mode: &'static str,
        #[source]
        source: BoxError,
    },
    #[error(
        "attaching to {iface} failed in both native and generic mode: native: {native}; generic: {generic}"
    )]
    AttachAuto {
        iface: String,
        native: BoxError,
        generic: BoxError,
    },
    #[error("map {name}: {source}")]
    Map {
        name: &'static str,
        #[source]
        source: Box<aya::maps::MapError>,
    },
    #[error("pinning at {path}: {source}")]
    Pin {
        path: PathBuf,
        #[source]
        source: Box<aya::pin::PinError>,
    },
    #[error("{what} {index} is out of range (the data path holds {max})")]
    OutOfRange {
        what: &'static str,
        index: u32,
        max: u32,
    },
    #[error(
        "no free slot for VIP entry {key:?}: its {VIP_PROBES} positions in the VIP table are taken"
    )]
    VipTableFull { key: VipKey },
    #[error("a ring must have exactly {expected} slots, got {got}")]
    RingSize { expected: u32, got: usize },
    #[error("test run of {name} failed: {source}")]
    TestRun {
        name: &'static str,
        #[source]
        source: Box<aya::programs::ProgramError>,
    },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

type Result<T, E = DataplaneError> = std::result::Result<T, E>;
type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// How to attach an XDP program.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum AttachMode {
    /// Native (driver) mode, falling back to generic with a warning.
    #[default]
    Auto,
    /// Native (driver) mode only.
    Native,
    /// Generic (skb) mode only: slower, works on any device.
    Generic,
}

/// The mode a program ended up attached in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AttachedMode {
    Native,
    Generic,
}

/// Summed over CPUs: one counter per exit reason.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ExitStats {
    counters: Vec<(ExitReason, StatCounter)>,
}

impl ExitStats {
    /// The counter of one reason.
    pub fn get(&self, reason: ExitReason) -> StatCounter {
        self.counters
            .iter()
            .find(|(r, _)| *r == reason)
            .map(|(_, c)| *c)
            .unwrap_or_default()
    }

    /// All reasons in index order.
    pub fn iter(&self) -> impl Iterator<Item = (ExitReason, StatCounter)> + '_ {
        self.counters.iter().copied()
    }

    /// Packets over all reasons: every packet the program saw.
    pub fn total_packets(&self) -> u64 {
        self.counters.iter().map(|(_, c)| c.packets).sum()
    }
}

/// Sizes chosen at load time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LoadOptions {
    /// Entries of each of the two connection tables, `FLOWS4` and `FLOWS6` (rounded up to
    /// whole buckets of four): the data path keeps up to this many IPv4 flows and,
    /// separately, as many IPv6 flows. Kernel memory, allocated at load: 16 bytes per IPv4
    /// entry and 40 per IPv6 entry (56 bytes per unit of this size; see docs/datapath.md).
    /// At least 1.
    pub flow_table_size: u32,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            flow_table_size: lb_common::datapath::DEFAULT_FLOW_TABLE_SIZE,
        }
    }
}

/// How long the ring writer waits after flipping a VIP's ring before it writes the copy
/// that was active: longer than any run of the XDP program (microseconds), so no packet
/// that read the old selector can still be reading that copy.
pub const RING_GRACE: Duration = Duration::from_millis(5);

/// Per-VIP state of the double-buffered ring writer.
#[derive(Debug)]
struct RingShadow {
    /// What userspace last wrote to each copy (both start zero-filled, as the kernel's).
    copies: [Vec<u32>; 2],
    active: u32,
    flipped: Option<Instant>,
}

/// The loaded data-path program and its maps.
#[derive(Debug)]
pub struct Dataplane {
    ebpf: Ebpf,
    /// Links of unpinned attachments: dropping one detaches the program.
    links: Vec<FdLink>,
    rings: HashMap<u32, RingShadow>,
    /// The `VIPS` entries this writer made (slot and value), the occupied slots, and how
    /// many entries share each prefilter bit.
    vip_entries: HashMap<VipKey, (u32, VipValue)>,
    vip_slots: HashMap<u32, VipKey>,
    filter_counts: HashMap<u32, u32>,
}

impl Dataplane {
    /// Loads [`LB_XDP_OBJECT`] into the kernel (maps created, program verified), not
    /// attached yet, with the default sizes.
    pub fn load() -> Result<Self> {
        Self::load_with(&LoadOptions::default())
    }

    /// Loads [`LB_XDP_OBJECT`] with the given sizes.
    pub fn load_with(opts: &LoadOptions) -> Result<Self> {
        let buckets = flow_buckets(opts.flow_table_size.max(1));
        let mut ebpf = EbpfLoader::new()
            .map_max_entries(map_names::FLOWS4, buckets)
            .map_max_entries(map_names::FLOWS6, buckets)
            .override_global(map_names::FLOW_BUCKETS, &buckets, true)
            .load(LB_XDP_OBJECT)
            .map_err(|e| DataplaneError::Load(Box::new(e)))?;
        xdp_program(&mut ebpf, LB_PROGRAM)?
            .load()
            .map_err(|e| program_error(LB_PROGRAM, e))?;
        Ok(Dataplane {
            ebpf,
            links: Vec::new(),
            rings: HashMap::new(),
            vip_entries: HashMap::new(),
            vip_slots: HashMap::new(),
            filter_counts: HashMap::new(),
        })
    }

    fn map_mut(&mut self, name: &'static str) -> Result<&mut Map> {
        self.ebpf
            .map_mut(name)
            .ok_or(DataplaneError::MissingMap { name })
    }

    fn map(&self, name: &'static str) -> Result<&Map> {
        self.ebpf
            .map(name)
            .ok_or(DataplaneError::MissingMap { name })
    }

    /// Sets this node's addresses and MAC (the `NODE` map).
    pub fn set_node(&mut self, node: &NodeConfig) -> Result<()> {
        let name = map_names::NODE;
        let mut a = Array::<_, NodeConfig>::try_from(self.map_mut(name)?).map_err(map_err(name))?;
        a.set(0, node, 0).map_err(map_err(name))
    }

    /// Sets gateway `id` (`flags = 0` takes it out: its flows are re-hashed).
    pub fn set_gateway(&mut self, id: u32, gw: &GatewayValue) -> Result<()> {
        check_range("gateway id", id, MAX_GATEWAYS)?;
        let name = map_names::GATEWAYS;
        let mut a =
            Array::<_, GatewayValue>::try_from(self.map_mut(name)?).map_err(map_err(name))?;
        a.set(id, gw, 0).map_err(map_err(name))
    }

    /// Gateway `id` as the map holds it.
    pub fn gateway(&self, id: u32) -> Result<GatewayValue> {
        check_range("gateway id", id, MAX_GATEWAYS)?;
        let name = map_names::GATEWAYS;
        let a = Array::<_, GatewayValue>::try_from(self.map(name)?).map_err(map_err(name))?;
        a.get(&id, 0).map_err(map_err(name))
    }

    /// Adds or replaces a VIP entry (a service, or an address entry with
    /// [`lb_common::datapath::VIP_F_ADDRESS`]). Write the VIP's ring first.
    ///
    /// The `VIPS` table is open-addressed in an array: the entry goes to a free slot among
    /// the [`VIP_PROBES`] positions from its hash. A slot is written twice, first with the
    /// entry marked free and then marked used, so a packet reading it concurrently sees
    /// either no entry or the whole new one. A changed value goes to another free slot of
    /// its probe range before the old slot is freed, so the VIP never disappears.
    pub fn set_vip(&mut self, key: &VipKey, value: &VipValue) -> Result<()> {
        // Address entries carry an id too (0 by convention); all are below MAX_VIPS.
        check_range("VIP id", value.id, MAX_VIPS)?;
        let old = self.vip_entries.get(key).copied();
        if let Some((_, v)) = old
            && v == *value
        {
            return Ok(());
        }
        if old.is_none() {
            // The prefilter bit goes up before the entry exists, so no packet for the new
            // entry is passed by the filter.
            let bit = vip_filter_bit(&key.addr);
            let count = self.filter_counts.entry(bit).or_insert(0);
            *count += 1;
            if *count == 1 {
                self.set_filter_bit(bit, true)?;
            }
        }
        let h = vip_slot_hash(key);
        let free = (0..VIP_PROBES)
            .map(|i| (h + i) & (VIP_TABLE_SLOTS - 1))
            .find(|s| !self.vip_slots.contains_key(s));
        match (free, old) {
            (Some(slot), _) => {
                self.write_vip_slot(slot, key, value, 0)?;
                self.write_vip_slot(slot, key, value, VIP_SLOT_USED)?;
                self.vip_slots.insert(slot, *key);
                if let Some((old_slot, old_value)) = old {
                    self.write_vip_slot(old_slot, key, &old_value, 0)?;
                    self.vip_slots.remove(&old_slot);
                }
                self.vip_entries.insert(*key, (slot, *value));
                Ok(())
            }
            (None, Some((slot, old_value))) => {
                // No spare slot: free the entry, let every packet that may have read it
                // finish, then write the new value.
                self.write_vip_slot(slot, key, &old_value, 0)?;
                std::thread::sleep(RING_GRACE);
                self.write_vip_slot(slot, key, value, 0)?;
                self.write_vip_slot(slot, key, value, VIP_SLOT_USED)?;
                self.vip_entries.insert(*key, (slot, *value));
                Ok(())
            }
            (None, None) => Err(DataplaneError::VipTableFull { key: *key }),
        }
    }

    fn write_vip_slot(
        &mut self,
        slot: u32,
        key: &VipKey,
        value: &VipValue,
        state: u32,
    ) -> Result<()> {
        let name = map_names::VIPS;
        let mut a = Array::<_, VipSlot>::try_from(self.map_mut(name)?).map_err(map_err(name))?;
        let v = VipSlot {
            key: *key,
            value: *value,
            state,
        };
        a.set(slot, v, 0).map_err(map_err(name))
    }

    fn set_filter_bit(&mut self, bit: u32, on: bool) -> Result<()> {
        let name = map_names::VIP_FILTER;
        let mut a = Array::<_, u64>::try_from(self.map_mut(name)?).map_err(map_err(name))?;
        let word = a.get(&(bit / 64), 0).map_err(map_err(name))?;
        let mask = 1u64 << (bit % 64);
        let word = if on { word | mask } else { word & !mask };
        a.set(bit / 64, word, 0).map_err(map_err(name))
    }

    /// Removes a VIP entry; removing one that is not there is not an error.
    pub fn remove_vip(&mut self, key: &VipKey) -> Result<()> {
        let Some((slot, value)) = self.vip_entries.remove(key) else {
            return Ok(());
        };
        self.write_vip_slot(slot, key, &value, 0)?;
        self.vip_slots.remove(&slot);
        let bit = vip_filter_bit(&key.addr);
        if let Some(count) = self.filter_counts.get_mut(&bit) {
            *count -= 1;
            if *count == 0 {
                self.filter_counts.remove(&bit);
                self.set_filter_bit(bit, false)?;
            }
        }
        Ok(())
    }

    /// The live VIP entries, read back from the kernel's table.
    pub fn vips(&self) -> Result<Vec<(VipKey, VipValue)>> {
        let name = map_names::VIPS;
        let a = Array::<_, VipSlot>::try_from(self.map(name)?).map_err(map_err(name))?;
        let mut out = Vec::new();
        for slot in a.iter() {
            let slot = slot.map_err(map_err(name))?;
            if slot.state == VIP_SLOT_USED {
                out.push((slot.key, slot.value));
            }
        }
        Ok(out)
    }

    /// Installs `ring` (exactly [`RING_SIZE`] slots, each a gateway id below
    /// [`MAX_GATEWAYS`] or `NO_GATEWAY`, Maglev's slot of a ring without gateways) as
    /// VIP `vip_id`'s ring without a packet ever seeing a half-written ring: the inactive
    /// copy is written (only the `RINGS` entries of 32 slots that hold a slot that differs
    /// from what the copy holds), then the selector flips to it in one 4-byte write.
    /// Returns the number of slots that changed.
    pub fn write_ring(&mut self, vip_id: u32, ring: &[u32]) -> Result<usize> {
        check_range("VIP id", vip_id, MAX_VIPS)?;
        if ring.len() != RING_SIZE as usize {
            return Err(DataplaneError::RingSize {
                expected: RING_SIZE,
                got: ring.len(),
            });
        }
        // Every slot must be storable in 16 bits: a gateway id, or none.
        if let Some(gw) = ring.iter().find(|gw| ring_slot_value(**gw).is_none()) {
            return Err(DataplaneError::OutOfRange {
                what: "gateway id in a ring",
                index: *gw,
                max: MAX_GATEWAYS,
            });
        }
        let shadow = self.rings.entry(vip_id).or_insert_with(|| RingShadow {
            copies: [vec![0; RING_SIZE as usize], vec![0; RING_SIZE as usize]],
            active: 0,
            flipped: None,
        });
        if let Some(at) = shadow.flipped {
            let since = at.elapsed();
            if since < RING_GRACE {
                std::thread::sleep(RING_GRACE - since);
            }
        }
        let target = 1 - shadow.active;
        let name = map_names::RINGS;
        let map = self
            .ebpf
            .map_mut(name)
            .ok_or(DataplaneError::MissingMap { name })?;
        let mut rings = Array::<_, RingChunk>::try_from(map).map_err(map_err(name))?;
        let base = (vip_id * 2 + target) * RING_CHUNKS;
        let copy = &mut shadow.copies[target as usize];
        let mut written = 0;
        let chunk = RING_CHUNK_SLOTS as usize;
        for (i, (old, new)) in copy.chunks_mut(chunk).zip(ring.chunks(chunk)).enumerate() {
            let changed = old.iter().zip(new).filter(|(o, n)| o != n).count();
            if changed == 0 {
                continue;
            }
            let mut entry = RingChunk::default();
            for (slot, gw) in entry.slots.iter_mut().zip(new) {
                // Checked above: every slot is storable.
                *slot = ring_slot_value(*gw).unwrap_or(RING_NO_GATEWAY);
            }
            rings
                .set(base + i as u32, entry, 0)
                .map_err(map_err(name))?;
            old.copy_from_slice(new);
            written += changed;
        }
        let name = map_names::RING_SELECT;
        let map = self
            .ebpf
            .map_mut(name)
            .ok_or(DataplaneError::MissingMap { name })?;
        let mut select = Array::<_, u32>::try_from(map).map_err(map_err(name))?;
        select.set(vip_id, target, 0).map_err(map_err(name))?;
        shadow.active = target;
        shadow.flipped = Some(Instant::now());
        Ok(written)
    }

    /// The ring copy the data path currently uses for `vip_id`, read back from the kernel.
    pub fn active_ring(&self, vip_id: u32) -> Result<Vec<u32>> {
        check_range("VIP id", vip_id, MAX_VIPS)?;
        let name = map_names::RING_SELECT;
        let select = Array::<_, u32>::try_from(self.map(name)?).map_err(map_err(name))?;
        let active = select.get(&vip_id, 0).map_err(map_err(name))? & 1;
        let name = map_names::RINGS;
        let rings = Array::<_, RingChunk>::try_from(self.map(name)?).map_err(map_err(name))?;
        let base = (vip_id * 2 + active) * RING_CHUNKS;
        let mut ring = Vec::with_capacity((RING_CHUNKS * RING_CHUNK_SLOTS) as usize);
        for i in 0..RING_CHUNKS {
            let entry = rings.get(&(base + i), 0).map_err(map_err(name))?;
            ring.extend(entry.slots.iter().map(|v| ring_slot_gateway(*v)));
        }
        ring.truncate(RING_SIZE as usize);
        Ok(ring)
    }

    /// The entries of both connection tables, IPv4 flows as [`FlowKey`]s of family 4
    /// (walks both tables: for tests and diagnostics).
    pub fn flows(&self) -> Result<Vec<(FlowKey, FlowValue)>> {
        let mut all: Vec<_> = self
            .flows4()?
            .into_iter()
            .map(|(k, v)| (k.flow_key(), v))
            .collect();
        all.extend(self.flows6()?);
        Ok(all)
    }

    /// The flows of the IPv4 connection table, `FLOWS4`, by their compact keys (reads
    /// every bucket: one system call each).
    pub fn flows4(&self) -> Result<Vec<(FlowKey4, FlowValue)>> {
        let buckets = self.buckets::<FlowBucket4>(map_names::FLOWS4)?;
        Ok(buckets
            .iter()
            .flat_map(|b| (0..FLOW_WAYS).filter_map(|i| flow_entry4_decode(&b.entry(i))))
            .collect())
    }

    /// The flows of the IPv6 connection table, `FLOWS6`.
    pub fn flows6(&self) -> Result<Vec<(FlowKey, FlowValue)>> {
        let buckets = self.buckets::<FlowBucket6>(map_names::FLOWS6)?;
        Ok(buckets
            .iter()
            .flat_map(|b| (0..FLOW_WAYS).filter_map(|i| flow_entry6_decode(&b.entry(i))))
            .collect())
    }

    /// Every bucket of the connection table `name`.
    fn buckets<B: aya::Pod>(&self, name: &'static str) -> Result<Vec<B>> {
        let a = Array::<_, B>::try_from(self.map(name)?).map_err(map_err(name))?;
        a.iter()
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(map_err(name))
    }

    /// Per-VIP counters of `vip_id`, summed over CPUs.
    pub fn vip_stats(&self, vip_id: u32) -> Result<VipStats> {
        check_range("VIP id", vip_id, MAX_VIPS)?;
        let name = map_names::VIP_STATS;
        let a = PerCpuArray::<_, VipStats>::try_from(self.map(name)?).map_err(map_err(name))?;
        let per_cpu = a.get(&vip_id, 0).map_err(map_err(name))?;
        Ok(per_cpu.iter().fold(VipStats::default(), |acc, c| VipStats {
            packets: acc.packets + c.packets,
            bytes: acc.bytes + c.bytes,
            new_flows: acc.new_flows + c.new_flows,
        }))
    }

    /// Per-gateway counters of gateway `id`, summed over CPUs.
    pub fn gateway_stats(&self, id: u32) -> Result<StatCounter> {
        check_range("gateway id", id, MAX_GATEWAYS)?;
        let name = map_names::GATEWAY_STATS;
        let a = PerCpuArray::<_, StatCounter>::try_from(self.map(name)?).map_err(map_err(name))?;
        let per_cpu = a.get(&id, 0).map_err(map_err(name))?;
        Ok(sum_counters(per_cpu.iter()))
    }

    /// Runs the program once over `frame` with BPF_PROG_TEST_RUN (no interface needed).
    /// Returns the verdict, the frame as the program left it, and the kernel's timing.
    pub fn test_run(&self, frame: &[u8]) -> Result<TestRunOutput> {
        test_run_xdp(loaded_xdp(&self.ebpf, LB_PROGRAM)?, LB_PROGRAM, frame, 1)
    }

    /// Runs the program `repeat` times over one copy of `frame` inside one
    /// BPF_PROG_TEST_RUN (the kernel re-runs it on the same buffer, so only meaningful for
    /// frames the program does not rewrite). `duration` is the kernel's mean per run.
    pub fn test_run_repeated(&self, frame: &[u8], repeat: u32) -> Result<TestRunOutput> {
        test_run_xdp(
            loaded_xdp(&self.ebpf, LB_PROGRAM)?,
            LB_PROGRAM,
            frame,
            repeat,
        )
    }

    /// Attaches the data path to `iface` (in the calling thread's network namespace) for
    /// as long as this value lives.
    pub fn attach(&mut self, iface: &str, mode: AttachMode) -> Result<AttachedMode> {
        let prog = xdp_program(&mut self.ebpf, LB_PROGRAM)?;
        let (link, mode) = attach_xdp(prog, iface, mode)?;
        self.links.push(link);
        Ok(mode)
    }

    /// Attaches the data path to `iface` and pins the link and the counter map in `dir`,
    /// so that they outlive this process. [`detach_pinned`] undoes it.
    pub fn attach_pinned(
        &mut self,
        iface: &str,
        mode: AttachMode,
        dir: &Path,
    ) -> Result<AttachedMode> {
        std::fs::create_dir_all(dir).map_err(|source| DataplaneError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        let prog = xdp_program(&mut self.ebpf, LB_PROGRAM)?;
        let (link, mode) = attach_xdp(prog, iface, mode)?;
        pin_link(link, &dir.join(LINK_PIN))?;
        let stats_path = dir.join(EXIT_STATS_MAP);
        self.ebpf
            .map(EXIT_STATS_MAP)
            .ok_or(DataplaneError::MissingMap {
                name: EXIT_STATS_MAP,
            })?
            .pin(&stats_path)
            .map_err(|e| DataplaneError::Pin {
                path: stats_path,
                source: Box::new(e),
            })?;
        Ok(mode)
    }

    /// The per-exit-reason counters, summed over CPUs.
    pub fn exit_stats(&self) -> Result<ExitStats> {
        let map = self
            .ebpf
            .map(EXIT_STATS_MAP)
            .ok_or(DataplaneError::MissingMap {
                name: EXIT_STATS_MAP,
            })?;
        let array = PerCpuArray::<_, StatCounter>::try_from(map).map_err(map_error)?;
        read_exit_stats(&array)
    }
}

/// One BPF_PROG_TEST_RUN of an XDP program.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TestRunOutput {
    /// `XDP_ABORTED` 0, `XDP_DROP` 1, `XDP_PASS` 2, `XDP_TX` 3.
    pub action: u32,
    pub frame: Vec<u8>,
    /// The kernel's measure of the run.
    pub duration: Duration,
}

fn test_run_xdp(
    prog: &Xdp,
    name: &'static str,
    frame: &[u8],
    repeat: u32,
) -> Result<TestRunOutput> {
    // Room for the largest growth (an IPv6 outer header) and then some.
    let mut out = vec![0u8; frame.len() + 256];
    let r = prog
        .test_run(TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut out),
            repeat,
            ..TestRunOptions::default()
        })
        .map_err(|e| DataplaneError::TestRun {
            name,
            source: Box::new(e),
        })?;
    out.truncate(r.data_size_out as usize);
    Ok(TestRunOutput {
        action: r.return_value,
        frame: out,
        duration: r.duration,
    })
}

/// The map-less helper programs, loaded for test runs (the benchmark's floor).
#[derive(Debug)]
pub struct HelperPrograms {
    ebpf: Ebpf,
}

impl HelperPrograms {
    /// Loads [`PASS_OBJECT`] and its programs `xdp_pass` and `xdp_floor`.
    pub fn load() -> Result<Self> {
        let mut ebpf = Ebpf::load(PASS_OBJECT).map_err(|e| DataplaneError::Load(Box::new(e)))?;
        for name in ["xdp_pass", "xdp_floor"] {
            xdp_program(&mut ebpf, name)?
                .load()
                .map_err(|e| program_error(name, e))?;
        }
        Ok(HelperPrograms { ebpf })
    }

    /// `repeat` runs of `xdp_floor` inside one test run.
    pub fn floor_run_repeated(&self, frame: &[u8], repeat: u32) -> Result<TestRunOutput> {
        let name = "xdp_floor";
        test_run_xdp(loaded_xdp(&self.ebpf, name)?, name, frame, repeat)
    }

    /// One test run of `xdp_floor` (returns XDP_TX and touches nothing).
    pub fn floor_run(&self, frame: &[u8]) -> Result<TestRunOutput> {
        let name = "xdp_floor";
        test_run_xdp(loaded_xdp(&self.ebpf, name)?, name, frame, 1)
    }
}

/// The benchmark's memory probe: `xdp_probe` and its array map of 64-byte lines.
#[derive(Debug)]
pub struct MemoryProbe {
    ebpf: Ebpf,
    lines: u32,
}

impl MemoryProbe {
    /// Bytes of one line of the probe's map.
    pub const LINE_BYTES: u64 = 64;

    /// Loads [`PROBE_OBJECT`] with a map of `lines` lines (zeroed by the kernel).
    pub fn load(lines: u32) -> Result<Self> {
        let name = "xdp_probe";
        let mut ebpf = EbpfLoader::new()
            .map_max_entries("PROBE_LINES", lines)
            .load(PROBE_OBJECT)
            .map_err(|e| DataplaneError::Load(Box::new(e)))?;
        xdp_program(&mut ebpf, name)?
            .load()
            .map_err(|e| program_error(name, e))?;
        Ok(MemoryProbe { ebpf, lines })
    }

    /// Lines in the probe's map.
    pub fn lines(&self) -> u32 {
        self.lines
    }

    /// The frame that makes `xdp_probe` read line `index`: the index in its first four
    /// bytes, padded to a minimal Ethernet frame.
    pub fn frame(&self, index: u32) -> Result<Vec<u8>> {
        check_range("memory-probe line", index, self.lines)?;
        let mut frame = vec![0u8; 60];
        frame[..4].copy_from_slice(&index.to_ne_bytes());
        Ok(frame)
    }

    /// One test run of `xdp_probe` on `frame` (XDP_TX when it read a line).
    pub fn run(&self, frame: &[u8]) -> Result<TestRunOutput> {
        let name = "xdp_probe";
        test_run_xdp(loaded_xdp(&self.ebpf, name)?, name, frame, 1)
    }
}

fn check_range(what: &'static str, index: u32, max: u32) -> Result<()> {
    if index < max {
        Ok(())
    } else {
        Err(DataplaneError::OutOfRange { what, index, max })
    }
}

fn sum_counters<'a>(it: impl Iterator<Item = &'a StatCounter>) -> StatCounter {
    it.fold(StatCounter::default(), |acc, c| StatCounter {
        packets: acc.packets + c.packets,
        bytes: acc.bytes + c.bytes,
    })
}

fn map_err(name: &'static str) -> impl Fn(aya::maps::MapError) -> DataplaneError {
    move |e| DataplaneError::Map {
        name,
        source: Box::new(e),
    }
}

/// Reads the counters of a data path attached with [`Dataplane::attach_pinned`].
pub fn pinned_exit_stats(dir: &Path) -> Result<ExitStats> {
    let path = dir.join(EXIT_STATS_MAP);
    let data = MapData::from_pin(&path).map_err(map_error)?;
    let map = Map::from_map_data(data).map_err(map_error)?;
    let array = PerCpuArray::<_, StatCounter>::try_from(map).map_err(map_error)?;
    read_exit_stats(&array)
}

/// Detaches a pinned program (removing the link pin detaches it) and removes the pins in
/// `dir`. Missing pins are not an error: the result is the same.
pub fn detach_pinned(dir: &Path) -> Result<()> {
    match std::fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(DataplaneError::Io {
            path: dir.to_path_buf(),
            source,
        }),
    }
}

/// Attaches `xdp_pass` to `iface` (in the calling thread's network namespace) and pins
/// the link at `pin`, so it stays attached after this process exits; removing the pin
/// file (or deleting the interface) detaches it.
pub fn attach_pass_pinned(iface: &str, pin: &Path) -> Result<AttachedMode> {
    let mut ebpf = Ebpf::load(PASS_OBJECT).map_err(|e| DataplaneError::Load(Box::new(e)))?;
    let prog = xdp_program(&mut ebpf, "xdp_pass")?;
    prog.load().map_err(|e| program_error("xdp_pass", e))?;
    let (link, mode) = attach_xdp(prog, iface, AttachMode::Auto)?;
    if let Some(parent) = pin.parent() {
        std::fs::create_dir_all(parent).map_err(|source| DataplaneError::Io {
            path: parent.to_path_buf(),
            source,
        })?;
    }
    pin_link(link, pin)?;
    Ok(mode)
}

fn read_exit_stats<T: std::borrow::Borrow<MapData>>(
    array: &PerCpuArray<T, StatCounter>,
) -> Result<ExitStats> {
    let mut counters = Vec::with_capacity(ExitReason::ALL.len());
    for reason in ExitReason::ALL {
        let per_cpu = array.get(&(reason as u32), 0).map_err(map_error)?;
        counters.push((reason, sum_counters(per_cpu.iter())));
    }
    Ok(ExitStats { counters })
}

/// A loaded XDP program of `ebpf`, for test runs.
fn loaded_xdp<'a>(ebpf: &'a Ebpf, name: &'static str) -> Result<&'a Xdp> {
    ebpf.program(name)
        .ok_or(DataplaneError::MissingProgram { name })?
        .try_into()
        .map_err(|e| program_error(name, e))
}

fn xdp_program<'a>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut Xdp> {
    ebpf.program_mut(name)
        .ok_or(DataplaneError::MissingProgram { name })?
        .try_into()
        .map_err(|e| program_error(name, e))
}

/// Attaches in the requested mode; `Auto` tries native first and falls back to generic
/// with a warning. Returns the link, detached from the program's ownership so the caller
/// decides its lifetime.
fn attach_xdp(prog: &mut Xdp, iface: &str, mode: AttachMode) -> Result<(FdLink, AttachedMode)> {
    let ifindex = if_index(iface)?;
    let attach = |prog: &mut Xdp, m: XdpMode| -> std::result::Result<FdLink, BoxError> {
        let id = prog.attach_to_if_index(ifindex, m)?;
        let link = prog.take_link(id)?;
        Ok(FdLink::try_from(link)?)
    };
    let failed = |mode: &'static str, source: BoxError| DataplaneError::Attach {
        iface: iface.to_owned(),
        mode,
        source,
    };
    match mode {
        AttachMode::Native => attach(prog, XdpMode::Driver)
            .map(|l| (l, AttachedMode::Native))
            .map_err(|e| failed("native", e)),
        AttachMode::Generic => attach(prog, XdpMode::Skb)
            .map(|l| (l, AttachedMode::Generic))
            .map_err(|e| failed("generic", e)),
        AttachMode::Auto => match attach(prog, XdpMode::Driver) {
            Ok(l) => Ok((l, AttachedMode::Native)),
            Err(native) => {
                tracing::warn!(%iface, error = %native, "native XDP attach failed; falling back to generic mode");
                match attach(prog, XdpMode::Skb) {
                    Ok(l) => Ok((l, AttachedMode::Generic)),
                    Err(generic) => Err(DataplaneError::AttachAuto {
                        iface: iface.to_owned(),
                        native,
                        generic,
                    }),
                }
            }
        },
    }
}

fn pin_link(link: FdLink, path: &Path) -> Result<PinnedLink> {
    link.pin(path).map_err(|e| DataplaneError::Pin {
        path: path.to_path_buf(),
        source: Box::new(e),
    })
}

/// The interface's index in the calling thread's network namespace.
pub fn if_index(iface: &str) -> Result<u32> {
    let unknown = || DataplaneError::UnknownInterface {
        iface: iface.to_owned(),
    };
    let c = CString::new(iface).map_err(|_| unknown())?;
    // SAFETY: `c` is a valid NUL-terminated string for the duration of the call.
    let index = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if index == 0 {
        Err(unknown())
    } else {
        Ok(index)
    }
}

fn program_error(name: &'static str, e: aya::programs::ProgramError) -> DataplaneError {
    DataplaneError::Program {
        name,
        source: Box::new(e),
    }
}

fn map_error(e: aya::maps::MapError) -> DataplaneError {
    DataplaneError::Map {
        name: EXIT_STATS_MAP,
        source: Box::new(e),
    }
}
