//! A minimal protobuf wire-format reader: just enough to read SentencePiece's `ModelProto`
//! (varints, fixed32/fixed64, length-delimited fields) without a code generator.

/// Why a message cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed protobuf: {0}")]
pub struct ProtoError(pub String);

/// One field value as it appears on the wire.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Value<'a> {
    Varint(u64),
    Fixed64(u64),
    Bytes(&'a [u8]),
    Fixed32(u32),
}

impl Value<'_> {
    /// An int32/int64/bool/enum field (negative int32 values are sign-extended 10-byte varints).
    pub fn as_i64(&self) -> Result<i64, ProtoError> {
        match *self {
            Value::Varint(v) => Ok(v as i64),
            _ => Err(ProtoError("expected a varint field".into())),
        }
    }

    pub fn as_f32(&self) -> Result<f32, ProtoError> {
        match *self {
            Value::Fixed32(v) => Ok(f32::from_bits(v)),
            _ => Err(ProtoError("expected a float field".into())),
        }
    }

    pub fn as_bytes(&self) -> Result<&[u8], ProtoError> {
        match *self {
            Value::Bytes(b) => Ok(b),
            _ => Err(ProtoError("expected a length-delimited field".into())),
        }
    }
}

/// Iterator over the `(field number, value)` pairs of one message.
pub struct Fields<'a> {
    buf: &'a [u8],
    pos: usize,
}

pub fn fields(buf: &[u8]) -> Fields<'_> {
    Fields { buf, pos: 0 }
}

impl<'a> Fields<'a> {
    fn varint(&mut self) -> Result<u64, ProtoError> {
        let mut result = 0u64;
        for shift in (0..70).step_by(7) {
            let Some(&b) = self.buf.get(self.pos) else {
                return Err(ProtoError("truncated varint".into()));
            };
            self.pos += 1;
            if shift < 64 {
                result |= u64::from(b & 0x7f) << shift;
            }
            if b & 0x80 == 0 {
                return Ok(result);
            }
        }
        Err(ProtoError("varint longer than 10 bytes".into()))
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], ProtoError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.buf.len())
            .ok_or_else(|| ProtoError("field runs past the end of the message".into()))?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn next_field(&mut self) -> Result<(u32, Value<'a>), ProtoError> {
        let key = self.varint()?;
        let number =
            u32::try_from(key >> 3).map_err(|_| ProtoError("field number too large".into()))?;
        let value = match key & 7 {
            0 => Value::Varint(self.varint()?),
            1 => Value::Fixed64(u64::from_le_bytes(self.take(8)?.try_into().unwrap())),
            2 => {
                let len = usize::try_from(self.varint()?)
                    .map_err(|_| ProtoError("length does not fit in memory".into()))?;
                Value::Bytes(self.take(len)?)
            }
            5 => Value::Fixed32(u32::from_le_bytes(self.take(4)?.try_into().unwrap())),
            w => return Err(ProtoError(format!("unsupported wire type {w}"))),
        };
        Ok((number, value))
    }
}

impl<'a> Iterator for Fields<'a> {
    type Item = Result<(u32, Value<'a>), ProtoError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.pos >= self.buf.len() {
            return None;
        }
        let r = self.next_field();
        if r.is_err() {
            self.pos = self.buf.len();
        }
        Some(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn reads_varint_float_and_bytes() {
        // field 1 varint 150, field 2 fixed32 1.5, field 3 bytes "hi", field 4 varint -1 (int32)
        let mut buf = vec![0x08, 0x96, 0x01, 0x15];
        buf.extend_from_slice(&1.5f32.to_le_bytes());
        buf.extend_from_slice(&[0x1a, 2, b'h', b'i', 0x20]);
        buf.extend_from_slice(&[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]);
        let got: Vec<_> = fields(&buf).collect::<Result<_, _>>().unwrap();
        assert_eq!(got[0], (1, Value::Varint(150)));
        assert_eq!(got[1].1.as_f32().unwrap(), 1.5);
        assert_eq!(got[2].1.as_bytes().unwrap(), b"hi");
        assert_eq!(got[3].1.as_i64().unwrap() as i32, -1);
    }

    proptest! {
        #[test]
        fn never_panics_on_garbage(buf in proptest::collection::vec(any::<u8>(), 0..256)) {
            for f in fields(&buf) {
                if f.is_err() { break; }
            }
        }
    }
}
