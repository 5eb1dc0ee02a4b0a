//! Host bindings of every WIT version the host serves. The host works in
//! the newest version's types (re-exported here); [`super::v0_1`] adapts
//! components built against 0.1.0.

/// `artifactapi:plugin@0.1.0`, frozen.
pub mod v0_1 {
    wasmtime::component::bindgen!({
        path: "../wit/since_v0.1.0",
        world: "plugin",
        imports: { default: async | trappable },
        exports: { default: async },
    });
}

/// `artifactapi:plugin@0.2.0`, the version the host speaks.
pub mod v0_2 {
    wasmtime::component::bindgen!({
        path: "../wit/since_v0.2.0",
        world: "plugin",
        imports: { default: async | trappable },
        exports: { default: async },
    });
}

pub use v0_2::*;
