//! Loading, attaching and reading the XDP programs. This is the only module that touches
//! aya; everything else talks to the data path through it.
//!
//! Two eBPF objects are embedded in the binary at build time (see `build.rs`):
//! * `lb-xdp`: the load-balancing program `lb_xdp` and its maps;
//! * `lb-xdp-pass`: map-less helpers, `xdp_pass` (the lab attaches it to veth peers that
//!   receive XDP_TX frames) and `xdp_floor` (the benchmark's floor).
use std::{
    ffi::CString,
    io,
    path::{Path, PathBuf},
};

use aya::{
    Ebpf,
    maps::{Map, MapData, PerCpuArray},
    programs::{
        Xdp, XdpMode,
        links::{FdLink, PinnedLink},
    },
};
use lb_common::{ExitReason, StatCounter};

/// The data-path object, built from `lb-ebpf/src/main.rs`.
pub static LB_XDP_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/lb-xdp"));
/// The helper object, built from `lb-ebpf/src/bin/lb-xdp-pass.rs`.
pub static PASS_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/lb-xdp-pass"));

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

/// The loaded data-path program and its maps.
#[derive(Debug)]
pub struct Dataplane {
    ebpf: Ebpf,
    /// Links of unpinned attachments: dropping one detaches the program.
    links: Vec<FdLink>,
}

impl Dataplane {
    /// Loads [`LB_XDP_OBJECT`] into the kernel (maps created, program verified), not
    /// attached yet.
    pub fn load() -> Result<Self> {
        let mut ebpf = Ebpf::load(LB_XDP_OBJECT).map_err(|e| DataplaneError::Load(Box::new(e)))?;
        xdp_program(&mut ebpf, LB_PROGRAM)?
            .load()
            .map_err(|e| program_error(LB_PROGRAM, e))?;
        Ok(Dataplane {
            ebpf,
            links: Vec::new(),
        })
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
        let sum = per_cpu
            .iter()
            .fold(StatCounter::default(), |acc, c| StatCounter {
                packets: acc.packets + c.packets,
                bytes: acc.bytes + c.bytes,
            });
        counters.push((reason, sum));
    }
    Ok(ExitStats { counters })
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
