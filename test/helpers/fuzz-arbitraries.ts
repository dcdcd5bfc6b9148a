import fc from 'fast-check';

// Generators of hostile input for test/fuzz.e2e-spec.ts. Everything here is pure: values that
// depend on the running app (tokens, ids) are passed in.

// ---------------------------------------------------------------------------------- strings

export const SQL_SHAPED = [
  "' OR 1=1 --",
  "' OR '1'='1",
  '" OR ""="',
  "'; DROP TABLE users; --",
  '"; DROP TABLE users; --',
  "admin'--",
  "1' AND pg_sleep(5)--",
  "' UNION SELECT password_hash FROM users --",
  "%' OR email LIKE '%",
  "\\'; SELECT 1; --",
  '$$; SELECT 1; $$',
  "E'\\x00'",
  '1; COMMIT; DELETE FROM sessions',
  'lower(:email)',
  ':email',
  '$1',
  '?',
  '/*',
  '*/',
  "') OR ('a'='a",
  '1 OR 1=1',
];

export const OPERATOR_SHAPED = ['$ne', '$gt', '$gte', '$lt', '$regex', '$where', '$in', '$nin', '$or', '$and', '$exists', '$expr', '$elemMatch'];

export const ODD_UNICODE = [
  '\u0000',
  'a\u0000b',
  '\u0000\u0000\u0000',
  '\u202Eevil\u202C', // right-to-left override
  '\u200B', // zero-width space
  '\u200D\u200C',
  '\uFEFF',
  '\u2028\u2029',
  '\u0085',
  '\u00A0',
  '\uD800', // lone high surrogate
  '\uDFFF', // lone low surrogate
  'a\uDC00b',
  '\uDBFF\uD800',
  'İ', // lower() grows it in some collations
  'ß',
  'ﬃ',
  '\u212A', // Kelvin sign, lower-cases to "k"
  'e\u0301\u0301\u0301',
  'Ａｄｍｉｎ', // full width
  '𝕒𝕕𝕞𝕚𝕟',
  '🔑',
  '👨‍👩‍👧‍👦',
  '\u001b[31m',
  '\r\n',
  '\t',
  '\x7f',
  '\uFFFE',
  '\uFFFF',
  '\u{10FFFF}',
];

export const JS_SHAPED = [
  '__proto__',
  'constructor',
  'prototype',
  'toString',
  'hasOwnProperty',
  'valueOf',
  'null',
  'undefined',
  'NaN',
  'Infinity',
  '-Infinity',
  '-0',
  '1e309',
  'true',
  'false',
  '[object Object]',
  '{"$gt":""}',
  '{"$ne":null}',
  '',
  ' ',
  '%00',
  '%s%s%s%n',
  '\\u0000',
  '../../../../etc/passwd',
  '<script>alert(1)</script>',
  '${7*7}',
  '{{7*7}}',
  'admin',
  'root',
];

export const SPECIAL_STRINGS = [...SQL_SHAPED, ...OPERATOR_SHAPED, ...ODD_UNICODE, ...JS_SHAPED];

const loneSurrogate = fc.integer({ min: 0xd800, max: 0xdfff }).map((c) => String.fromCharCode(c));

/** Mostly short strings, sometimes up to (and past) the 16 KiB body limit once in a body. */
const longString = fc
  .tuple(fc.constantFrom('a', 'é', '🔑', '\u0000', "'", '\\', '"', '\uD800', '0'), fc.integer({ min: 129, max: 16_500 }))
  .map(([c, n]) => c.repeat(Math.ceil(n / c.length)));

export const hostileString: fc.Arbitrary<string> = fc.oneof(
  { weight: 3, arbitrary: fc.string({ unit: 'grapheme', maxLength: 24 }) },
  { weight: 3, arbitrary: fc.string({ unit: 'binary', maxLength: 24 }) },
  { weight: 2, arbitrary: fc.string({ unit: 'binary-ascii', maxLength: 24 }) },
  { weight: 4, arbitrary: fc.constantFrom(...SPECIAL_STRINGS) },
  {
    weight: 3,
    arbitrary: fc
      .tuple(fc.string({ maxLength: 12 }), fc.constantFrom(...SPECIAL_STRINGS), fc.string({ maxLength: 12 }))
      .map(([a, b, c]) => a + b + c),
  },
  { weight: 1, arbitrary: fc.array(fc.oneof(loneSurrogate, fc.string({ maxLength: 3 })), { minLength: 1, maxLength: 6 }).map((p) => p.join('')) },
  { weight: 1, arbitrary: longString },
);

// ------------------------------------------------------------------- nearly valid strings

export const validUsername = fc.stringMatching(/^[A-Za-z0-9_.-]{3,32}$/);
export const validPassword = fc.string({ unit: 'grapheme', minLength: 12, maxLength: 40 });
export const refreshTokenShaped = fc.stringMatching(/^[A-Za-z0-9_-]{43}$/);

/** Email-shaped strings, most of them valid, some with a hostile part. */
export const emailish: fc.Arbitrary<string> = fc.oneof(
  { weight: 3, arbitrary: validUsername.map((u) => `${u}@example.test`) },
  { weight: 1, arbitrary: fc.emailAddress() },
  {
    weight: 2,
    arbitrary: fc
      .tuple(hostileString, fc.constantFrom('example.test', 'xn--e1afmkfd.test', 'localhost', '[127.0.0.1]', 'ёлка.рф'))
      .map(([l, d]) => `${l}@${d}`),
  },
  { weight: 1, arbitrary: fc.tuple(validUsername, hostileString).map(([l, d]) => `${l}@${d}`) },
  {
    weight: 1,
    arbitrary: fc.constantFrom(
      "' OR 1=1 --@x.io",
      '"quoted local"@example.test',
      'a@b',
      'a@@b.test',
      `${'a'.repeat(64)}@${'b'.repeat(185)}.test`,
      `${'a'.repeat(250)}@x.test`,
    ),
  },
);

const pad = (n: number, width: number) => String(n).padStart(width, '0');

/**
 * ISO-8601 in all the shapes the standard allows and some it does not: calendar, ordinal and
 * week dates, basic and extended format, odd offsets and separators, years past 9999.
 */
export const isoLike: fc.Arbitrary<string> = (() => {
  const year = fc.oneof(
    { weight: 4, arbitrary: fc.integer({ min: 0, max: 9999 }).map((y) => pad(y, 4)) },
    { weight: 1, arbitrary: fc.constantFrom('+2021', '-2021', '+275760', '-271821', '10000', '99999', '+002021', '-000001') },
  );
  const two = (max: number) => fc.integer({ min: 0, max }).map((n) => pad(n, 2));
  const offset = fc.oneof(
    fc.constantFrom('Z', 'z', '', '+00:00', '-00:00', '+0000', '+00'),
    fc.tuple(fc.constantFrom('+', '-'), two(25), two(61)).map(([s, h, m]) => `${s}${h}:${m}`),
  );
  const fraction = fc.oneof(fc.constant(''), fc.stringMatching(/^[.,][0-9]{1,12}$/));
  const time = fc.oneof(
    fc.tuple(two(25), two(61), two(61), fraction, offset).map(([h, m, s, f, o]) => `${h}:${m}:${s}${f}${o}`),
    fc.tuple(two(25), two(61), offset).map(([h, m, o]) => `${h}:${m}${o}`),
    fc.tuple(two(25), two(61), two(61), offset).map(([h, m, s, o]) => `${h}${m}${s}${o}`),
  );
  const date = fc.oneof(
    { weight: 4, arbitrary: fc.tuple(year, two(13), two(32)).map(([y, m, d]) => `${y}-${m}-${d}`) },
    { weight: 1, arbitrary: fc.tuple(year, two(13), two(32)).map(([y, m, d]) => `${y}${m}${d}`) },
    { weight: 1, arbitrary: fc.tuple(year, fc.integer({ min: 0, max: 367 })).map(([y, d]) => `${y}-${pad(d, 3)}`) },
    {
      weight: 1,
      arbitrary: fc.tuple(year, two(54), fc.option(fc.integer({ min: 0, max: 8 }))).map(([y, w, d]) => `${y}-W${w}${d === null ? '' : `-${d}`}`),
    },
    { weight: 1, arbitrary: fc.tuple(year, two(13)).map(([y, m]) => `${y}-${m}`) },
    { weight: 1, arbitrary: year },
  );
  return fc.oneof(
    { weight: 2, arbitrary: date },
    { weight: 4, arbitrary: fc.tuple(date, fc.constantFrom('T', 't', ' ', '_'), time).map(([d, sep, t]) => `${d}${sep}${t}`) },
    { weight: 1, arbitrary: fc.date({ noInvalidDate: true }).map((d) => d.toISOString()) },
  );
})();

/** Pagination cursors: ours (`base64url("a1.<seq>")`) with any seq, and look-alikes. */
export const cursorLike: fc.Arbitrary<string> = fc.oneof(
  fc
    .oneof(
      fc.bigInt({ min: -10n, max: 2n ** 70n }).map(String),
      hostileString,
      fc.constantFrom('0', '01', '9223372036854775807', '9223372036854775808', '1e3', ' 1'),
    )
    .map((seq) => Buffer.from(`a1.${seq}`, 'utf8').toString('base64url')),
  fc.base64String({ maxLength: 80 }),
  fc.stringMatching(/^[A-Za-z0-9_-]{1,80}$/),
  hostileString,
);

export const uuidLike: fc.Arbitrary<string> = fc.oneof(
  { weight: 3, arbitrary: fc.uuid() },
  { weight: 1, arbitrary: fc.uuid().map((u) => u.toUpperCase()) },
  { weight: 1, arbitrary: fc.uuid().map((u) => u.replace(/-/g, '')) },
  { weight: 1, arbitrary: fc.uuid().map((u) => `{${u}}`) },
  { weight: 1, arbitrary: fc.tuple(fc.uuid(), hostileString).map(([u, s]) => u + s) },
  {
    weight: 1,
    arbitrary: fc.constantFrom(
      '00000000-0000-0000-0000-000000000000',
      'ffffffff-ffff-ffff-ffff-ffffffffffff',
      'gggggggg-gggg-gggg-gggg-gggggggggggg',
    ),
  },
);

// ------------------------------------------------------------------------------ JSON trees

/**
 * JSON as text, so that numbers the JavaScript serialiser cannot write (1e309, -0, 2**64
 * exactly, 1e-400) reach the server, and so that keys such as `__proto__` survive.
 */
export type JsonNode = { raw: string } | { arr: JsonNode[] } | { obj: Array<[string, JsonNode]> };

export function jsonText(node: JsonNode): string {
  if ('raw' in node) return node.raw;
  if ('arr' in node) return `[${node.arr.map(jsonText).join(',')}]`;
  return `{${node.obj.map(([k, v]) => `${JSON.stringify(k)}:${jsonText(v)}`).join(',')}}`;
}

export const str = (s: string): JsonNode => ({ raw: JSON.stringify(s) });

export const NUMBER_TOKENS = [
  '0',
  '-0',
  '1e309',
  '-1e309',
  '1e-400',
  '18446744073709551616', // 2**64
  '9007199254740993',
  '-9223372036854775809',
  '1.7976931348623157e308',
  '5e-324',
  '0.1',
  '-1',
  '1E2',
  '100',
  '101',
  '12345678901234567890123456789012345678901234567890',
  '0.0000000000000000000000000000001',
];

const numberLeaf: fc.Arbitrary<JsonNode> = fc
  .oneof(
    fc.constantFrom(...NUMBER_TOKENS),
    fc.double({ noNaN: true, noDefaultInfinity: true }).map((d) => (Object.is(d, -0) ? '-0' : String(d))),
    fc.integer().map(String),
    fc.bigInt({ min: -(2n ** 80n), max: 2n ** 80n }).map(String),
  )
  .map((raw) => ({ raw }));

export const hostileLeaf: fc.Arbitrary<JsonNode> = fc.oneof(
  { weight: 5, arbitrary: hostileString.map(str) },
  { weight: 2, arbitrary: numberLeaf },
  { weight: 1, arbitrary: fc.constantFrom('true', 'false', 'null').map((raw) => ({ raw })) },
);

export const hostileKey: fc.Arbitrary<string> = fc.oneof(
  {
    weight: 2,
    arbitrary: fc.constantFrom(
      '__proto__',
      'constructor',
      'prototype',
      'role',
      'id',
      'userId',
      'passwordHash',
      'password_hash',
      'isAdmin',
      'toString',
      'length',
      '0',
      '',
      ' ',
    ),
  },
  { weight: 2, arbitrary: fc.constantFrom(...OPERATOR_SHAPED) },
  { weight: 3, arbitrary: hostileString.filter((s) => s.length < 64) },
);

export const jsonTree: fc.Arbitrary<JsonNode> = fc.letrec<{ node: JsonNode }>((tie) => ({
  node: fc.oneof(
    { depthSize: 'small', maxDepth: 12, withCrossShrink: true },
    { weight: 4, arbitrary: hostileLeaf },
    { weight: 1, arbitrary: fc.array(tie('node'), { maxLength: 5 }).map((arr) => ({ arr })) },
    { weight: 1, arbitrary: fc.array(fc.tuple(hostileKey, tie('node')), { maxLength: 5 }).map((obj) => ({ obj })) },
  ),
})).node;

/** Operator-shaped objects where a string belongs: `{"$ne": null}`, `{"$gt": ""}`, `{"$in": [...]}`. */
export const operatorObject: fc.Arbitrary<JsonNode> = fc
  .array(
    fc.tuple(
      fc.constantFrom(...OPERATOR_SHAPED),
      fc.oneof(
        hostileLeaf,
        fc.array(hostileLeaf, { maxLength: 3 }).map((arr) => ({ arr })),
      ),
    ),
    {
      minLength: 1,
      maxLength: 3,
    },
  )
  .map((obj) => ({ obj }));

/** A value nested `depth` levels deep in arrays or objects. */
export const deeplyNested: fc.Arbitrary<JsonNode> = fc
  .tuple(fc.integer({ min: 2, max: 40 }), fc.constantFrom('arr', 'obj', 'mixed'), hostileLeaf)
  .map(([depth, shape, leaf]) => {
    let node = leaf;
    for (let i = 0; i < depth; i++) {
      const asArray = shape === 'arr' || (shape === 'mixed' && i % 2 === 0);
      node = asArray ? { arr: [node] } : { obj: [['a', node]] };
    }
    return node;
  });

/** Something to put where a field value belongs. */
export const hostileValue: fc.Arbitrary<JsonNode> = fc.oneof(
  { weight: 6, arbitrary: hostileLeaf },
  { weight: 1, arbitrary: operatorObject },
  { weight: 1, arbitrary: fc.array(hostileLeaf, { maxLength: 3 }).map((arr) => ({ arr })) },
  { weight: 1, arbitrary: deeplyNested },
  { weight: 1, arbitrary: jsonTree },
);

// ----------------------------------------------------------------------- route-aware bodies

/** The valid value generators of a DTO's fields, by name. */
export type FieldGenerators = Record<string, fc.Arbitrary<string>>;

type Mutation =
  | { kind: 'replace'; field: string; value: JsonNode }
  | { kind: 'drop'; field: string }
  | { kind: 'extra'; key: string; value: JsonNode }
  | { kind: 'duplicate'; field: string; value: JsonNode };

/**
 * A body that starts valid (every field from its generator) and gets `minMutations` or more
 * mutations: a field replaced by a hostile value, dropped, duplicated (JSON keeps the last),
 * or an unknown key added. With one mutation, exactly one thing is wrong, so the validators
 * of the other fields pass and the bad one meets its own.
 */
export function mutatedBody(fields: FieldGenerators, minMutations = 0): fc.Arbitrary<JsonNode> {
  const names = Object.keys(fields);
  const field = names.length ? fc.constantFrom(...names) : fc.constant('field');
  const mutation: fc.Arbitrary<Mutation> = fc.oneof(
    { weight: 5, arbitrary: fc.record({ kind: fc.constant('replace' as const), field, value: hostileValue }) },
    { weight: 1, arbitrary: fc.record({ kind: fc.constant('drop' as const), field }) },
    { weight: 2, arbitrary: fc.record({ kind: fc.constant('extra' as const), key: hostileKey, value: hostileValue }) },
    { weight: 1, arbitrary: fc.record({ kind: fc.constant('duplicate' as const), field, value: hostileValue }) },
  );
  const valid = fc.record(Object.fromEntries(names.map((n) => [n, fields[n]])) as Record<string, fc.Arbitrary<string>>);
  return fc.tuple(valid, fc.array(mutation, { minLength: minMutations, maxLength: 3 })).map(([values, mutations]) => {
    let entries: Array<[string, JsonNode]> = Object.entries(values).map(([k, v]) => [k, str(v)]);
    for (const m of mutations) {
      if (m.kind === 'replace') entries = entries.map(([k, v]) => [k, k === m.field ? m.value : v]);
      else if (m.kind === 'drop') entries = entries.filter(([k]) => k !== m.field);
      else if (m.kind === 'extra') entries.push([m.key, m.value]);
      else entries.push([m.field, m.value]);
    }
    return { obj: entries };
  });
}

// ---------------------------------------------------------------------------- raw bodies

/** True if the text is JSON that Fastify's parser (secure-json-parse) would accept as such. */
export function parsesAsJson(text: string): boolean {
  try {
    JSON.parse(text.replace(/^\uFEFF/, ''));
    return true;
  } catch {
    return false;
  }
}

const JS_ISMS = [
  "{'username': 'a'}",
  '{username: "a"}',
  '{"a": 1,}',
  '[1,]',
  '{"a": NaN}',
  '{"a": Infinity}',
  '{"a": -Infinity}',
  '{"a": undefined}',
  '{"a": 0x10}',
  '{"a": .5}',
  '{"a": +1}',
  '{"a": 01}',
  '{"a": "\\x41"}',
  '{"a": "\\u12"}',
  '{"a": "\\uZZZZ"}',
  '{"a": "\u0001"}',
  '{"a": "\u0000"}',
  '{"a": "line\nbreak"}',
  '{"a" 1}',
  '{"a": 1 "b": 2}',
  '{"a": /regex/}',
  '{"a": 1} // comment',
  '/* comment */ {"a": 1}',
  '{"a": new Date()}',
  '{"a": `tpl`}',
  '{"__proto__": {"role": "admin"}}',
  '{"constructor": {"prototype": {"role": "admin"}}}',
  '{"a": {"__proto__": {"x": 1}}}',
  '[{"constructor": {"prototype": {}}}]',
  'undefined',
  'NaN',
  '{',
  '}',
  '[',
  '"',
  '"\\',
  'nul',
  'tru',
  '-',
  '1e',
  '1e+',
  '--1',
  '\u0000',
  '\uFEFF\uFEFF{}',
];

/**
 * Bodies that are not JSON at all: truncated JSON, JSON with trailing garbage, JavaScript-isms,
 * prototype-poisoning keys (refused by the parser), random bytes, empty and blank bodies,
 * unclosed deep nesting.
 */
export const malformedJsonBody: fc.Arbitrary<string | Buffer> = fc.oneof(
  {
    weight: 3,
    arbitrary: fc
      .oneof(jsonTree, mutatedBody({ username: validUsername, email: emailish, password: validPassword }))
      .map(jsonText)
      .filter((t) => t.length >= 2)
      .chain((t) => fc.integer({ min: 1, max: t.length - 1 }).map((i) => t.slice(0, i)))
      .filter((t) => !parsesAsJson(t)),
  },
  {
    weight: 2,
    arbitrary: fc
      .tuple(jsonTree.map(jsonText), fc.oneof(fc.constantFrom('}', ']', ',', 'x', '\u0000', ' {"a":1}', '//', 'null', '"'), hostileString))
      .map(([t, g]) => t + g)
      .filter((t) => !parsesAsJson(t)),
  },
  { weight: 2, arbitrary: fc.constantFrom(...JS_ISMS).filter((t) => !parsesAsJson(t) || /__proto__|constructor/.test(t)) },
  {
    weight: 1,
    arbitrary: fc
      .uint8Array({ minLength: 1, maxLength: 300 })
      .map((b) => Buffer.from(b))
      .filter((b) => !parsesAsJson(b.toString('utf8'))),
  },
  // Blank, not empty: zero bytes are no body at all, whatever the Content-Type (request-hygiene.ts).
  { weight: 1, arbitrary: fc.constantFrom(' ', '\n', '\t\r\n ', '\uFEFF') },
  { weight: 1, arbitrary: fc.integer({ min: 9, max: 16_000 }).map((n) => '['.repeat(n)) },
  { weight: 1, arbitrary: fc.integer({ min: 1, max: 400 }).map((n) => `${'{"a":'.repeat(n)}1`) },
  {
    weight: 1,
    arbitrary: fc
      .tuple(fc.uint8Array({ minLength: 1, maxLength: 20 }), fc.constantFrom('{"username":"', '{"refreshToken":"', '{"email":"'))
      .map(([bytes, prefix]) => Buffer.concat([Buffer.from(prefix), Buffer.from(bytes), Buffer.from('"}')]))
      .filter((b) => !parsesAsJson(b.toString('utf8'))),
  },
);

/** Media types Fastify's JSON parser is registered for, in the spellings clients use. */
export const JSON_CONTENT_TYPES = [
  'application/json',
  'application/json; charset=utf-8',
  'application/json;charset=UTF-8',
  'Application/JSON',
  'application/json; charset=utf-16',
  'application/json; charset=latin1',
  'application/json; foo=bar',
  'application/json ; charset=utf-8',
];

export const OTHER_CONTENT_TYPES = [
  'text/plain',
  'text/plain; charset=utf-8',
  'application/x-www-form-urlencoded',
  'multipart/form-data; boundary=xyz',
  'application/xml',
  'text/html',
  'application/octet-stream',
  'application/jsonx',
  'application/vnd.api+json',
  'application/json-patch+json',
  'application/ld+json',
  'application/problem+json',
  'text/json',
  'json',
  '*/*',
  'application/*',
  ';',
  'application/json, text/plain',
  'application',
  '/',
];

// ------------------------------------------------------------------------------- headers

const headerChar = fc
  .oneof(
    { weight: 16, arbitrary: fc.integer({ min: 0x20, max: 0x7e }) },
    { weight: 3, arbitrary: fc.integer({ min: 0x80, max: 0xff }) },
    { weight: 1, arbitrary: fc.constant(0x09) },
  )
  .map((c) => String.fromCharCode(c));

/** True if Node's HTTP client will send it as a header value (it refuses NUL, CR, LF, > U+00FF). */
export const sendableInHeader = (s: string) => !/[^\t\x20-\x7e\x80-\xff]/.test(s);

/** Header values: visible ASCII, obs-text (0x80-0xFF) and tabs, hostile shapes, long runs. */
export const headerValue: fc.Arbitrary<string> = fc.oneof(
  { weight: 4, arbitrary: fc.string({ unit: headerChar, maxLength: 60 }) },
  { weight: 3, arbitrary: fc.constantFrom(...SPECIAL_STRINGS.filter(sendableInHeader)) },
  {
    weight: 1,
    arbitrary: fc.tuple(fc.constantFrom('A', '\u00ff', "'", ' '), fc.integer({ min: 200, max: 9_000 })).map(([c, n]) => `x${c.repeat(n)}`),
  },
);

export const b64url = (s: string | Buffer) => Buffer.from(s).toString('base64url');

export interface AuthMaterial {
  /** A valid access token, to tamper with. */
  userToken: string;
  /** A correctly signed access token of a session that has ended. */
  endedSessionToken: string;
  refreshToken: string;
  userId: string;
  sessionId: string;
}

/** Authorization header values that must not authenticate anyone. */
export function invalidAuthorization(a: AuthMaterial): fc.Arbitrary<string> {
  const [h, p, s] = a.userToken.split('.');
  const jwtHeader = fc.constantFrom(
    '{"alg":"HS256","typ":"at+jwt"}',
    '{"alg":"none","typ":"at+jwt"}',
    '{"alg":"HS256","typ":"JWT"}',
    '{"alg":"RS256","typ":"at+jwt"}',
    '{"alg":"HS256","typ":"at+jwt","kid":"../../../dev/null"}',
    '{"alg":"HS256","typ":"at+jwt","jku":"http://127.0.0.1/jwks"}',
    '{"alg":"HS256","typ":"at+jwt","crit":["exp"]}',
    '{"alg":"HS256","typ":"at+jwt","__proto__":{"alg":"none"}}',
    '{"alg":["HS256"],"typ":"at+jwt"}',
    'not json',
    '',
  );
  const claim = fc.oneof(fc.constant(undefined), hostileLeaf, operatorObject);
  const claims = fc
    .record({
      sub: fc.oneof(fc.constant(str(a.userId)), claim),
      sid: fc.oneof(fc.constant(str(a.sessionId)), claim),
      exp: fc.oneof(numberLeaf, claim),
      iat: fc.oneof(numberLeaf, claim),
      jti: claim,
      iss: fc.oneof(fc.constant(str('sessionary')), claim),
      aud: fc.oneof(fc.constant(str('sessionary-api')), claim),
    })
    .map((c) => jsonText({ obj: Object.entries(c).filter((e): e is [string, JsonNode] => e[1] !== undefined) }));
  const signature = fc.oneof(
    fc.constant(''),
    fc.constant(s),
    fc.base64String({ maxLength: 60 }).map((x) => x.replace(/=/g, '')),
  );
  const forged = fc.tuple(jwtHeader, claims, signature).map(([hh, pp, ss]) => `${b64url(hh)}.${b64url(pp)}.${ss}`);
  const tampered = fc
    .tuple(fc.integer({ min: 0, max: a.userToken.length - 1 }), fc.constantFrom('A', 'b', '_', '-', '.', '='))
    .map(([i, c]) => a.userToken.slice(0, i) + c + a.userToken.slice(i + 1))
    .filter((tok) => tok !== a.userToken);
  return fc.oneof(
    { weight: 3, arbitrary: forged.map((tok) => `Bearer ${tok}`) },
    { weight: 2, arbitrary: tampered.map((tok) => `Bearer ${tok}`) },
    { weight: 2, arbitrary: headerValue },
    { weight: 2, arbitrary: headerValue.map((v) => `Bearer ${v}`) },
    {
      weight: 2,
      arbitrary: fc.constantFrom(
        'Bearer',
        'Bearer ',
        'Bearer a.b.c',
        'Bearer ...',
        'Bearer null',
        'Bearer undefined',
        `Bearer ${a.refreshToken}`,
        `Bearer ${a.endedSessionToken}`,
        a.userToken,
        `Token ${a.userToken}`,
        `Basic ${b64url('admin:admin')}`,
        `Bearer ${h}.${p}`,
        `Bearer ${h}.${p}.`,
        `Bearer ${p}.${h}.${s}`,
        `Bearer ${h}..${s}`,
        `Bearer ${a.userToken.split('').reverse().join('')}`,
        `Bearer ${b64url('{"alg":"none","typ":"at+jwt"}')}.${p}.`,
      ),
    },
  );
}

// ----------------------------------------------------------------------- URLs and queries

const UNRESERVED = /[A-Za-z0-9\-._~]/;

/**
 * Percent-encodes a string the way clients do, but also the ways they should not: lone
 * surrogates become the (invalid) UTF-8 of the surrogate, and some reserved characters stay raw.
 */
export function percentEncode(s: string, keepRaw = ''): string {
  let out = '';
  for (const ch of s) {
    if (UNRESERVED.test(ch) || (keepRaw.includes(ch) && ch.length === 1)) {
      out += ch;
      continue;
    }
    const code = ch.codePointAt(0)!;
    const bytes =
      code >= 0xd800 && code <= 0xdfff
        ? Buffer.from([0xe0 | (code >> 12), 0x80 | ((code >> 6) & 0x3f), 0x80 | (code & 0x3f)])
        : Buffer.from(ch, 'utf8');
    out += [...bytes].map((b) => `%${b.toString(16).toUpperCase().padStart(2, '0')}`).join('');
  }
  return out;
}

/** Bad or odd percent-encodings, raw obs-text bytes and path tricks, to splice into URLs. */
export const RAW_URL_FRAGMENTS = [
  ...['%', '%%', '%G1', '%1', '%00', '%ED%A0%80', '%C0%AF', '%FF%FE', '%E0%A4%A', '%2F', '%2e%2e', '..', '.', '%5C', '%252F', '%20'],
  ...['\u00ff', '\u00e9'], // raw obs-text bytes, sent as they are
  ...['+', ';', '@', ':', '!', '$', "'", '(', '*', ','],
];

/** A URL component (a path segment or a query key or value) in one of several encodings. */
export function urlComponent(value: fc.Arbitrary<string>): fc.Arbitrary<string> {
  return fc.oneof(
    { weight: 4, arbitrary: value.map((v) => percentEncode(v)) },
    { weight: 1, arbitrary: value.map((v) => percentEncode(v, "!$'()*,;:@+=&[]/")) },
    {
      weight: 1,
      arbitrary: fc.tuple(value, fc.constantFrom(...RAW_URL_FRAGMENTS), fc.nat()).map(([v, frag, at]) => {
        const enc = percentEncode(v);
        const i = enc.length ? at % (enc.length + 1) : 0;
        return enc.slice(0, i) + frag + enc.slice(i);
      }),
    },
  );
}

/**
 * Query strings: known parameters with nearly-valid or hostile values, repeated parameters
 * (arrays), bracket and prototype keys, empty keys and values.
 */
export function queryString(params: Record<string, fc.Arbitrary<string>>): fc.Arbitrary<string> {
  const names = Object.keys(params);
  const key = fc.oneof(
    { weight: 6, arbitrary: names.length ? fc.constantFrom(...names) : hostileKey },
    {
      weight: 1,
      arbitrary: fc.constantFrom(
        '__proto__',
        'constructor',
        'constructor[prototype][role]',
        '__proto__[role]',
        'limit[]',
        'type[$ne]',
        'toString',
        'hasOwnProperty',
        'access_token',
        '',
      ),
    },
    { weight: 1, arbitrary: hostileKey },
  );
  const pair = key.chain((k) =>
    fc
      .tuple(
        urlComponent(
          fc.oneof({ weight: 2, arbitrary: Object.hasOwn(params, k) ? params[k] : hostileString }, { weight: 1, arbitrary: hostileString }),
        ),
        fc.boolean(),
      )
      .map(([v, withEquals]) => (k === '' && !withEquals ? v : `${percentEncode(k, '[]$')}${withEquals || v ? '=' : ''}${v}`)),
  );
  return fc
    .tuple(fc.array(pair, { maxLength: 6 }), fc.constantFrom('&', '&', '&', ';', '&&'), fc.constantFrom('', '?', '?&', '?='))
    .map(([pairs, sep, empty]) => (pairs.length ? `?${pairs.join(sep)}` : empty));
}
