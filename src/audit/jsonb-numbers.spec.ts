import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { numbersSurviveParse } from './jsonb-numbers';

describe('numbersSurviveParse', () => {
  it('accepts the numbers the service writes, as PostgreSQL prints them', () => {
    // What JSON.stringify wrote, as jsonb prints it (read off PostgreSQL 15: no exponent).
    const printed: Array<[number, string]> = [
      [0, '0'],
      [-0, '0'],
      [5, '5'],
      [-3, '-3'],
      [0.1, '0.1'],
      [-2.25, '-2.25'],
      [1e21, '1000000000000000000000'],
      [1e-7, '0.0000001'],
      [9007199254740992, '9007199254740992'],
      [123456789.123, '123456789.123'],
      [2 ** 60, '1152921504606847000'],
      [5e-324, `0.${'0'.repeat(323)}5`],
      [1.7976931348623157e308, `17976931348623157${'0'.repeat(292)}`],
    ];
    for (const [value, text] of printed) {
      assert.ok(Number(text) === value, text);
      assert.equal(numbersSurviveParse(`{"n": ${text}}`), true, text);
      assert.equal(numbersSurviveParse(`{"n": ${JSON.stringify(value)}}`), true, JSON.stringify(value));
    }
    assert.equal(numbersSurviveParse('{"a": [1, 2.5, {"b": -7}], "c": true, "d": null}'), true);
    // The same value spelled otherwise (jsonb compares them equal).
    assert.equal(numbersSurviveParse('{"n": 1.50}'), true);
    assert.equal(numbersSurviveParse('{"n": 1000000000000000000000}'), true);
  });

  it('refuses a number that JSON.parse rounds', () => {
    assert.equal(numbersSurviveParse('{"n": 5.0000000000000001}'), false);
    assert.equal(numbersSurviveParse('{"n": 9007199254740993}'), false);
    assert.equal(numbersSurviveParse(`{"n": 1${'0'.repeat(400)}}`), false);
    assert.equal(numbersSurviveParse('{"a": [1, 2, 0.30000000000000000001]}'), false);
    assert.equal(numbersSurviveParse('{"n": 1e400}'), false);
    // 2^60 exactly: the same double, but not the number the service wrote (1152921504606847000).
    assert.equal(numbersSurviveParse('{"n": 1152921504606846976}'), false);
  });

  it('reads numbers in strings as text, escaped quotes included', () => {
    assert.equal(numbersSurviveParse('{"n": "5.0000000000000001"}'), true);
    assert.equal(numbersSurviveParse('{"a\\"5.0000000000000001": "x\\\\"}'), true);
    assert.equal(numbersSurviveParse('{"a\\"": 5.0000000000000001}'), false);
  });
});
