// Decodes what the Rust writer produced, with hessian.js. Reads a JSON array of
// {name, hex, kind} on stdin (kind "value": one value; "request": a whole Dubbo request
// frame with `args` arguments; "response": a whole Dubbo response frame) and prints a
// JSON array of {name, ok, value | error}, values in the neutral form of
// hessian_encode.js (objects decode as maps of their fields: {"$map": {...}}).
'use strict';
const path = require('path');
const hessian = require(path.join(process.env.DUBBO_INTEROP_DIR, 'node_modules', 'hessian.js'));

function norm(v) {
  if (v === null || v === undefined) return null;
  if (typeof v === 'boolean' || typeof v === 'number' || typeof v === 'string') return v;
  if (Buffer.isBuffer(v)) return { $binary: v.toString('hex') };
  if (v instanceof Date) return { $date: v.getTime() };
  if (Array.isArray(v)) return v.map(norm);
  if (typeof v.toNumber === 'function') return v.toNumber();
  if (v instanceof Map) {
    const o = {};
    for (const [k, x] of v) o[String(k)] = norm(x);
    return { $map: o };
  }
  const o = {};
  for (const k of Object.keys(v)) o[k] = norm(v[k]);
  return { $map: o };
}

function frame(hex) {
  const buf = Buffer.from(hex, 'hex');
  const header = {
    magic: buf.readUInt16BE(0),
    flags: buf[2],
    status: buf[3],
    id: buf.readBigUInt64BE(4).toString(),
    body_len: buf.readInt32BE(12),
  };
  if (buf.length !== 16 + header.body_len) throw new Error('body length ' + header.body_len + ' but ' + (buf.length - 16) + ' bytes');
  return { header, dec: new hessian.DecoderV2(buf.slice(16)), end: buf.length - 16 };
}

const input = JSON.parse(require('fs').readFileSync(0, 'utf8'));
const out = [];
for (const c of input) {
  try {
    let value;
    if (c.kind === 'value') {
      const dec = new hessian.DecoderV2(Buffer.from(c.hex, 'hex'));
      value = norm(dec.read());
      if (dec.byteBuffer.position() !== c.hex.length / 2) throw new Error('trailing bytes');
    } else if (c.kind === 'request') {
      const { header, dec, end } = frame(c.hex);
      value = { header, dubbo: dec.read(), path: dec.read(), version: dec.read(), method: dec.read(), types: dec.read() };
      value.args = [];
      for (let i = 0; i < c.args; i++) value.args.push(norm(dec.read()));
      value.attachments = norm(dec.read());
      if (dec.byteBuffer.position() !== end) throw new Error('trailing bytes in body');
    } else {
      const { header, dec, end } = frame(c.hex);
      value = { header };
      if (header.status !== 20) {
        value.error = dec.read();
      } else {
        value.type = dec.read();
        if (value.type !== 2 && value.type !== 5) value.value = norm(dec.read());
        if (value.type >= 3) value.attachments = norm(dec.read());
      }
      if (dec.byteBuffer.position() !== end) throw new Error('trailing bytes in body');
    }
    out.push({ name: c.name, ok: true, value });
  } catch (e) {
    out.push({ name: c.name, ok: false, error: String(e && e.stack || e) });
  }
}
process.stdout.write(JSON.stringify(out));
