import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { StoppableJob } from './stoppable-job';

/** A promise and the function that settles it. */
function deferred<T>(): { promise: Promise<T>; resolve: (value: T) => void; reject: (error: Error) => void } {
  let resolve!: (value: T) => void;
  let reject!: (error: Error) => void;
  const promise = new Promise<T>((res, rej) => ((resolve = res), (reject = rej)));
  return { promise, resolve, reject };
}

describe('StoppableJob', () => {
  it('shares the run under way with a second call, and starts a new one once it ended', async () => {
    const job = new StoppableJob<number>();
    const first = deferred<number>();
    let started = 0;
    const a = job.run(() => (started++, first.promise));
    const b = job.run(() => (started++, Promise.resolve(2)));
    assert.equal(a, b);
    first.resolve(1);
    assert.equal(await b, 1);
    assert.equal(await job.run(() => (started++, Promise.resolve(3))), 3);
    assert.equal(started, 2);
  });

  it("stop() aborts the run's signal and resolves only once the run has ended", async () => {
    const job = new StoppableJob<string>();
    const finish = deferred<string>();
    let signal: AbortSignal | undefined;
    const run = job.run((stop) => ((signal = stop), finish.promise));
    let stopped = false;
    const stopping = job.stop().then(() => (stopped = true));
    assert.equal(signal!.aborted, true);
    await new Promise((r) => setImmediate(r));
    assert.equal(stopped, false, 'stop() resolved while the run was still working');
    finish.resolve('done');
    await stopping;
    assert.equal(await run, 'done');
  });

  it('stop() resolves when the run fails (its caller hears of it), and later runs get the aborted signal', async () => {
    const job = new StoppableJob<void>();
    const failing = deferred<void>();
    const run = job.run(() => failing.promise);
    const stopping = job.stop();
    failing.reject(new Error('the database went away'));
    await stopping;
    await assert.rejects(run, /the database went away/);
    let aborted: boolean | undefined;
    await job.run(async (stop) => void (aborted = stop.aborted));
    assert.equal(aborted, true);
  });

  it('a work that throws before returning its promise rejects the run, and the next run starts afresh', async () => {
    const job = new StoppableJob<number>();
    const run = job.run(() => {
      throw new Error('no cron job registered');
    });
    await assert.rejects(run, /no cron job registered/);
    assert.equal(await job.run(() => Promise.resolve(4)), 4);
  });
});
