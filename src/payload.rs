//! Message payloads and their conversions.

/// The bytes of a message, built from anything aiomqtt accepts as a payload.
///
/// Strings and byte buffers are taken as they are; integers and floats are encoded
/// as decimal text with Rust's `Display` (so `65.2` is `"65.2"` as in Python, but
/// `1.0_f64` is `"1"` where Python writes `"1.0"`); `()` is the empty payload.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Payload(pub(crate) Vec<u8>);

impl Payload {
    /// The payload's bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
    /// Takes the bytes.
    pub fn into_bytes(self) -> Vec<u8> {
        self.0
    }
}

impl From<()> for Payload {
    fn from(_: ()) -> Self {
        Payload(Vec::new())
    }
}
impl From<&str> for Payload {
    fn from(s: &str) -> Self {
        Payload(s.as_bytes().to_vec())
    }
}
impl From<String> for Payload {
    fn from(s: String) -> Self {
        Payload(s.into_bytes())
    }
}
impl From<&String> for Payload {
    fn from(s: &String) -> Self {
        Payload(s.as_bytes().to_vec())
    }
}
impl From<&[u8]> for Payload {
    fn from(b: &[u8]) -> Self {
        Payload(b.to_vec())
    }
}
impl<const N: usize> From<&[u8; N]> for Payload {
    fn from(b: &[u8; N]) -> Self {
        Payload(b.to_vec())
    }
}
impl From<Vec<u8>> for Payload {
    fn from(b: Vec<u8>) -> Self {
        Payload(b)
    }
}
impl From<&Vec<u8>> for Payload {
    fn from(b: &Vec<u8>) -> Self {
        Payload(b.clone())
    }
}
impl From<std::borrow::Cow<'_, str>> for Payload {
    fn from(s: std::borrow::Cow<'_, str>) -> Self {
        Payload(s.into_owned().into_bytes())
    }
}

macro_rules! decimal_payload {
    ($($t:ty),*) => {$(
        impl From<$t> for Payload {
            fn from(n: $t) -> Self {
                Payload(n.to_string().into_bytes())
            }
        }
    )*};
}
decimal_payload!(
    u8, u16, u32, u64, u128, usize, i8, i16, i32, i64, i128, isize, f32, f64
);

#[cfg(feature = "bytes")]
impl From<bytes::Bytes> for Payload {
    /// Takes the buffer without copying when it is unique (`Vec::from(Bytes)`).
    fn from(b: bytes::Bytes) -> Self {
        Payload(Vec::from(b))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conversions() {
        assert_eq!(Payload::from("23.5").as_bytes(), b"23.5");
        assert_eq!(Payload::from(65.2).as_bytes(), b"65.2");
        assert_eq!(Payload::from(1.0_f64).as_bytes(), b"1");
        assert_eq!(Payload::from(-7_i32).as_bytes(), b"-7");
        assert_eq!(Payload::from(255_u8).as_bytes(), b"255");
        assert_eq!(Payload::from(&b"\x00\xff"[..]).as_bytes(), b"\x00\xff");
        assert!(Payload::from(()).as_bytes().is_empty());
    }

    #[cfg(feature = "bytes")]
    #[test]
    fn from_bytes_keeps_the_buffer() {
        let v = b"abc".to_vec();
        let ptr = v.as_ptr();
        let p = Payload::from(bytes::Bytes::from(v));
        assert_eq!(p.as_bytes(), b"abc");
        assert_eq!(p.as_bytes().as_ptr(), ptr, "no copy of a unique buffer");
    }
}
