//! The maps of the data path. Names, sizes and layouts come from `lb_common::datapath`;
//! userspace (lb-userspace's `dataplane` module) opens them by the same names.
use aya_ebpf::{
    Global,
    bindings::BPF_F_MMAPABLE,
    macros::map,
    maps::{Array, PerCpuArray},
};
use lb_common::{
    ExitReason, StatCounter,
    datapath::{
        DEFAULT_FLOW_TABLE_SIZE, FlowBucket4, FlowBucket6, GatewayValue, MAX_GATEWAYS, MAX_VIPS,
        NodeConfig, RING_CHUNKS, RingChunk, VIP_FILTER_BITS, VIP_TABLE_SLOTS, VipSlot, VipStats,
        flow_buckets,
    },
};

/// Services (address, port, protocol) and address-only entries, open-addressed.
#[map(name = "VIPS")]
pub static VIPS: Array<VipSlot> = Array::with_max_entries(VIP_TABLE_SLOTS, 0);

/// The VIP address prefilter: one bit per hashed destination address.
#[map(name = "VIP_FILTER")]
pub static VIP_FILTER: Array<u64> = Array::with_max_entries(VIP_FILTER_BITS / 64, 0);

/// Active ring copy (0 or 1) per VIP id. Userspace flips it after writing the other copy.
#[map(name = "RING_SELECT")]
pub static RING_SELECT: Array<u32> = Array::with_max_entries(MAX_VIPS, 0);

/// Two Maglev rings of `RING_SIZE` gateway ids per VIP id, 32 16-bit slots per entry
/// (`RING_CHUNKS` entries per ring copy; `ring_entry` finds a slot).
#[map(name = "RINGS")]
pub static RINGS: Array<RingChunk> = Array::with_max_entries(MAX_VIPS * 2 * RING_CHUNKS, 0);

/// Gateway nodes by id.
#[map(name = "GATEWAYS")]
pub static GATEWAYS: Array<GatewayValue> = Array::with_max_entries(MAX_GATEWAYS, 0);

/// This node (one entry).
#[map(name = "NODE")]
pub static NODE: Array<NodeConfig> = Array::with_max_entries(1, 0);

/// Buckets of each connection table: set by the loader with the tables' size
/// (`map_names::FLOW_BUCKETS`; the default matches the compiled-in map size).
#[unsafe(no_mangle)]
pub static FLOW_BUCKETS: Global<u32> = Global::new(flow_buckets(DEFAULT_FLOW_TABLE_SIZE));

/// The connection table of IPv4 flows: buckets of four entries (see the connection tables
/// in `lb_common::datapath`). Its size is set by the loader.
///
/// `BPF_F_MMAPABLE` is for alignment, not for mapping: an ordinary array map's values start
/// 312 bytes into its allocation (after `struct bpf_array`, Linux 6.18), so every 64-byte
/// bucket would straddle two cache lines; a mappable array's values start on a page.
#[map(name = "FLOWS4")]
pub static FLOWS4: Array<FlowBucket4> =
    Array::with_max_entries(flow_buckets(DEFAULT_FLOW_TABLE_SIZE), BPF_F_MMAPABLE);

/// The connection table of IPv6 flows. Its size is set by the loader. Page-aligned like
/// `FLOWS4`.
#[map(name = "FLOWS6")]
pub static FLOWS6: Array<FlowBucket6> =
    Array::with_max_entries(flow_buckets(DEFAULT_FLOW_TABLE_SIZE), BPF_F_MMAPABLE);

/// One counter per [`ExitReason`]; every exit path bumps exactly one.
#[map(name = "EXIT_STATS")]
pub static EXIT_STATS: PerCpuArray<StatCounter> =
    PerCpuArray::with_max_entries(ExitReason::COUNT, 0);

/// Per-VIP packets, bytes and new flows.
#[map(name = "VIP_STATS")]
pub static VIP_STATS: PerCpuArray<VipStats> = PerCpuArray::with_max_entries(MAX_VIPS, 0);

/// Per-gateway packets and bytes sent to it (or passed locally).
#[map(name = "GATEWAY_STATS")]
pub static GATEWAY_STATS: PerCpuArray<StatCounter> = PerCpuArray::with_max_entries(MAX_GATEWAYS, 0);
