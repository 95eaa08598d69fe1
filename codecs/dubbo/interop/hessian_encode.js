// Golden cases written by hessian.js (an independent hessian2 implementation).
// Prints a JSON array of {name, hex, expect}: the hex bytes hessian.js wrote and the
// value it was given, in the neutral form the Rust test compares against:
//   null, true/false, numbers, strings, arrays (lists), {"$binary": hex},
//   {"$date": ms}, {"$map": {key: value}}, {"$class": name, "$": {field: value}}.
'use strict';
const path = require('path');
const hessian = require(path.join(process.env.DUBBO_INTEROP_DIR, 'node_modules', 'hessian.js'));

function norm(v) {
  if (v === null || v === undefined) return null;
  if (typeof v === 'boolean' || typeof v === 'number' || typeof v === 'string') return v;
  if (Buffer.isBuffer(v)) return { $binary: v.toString('hex') };
  if (v instanceof Date) return { $date: v.getTime() };
  if (Array.isArray(v)) return v.map(norm);
  if (typeof v.$class === 'string' && Object.prototype.hasOwnProperty.call(v, '$')) {
    if (v.$class === 'long' || v.$class === 'int' || v.$class === 'double') return Number(v.$);
    if (Array.isArray(v.$)) return v.$.map(norm);
    if (v.$class === 'java.util.HashMap' || v.$class === 'java.util.Map') {
      return { $map: normFields(v.$) };
    }
    return { $class: v.$class, $: normFields(v.$) };
  }
  return { $map: normFields(v) };
}

function normFields(o) {
  const out = {};
  for (const k of Object.keys(o)) out[k] = norm(o[k]);
  return out;
}

const emoji = 'smile \u{1F600} and \u{1F680} rocket';
const cjk = '\u4e2d\u6587\u5b57\u7b26 \u65e5\u672c\u8a9e \ud55c\uad6d\uc5b4';
const longAscii = 'x'.repeat(70000);
// Surrogate pairs straddle the 32768-unit chunk boundary on purpose.
const longMixed = ('a' + '\u{1F600}' + '\u4e2d').repeat(20000);
const shared = { $class: 'com.example.Point', $: { x: 1, y: 2 } };
const sharedList = [1, 2, 3];

const cases = {
  null: null,
  true: true,
  false: false,
  int_small: 7,
  int_neg: -16,
  int_byte: 2047,
  int_short: 262143,
  int_full: 2147483647,
  int_min: -2147483648,
  long_small: { $class: 'long', $: 3 },
  long_mid: { $class: 'long', $: 300000 },
  long_big: { $class: 'long', $: 9007199254740991 },
  double_zero: 0.5 - 0.5 + 0.25 - 0.25 === 0 ? { $class: 'double', $: 0 } : 0,
  double_frac: 12.25,
  double_pi: 3.141592653589793,
  double_neg: -3.75,
  string_empty: '',
  string_ascii: 'hello world',
  string_emoji: emoji,
  string_cjk: cjk,
  string_1023: 'y'.repeat(1023),
  string_long_ascii: longAscii,
  string_long_mixed: longMixed,
  date_minutes: new Date(894621060000),
  date_millis: new Date(1700000000123),
  binary_small: Buffer.from([1, 2, 3]),
  binary_mid: Buffer.alloc(1000, 0xab),
  binary_long: Buffer.alloc(100000, 0xcd),
  list_plain: [1, 'two', null, true, [3, [4]]],
  list_typed: { $class: '[int', $: [1, 2, 3] },
  list_strings: { $class: '[java.lang.String', $: ['a', 'b'] },
  map_plain: { a: 1, b: 'x', nested: { c: [1, 2], d: { e: null } } },
  map_typed: { $class: 'java.util.HashMap', $: { k1: 'v1', k2: 'v2' } },
  object: {
    $class: 'com.example.User',
    $: {
      name: 'alice \u{1F600}',
      age: 30,
      tags: ['a', 'b'],
      address: { $class: 'com.example.Address', $: { city: '\u5317\u4eac', zip: 100000 } },
    },
  },
  object_refs: {
    $class: 'com.example.Pair',
    $: { first: shared, second: shared, list1: sharedList, list2: sharedList },
  },
  objects_many_classes: Array.from({ length: 20 }, (_, i) => ({
    $class: 'com.example.C' + i,
    $: { v: i },
  })),
};

const out = [];
for (const [name, value] of Object.entries(cases)) {
  const buf = hessian.encode(value, '2.0');
  out.push({ name, hex: buf.toString('hex'), expect: norm(value) });
}
// A sequence written by one encoder: class definitions are shared across values, as in
// a Dubbo body.
const enc = new hessian.EncoderV2();
const seq = [
  { $class: 'com.example.Point', $: { x: 1, y: 2 } },
  'between',
  { $class: 'com.example.Point', $: { x: 3, y: 4 } },
];
for (const v of seq) enc.write(v);
out.push({ name: 'sequence_shared_class', hex: enc.get().toString('hex'), expect: seq.map(norm), sequence: true });
process.stdout.write(JSON.stringify(out));
