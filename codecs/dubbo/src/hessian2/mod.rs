//! Hessian 2 serialization: a zero-copy reader that skips any value exactly and reads
//! strings and string maps, a writer for every value type, and a materialised
//! [`Value`] for tests and tools.
//!
//! Type codes follow the Hessian 2.0 serialization specification as Dubbo's
//! hessian-lite writes it (the crate's README lists where real peers differ). String lengths count UTF-16 code
//! units; both standard UTF-8 (4-byte supplementary characters) and modified UTF-8
//! (surrogate pairs as two 3-byte sequences, as Java writes them) are accepted.

mod reader;
mod value;
mod writer;

pub use reader::{HessianError, Reader, StrSpan, DEFAULT_MAX_DEPTH, MAX_CLASS_DEFS};
pub use value::Value;
pub use writer::{TypeName, Writer, BINARY_CHUNK, STRING_CHUNK_UNITS};

/// Hessian 2 type codes used by the reader and the writer.
pub mod code {
    /// `N`: null.
    pub const NULL: u8 = b'N';
    /// `T`: true.
    pub const TRUE: u8 = b'T';
    /// `F`: false.
    pub const FALSE: u8 = b'F';
    /// `I`: 32-bit int.
    pub const INT: u8 = b'I';
    /// `L`: 64-bit long.
    pub const LONG: u8 = b'L';
    /// `Y`: long stored in 32 bits.
    pub const LONG_INT: u8 = b'Y';
    /// `D`: IEEE 754 double.
    pub const DOUBLE: u8 = b'D';
    /// `[`: double 0.0.
    pub const DOUBLE_ZERO: u8 = 0x5b;
    /// `\`: double 1.0.
    pub const DOUBLE_ONE: u8 = 0x5c;
    /// `]`: double from a signed byte.
    pub const DOUBLE_BYTE: u8 = 0x5d;
    /// `^`: double from a signed short.
    pub const DOUBLE_SHORT: u8 = 0x5e;
    /// `_`: double from an i32 count of thousandths.
    pub const DOUBLE_MILLS: u8 = 0x5f;
    /// `J`: date in milliseconds.
    pub const DATE_MILLIS: u8 = 0x4a;
    /// `K`: date in minutes.
    pub const DATE_MINUTES: u8 = 0x4b;
    /// `S`: final string chunk.
    pub const STRING_FINAL: u8 = b'S';
    /// `R`: non-final string chunk.
    pub const STRING_CHUNK: u8 = b'R';
    /// `B`: final binary chunk.
    pub const BINARY_FINAL: u8 = b'B';
    /// `A`: non-final binary chunk.
    pub const BINARY_CHUNK: u8 = b'A';
    /// `U`: typed variable-length list.
    pub const LIST_TYPED_VAR: u8 = b'U';
    /// `W`: untyped variable-length list.
    pub const LIST_UNTYPED_VAR: u8 = b'W';
    /// `V`: typed fixed-length list.
    pub const LIST_TYPED_FIXED: u8 = b'V';
    /// `X`: untyped fixed-length list.
    pub const LIST_UNTYPED_FIXED: u8 = b'X';
    /// `H`: untyped map.
    pub const MAP_UNTYPED: u8 = b'H';
    /// `M`: typed map.
    pub const MAP_TYPED: u8 = b'M';
    /// `Z`: end of a variable-length list or a map.
    pub const END: u8 = b'Z';
    /// `C`: class definition.
    pub const CLASS_DEF: u8 = b'C';
    /// `O`: object with a class-definition index.
    pub const OBJECT: u8 = b'O';
    /// `Q`: reference to an earlier object.
    pub const REF: u8 = b'Q';
}
