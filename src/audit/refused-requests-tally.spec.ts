import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { Logger } from '@nestjs/common';
import type { ConfigService } from '@nestjs/config';
import type { DataSource, EntityManager } from 'typeorm';
import type { AuditEventInput, AuditService } from './audit.service';
import { RefusedRequestsTally } from './refused-requests-tally';

/** A tally whose writes land in `written` (or fail while `failing` is set): the counting and the summary are what is tested. */
function setup() {
  const written: AuditEventInput[][] = [];
  const state = { failing: false };
  const dataSource = {
    transaction: async (work: (em: EntityManager) => Promise<void>) => {
      if (state.failing) throw new Error('the write failed');
      await work({} as EntityManager);
    },
  } as unknown as DataSource;
  const audit = { record: async (_em: EntityManager, ...events: AuditEventInput[]) => void written.push(events) } as unknown as AuditService;
  const config = { get: () => 60 } as unknown as ConfigService;
  return { tally: new RefusedRequestsTally(dataSource, audit, config as never), written, state };
}

describe('RefusedRequestsTally', () => {
  it('keeps 10,000 addresses apart; refusals from further ones are counted with the rest, which then says its count of addresses is incomplete', async () => {
    const { tally, written } = setup();
    for (let i = 0; i < 5; i++) tally.count('10.0.0.1', 'bearerRefused');
    for (let i = 0; i < 10_005; i++) tally.count(`10.1.${Math.floor(i / 256)}.${i % 256}`, 'invalidInput');
    tally.count(null, 'rateLimited');
    assert.equal(await tally.flush(), 101);
    const [events] = written;
    assert.deepEqual([events[0].client?.ipAddress, events[0].metadata?.total, events[0].metadata?.bearerRefused], ['10.0.0.1', 5, 5]);
    assert.ok(events.slice(1, 100).every((e) => e.client?.ipAddress && e.metadata?.total === 1 && e.metadata.invalidInput === 1));
    const rest = events[100];
    assert.equal(rest.client, null);
    // 9,999 addresses kept apart after the first, 99 of them with events of their own; 6 past the limit and one without an address.
    assert.deepEqual(
      { ...rest.metadata, since: undefined, until: undefined },
      { since: undefined, until: undefined, total: 9_900 + 6 + 1, invalidInput: 9_906, rateLimited: 1, ips: 9_900, ipsComplete: false },
    );
    assert.equal(await tally.flush(), 0, 'nothing since');
  });

  it("counts a client as the rate limits do: an IPv6 client's /64 as one address, an IPv4-mapped address as IPv4", async () => {
    const { tally, written } = setup();
    for (let i = 0; i < 20; i++) tally.count(`2001:db8:1:2:${i.toString(16)}::1`, 'invalidInput');
    tally.count('::ffff:10.0.0.9', 'bodyTooLarge');
    tally.count('10.0.0.9', 'bodyTooLarge');
    assert.equal(await tally.flush(), 2);
    assert.deepEqual(
      written[0].map((e) => [e.client?.ipAddress, e.metadata?.total]),
      [
        ['2001:db8:1:2::/64', 20],
        ['10.0.0.9', 2],
      ],
    );
  });

  it('adds the counts of an interval whose write failed to the next one, which then starts where the failed one did', async () => {
    const { tally, written, state } = setup();
    tally.count('10.0.0.2', 'refreshUnknown');
    state.failing = true;
    Logger.overrideLogger(false); // its error line, expected here
    assert.equal(await tally.flush(), 0);
    state.failing = false;
    tally.count('10.0.0.2', 'refreshUnknown');
    tally.count('10.0.0.3', 'bodyTooLarge');
    assert.equal(await tally.flush(), 2);
    const [events] = written;
    assert.deepEqual(
      events.map((e) => [e.client?.ipAddress, e.metadata?.total]),
      [
        ['10.0.0.2', 2],
        ['10.0.0.3', 1],
      ],
    );
    assert.ok(Date.parse(String(events[0].metadata?.since)) <= Date.parse(String(events[0].metadata?.until)));
  });
});
