//! `eqx_msg_core`: the eqx_msg checkpoint format without Python.
//!
//! An eqx_msg file is a 16-byte prefix (`EQXMSG`, u16 version, u64 header length), a msgpack
//! header describing a JAX/Equinox pytree and its array leaves, zero padding to the header's
//! alignment, then the raw bytes of every leaf (see `docs/FORMAT.md`). This crate validates
//! and reads such files zero-copy, and assembles them from an encoded header and leaf buffers.
//!
//! ```no_run
//! use eqx_msg_core::MappedFile;
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let file = MappedFile::open("model.eqx")?;
//! let reader = file.reader()?; // prefix, header and length all checked
//! for (i, leaf) in reader.header().leaves.iter().enumerate() {
//!     let bytes = reader.leaf_bytes(i).unwrap_or(&[]);
//!     println!("{} {} {:?}: {} bytes", leaf.path, leaf.dtype, leaf.shape, bytes.len());
//! }
//! # Ok(())
//! # }
//! ```

#![warn(missing_docs)]

pub mod checksum;
pub mod dtype;
pub mod error;
pub mod frame;
pub mod fuzzing;
pub mod header;
pub mod layout;
pub mod msgpack;
pub mod positional;
pub mod reader;
pub mod subbyte;
pub mod tree;
pub mod writer;

pub use error::{Error, ErrorKind, LeafRef, Result};
pub use frame::{
    align_up, data_start, encode_prefix, parse_prefix, MAGIC, MAX_ALIGNMENT, MAX_DEPTH,
    MAX_HEADER_LEN, MAX_NDIM, MIN_ALIGNMENT, PREFIX_LEN, VERSION,
};
pub use header::{Checksums, Header, LeafKind, LeafSpec, Sharding, SpecEntry};
pub use msgpack::RawValue;
pub use reader::{parse_head, Head, MappedFile, Reader, StreamVerifier};
pub use rmpv;
pub use writer::{assemble, assemble_into, parallel_copy, total_len, write_range, Frame, Front};

#[cfg(test)]
#[path = "../tests/common/mod.rs"]
mod testutil;
