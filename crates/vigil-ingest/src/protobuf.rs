//! A minimal, allocation-free protobuf wire-format reader for the decoders that are hot
//! (remote_write). It borrows from the input and bounds every length; it never panics.

/// Wire types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Wire {
    Varint,
    I64,
    Len,
    I32,
}

/// A field that could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct WireError(pub(crate) &'static str);

/// One field: (number, wire type, scalar value, bytes for length-delimited fields).
pub(crate) type Field<'a> = (u32, Wire, u64, &'a [u8]);

/// Reads fields from a protobuf message body.
#[derive(Debug, Clone)]
pub(crate) struct Fields<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Fields<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Self { buf, pos: 0 }
    }

    fn varint(&mut self) -> Result<u64, WireError> {
        // One byte covers field keys and most lengths: no loop for them.
        if let Some(&b) = self.buf.get(self.pos)
            && b < 0x80
        {
            self.pos += 1;
            return Ok(b as u64);
        }
        let mut v = 0u64;
        for i in 0..10 {
            let b = *self
                .buf
                .get(self.pos)
                .ok_or(WireError("truncated varint"))?;
            self.pos += 1;
            if i == 9 && b > 1 {
                return Err(WireError("varint overflows 64 bits"));
            }
            v |= ((b & 0x7f) as u64) << (7 * i);
            if b < 0x80 {
                return Ok(v);
            }
        }
        Err(WireError("varint too long"))
    }

    /// The next field: (number, wire type, value). For `Len` the value is the bytes; for the
    /// others the raw 64-bit value (fixed32 zero-extended).
    pub(crate) fn next_field(&mut self) -> Option<Result<Field<'a>, WireError>> {
        if self.pos >= self.buf.len() {
            return None;
        }
        Some(self.read_field())
    }

    fn read_field(&mut self) -> Result<Field<'a>, WireError> {
        let key = self.varint()?;
        let num = (key >> 3) as u32;
        if num == 0 {
            return Err(WireError("field number 0"));
        }
        match key & 7 {
            0 => Ok((num, Wire::Varint, self.varint()?, &[])),
            1 => {
                let b = self.take(8)?;
                Ok((
                    num,
                    Wire::I64,
                    u64::from_le_bytes(b.try_into().map_err(|_| WireError("truncated fixed64"))?),
                    &[],
                ))
            }
            2 => {
                let n = self.varint()?;
                if n > (self.buf.len() - self.pos) as u64 {
                    return Err(WireError("length-delimited field runs past the end"));
                }
                Ok((num, Wire::Len, 0, self.take(n as usize)?))
            }
            5 => {
                let b = self.take(4)?;
                Ok((
                    num,
                    Wire::I32,
                    u32::from_le_bytes(b.try_into().map_err(|_| WireError("truncated fixed32"))?)
                        as u64,
                    &[],
                ))
            }
            3 | 4 => Err(WireError("groups are not supported")),
            _ => Err(WireError("invalid wire type")),
        }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        let end = self
            .pos
            .checked_add(n)
            .ok_or(WireError("length overflow"))?;
        let s = self
            .buf
            .get(self.pos..end)
            .ok_or(WireError("truncated field"))?;
        self.pos = end;
        Ok(s)
    }
}
