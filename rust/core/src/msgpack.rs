//! A minimal zero-copy msgpack cursor for the header, and [`RawValue`] for undecoded parts.
//!
//! Building an `rmpv::Value` tree costs several allocations per node, far too slow for headers
//! of 100,000 leaves; this cursor reads tokens in place, so the header can be checked (syntax,
//! UTF-8, nesting depth) and its leaf records parsed without allocating for anything but the
//! records themselves. Parts kept whole (tree, metadata, writer) are [`RawValue`]s.

use rmpv::Value;

use crate::error::{Error, Result};
use crate::frame::MAX_DEPTH;

/// One msgpack value's encoded bytes, already checked (well-formed, valid UTF-8, not too deep).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RawValue<'a> {
    bytes: &'a [u8],
}

impl<'a> RawValue<'a> {
    /// The encoded bytes.
    pub fn as_bytes(&self) -> &'a [u8] {
        self.bytes
    }

    /// Whether the value is `nil`.
    pub fn is_nil(&self) -> bool {
        self.bytes == [0xc0]
    }

    /// Whether the value is a map.
    pub fn is_map(&self) -> bool {
        matches!(self.bytes.first(), Some(0x80..=0x8f | 0xde | 0xdf))
    }

    /// Whether the value is a non-negative integer (positive fixint or uint 8/16/32/64).
    pub fn is_uint(&self) -> bool {
        matches!(self.bytes.first(), Some(0x00..=0x7f | 0xcc..=0xcf))
    }

    /// Decodes the value into an owned `rmpv::Value`.
    pub fn decode(&self) -> Result<Value> {
        let mut rd = self.bytes;
        rmpv::decode::read_value_with_max_depth(&mut rd, 2 * MAX_DEPTH + 3).map_err(|e| {
            Error::Msgpack {
                offset: (self.bytes.len() - rd.len()) as u64,
                reason: e.to_string(),
            }
        })
    }
}

/// One msgpack token; containers carry their item counts, their items follow.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Token<'a> {
    Nil,
    Bool(bool),
    UInt(u64),
    NegInt(i64),
    Float(f64),
    Str(&'a str),
    Bin(&'a [u8]),
    Ext(i8),
    Array(usize),
    Map(usize),
}

impl Token<'_> {
    /// A short description for error messages.
    pub(crate) fn describe(&self) -> String {
        match *self {
            Token::Nil => "nil".into(),
            Token::Bool(b) => format!("bool {b}"),
            Token::UInt(u) => format!("int {u}"),
            Token::NegInt(i) => format!("int {i}"),
            Token::Float(x) => format!("float {x}"),
            Token::Str(s) if s.len() <= 40 => format!("str {s:?}"),
            Token::Str(s) => format!("str of {} bytes", s.len()),
            Token::Bin(b) => format!("bin of {} bytes", b.len()),
            Token::Ext(t) => format!("ext type {t}"),
            Token::Array(n) => format!("array of {n} items"),
            Token::Map(n) => format!("map of {n} entries"),
        }
    }
}

/// Why the cursor stopped: kept small (the hot path returns it in every `Result`) and turned into
/// an [`Error`] only when it escapes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SyntaxError {
    offset: usize,
    what: Syntax,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Syntax {
    Eof { need: usize, left: usize },
    Reserved,
    Utf8,
    Oversized { len: usize, left: usize, map: bool },
    TooDeep { level: usize },
    Ext { ext_type: i8 },
}

impl From<SyntaxError> for Error {
    #[cold]
    fn from(e: SyntaxError) -> Error {
        let offset = e.offset as u64;
        let reason = match e.what {
            Syntax::Eof { need, left } => {
                format!("unexpected end of header: {need} more bytes needed, {left} left")
            }
            Syntax::Reserved => "reserved marker byte 0xc1".into(),
            Syntax::Utf8 => "invalid UTF-8 in a str".into(),
            Syntax::Oversized { len, left, map } => format!(
                "{} of {len} items cannot fit in the {left} bytes left",
                if map { "map" } else { "array" }
            ),
            Syntax::TooDeep { level } => {
                return Error::TooDeep {
                    location: format!("an array or map at level {level}, header byte {offset}"),
                }
            }
            Syntax::Ext { ext_type } => {
                return Error::ExtOutsideMetadata {
                    location: format!("an ext value (type {ext_type}) at header byte {offset}"),
                }
            }
        };
        Error::Msgpack { offset, reason }
    }
}

type Res<T> = std::result::Result<T, SyntaxError>;

/// A read position in a msgpack buffer (the header); offsets in errors are relative to it.
///
/// msgpack ext values occur only in the header's `metadata` (FORMAT.md section 2): a cursor
/// refuses one unless [`Cursor::allowing_ext`] made it for metadata.
#[derive(Debug, Clone)]
pub(crate) struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
    ext_ok: bool,
}

impl<'a> Cursor<'a> {
    /// A cursor at byte `pos` of `buf`, refusing ext values.
    pub(crate) fn at(buf: &'a [u8], pos: usize) -> Self {
        Cursor {
            buf,
            pos,
            ext_ok: false,
        }
    }

    /// Runs `read` with ext values accepted (for the one place they may occur: metadata).
    pub(crate) fn allowing_ext<T>(&mut self, read: impl FnOnce(&mut Self) -> T) -> T {
        self.ext_ok = true;
        let out = read(self);
        self.ext_ok = false;
        out
    }

    /// The whole buffer.
    pub(crate) fn buf(&self) -> &'a [u8] {
        self.buf
    }

    /// The current offset.
    pub(crate) fn pos(&self) -> usize {
        self.pos
    }

    /// Bytes left after the current position.
    pub(crate) fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    fn fail(&self, offset: usize, what: Syntax) -> SyntaxError {
        SyntaxError { offset, what }
    }

    #[inline]
    fn take(&mut self, n: usize) -> Res<&'a [u8]> {
        let left = self.remaining();
        if n > left {
            return Err(self.fail(self.pos, Syntax::Eof { need: n, left }));
        }
        let out = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(out)
    }

    #[inline]
    fn be<const N: usize>(&mut self) -> Res<[u8; N]> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    fn len8(&mut self) -> Res<usize> {
        Ok(usize::from(self.be::<1>()?[0]))
    }

    fn len16(&mut self) -> Res<usize> {
        Ok(usize::from(u16::from_be_bytes(self.be()?)))
    }

    fn len32(&mut self) -> Res<usize> {
        // u32 always fits in usize on the 32- and 64-bit targets this crate supports.
        Ok(u32::from_be_bytes(self.be()?) as usize)
    }

    #[inline(always)]
    fn str(&mut self, at: usize, len: usize) -> Res<Token<'a>> {
        let b = self.take(len)?;
        // Header strings are almost all short ASCII; `is_ascii` is cheaper than full validation.
        if b.is_ascii() {
            // SAFETY: ASCII bytes are valid UTF-8.
            return Ok(Token::Str(unsafe { std::str::from_utf8_unchecked(b) }));
        }
        std::str::from_utf8(b)
            .map(Token::Str)
            .map_err(|_| self.fail(at, Syntax::Utf8))
    }

    fn ext(&mut self, at: usize, len: usize) -> Res<Token<'a>> {
        let t = i8::from_be_bytes(self.be()?);
        if !self.ext_ok {
            return Err(self.fail(at, Syntax::Ext { ext_type: t }));
        }
        self.take(len)?;
        Ok(Token::Ext(t))
    }

    /// A container header, refusing counts that could not fit in the bytes left.
    #[inline]
    fn container(&self, at: usize, len: usize, map: bool) -> Res<Token<'a>> {
        let left = self.remaining();
        let min_bytes = if map { len.saturating_mul(2) } else { len };
        if min_bytes > left {
            return Err(self.fail(at, Syntax::Oversized { len, left, map }));
        }
        Ok(if map {
            Token::Map(len)
        } else {
            Token::Array(len)
        })
    }

    fn int(v: i64) -> Token<'a> {
        if v >= 0 {
            Token::UInt(v as u64)
        } else {
            Token::NegInt(v)
        }
    }

    /// Reads one token (for a container: its header only).
    #[inline(always)]
    pub(crate) fn next(&mut self) -> Res<Token<'a>> {
        let at = self.pos;
        let Some(&m) = self.buf.get(at) else {
            return Err(self.fail(at, Syntax::Eof { need: 1, left: 0 }));
        };
        self.pos += 1;
        match m {
            0x00..=0x7f => Ok(Token::UInt(u64::from(m))),
            0x80..=0x8f => self.container(at, usize::from(m & 0x0f), true),
            0x90..=0x9f => self.container(at, usize::from(m & 0x0f), false),
            0xa0..=0xbf => self.str(at, usize::from(m & 0x1f)),
            0xc0 => Ok(Token::Nil),
            0xc2 => Ok(Token::Bool(false)),
            0xc3 => Ok(Token::Bool(true)),
            0xe0..=0xff => Ok(Token::NegInt(i64::from(m as i8))),
            _ => self.next_long(at, m),
        }
    }

    /// The markers with a length or payload after them.
    fn next_long(&mut self, at: usize, m: u8) -> Res<Token<'a>> {
        Ok(match m {
            0xc4 => Token::Bin(self.len8().and_then(|n| self.take(n))?),
            0xc5 => Token::Bin(self.len16().and_then(|n| self.take(n))?),
            0xc6 => Token::Bin(self.len32().and_then(|n| self.take(n))?),
            0xc7 => self.len8().and_then(|n| self.ext(at, n))?,
            0xc8 => self.len16().and_then(|n| self.ext(at, n))?,
            0xc9 => self.len32().and_then(|n| self.ext(at, n))?,
            0xca => Token::Float(f64::from(f32::from_be_bytes(self.be()?))),
            0xcb => Token::Float(f64::from_be_bytes(self.be()?)),
            0xcc => Token::UInt(u64::from(self.be::<1>()?[0])),
            0xcd => Token::UInt(u64::from(u16::from_be_bytes(self.be()?))),
            0xce => Token::UInt(u64::from(u32::from_be_bytes(self.be()?))),
            0xcf => Token::UInt(u64::from_be_bytes(self.be()?)),
            0xd0 => Self::int(i64::from(i8::from_be_bytes(self.be()?))),
            0xd1 => Self::int(i64::from(i16::from_be_bytes(self.be()?))),
            0xd2 => Self::int(i64::from(i32::from_be_bytes(self.be()?))),
            0xd3 => Self::int(i64::from_be_bytes(self.be()?)),
            0xd4 => self.ext(at, 1)?,
            0xd5 => self.ext(at, 2)?,
            0xd6 => self.ext(at, 4)?,
            0xd7 => self.ext(at, 8)?,
            0xd8 => self.ext(at, 16)?,
            0xd9 => self.len8().and_then(|n| self.str(at, n))?,
            0xda => self.len16().and_then(|n| self.str(at, n))?,
            0xdb => self.len32().and_then(|n| self.str(at, n))?,
            0xdc => self.len16().and_then(|n| self.container(at, n, false))?,
            0xdd => self.len32().and_then(|n| self.container(at, n, false))?,
            0xde => self.len16().and_then(|n| self.container(at, n, true))?,
            0xdf => self.len32().and_then(|n| self.container(at, n, true))?,
            // 0xc1 is the only byte left: "never used" in the msgpack spec.
            _ => return Err(self.fail(at, Syntax::Reserved)),
        })
    }

    /// Checks and skips one whole value sitting at nesting `level` (the header map is level 1).
    ///
    /// Fails on malformed msgpack, invalid UTF-8, or a container deeper than [`MAX_DEPTH`].
    pub(crate) fn skip(&mut self, level: usize) -> Res<()> {
        let t = self.next()?;
        self.skip_items(&t, level)
    }

    /// After reading token `t` at `level`: if it is a container, checks and skips its items.
    pub(crate) fn skip_items(&mut self, t: &Token<'a>, level: usize) -> Res<()> {
        let items = match *t {
            Token::Array(n) => n,
            Token::Map(n) => 2 * n,
            _ => return Ok(()),
        };
        if level > MAX_DEPTH {
            return Err(self.fail(self.pos, Syntax::TooDeep { level }));
        }
        for _ in 0..items {
            self.skip(level + 1)?;
        }
        Ok(())
    }

    /// Checks and skips one whole value at `level`, returning its bytes.
    pub(crate) fn raw(&mut self, level: usize) -> Res<RawValue<'a>> {
        let start = self.pos;
        self.skip(level)?;
        Ok(RawValue {
            bytes: &self.buf[start..self.pos],
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::*;

    fn all_tokens(b: &[u8]) -> Res<()> {
        let mut c = Cursor::at(b, 0);
        c.skip(1)?;
        assert_eq!(c.pos(), b.len());
        Ok(())
    }

    #[test]
    fn agrees_with_rmpv() {
        let v = Value::Array(vec![
            Value::Nil,
            Value::from(true),
            Value::from(-1),
            Value::from(-200),
            Value::from(-70000),
            Value::from(i64::MIN),
            Value::from(300),
            Value::from(u64::MAX),
            Value::F32(1.5),
            Value::F64(-2.5),
            Value::from("x".repeat(40)),
            Value::from("y".repeat(300)),
            Value::from("z".repeat(70000)),
            Value::Binary(vec![1; 300]),
            Value::Ext(5, vec![1, 2, 3]),
            Value::Ext(-3, vec![0; 8]),
            Value::Array(vec![Value::Nil; 20]),
            map(vec![("k", Value::Nil)]),
            Value::Map(vec![(Value::from(1), Value::from(2)); 20]),
        ]);
        let b = enc(&v);
        let e = Error::from(all_tokens(&b).unwrap_err()); // ext values: metadata only
        assert!(matches!(e, Error::ExtOutsideMetadata { .. }), "{e}");
        let mut c = Cursor::at(&b, 0);
        c.allowing_ext(|c| c.skip(1)).unwrap();
        assert_eq!(c.pos(), b.len());
        assert!(c.next().is_err() && Cursor::at(&b, 0).skip(1).is_err());
        let raw = Cursor::at(&b, 0).allowing_ext(|c| c.raw(1)).unwrap();
        assert_eq!(raw.decode().unwrap(), v);
        let mut c = Cursor::at(&b, 0);
        assert_eq!(c.next().unwrap(), Token::Array(19));
        assert_eq!(c.next().unwrap(), Token::Nil);
        assert_eq!(c.next().unwrap(), Token::Bool(true));
        assert_eq!(c.next().unwrap(), Token::NegInt(-1));
        assert_eq!(c.next().unwrap(), Token::NegInt(-200));
        assert_eq!(c.next().unwrap(), Token::NegInt(-70000));
        assert_eq!(c.next().unwrap(), Token::NegInt(i64::MIN));
        assert_eq!(c.next().unwrap(), Token::UInt(300));
        assert_eq!(c.next().unwrap(), Token::UInt(u64::MAX));
        assert_eq!(c.next().unwrap(), Token::Float(1.5));
    }

    #[test]
    fn rejects_malformed() {
        for bad in [
            &[0xc1][..],
            &[0xa3, b'a'],
            &[0xa1, 0xff],
            &[0x92, 0xc0],
            &[0xdd, 0xff, 0xff, 0xff, 0xff, 0xc0],
            &[0xdf, 0, 0, 0, 2, 0xc0, 0xc0, 0xc0],
            &[0xc6, 0xff, 0xff, 0xff, 0xff],
            &[0xcf, 0, 0],
            &[0xd8, 1],
            &[],
        ] {
            let e = Error::from(all_tokens(bad).unwrap_err());
            assert_eq!(e.kind(), "HeaderError", "{bad:?}: {e}");
        }
    }

    #[test]
    fn depth() {
        let nest = |n: usize| {
            let mut b = vec![0x91u8; n];
            b.push(0xa1);
            b.push(b's');
            b
        };
        all_tokens(&nest(MAX_DEPTH)).unwrap();
        for n in [MAX_DEPTH + 1, 100_000] {
            let e = Error::from(all_tokens(&nest(n)).unwrap_err());
            assert_eq!(e.kind(), "LimitError");
        }
    }
}
