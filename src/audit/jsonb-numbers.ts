/**
 * Whether every number in a jsonb value's text (as PostgreSQL prints it) is exactly the number
 * JSON.parse reads from it. The verifier hashes metadata as JavaScript parses it, and a parse
 * rounds to the nearest double: `5.0000000000000001` reads as 5, a 401-digit number as
 * Infinity (stringified `null`). Such a number was not written by the service (it writes
 * doubles, which PostgreSQL keeps exactly and prints in full), so an event holding one was
 * altered even when its parsed metadata hashes as the stored one did.
 *
 * Equal in value, not in spelling: PostgreSQL prints `1e21` as 22 digits, and keeps a `1.50`
 * that jsonb compares equal to `1.5`.
 */
export function numbersSurviveParse(jsonText: string): boolean {
  for (let i = 0; i < jsonText.length; i++) {
    const c = jsonText.charCodeAt(i);
    if (c === QUOTE) {
      // Past the string, escapes included (a number inside a string is text, kept exactly).
      for (i++; i < jsonText.length && jsonText.charCodeAt(i) !== QUOTE; i++) if (jsonText.charCodeAt(i) === BACKSLASH) i++;
    } else if (c === MINUS || (c >= DIGIT_0 && c <= DIGIT_9)) {
      NUMBER.lastIndex = i;
      const token = NUMBER.exec(jsonText)?.[0];
      // Not a number where one starts: not JSON, so not anything the service wrote.
      if (!token) return false;
      const parsed = String(Number(token));
      if (parsed !== token && decimalOf(parsed) !== decimalOf(token)) return false;
      i += token.length - 1;
    }
  }
  return true;
}

const QUOTE = 0x22;
const BACKSLASH = 0x5c;
const MINUS = 0x2d;
const DIGIT_0 = 0x30;
const DIGIT_9 = 0x39;
const NUMBER = /-?(?:0|[1-9]\d*)(?:\.\d+)?(?:[eE][+-]?\d+)?/y;
const DECIMAL = /^(-?)(\d+)(?:\.(\d+))?(?:e([+-]?\d+))?$/i;

/**
 * A decimal number's value as one string (sign, significant digits, exponent), the same for
 * every spelling of it: `1e+21` and `1000000000000000000000`, `1.50` and `1.5`. `Infinity` and
 * `NaN` (what a number too large for a double parses to) are their own.
 */
function decimalOf(text: string): string {
  const m = DECIMAL.exec(text);
  if (!m) return text;
  const fraction = m[3] ?? '';
  let digits = (m[2] + fraction).replace(/^0+/, '');
  if (digits === '') return '0';
  const trimmed = digits.replace(/0+$/, '');
  const exponent = BigInt(m[4] ?? 0) - BigInt(fraction.length) + BigInt(digits.length - trimmed.length);
  digits = trimmed;
  return `${m[1]}${digits}e${exponent}`;
}
