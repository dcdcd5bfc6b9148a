import { parentPort, workerData } from 'node:worker_threads';
import { Client } from 'pg';
import { type PassInput, type PassResult, runVerifyPass, VERIFY_PASS_SETTINGS } from './audit-verify-pass';

/** What AuditVerifierService hands a worker: where to connect, the snapshot to share, its passes. */
export interface VerifyWorkerData {
  connectionString: string;
  snapshot: string;
  passes: PassInput[];
}

export type VerifyWorkerReply = { results: PassResult[] } | { error: { message: string; code?: string } };

const SNAPSHOT_ID = /^[0-9A-Fa-f-]+$/;

/**
 * A worker thread of the audit verification: its own connection, in the snapshot the service
 * exported (the same events, heads and bases it reads), runs its passes one after another.
 */
async function run(data: VerifyWorkerData): Promise<PassResult[]> {
  if (!SNAPSHOT_ID.test(data.snapshot)) throw new Error('not a snapshot id');
  const client = new Client({ connectionString: data.connectionString, application_name: 'sessionary-verify' });
  // A connection lost mid-pass fails the query; without a listener, its 'error' would end the process.
  client.on('error', () => undefined);
  await client.connect();
  try {
    await client.query('BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY');
    await client.query(`SET TRANSACTION SNAPSHOT '${data.snapshot}'`);
    for (const setting of VERIFY_PASS_SETTINGS) await client.query(setting);
    const results: PassResult[] = [];
    for (const pass of data.passes) results.push(await runVerifyPass(client, pass));
    await client.query('ROLLBACK');
    return results;
  } finally {
    await client.end();
  }
}

run(workerData as VerifyWorkerData).then(
  (results) => parentPort!.postMessage({ results } satisfies VerifyWorkerReply),
  (error: Error & { code?: string }) => parentPort!.postMessage({ error: { message: error.message, code: error.code } } satisfies VerifyWorkerReply),
);
