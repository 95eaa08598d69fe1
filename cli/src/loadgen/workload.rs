//! The request every connection sends, and the check of every reply.

use std::sync::Arc;

use bytes::BytesMut;
use meta_protocol::{
    Codec, CodecContext, CodecFactory, CodecOptions, Message, MessageKind, ResponseStatus, Side,
    DEFAULT_MAX_FRAME_SIZE,
};
use metaproxy_dubbo::frames::{Args, RequestFrame};
use metaproxy_dubbo::hessian2::Reader;
use metaproxy_dubbo::{DubboCodec, DubboCodecFactory, DubboLayout};
use metaproxy_thrift::frames::{self, FrameSpec, Reply};
use metaproxy_thrift::{Protocol, ThriftCodec, ThriftCodecFactory, Transport};

use super::report::ErrorKind;
use super::{BenchArgs, BenchError, BenchProtocol};

/// `--transport`.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ThriftTransportArg {
    /// `TFramedTransport`.
    Framed,
    /// `TBufferedTransport`.
    Unframed,
    /// `THeaderTransport`.
    Header,
}

impl From<ThriftTransportArg> for Transport {
    fn from(t: ThriftTransportArg) -> Transport {
        match t {
            ThriftTransportArg::Framed => Transport::Framed,
            ThriftTransportArg::Unframed => Transport::Unframed,
            ThriftTransportArg::Header => Transport::Header,
        }
    }
}

/// `--thrift-protocol`.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ThriftProtocolArg {
    /// `TBinaryProtocol`.
    Binary,
    /// `TCompactProtocol`.
    Compact,
}

impl From<ThriftProtocolArg> for Protocol {
    fn from(p: ThriftProtocolArg) -> Protocol {
        match p {
            ThriftProtocolArg::Binary => Protocol::Binary,
            ThriftProtocolArg::Compact => Protocol::Compact,
        }
    }
}

/// The request template and how replies are checked.
pub(crate) struct Workload {
    protocol: BenchProtocol,
    factory: Arc<dyn CodecFactory>,
    /// The decoded request; each send clones nothing, only the id changes.
    template: Message,
    payload: usize,
    options: CodecOptions,
}

impl Workload {
    pub(crate) fn new(args: &BenchArgs) -> Result<Self, BenchError> {
        let headers: Vec<(&str, &str)> = args
            .headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let fail = |message: String| BenchError::Template {
            protocol: args.protocol.as_str(),
            message,
        };
        let (factory, template): (Arc<dyn CodecFactory>, Message) = match args.protocol {
            BenchProtocol::Frame => frame_template(args).map_err(fail)?,
            BenchProtocol::Dubbo => {
                let mut frame = BytesMut::new();
                RequestFrame {
                    attachments: &headers,
                    args: Args::Binary(args.payload),
                    ..RequestFrame::new(1, &args.interface, &args.method)
                }
                .encode_into(&mut frame);
                let msg = DubboCodec::new(Side::Downstream, usize::MAX)
                    .decode(&mut frame)
                    .map_err(|e| fail(e.to_string()))?
                    .ok_or_else(|| fail("the built frame does not decode whole".to_owned()))?;
                (Arc::new(DubboCodecFactory), msg)
            }
            BenchProtocol::Thrift => {
                let (t, p) = (args.transport.into(), args.thrift_protocol.into());
                let spec = FrameSpec::new(t, p, &args.method, 1).with_headers(&headers);
                let mut frame = BytesMut::new();
                frames::write_call(&spec, &vec![b'x'; args.payload], &mut frame)
                    .map_err(|e| fail(e.to_string()))?;
                let msg = ThriftCodec::new(Some(t), Some(p), usize::MAX)
                    .decode(&mut frame)
                    .map_err(|e| fail(e.to_string()))?
                    .ok_or_else(|| fail("the built frame does not decode whole".to_owned()))?;
                (Arc::new(ThriftCodecFactory), msg)
            }
        };
        if template.kind() != MessageKind::Request {
            return Err(fail(format!(
                "the built frame decodes as {:?}",
                template.kind()
            )));
        }
        Ok(Workload {
            protocol: args.protocol,
            factory,
            template,
            payload: args.payload,
            options: CodecOptions::new(),
        })
    }

    /// The request to send (set its id before each encode).
    pub(crate) fn template(&self) -> &Message {
        &self.template
    }

    /// A client codec: the upstream side of the protocol, speaking the template's wire
    /// format.
    pub(crate) fn client_codec(&self) -> Result<Box<dyn Codec>, String> {
        let ctx = CodecContext::upstream(DEFAULT_MAX_FRAME_SIZE, self.template.wire());
        self.factory
            .configure(&self.options)
            .and_then(|protocol| protocol.new_codec(&ctx))
            .map_err(|e| e.to_string())
    }

    /// Checks a decoded reply's status and payload (the id is checked by the caller).
    pub(crate) fn check(&self, reply: &Message) -> Result<(), ErrorKind> {
        match reply.status() {
            ResponseStatus::Ok => {}
            ResponseStatus::Exception => return Err(ErrorKind::Exception),
            ResponseStatus::Error => return Err(ErrorKind::ErrorStatus),
        }
        let got = match self.protocol {
            // A frame of another protocol: the status is all that is known.
            BenchProtocol::Frame => return Ok(()),
            BenchProtocol::Dubbo => dubbo_payload_len(reply)?,
            BenchProtocol::Thrift => match frames::read_reply(reply) {
                Ok(Reply::Success(b)) => b.len(),
                Ok(Reply::Void) => 0,
                Ok(Reply::Declared { .. }) => return Err(ErrorKind::Exception),
                Ok(Reply::AppException { .. }) => return Err(ErrorKind::ErrorStatus),
                Err(_) => return Err(ErrorKind::Malformed),
            },
        };
        if got == self.payload {
            Ok(())
        } else {
            Err(ErrorKind::PayloadMismatch)
        }
    }
}

/// `--protocol frame`: the codec named by `--codec` and the request read from
/// `--request-file`, decoded once by that codec.
fn frame_template(args: &BenchArgs) -> Result<(Arc<dyn CodecFactory>, Message), String> {
    let name = args
        .codec
        .as_deref()
        .ok_or("--protocol frame needs --codec NAME")?;
    let path = args
        .request_file
        .as_deref()
        .ok_or("--protocol frame needs --request-file FILE")?;
    let codecs = args
        .codecs
        .clone()
        .unwrap_or_else(metaproxy::default_registry);
    let factory = codecs.get(name).map_err(|e| e.to_string())?.clone();
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut frame = BytesMut::from(&bytes[..]);
    let mut codec = factory
        .configure(&CodecOptions::new())
        .and_then(|p| p.new_codec(&CodecContext::downstream(usize::MAX)))
        .map_err(|e| e.to_string())?;
    let msg = codec
        .decode(&mut frame)
        .map_err(|e| format!("{}: {e}", path.display()))?
        .ok_or_else(|| format!("{}: not one whole {name} frame", path.display()))?;
    if !frame.is_empty() {
        return Err(format!(
            "{}: {} bytes after the first {name} frame; the file must hold exactly one",
            path.display(),
            frame.len()
        ));
    }
    Ok((factory, msg))
}

/// The length of the binary value of an OK Dubbo response, read without copying.
fn dubbo_payload_len(reply: &Message) -> Result<usize, ErrorKind> {
    let layout = DubboLayout::of(reply);
    let frame = reply.frame();
    let end = match layout.attachments {
        Some(_) => layout.first_arg_end,
        None => frame.len(),
    };
    if layout.args > end || end > frame.len() {
        return Err(ErrorKind::Malformed);
    }
    if layout.args == end {
        // A null result: no value at all.
        return Err(ErrorKind::PayloadMismatch);
    }
    Reader::with_range(frame, layout.args, end)
        .read_binary()
        .map(|b| b.len())
        .map_err(|_| ErrorKind::PayloadMismatch)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend;

    fn args(protocol: BenchProtocol, payload: usize) -> BenchArgs {
        BenchArgs {
            payload,
            headers: vec![("user".into(), "alice".into())],
            ..BenchArgs::new(protocol, "127.0.0.1:1")
        }
    }

    /// Sends the template through the real echo responder and checks the reply.
    fn round_trip(
        w: &Workload,
        responder: &backend::Responder,
        server: &mut dyn Codec,
        carries_headers: bool,
    ) {
        let mut client = w.client_codec().unwrap();
        let mut msg = w.template().clone();
        msg.set_request_id(42);
        let mut wire = BytesMut::new();
        client.encode(&msg, &mut wire).unwrap();
        let req = server.decode(&mut wire).unwrap().unwrap();
        assert_eq!(req.request_id(), 42);
        if carries_headers {
            assert_eq!(req.metadata().get("user"), Some("alice"));
        }
        let mut answer = BytesMut::new();
        responder(&req, &mut answer);
        let reply = client.decode(&mut answer).unwrap().unwrap();
        assert_eq!(reply.request_id(), 42);
        assert_eq!(w.check(&reply), Ok(()));
    }

    #[test]
    fn dubbo_echo_replies_pass_the_check() {
        for payload in [0, 128, 4096, 70_000] {
            let w = Workload::new(&args(BenchProtocol::Dubbo, payload)).unwrap();
            let mut server = DubboCodec::new(Side::Downstream, usize::MAX);
            round_trip(&w, &backend::dubbo_echo("b"), &mut server, true);
        }
    }

    #[test]
    fn thrift_echo_replies_pass_the_check_in_every_format() {
        for t in [
            ThriftTransportArg::Framed,
            ThriftTransportArg::Unframed,
            ThriftTransportArg::Header,
        ] {
            for p in [ThriftProtocolArg::Binary, ThriftProtocolArg::Compact] {
                let w = Workload::new(&BenchArgs {
                    transport: t,
                    thrift_protocol: p,
                    ..args(BenchProtocol::Thrift, 4096)
                })
                .unwrap();
                let mut server = ThriftCodec::new(None, None, usize::MAX);
                let headers = t == ThriftTransportArg::Header;
                round_trip(&w, &backend::thrift_echo(), &mut server, headers);
            }
        }
    }

    #[test]
    fn a_shorter_echo_is_a_payload_mismatch() {
        let w = Workload::new(&args(BenchProtocol::Dubbo, 128)).unwrap();
        let short = Workload::new(&args(BenchProtocol::Dubbo, 100)).unwrap();
        let mut server = DubboCodec::new(Side::Downstream, usize::MAX);
        let mut client = w.client_codec().unwrap();
        let mut wire = BytesMut::new();
        client.encode(short.template(), &mut wire).unwrap();
        let req = server.decode(&mut wire).unwrap().unwrap();
        let mut answer = BytesMut::new();
        backend::dubbo_echo("b")(&req, &mut answer);
        let reply = client.decode(&mut answer).unwrap().unwrap();
        assert_eq!(w.check(&reply), Err(ErrorKind::PayloadMismatch));
    }

    #[test]
    fn dubbo_error_status_is_reported() {
        let w = Workload::new(&args(BenchProtocol::Dubbo, 8)).unwrap();
        let mut client = w.client_codec().unwrap();
        let mut answer = BytesMut::new();
        metaproxy_dubbo::write_error_response(
            5,
            metaproxy_dubbo::header::status::SERVER_ERROR,
            "boom",
            &mut answer,
        )
        .unwrap();
        let reply = client.decode(&mut answer).unwrap().unwrap();
        assert_eq!(w.check(&reply), Err(ErrorKind::ErrorStatus));
    }
}
