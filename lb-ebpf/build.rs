//! The eBPF object is linked by `bpf-linker`, which cargo does not know about: rebuild
//! when the linker binary changes so a new linker is never ignored.
fn main() {
    // Host builds (clippy, check) do not link with bpf-linker; only the BPF target does.
    if std::env::var("CARGO_CFG_TARGET_ARCH").as_deref() != Ok("bpf") {
        return;
    }
    match which::which("bpf-linker") {
        Ok(path) => println!("cargo:rerun-if-changed={}", path.display()),
        Err(err) => println!("cargo:warning=bpf-linker not found ({err}); run `cargo xtask setup`"),
    }
}
