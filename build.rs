//! Compiles the shim through which the crate reaches two internal functions of Paho C
//! (`csrc/paho_shim.c`). The references are weak: whichever Paho C the final binary
//! links — the one `paho-mqtt-sys` bundles (1.3.16, pinned in Cargo.toml) or a system
//! library it was pointed at — the link succeeds, and the crate checks at run time that
//! the symbols are there and that Paho C reports the version they were read from.

fn main() {
    println!("cargo:rerun-if-changed=csrc/paho_shim.c");
    cc::Build::new()
        .file("csrc/paho_shim.c")
        .warnings(true)
        .compile("aiomqtt_paho_shim");
}
