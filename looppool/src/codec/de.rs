//! The deserializer at the top of a payload: postcard's, with a top-level
//! integer read by the codec's own varint reader.

use super::{CodecError, Fields};

/// Postcard's deserializer for the value at the top of a payload, with a
/// top-level `u64` or `i64` read by [`Fields::varint`]; everything else is
/// postcard's, from where the slice (the bytes not read yet) stands.
pub(super) struct TopDe<'a, 'de>(pub(super) &'a mut &'de [u8]);

impl<'de> TopDe<'_, 'de> {
    #[inline]
    fn varint(self) -> postcard::Result<u64> {
        let mut fields = Fields::new(self.0);
        match fields.varint() {
            Ok(v) => {
                *self.0 = fields.rest;
                Ok(v)
            }
            Err(CodecError::Truncated) => Err(postcard::Error::DeserializeUnexpectedEnd),
            Err(_) => Err(postcard::Error::DeserializeBadVarint),
        }
    }
}

/// Forwards deserializer methods to postcard's.
macro_rules! forward_de {
    ($($name:ident($($arg:ident: $ty:ty),*);)*) => {$(
        #[inline]
        fn $name<V: serde::de::Visitor<'de>>(
            self,
            $($arg: $ty,)*
            visitor: V,
        ) -> postcard::Result<V::Value> {
            let mut de = postcard::Deserializer::from_bytes(self.0);
            let value = serde::Deserializer::$name(&mut de, $($arg,)* visitor)?;
            *self.0 = de.finalize()?;
            Ok(value)
        }
    )*};
}

impl<'de> serde::Deserializer<'de> for TopDe<'_, 'de> {
    type Error = postcard::Error;

    fn is_human_readable(&self) -> bool {
        false
    }

    #[inline]
    fn deserialize_u64<V: serde::de::Visitor<'de>>(self, visitor: V) -> postcard::Result<V::Value> {
        visitor.visit_u64(self.varint()?)
    }

    #[inline]
    fn deserialize_i64<V: serde::de::Visitor<'de>>(self, visitor: V) -> postcard::Result<V::Value> {
        let v = self.varint()?;
        visitor.visit_i64(((v >> 1) as i64) ^ -((v & 1) as i64))
    }

    #[inline]
    fn deserialize_newtype_struct<V: serde::de::Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> postcard::Result<V::Value> {
        // Postcard reads a newtype as its content: keep the fast path.
        visitor.visit_newtype_struct(self)
    }

    forward_de! {
        deserialize_any();
        deserialize_bool();
        deserialize_i8();
        deserialize_i16();
        deserialize_i32();
        deserialize_i128();
        deserialize_u8();
        deserialize_u16();
        deserialize_u32();
        deserialize_u128();
        deserialize_f32();
        deserialize_f64();
        deserialize_char();
        deserialize_str();
        deserialize_string();
        deserialize_bytes();
        deserialize_byte_buf();
        deserialize_option();
        deserialize_unit();
        deserialize_unit_struct(name: &'static str);
        deserialize_seq();
        deserialize_tuple(len: usize);
        deserialize_tuple_struct(name: &'static str, len: usize);
        deserialize_map();
        deserialize_struct(name: &'static str, fields: &'static [&'static str]);
        deserialize_enum(name: &'static str, variants: &'static [&'static str]);
        deserialize_identifier();
        deserialize_ignored_any();
    }
}
