//! Test helpers: arbitrary Thrift values written by the Rust `thrift` crate (an
//! independent implementation), so our skipper and decoder are checked against it.
#![allow(dead_code)]

use proptest::prelude::*;
use thrift::protocol::{
    TBinaryOutputProtocol, TCompactOutputProtocol, TFieldIdentifier, TListIdentifier,
    TMapIdentifier, TMessageIdentifier, TMessageType, TOutputProtocol, TSetIdentifier,
    TStructIdentifier, TType,
};
use thrift::transport::{TBufferedWriteTransport, TFramedWriteTransport};

/// A Thrift type.
#[derive(Clone, Debug)]
pub enum Ty {
    Bool,
    I8,
    I16,
    I32,
    I64,
    Double,
    Binary,
    Uuid,
    Struct(Vec<(i16, Ty)>),
    List(Box<Ty>),
    Set(Box<Ty>),
    Map(Box<Ty>, Box<Ty>),
}

/// A Thrift value.
#[derive(Clone, Debug)]
pub enum V {
    Bool(bool),
    I8(i8),
    I16(i16),
    I32(i32),
    I64(i64),
    Double(f64),
    Binary(Vec<u8>),
    Uuid([u8; 16]),
    Struct(Vec<(i16, V)>),
    List(Ty, Vec<V>),
    Set(Ty, Vec<V>),
    Map(Ty, Ty, Vec<(V, V)>),
}

pub fn ttype(t: &Ty) -> TType {
    match t {
        Ty::Bool => TType::Bool,
        Ty::I8 => TType::I08,
        Ty::I16 => TType::I16,
        Ty::I32 => TType::I32,
        Ty::I64 => TType::I64,
        Ty::Double => TType::Double,
        Ty::Binary => TType::String,
        Ty::Uuid => TType::Uuid,
        Ty::Struct(_) => TType::Struct,
        Ty::List(_) => TType::List,
        Ty::Set(_) => TType::Set,
        Ty::Map(..) => TType::Map,
    }
}

pub fn ty_strategy() -> impl Strategy<Value = Ty> {
    let leaf = prop_oneof![
        Just(Ty::Bool),
        Just(Ty::I8),
        Just(Ty::I16),
        Just(Ty::I32),
        Just(Ty::I64),
        Just(Ty::Double),
        Just(Ty::Binary),
        Just(Ty::Uuid),
    ];
    leaf.prop_recursive(5, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec((-2000i16..2000, inner.clone()), 0..6).prop_map(Ty::Struct),
            inner.clone().prop_map(|t| Ty::List(Box::new(t))),
            inner.clone().prop_map(|t| Ty::Set(Box::new(t))),
            (inner.clone(), inner).prop_map(|(k, v)| Ty::Map(Box::new(k), Box::new(v))),
        ]
    })
}

pub fn value_of(t: &Ty) -> BoxedStrategy<V> {
    match t {
        Ty::Bool => any::<bool>().prop_map(V::Bool).boxed(),
        Ty::I8 => any::<i8>().prop_map(V::I8).boxed(),
        Ty::I16 => any::<i16>().prop_map(V::I16).boxed(),
        Ty::I32 => any::<i32>().prop_map(V::I32).boxed(),
        Ty::I64 => any::<i64>().prop_map(V::I64).boxed(),
        Ty::Double => any::<f64>().prop_map(V::Double).boxed(),
        Ty::Binary => prop::collection::vec(any::<u8>(), 0..40)
            .prop_map(V::Binary)
            .boxed(),
        Ty::Uuid => any::<[u8; 16]>().prop_map(V::Uuid).boxed(),
        Ty::Struct(fields) => {
            let parts: Vec<BoxedStrategy<(i16, V)>> = fields
                .iter()
                .map(|(id, ft)| {
                    let id = *id;
                    value_of(ft).prop_map(move |v| (id, v)).boxed()
                })
                .collect();
            parts.prop_map(V::Struct).boxed()
        }
        Ty::List(e) => {
            let e2 = (**e).clone();
            prop::collection::vec(value_of(e), 0..5)
                .prop_map(move |v| V::List(e2.clone(), v))
                .boxed()
        }
        Ty::Set(e) => {
            let e2 = (**e).clone();
            prop::collection::vec(value_of(e), 0..5)
                .prop_map(move |v| V::Set(e2.clone(), v))
                .boxed()
        }
        Ty::Map(k, v) => {
            let (k2, v2) = ((**k).clone(), (**v).clone());
            prop::collection::vec((value_of(k), value_of(v)), 0..5)
                .prop_map(move |kv| V::Map(k2.clone(), v2.clone(), kv))
                .boxed()
        }
    }
}

/// An argument struct: a few fields of arbitrary types.
pub fn args_strategy() -> impl Strategy<Value = Vec<(i16, V)>> {
    prop::collection::vec((-2000i16..2000, ty_strategy()), 0..6).prop_flat_map(|fields| {
        let parts: Vec<BoxedStrategy<(i16, V)>> = fields
            .into_iter()
            .map(|(id, t)| value_of(&t).prop_map(move |v| (id, v)).boxed())
            .collect();
        parts
    })
}

fn v_ttype(v: &V) -> TType {
    match v {
        V::Bool(_) => TType::Bool,
        V::I8(_) => TType::I08,
        V::I16(_) => TType::I16,
        V::I32(_) => TType::I32,
        V::I64(_) => TType::I64,
        V::Double(_) => TType::Double,
        V::Binary(_) => TType::String,
        V::Uuid(_) => TType::Uuid,
        V::Struct(_) => TType::Struct,
        V::List(..) => TType::List,
        V::Set(..) => TType::Set,
        V::Map(..) => TType::Map,
    }
}

pub fn write_struct(o: &mut dyn TOutputProtocol, fields: &[(i16, V)]) {
    o.write_struct_begin(&TStructIdentifier::new("S")).unwrap();
    for (id, v) in fields {
        o.write_field_begin(&TFieldIdentifier::new("f", v_ttype(v), *id))
            .unwrap();
        write_value(o, v);
        o.write_field_end().unwrap();
    }
    o.write_field_stop().unwrap();
    o.write_struct_end().unwrap();
}

pub fn write_value(o: &mut dyn TOutputProtocol, v: &V) {
    match v {
        V::Bool(b) => o.write_bool(*b).unwrap(),
        V::I8(x) => o.write_i8(*x).unwrap(),
        V::I16(x) => o.write_i16(*x).unwrap(),
        V::I32(x) => o.write_i32(*x).unwrap(),
        V::I64(x) => o.write_i64(*x).unwrap(),
        V::Double(x) => o.write_double(*x).unwrap(),
        V::Binary(b) => o.write_bytes(b).unwrap(),
        V::Uuid(u) => o.write_uuid(&uuid::Uuid::from_bytes(*u)).unwrap(),
        V::Struct(f) => write_struct(o, f),
        V::List(t, items) => {
            o.write_list_begin(&TListIdentifier::new(ttype(t), items.len() as i32))
                .unwrap();
            items.iter().for_each(|i| write_value(o, i));
            o.write_list_end().unwrap();
        }
        V::Set(t, items) => {
            o.write_set_begin(&TSetIdentifier::new(ttype(t), items.len() as i32))
                .unwrap();
            items.iter().for_each(|i| write_value(o, i));
            o.write_set_end().unwrap();
        }
        V::Map(kt, vt, items) => {
            o.write_map_begin(&TMapIdentifier::new(
                Some(ttype(kt)),
                Some(ttype(vt)),
                items.len() as i32,
            ))
            .unwrap();
            for (k, v) in items {
                write_value(o, k);
                write_value(o, v);
            }
            o.write_map_end().unwrap();
        }
    }
}

/// How the `thrift` crate should write a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RsProto {
    BinaryStrict,
    BinaryOld,
    Compact,
}

pub const RS_PROTOS: [RsProto; 3] = [RsProto::BinaryStrict, RsProto::BinaryOld, RsProto::Compact];

/// A message written by the `thrift` crate: framed (`TFramedWriteTransport`) or
/// buffered (`TBufferedWriteTransport`, i.e. unframed).
pub fn rs_message(
    framed: bool,
    proto: RsProto,
    name: &str,
    mtype: TMessageType,
    seqid: i32,
    args: &[(i16, V)],
) -> Vec<u8> {
    let mut out = Vec::new();
    {
        let transport: Box<dyn std::io::Write + '_> = if framed {
            Box::new(TFramedWriteTransport::new(&mut out))
        } else {
            Box::new(TBufferedWriteTransport::new(&mut out))
        };
        let mut o: Box<dyn TOutputProtocol + '_> = match proto {
            RsProto::BinaryStrict => Box::new(TBinaryOutputProtocol::new(transport, true)),
            RsProto::BinaryOld => Box::new(TBinaryOutputProtocol::new(transport, false)),
            RsProto::Compact => Box::new(TCompactOutputProtocol::new(transport)),
        };
        o.write_message_begin(&TMessageIdentifier::new(name, mtype, seqid))
            .unwrap();
        write_struct(&mut *o, args);
        o.write_message_end().unwrap();
        o.flush().unwrap();
    }
    out
}
